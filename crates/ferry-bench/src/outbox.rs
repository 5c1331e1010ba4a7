//! Outbox: how many rows per second ferry's outbox source drains from a
//! PostgreSQL and a MySQL/MariaDB outbox table (SPEC §6), next to the bare
//! loop a person would write without ferry, in the same run:
//!
//! ```text
//! BEGIN; SELECT id, ledger, key, payload … WHERE exported_at IS NULL
//!        ORDER BY id LIMIT 1000 FOR UPDATE SKIP LOCKED;
//!        UPDATE … SET exported_at = now() WHERE id IN (…); COMMIT
//! ```
//!
//! on one connection until no row is left. ferry runs the same statements
//! with its durable append (fsync'd, every row keyed
//! `outbox:{source}:{row id}`) between the `SELECT` and the `UPDATE`, so the
//! ratio is what that append costs on top of the database's own work.
//!
//! Each driver gets a database of its own for the run (created here,
//! dropped after). Every measurement drains a freshly filled table (the
//! same rows, a new sequence) so neither side meets the other's dead
//! tuples; ferry's drain gets a new store each round, so no idempotency
//! key is ever a repeat the store would answer without writing. Rounds
//! interleave bare, ferry and the store alone; the best round of each is
//! reported.
//!
//! The third column is ferry's store alone: the same entries (keyed, in
//! batches of the same size, one call at a time) appended with no database
//! at all. ferry's drain is serial — select, append, mark, commit — so its
//! time is about the bare loop's plus this one's, which is what the ratio
//! can be read against.

#![allow(clippy::disallowed_methods)] // the benchmark makes its scratch dirs, not ferry data

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use ferry_core::units::Seconds;
use ferry_core::{LedgerName, NewEntry, Payload};
use ferry_outbox::{SourceConfig, SourceSettings, SourceState, Sources};
use reqwest::Url;
use serde::Serialize;
use sqlx::mysql::MySqlConnection;
use sqlx::postgres::PgConnection;
use sqlx::{AssertSqlSafe, Connection as _};

use crate::report::thousands;
use crate::workload::payload_json;

/// The issue's goal: ferry drains at least this share of the bare loop's rate.
const GOAL_RATIO: f64 = 0.70;
/// The ledger every row goes to, and the source's name.
const LEDGER: &str = "outbox-bench";
const SOURCE: &str = "bench";
/// The longest one drain may take before the run gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(600);
/// How often ferry's status is looked at while it drains.
const STATUS_POLL: Duration = Duration::from_millis(10);
/// Rows per `INSERT` while filling.
const FILL_CHUNK: u64 = 1_000;

/// A database the benchmark drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutboxDriver {
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

impl OutboxDriver {
    pub fn name(self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Mysql => "mysql",
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rows in the table at the start of each drain.
    pub rows: u64,
    /// Of each row's JSON payload.
    pub payload_bytes: usize,
    /// Rows per batch, for ferry and the bare loop alike.
    pub batch: usize,
    pub rounds: u32,
    pub drivers: Vec<OutboxDriver>,
    /// Also an index of the pending rows (PostgreSQL: on `id` where
    /// `exported_at IS NULL`; MySQL: on `(exported_at, id)`), so a batch's
    /// `SELECT` does not walk every row drained before it.
    pub pending_index: bool,
    /// A PostgreSQL server URL; the run creates and drops a database there.
    pub postgres_url: String,
    /// A MySQL/MariaDB server URL; the same.
    pub mysql_url: String,
}

/// One driver's best rounds.
#[derive(Debug, Clone, Serialize)]
pub struct DriverRow {
    pub driver: &'static str,
    pub server: String,
    pub bare_rows_per_sec: f64,
    pub ferry_rows_per_sec: f64,
    /// ferry's store alone, appending the same keyed batches.
    pub store_rows_per_sec: f64,
    /// ferry over bare.
    pub ratio: f64,
    pub goal: f64,
}

#[derive(Debug, Serialize)]
pub struct OutboxReport {
    pub rows: u64,
    pub pending_index: bool,
    pub payload_bytes: usize,
    pub batch: usize,
    pub rounds: u32,
    pub drivers: Vec<DriverRow>,
}

impl OutboxReport {
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} rows of ~{} B per drain, batches of {}, {}, best of {} rounds\n\n",
            thousands(self.rows),
            self.payload_bytes,
            self.batch,
            if self.pending_index { "with an index of the pending rows" } else { "primary key only" },
            self.rounds
        );
        out.push_str(&format!(
            "{:<9} {:>12} {:>12} {:>7} {:>5} {:>13}  server\n",
            "driver", "bare row/s", "ferry row/s", "ratio", "goal", "store row/s"
        ));
        for r in &self.drivers {
            out.push_str(&format!(
                "{:<9} {:>12} {:>12} {:>6.0}% {:>4.0}% {:>13}  {}\n",
                r.driver,
                thousands(r.bare_rows_per_sec as u64),
                thousands(r.ferry_rows_per_sec as u64),
                r.ratio * 100.0,
                r.goal * 100.0,
                thousands(r.store_rows_per_sec as u64),
                r.server
            ));
        }
        out
    }
}

