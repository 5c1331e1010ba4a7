//! PostgreSQL as a peer: the machine's running server, one table
//! `(id bigserial primary key, ledger text, ts bigint, payload jsonb)`,
//! `synchronous_commit = on` (a commit returns once its WAL is flushed).
//! A single append is one INSERT, a batch one multi-row INSERT, each its
//! own transaction. Each client holds its own connection, up to the
//! server's `max_connections` less a margin; beyond that, clients share a
//! pool of that many (noted in the report).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::TryStreamExt as _;
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::driver::{Measurement, Timing, drive};
use crate::workload::{Cell, LEDGERS, payload_json};

/// Connections left for others (superusers, psql) below `max_connections`.
const CONNECTION_MARGIN: u32 = 10;

/// The server's version, for the report.
pub async fn version(url: &str) -> anyhow::Result<String> {
    let mut conn = sqlx::PgConnection::connect(url).await.with_context(|| format!("connect to {url}"))?;
    let v: String = sqlx::query_scalar("SHOW server_version").fetch_one(&mut conn).await?;
    Ok(v)
}

/// How many connections a run may hold.
pub async fn max_clients(url: &str) -> anyhow::Result<u32> {
    let mut conn = sqlx::PgConnection::connect(url).await.with_context(|| format!("connect to {url}"))?;
    let max: String = sqlx::query_scalar("SHOW max_connections").fetch_one(&mut conn).await?;
    Ok(max.parse::<u32>().unwrap_or(100).saturating_sub(CONNECTION_MARGIN).max(1))
}

/// The postmaster of the server at `url`, for the cluster's CPU: the
/// parent of this connection's backend, when both are PostgreSQL processes
/// on this machine (`None` for a server elsewhere).
pub async fn postmaster_pid(url: &str) -> anyhow::Result<Option<u32>> {
    let mut conn = sqlx::PgConnection::connect(url).await.with_context(|| format!("connect to {url}"))?;
    let backend: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut conn).await?;
    let is_postgres = |pid: u32| crate::cpu::command_of(pid).is_some_and(|c| c.starts_with("postgres"));
    let Ok(backend) = u32::try_from(backend) else { return Ok(None) };
    let postmaster = crate::cpu::parent_of(backend).filter(|&p| is_postgres(backend) && is_postgres(p));
    conn.close().await?;
    Ok(postmaster)
}

/// Drops and creates the table both PostgreSQL targets insert into.
pub async fn create_table(url: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(url).await.with_context(|| format!("connect to {url}"))?;
    sqlx::query("DROP TABLE IF EXISTS ferry_bench_entries").execute(&mut conn).await?;
    sqlx::query(
        "CREATE TABLE ferry_bench_entries (id bigserial PRIMARY KEY, ledger text NOT NULL, ts bigint NOT NULL, \
         payload jsonb NOT NULL)",
    )
    .execute(&mut conn)
    .await?;
    conn.close().await?;
    Ok(())
}

/// A fresh table and a pool of `connections`, each with
/// `synchronous_commit = on`.
async fn setup(url: &str, connections: u32) -> anyhow::Result<PgPool> {
    create_table(url).await?;
    let options: PgConnectOptions = url.parse().context("parse the PostgreSQL URL")?;
    let options = options.options([("synchronous_commit", "on")]);
    let pool = PgPoolOptions::new()
        .min_connections(connections)
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(60))
        .connect_with(options)
        .await
        .context("open the connection pool")?;
    Ok(pool)
}

/// With the cluster's CPU over the run when `postmaster` is known.
pub async fn run(
    cell: &Cell,
    timing: Timing,
    url: &str,
    max_clients: u32,
    postmaster: Option<u32>,
) -> anyhow::Result<Measurement> {
    let pool = setup(url, (cell.clients as u32).min(max_clients)).await?;
    let payloads: Arc<Vec<String>> = Arc::new(vec![payload_json(cell.payload_bytes); cell.batch]);
    let appender = pool.clone();
    let measured = crate::cpu::around(
        postmaster,
        drive(cell.clients, timing, cell.batch as u64, move |worker| {
            let (pool, payloads) = (appender.clone(), payloads.clone());
            async move { insert(&pool, worker, &payloads).await }
        }),
    )
    .await;
    pool.close().await;
    measured
}

async fn insert(pool: &PgPool, worker: usize, payloads: &[String]) -> anyhow::Result<()> {
    let ledger = format!("bench-{:02}", worker % LEDGERS);
    let ts = ferry_core::now_ms() as i64;
    if payloads.len() == 1 {
        sqlx::query("INSERT INTO ferry_bench_entries (ledger, ts, payload) VALUES ($1, $2, $3::jsonb)")
            .bind(ledger)
            .bind(ts)
            .bind(&payloads[0])
            .execute(pool)
            .await?;
    } else {
        sqlx::query(
            "INSERT INTO ferry_bench_entries (ledger, ts, payload) SELECT $1, $2, p::jsonb FROM unnest($3::text[]) AS p",
        )
        .bind(ledger)
        .bind(ts)
        .bind(payloads)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Fills the table with `entries` rows quickly (durability does not
/// matter for a read benchmark).
pub async fn fill(url: &str, entries: u64, payload_bytes: usize) -> anyhow::Result<()> {
    let pool = setup(url, 1).await?;
    let mut conn = pool.acquire().await?;
    sqlx::query("SET synchronous_commit = off").execute(&mut *conn).await?;
    sqlx::query(
        "INSERT INTO ferry_bench_entries (ledger, ts, payload) \
         SELECT 'bench-00', 0, $1::jsonb FROM generate_series(1, $2)",
    )
    .bind(payload_json(payload_bytes))
    .bind(entries as i64)
    .execute(&mut *conn)
    .await?;
    drop(conn);
    pool.close().await;
    Ok(())
}

/// `SELECT … ORDER BY id` over the whole table, streamed; returns the rows
/// read and how long it took.
pub async fn replay(url: &str) -> anyhow::Result<(u64, Duration)> {
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let started = Instant::now();
    let mut rows = sqlx::query_as::<_, (i64, String, i64, String)>(
        "SELECT id, ledger, ts, payload::text FROM ferry_bench_entries ORDER BY id",
    )
    .fetch(&mut conn);
    let (mut count, mut bytes) = (0u64, 0usize);
    while let Some((_, ledger, _, payload)) = rows.try_next().await? {
        bytes += ledger.len() + payload.len();
        count += 1;
    }
    std::hint::black_box(bytes);
    Ok((count, started.elapsed()))
}