/// Every driver in turn: a database of its own, `rounds` rounds of bare,
/// ferry and store alone, the database dropped after (also on failure).
pub async fn run(parent: &Path, options: &Options) -> anyhow::Result<OutboxReport> {
    ensure!(options.rows > 0 && options.batch > 0 && options.rounds > 0, "rows, batch and rounds must be at least 1");
    let mut drivers = Vec::new();
    for &driver in &options.drivers {
        let admin = match driver {
            OutboxDriver::Postgres => &options.postgres_url,
            OutboxDriver::Mysql => &options.mysql_url,
        };
        let db =
            Database::create(driver, admin).await.with_context(|| format!("{}: create a database", driver.name()))?;
        let measured = measure_driver(parent, &db, options).await;
        let dropped = db.drop().await;
        let row = measured.with_context(|| format!("{}: measure", driver.name()))?;
        dropped.with_context(|| format!("{}: drop database {}", driver.name(), db.name))?;
        drivers.push(row);
    }
    Ok(OutboxReport {
        rows: options.rows,
        pending_index: options.pending_index,
        payload_bytes: options.payload_bytes,
        batch: options.batch,
        rounds: options.rounds,
        drivers,
    })
}

async fn measure_driver(parent: &Path, db: &Database, options: &Options) -> anyhow::Result<DriverRow> {
    let (mut bare, mut ferry, mut store) = (Duration::MAX, Duration::MAX, Duration::MAX);
    let rate = |d: Duration| options.rows as f64 / d.as_secs_f64().max(1e-9);
    for round in 1..=options.rounds {
        db.fill(options.rows, options.payload_bytes, options.pending_index).await.context("fill the outbox")?;
        let b = db.bare_loop(options.rows, options.batch).await.context("the bare loop")?;
        db.fill(options.rows, options.payload_bytes, options.pending_index).await.context("fill the outbox")?;
        let (f, first) = ferry_drain(parent, db, options).await.context("ferry's drain")?;
        let s = store_alone(parent, options).await.context("the store alone")?;
        eprintln!(
            "{} round {round}: bare {:.3}s ({:.0} row/s), ferry {:.3}s ({:.0} row/s; first batch seen at {:.3}s), \
             store alone {:.3}s",
            db.driver.name(),
            b.as_secs_f64(),
            rate(b),
            f.as_secs_f64(),
            rate(f),
            first.as_secs_f64(),
            s.as_secs_f64()
        );
        (bare, ferry, store) = (bare.min(b), ferry.min(f), store.min(s));
    }
    Ok(DriverRow {
        driver: db.driver.name(),
        server: db.version.clone(),
        bare_rows_per_sec: rate(bare),
        ferry_rows_per_sec: rate(ferry),
        store_rows_per_sec: rate(store),
        ratio: rate(ferry) / rate(bare),
        goal: GOAL_RATIO,
    })
}

/// A database of the run's own on one server, holding the table `outbox`
/// with SPEC §6's columns.
struct Database {
    driver: OutboxDriver,
    /// The server URL it was created through (dropped through it too).
    admin: String,
    name: String,
    /// The URL of the database itself, for ferry and the bare loop.
    url: String,
    version: String,
}

impl Database {
    async fn create(driver: OutboxDriver, admin: &str) -> anyhow::Result<Database> {
        static CREATED: AtomicU32 = AtomicU32::new(0);
        let name = format!("ferry_bench_outbox_{}_{}", std::process::id(), CREATED.fetch_add(1, Ordering::Relaxed));
        let mut url = Url::parse(admin).context("parse the server URL")?;
        url.set_path(&format!("/{name}"));
        let create = format!("CREATE DATABASE {name}");
        let version = match driver {
            OutboxDriver::Postgres => {
                let mut conn = PgConnection::connect(admin).await.context("connect")?;
                sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&mut conn).await?;
                sqlx::raw_sql(AssertSqlSafe(create)).execute(&mut conn).await?;
                let v: String = sqlx::query_scalar("SHOW server_version").fetch_one(&mut conn).await?;
                conn.close().await?;
                format!("PostgreSQL {v}")
            }
            OutboxDriver::Mysql => {
                let mut conn = MySqlConnection::connect(admin).await.context("connect")?;
                sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}"))).execute(&mut conn).await?;
                sqlx::raw_sql(AssertSqlSafe(create)).execute(&mut conn).await?;
                let v: String = sqlx::query_scalar("SELECT CAST(VERSION() AS CHAR)").fetch_one(&mut conn).await?;
                conn.close().await?;
                if v.contains("MariaDB") { v } else { format!("MySQL {v}") }
            }
        };
        Ok(Database { driver, admin: admin.to_owned(), name, url: url.to_string(), version })
    }

    async fn drop(&self) -> anyhow::Result<()> {
        match self.driver {
            OutboxDriver::Postgres => {
                let mut conn = PgConnection::connect(&self.admin).await?;
                let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
                sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await?;
                conn.close().await?;
            }
            OutboxDriver::Mysql => {
                let mut conn = MySqlConnection::connect(&self.admin).await?;
                sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {}", self.name)))
                    .execute(&mut conn)
                    .await?;
                conn.close().await?;
            }
        }
        Ok(())
    }

    /// A new `outbox` table with `rows` pending rows (ids from 1, ledger
    /// `orders`, key `order-{n}`, the same JSON payload of `payload_bytes`).
    /// Filled without durability waits, then its statistics refreshed, so
    /// the drain that follows starts from a clean, analysed table.
    async fn fill(&self, rows: u64, payload_bytes: usize, pending_index: bool) -> anyhow::Result<()> {
        let payload = payload_json(payload_bytes);
        match self.driver {
            OutboxDriver::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await?;
                sqlx::raw_sql(
                    "SET synchronous_commit = off; DROP TABLE IF EXISTS outbox; \
                     CREATE TABLE outbox (id bigserial PRIMARY KEY, ledger text, key text, payload jsonb, \
                     created_at timestamptz NOT NULL DEFAULT now(), exported_at timestamptz)",
                )
                .execute(&mut conn)
                .await?;
                sqlx::query(
                    "INSERT INTO outbox (ledger, key, payload) \
                     SELECT 'orders', 'order-' || n, $1::jsonb FROM generate_series(1, $2) AS n",
                )
                .bind(&payload)
                .bind(rows as i64)
                .execute(&mut conn)
                .await?;
                if pending_index {
                    sqlx::raw_sql("CREATE INDEX outbox_pending ON outbox (id) WHERE exported_at IS NULL")
                        .execute(&mut conn)
                        .await?;
                }
                sqlx::raw_sql("VACUUM ANALYZE outbox").execute(&mut conn).await?;
                conn.close().await?;
            }
            OutboxDriver::Mysql => {
                let mut conn = MySqlConnection::connect(&self.url).await?;
                sqlx::raw_sql(
                    "DROP TABLE IF EXISTS outbox; \
                     CREATE TABLE outbox (id BIGINT AUTO_INCREMENT PRIMARY KEY, ledger VARCHAR(200), \
                     `key` VARCHAR(300), payload JSON, created_at DATETIME(6) NOT NULL DEFAULT NOW(6), \
                     exported_at DATETIME(6) NULL)",
                )
                .execute(&mut conn)
                .await?;
                // The payload is `{"d":"xxx…"}`: nothing in it to escape.
                let mut n = 0;
                while n < rows {
                    let values: Vec<String> = (n + 1..=(n + FILL_CHUNK).min(rows))
                        .map(|i| format!("('orders','order-{i}','{payload}')"))
                        .collect();
                    n += values.len() as u64;
                    let sql = format!("INSERT INTO outbox (ledger, `key`, payload) VALUES {}", values.join(","));
                    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut conn).await?;
                }
                if pending_index {
                    sqlx::raw_sql("CREATE INDEX outbox_pending ON outbox (exported_at, id)").execute(&mut conn).await?;
                }
                sqlx::raw_sql("ANALYZE TABLE outbox").execute(&mut conn).await?;
                conn.close().await?;
            }
        }
        Ok(())
    }

    /// The loop without ferry on one connection, until no row is left;
    /// checks it marked every row. Timed from before it connects, as
    /// ferry's drain is timed from its start.
    async fn bare_loop(&self, rows: u64, batch: usize) -> anyhow::Result<Duration> {
        type Raw = (i64, Option<String>, Option<String>, Option<String>);
        let mut drained = 0u64;
        let took = match self.driver {
            OutboxDriver::Postgres => {
                let started = Instant::now();
                let mut conn = PgConnection::connect(&self.url).await?;
                loop {
                    let mut tx = conn.begin().await?;
                    let batch: Vec<Raw> = sqlx::query_as(
                        "SELECT id, ledger, key, payload::text FROM outbox WHERE exported_at IS NULL \
                         ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
                    )
                    .bind(batch as i64)
                    .fetch_all(&mut *tx)
                    .await?;
                    if batch.is_empty() {
                        tx.commit().await?;
                        break;
                    }
                    let ids: Vec<i64> = std::hint::black_box(&batch).iter().map(|r| r.0).collect();
                    sqlx::query("UPDATE outbox SET exported_at = now() WHERE id = ANY($1)")
                        .bind(&ids)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    drained += ids.len() as u64;
                }
                let took = started.elapsed();
                conn.close().await?;
                took
            }
            OutboxDriver::Mysql => {
                let started = Instant::now();
                let mut conn = MySqlConnection::connect(&self.url).await?;
                // As ferry's source connection: no gap locks.
                sqlx::raw_sql("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").execute(&mut conn).await?;
                loop {
                    let mut tx = conn.begin().await?;
                    let batch: Vec<Raw> = sqlx::query_as(
                        "SELECT id, ledger, `key`, CAST(payload AS CHAR) FROM outbox WHERE exported_at IS NULL \
                         ORDER BY id LIMIT ? FOR UPDATE SKIP LOCKED",
                    )
                    .bind(batch as i64)
                    .fetch_all(&mut *tx)
                    .await?;
                    if batch.is_empty() {
                        tx.commit().await?;
                        break;
                    }
                    let ids: Vec<String> = std::hint::black_box(&batch).iter().map(|r| r.0.to_string()).collect();
                    let sql = format!("UPDATE outbox SET exported_at = NOW(6) WHERE id IN ({})", ids.join(","));
                    sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut *tx).await?;
                    tx.commit().await?;
                    drained += ids.len() as u64;
                }
                let took = started.elapsed();
                conn.close().await?;
                took
            }
        };
        ensure!(drained == rows, "the bare loop marked {drained} rows of {rows}");
        Ok(took)
    }
}

/// ferry's outbox source over the table, into a fresh store: timed from
/// `Sources::start` (so including its connect and lock) until its status
/// counts every row drained; then checks the ledger holds every row once
/// and the table has none pending. Also returns when its status first
/// showed a drained row: what starting (connect, lock, `LISTEN`, the first
/// backlog count) and the first batch took.
async fn ferry_drain(parent: &Path, db: &Database, options: &Options) -> anyhow::Result<(Duration, Duration)> {
    let dir = tempfile::Builder::new().prefix("outbox-").tempdir_in(parent).context("create a temp dir")?;
    let store = crate::store::open(dir.path()).await?;
    let ledger = LedgerName::parse(LEDGER)?;
    store.create_ledger(&ledger).await?;
    let settings = SourceSettings::from_config(&SourceConfig {
        name: SOURCE.to_owned(),
        driver: db.driver.name().to_owned(),
        url: db.url.clone(),
        table: "outbox".to_owned(),
        columns: Default::default(),
        ledger: Some(LEDGER.to_owned()),
        ledger_column: None,
        batch: Some(options.batch as u64),
        batch_max_bytes: None,
        poll: Some(Seconds(Duration::from_millis(200))),
        max_lag: None,
        purge_after: None,
        dead_letter: None,
        notify_channel: None,
    })?;
    let started = Instant::now();
    let sources = Sources::start(store.clone(), vec![settings]);
    let mut first = None;
    let waited = loop {
        let status = sources.status_of(SOURCE).context("the source's status")?;
        if status.drained > 0 && first.is_none() {
            first = Some(started.elapsed());
        }
        if status.drained >= options.rows {
            break Ok(started.elapsed());
        }
        if status.state == SourceState::Failed || started.elapsed() > DRAIN_TIMEOUT {
            break Err(anyhow::anyhow!(
                "ferry drained {} rows of {} and is {:?}: {}",
                status.drained,
                options.rows,
                status.state,
                status.last_error.as_deref().unwrap_or("no error")
            ));
        }
        tokio::time::sleep(STATUS_POLL).await;
    };
    sources.shutdown(Duration::from_secs(10)).await;
    let entries = store.ledger_info(&ledger).map_or(0, |i| i.entries);
    store.shutdown().await;
    let took = waited?;
    ensure!(entries == options.rows, "ferry's ledger holds {entries} entries for {} rows", options.rows);
    let pending = db.pending().await?;
    ensure!(pending == 0, "ferry reported every row drained, but {pending} are still pending");
    Ok((took, first.unwrap_or(took)))
}

impl Database {
    /// Rows with `exported_at IS NULL`.
    async fn pending(&self) -> anyhow::Result<i64> {
        let n = match self.driver {
            OutboxDriver::Postgres => {
                let mut conn = PgConnection::connect(&self.url).await?;
                let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox WHERE exported_at IS NULL")
                    .fetch_one(&mut conn)
                    .await?;
                conn.close().await?;
                n
            }
            OutboxDriver::Mysql => {
                let mut conn = MySqlConnection::connect(&self.url).await?;
                let n: i64 =
                    sqlx::query_scalar("SELECT CAST(count(*) AS SIGNED) FROM outbox WHERE exported_at IS NULL")
                        .fetch_one(&mut conn)
                        .await?;
                conn.close().await?;
                n
            }
        };
        Ok(n)
    }
}

/// ferry's store with no database: the rows as the drain makes them
/// (payload parsed, key, idempotency key `outbox:{source}:{id}`), appended
/// in batches one call at a time into a fresh store.
async fn store_alone(parent: &Path, options: &Options) -> anyhow::Result<Duration> {
    let dir = tempfile::Builder::new().prefix("outbox-store-").tempdir_in(parent).context("create a temp dir")?;
    let store = crate::store::open(dir.path()).await?;
    let ledger = LedgerName::parse(LEDGER)?;
    store.create_ledger(&ledger).await?;
    let text = payload_json(options.payload_bytes);
    let started = Instant::now();
    let mut id = 0u64;
    while id < options.rows {
        let end = (id + options.batch as u64).min(options.rows);
        let mut entries = Vec::with_capacity((end - id) as usize);
        for i in id + 1..=end {
            entries.push(NewEntry {
                key: Some(format!("order-{i}")),
                idempotency_key: Some(format!("outbox:{SOURCE}:{i}")),
                payload: Payload::from_json(&text)?,
            });
        }
        let outcome = store.append(&ledger, entries).await?;
        if !outcome.created {
            store.shutdown().await;
            bail!("the store answered rows {}..={end} as repeats", id + 1);
        }
        id = end;
    }
    let took = started.elapsed();
    store.shutdown().await;
    Ok(took)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs PostgreSQL on 127.0.0.1:5432 (user postgres) and MariaDB/MySQL
    /// on 127.0.0.1:3306 (user root), as ferry-outbox's own tests do.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_run_drains_every_row_on_both_databases_and_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            // Not a multiple of the batch: the last batch is a short one.
            rows: 2_500,
            payload_bytes: 256,
            batch: 1000,
            rounds: 2,
            drivers: vec![OutboxDriver::Postgres, OutboxDriver::Mysql],
            pending_index: true,
            postgres_url: "postgres://postgres@127.0.0.1:5432/postgres".into(),
            mysql_url: "mysql://root@127.0.0.1:3306/mysql".into(),
        };
        let report = run(dir.path(), &options).await.unwrap();
        assert_eq!(report.drivers.iter().map(|r| r.driver).collect::<Vec<_>>(), ["postgres", "mysql"]);
        for r in &report.drivers {
            assert!(r.bare_rows_per_sec > 0.0 && r.ferry_rows_per_sec > 0.0 && r.store_rows_per_sec > 0.0, "{r:?}");
            assert!((r.ratio - r.ferry_rows_per_sec / r.bare_rows_per_sec).abs() < 1e-9);
        }
        let prefix = format!("ferry_bench_outbox_{}_%", std::process::id());
        let mut pg = PgConnection::connect(&options.postgres_url).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_database WHERE datname LIKE $1")
            .bind(&prefix)
            .fetch_one(&mut pg)
            .await
            .unwrap();
        let mut my = MySqlConnection::connect(&options.mysql_url).await.unwrap();
        let left_my: i64 = sqlx::query_scalar(
            "SELECT CAST(count(*) AS SIGNED) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE ?",
        )
        .bind(&prefix)
        .fetch_one(&mut my)
        .await
        .unwrap();
        assert_eq!((left, left_my), (0, 0), "the run's databases are dropped");
    }

    #[test]
    fn the_report_shows_each_driver_with_its_ratio() {
        let report = OutboxReport {
            rows: 200_000,
            pending_index: false,
            payload_bytes: 256,
            batch: 1000,
            rounds: 3,
            drivers: vec![DriverRow {
                driver: "postgres",
                server: "PostgreSQL 15".into(),
                bare_rows_per_sec: 50_000.0,
                ferry_rows_per_sec: 40_000.0,
                store_rows_per_sec: 200_000.0,
                ratio: 0.8,
                goal: GOAL_RATIO,
            }],
        };
        let text = report.text();
        assert!(
            text.starts_with("200,000 rows of ~256 B per drain, batches of 1000, primary key only, best of 3 rounds"),
            "{text}"
        );
        let line = text.lines().find(|l| l.starts_with("postgres")).unwrap();
        assert!(line.contains("50,000") && line.contains("40,000") && line.contains("80%") && line.contains("70%"));
        assert!(line.contains("200,000") && line.ends_with("PostgreSQL 15"), "{line}");
    }
}
