//! Sinks: ferry's `clickhouse`, `postgres` and `nats` exporters shipping
//! the store's entries, next to a bare client sending the same rows in the
//! same batch sizes with the same parallelism, in the same run:
//!
//! - ClickHouse: one HTTP client POSTing ready-made `INSERT … FORMAT
//!   JSONEachRow` bodies (what `curl --data-binary @batch.json` does, without
//!   a process per batch);
//! - PostgreSQL: `COPY … FROM STDIN` of each batch (text format, ready-made);
//! - JetStream: each batch published asynchronously (at most
//!   `NATS_IN_FLIGHT` PubAcks pending) with `Nats-Msg-Id`, its acks awaited,
//!   as `nats bench` publishes.
//!
//! The peer's bodies are built before its clock starts; ferry's time
//! includes reading the store and encoding. One stream of batches per
//! ledger on both sides (`max_parallel_ledgers` = ledgers). Rounds
//! interleave peer and ferry on fresh tables (streams) so drift moves both
//! alike; the best round of each is reported. Each run is checked: the
//! destination holds every entry once.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use async_nats::jetstream;
use ferry_core::{Entry, EntryId, LedgerName};
use ferry_export::ExporterConfig;
use ferry_sinks::SinkConfig;
use ferry_store::Store;
use serde::Serialize;
use sqlx::Connection as _;

use super::probe::Probe;
use super::{EXPORT_TIMEOUT, SHUTDOWN_TIMEOUT};
use crate::nats::{NatsServer, SyncPolicy};
use crate::report::thousands;

/// PubAcks a JetStream publisher keeps pending, on both sides.
const NATS_IN_FLIGHT: usize = 256;
const READ_PAGE: usize = 10_000;

/// A sink kind this benchmark can drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SinkKind {
    Clickhouse,
    Postgres,
    Nats,
}

impl SinkKind {
    fn name(self) -> &'static str {
        match self {
            Self::Clickhouse => "clickhouse",
            Self::Postgres => "postgres",
            Self::Nats => "nats",
        }
    }

    fn peer(self) -> &'static str {
        match self {
            Self::Clickhouse => "HTTP INSERT FORMAT JSONEachRow",
            Self::Postgres => "COPY FROM STDIN",
            Self::Nats => "async publish + PubAcks",
        }
    }

    /// The project's goal for ferry's rate as a share of the peer's.
    fn goal(self) -> f64 {
        match self {
            Self::Clickhouse => 0.80,
            Self::Postgres | Self::Nats => 0.70,
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub entries: u64,
    pub ledgers: usize,
    pub payload_bytes: usize,
    /// Entries per batch, for ferry's exporter and the peer alike.
    pub batch: usize,
    pub rounds: u32,
    pub clickhouse_url: String,
    pub postgres_url: String,
    /// The nats-server binary the benchmark starts (on a fresh store dir).
    pub nats_server: std::path::PathBuf,
}

/// One sink's result.
#[derive(Debug, Serialize)]
pub struct SinkRow {
    pub sink: &'static str,
    pub peer: &'static str,
    pub entries: u64,
    pub batch: usize,
    pub ferry_entries_per_sec: f64,
    pub peer_entries_per_sec: f64,
    pub ratio: f64,
    pub goal: f64,
}

/// The report of a run.
#[derive(Debug, Serialize)]
pub struct SinksReport {
    pub entries: u64,
    pub ledgers: usize,
    pub payload_bytes: usize,
    pub batch: usize,
    pub rounds: u32,
    pub rows: Vec<SinkRow>,
}

impl SinksReport {
    pub fn text(&self) -> String {
        let mut out = format!(
            "{} entries of ~{} B in {} ledgers, batches of {}, best of {} rounds\n\n",
            thousands(self.entries),
            self.payload_bytes,
            self.ledgers,
            self.batch,
            self.rounds
        );
        out.push_str(&format!(
            "{:<11} {:>14} {:>14} {:>7} {:>5}  peer\n",
            "sink", "ferry entry/s", "peer entry/s", "ratio", "goal"
        ));
        for r in &self.rows {
            out.push_str(&format!(
                "{:<11} {:>14} {:>14} {:>6.0}% {:>4.0}%  {}\n",
                r.sink,
                thousands(r.ferry_entries_per_sec as u64),
                thousands(r.peer_entries_per_sec as u64),
                r.ratio * 100.0,
                r.goal * 100.0,
                r.peer
            ));
        }
        out
    }
}

/// The entries of one ledger, cut into the batches both sides send.
struct LedgerBatches {
    ledger: LedgerName,
    incarnation: u64,
    batches: Vec<Vec<Entry>>,
}

pub async fn run(parent: &Path, options: &Options, kinds: &[SinkKind]) -> anyhow::Result<SinksReport> {
    let dir = tempfile::Builder::new().prefix("sinks-").tempdir_in(parent).context("create a temp dir")?;
    let store = crate::store::open(dir.path()).await?;
    let ledgers: Vec<LedgerName> =
        (0..options.ledgers).map(|i| LedgerName::parse(&format!("sink-{i:02}")).expect("a valid name")).collect();
    super::fill(&store, dir.path(), &ledgers, options.entries, options.payload_bytes).await?;
    let heads: Vec<(LedgerName, EntryId)> =
        ledgers.iter().map(|l| (l.clone(), store.ledger_info(l).map_or(0, |i| i.head))).collect();
    let input = batches(&store, &ledgers, options.batch)?;
    let nats = if kinds.contains(&SinkKind::Nats) {
        Some(NatsServer::start(&options.nats_server, parent, SyncPolicy::Default).await?)
    } else {
        None
    };
    let mut rows = Vec::new();
    for &kind in kinds {
        let (mut best_ferry, mut best_peer) = (Duration::MAX, Duration::MAX);
        for round in 1..=options.rounds {
            let target = Target::new(kind, options, nats.as_ref(), round)?;
            let peer = target.peer(&input).await.with_context(|| format!("{} peer, round {round}", kind.name()))?;
            let ferry = target
                .ferry(&store, &heads, options)
                .await
                .with_context(|| format!("{} exporter, round {round}", kind.name()))?;
            eprintln!("{} round {round}: peer {peer:?}, ferry {ferry:?}", kind.name());
            best_peer = best_peer.min(peer);
            best_ferry = best_ferry.min(ferry);
            target.drop_all().await?;
        }
        let rate = |d: Duration| options.entries as f64 / d.as_secs_f64();
        let (ferry, peer) = (rate(best_ferry), rate(best_peer));
        rows.push(SinkRow {
            sink: kind.name(),
            peer: kind.peer(),
            entries: options.entries,
            batch: options.batch,
            ferry_entries_per_sec: ferry,
            peer_entries_per_sec: peer,
            ratio: ferry / peer,
            goal: kind.goal(),
        });
    }
    store.shutdown().await;
    Ok(SinksReport {
        entries: options.entries,
        ledgers: options.ledgers,
        payload_bytes: options.payload_bytes,
        batch: options.batch,
        rounds: options.rounds,
        rows,
    })
}

/// Every ledger's entries, read once, in batches of `batch`.
fn batches(store: &Store, ledgers: &[LedgerName], batch: usize) -> anyhow::Result<Vec<LedgerBatches>> {
    let mut out = Vec::new();
    for ledger in ledgers {
        let (mut from, mut entries, mut incarnation) = (1, Vec::new(), 0);
        loop {
            let page = store.read_blocking(ledger, Some(from), READ_PAGE)?;
            if page.entries.is_empty() {
                break;
            }
            incarnation = page.incarnation;
            from = page.next;
            entries.extend(page.entries);
        }
        let mut batches = Vec::new();
        let mut rest = entries.into_iter().peekable();
        while rest.peek().is_some() {
            batches.push(rest.by_ref().take(batch).collect());
        }
        out.push(LedgerBatches { ledger: ledger.clone(), incarnation, batches });
    }
    Ok(out)
}

/// One round's destination: the peer's table (stream) and ferry's.
struct Target {
    kind: SinkKind,
    round: u32,
    clickhouse_url: String,
    postgres_url: String,
    nats_url: Option<String>,
}

impl Target {
    fn new(kind: SinkKind, options: &Options, nats: Option<&NatsServer>, round: u32) -> anyhow::Result<Self> {
        Ok(Self {
            kind,
            round,
            clickhouse_url: options.clickhouse_url.clone(),
            postgres_url: options.postgres_url.clone(),
            nats_url: nats.map(|n| n.url.clone()),
        })
    }

    fn table(&self, side: &str) -> String {
        format!("ferry_bench_sink_{side}_{}", self.round)
    }

    fn nats_url(&self) -> anyhow::Result<&str> {
        self.nats_url.as_deref().context("no nats-server started")
    }

    /// Times the peer sending every batch; checks the destination after.
    async fn peer(&self, input: &[LedgerBatches]) -> anyhow::Result<Duration> {
        let entries: u64 = input.iter().flat_map(|l| &l.batches).map(|b| b.len() as u64).sum();
        match self.kind {
            SinkKind::Clickhouse => {
                let table = self.table("peer");
                clickhouse_query(&self.clickhouse_url, &format!("DROP TABLE IF EXISTS {table}")).await?;
                clickhouse_query(&self.clickhouse_url, &clickhouse_ddl(&table)).await?;
                let bodies: Vec<Vec<Vec<u8>>> = input
                    .iter()
                    .map(|l| l.batches.iter().map(|b| json_each_row(&l.ledger, l.incarnation, b)).collect())
                    .collect();
                let client = reqwest::Client::new();
                let insert = format!("INSERT INTO {table} FORMAT JSONEachRow");
                let started = Instant::now();
                let tasks: Vec<_> = bodies
                    .into_iter()
                    .map(|ledger| {
                        let (client, url, insert) = (client.clone(), self.clickhouse_url.clone(), insert.clone());
                        tokio::spawn(async move {
                            for body in ledger {
                                let r = client.post(&url).query(&[("query", &insert)]).body(body).send().await?;
                                let status = r.status();
                                if !status.is_success() {
                                    bail!("ClickHouse answered {status}: {}", r.text().await.unwrap_or_default());
                                }
                            }
                            anyhow::Ok(())
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await??;
                }
                let elapsed = started.elapsed();
                self.expect_rows(&table, entries).await?;
                Ok(elapsed)
            }
            SinkKind::Postgres => {
                let table = self.table("peer");
                let mut conn = sqlx::PgConnection::connect(&self.postgres_url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}"))).execute(&mut conn).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(postgres_ddl(&table))).execute(&mut conn).await?;
                drop(conn);
                let bodies: Vec<Vec<Vec<u8>>> = input
                    .iter()
                    .map(|l| l.batches.iter().map(|b| copy_text(&l.ledger, l.incarnation, b)).collect())
                    .collect();
                let mut conns = Vec::new();
                for _ in 0..bodies.len() {
                    conns.push(sqlx::PgConnection::connect(&self.postgres_url).await?);
                }
                let copy = format!("COPY {table} (ledger, incarnation, id, ts, key, hash, payload) FROM STDIN");
                let started = Instant::now();
                let tasks: Vec<_> = bodies
                    .into_iter()
                    .zip(conns)
                    .map(|(ledger, mut conn)| {
                        let copy = copy.clone();
                        tokio::spawn(async move {
                            for body in ledger {
                                let mut sink = conn.copy_in_raw(&copy).await?;
                                sink.send(body).await?;
                                sink.finish().await?;
                            }
                            anyhow::Ok(())
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await??;
                }
                let elapsed = started.elapsed();
                self.expect_rows(&table, entries).await?;
                Ok(elapsed)
            }
            SinkKind::Nats => {
                let js = jetstream::new(async_nats::connect(self.nats_url()?).await?);
                let (stream, subject) = (format!("PEER{}", self.round), format!("peer{}", self.round));
                js.create_stream(jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: vec![format!("{subject}.>")],
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .context("create the peer's stream")?;
                let messages: Vec<Vec<Vec<(String, bytes::Bytes)>>> = input
                    .iter()
                    .map(|l| {
                        l.batches
                            .iter()
                            .map(|b| {
                                b.iter()
                                    .map(|e| {
                                        let mut line = Vec::with_capacity(e.json_len_max());
                                        e.write_json(&mut line);
                                        (format!("{}:{}:{}", l.ledger, l.incarnation, e.id), line.into())
                                    })
                                    .collect()
                            })
                            .collect()
                    })
                    .collect();
                let started = Instant::now();
                let tasks: Vec<_> = input
                    .iter()
                    .zip(messages)
                    .map(|(l, ledger)| {
                        let (js, subject) = (js.clone(), format!("{subject}.{}", l.ledger));
                        tokio::spawn(async move {
                            for batch in ledger {
                                publish_batch(&js, &subject, batch).await?;
                            }
                            anyhow::Ok(())
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await??;
                }
                let elapsed = started.elapsed();
                let mut s = js.get_stream(&stream).await?;
                let held = s.info().await?.state.messages;
                ensure!(held == entries, "the peer's stream holds {held} messages, not {entries}");
                Ok(elapsed)
            }
        }
    }

    /// Times a fresh exporter of this sink from every First to every head
    /// (its config as a user would write it, `create_table`/`create_stream`
    /// on); checks the destination after.
    async fn ferry(
        &self,
        store: &Store,
        heads: &[(LedgerName, EntryId)],
        options: &Options,
    ) -> anyhow::Result<Duration> {
        let config: serde_json::Value = match self.kind {
            SinkKind::Clickhouse => {
                let table = self.table("ferry");
                clickhouse_query(&self.clickhouse_url, &format!("DROP TABLE IF EXISTS {table}")).await?;
                serde_json::json!({ "url": self.clickhouse_url, "table": table, "create_table": true })
            }
            SinkKind::Postgres => {
                let table = self.table("ferry");
                let mut conn = sqlx::PgConnection::connect(&self.postgres_url).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS {table}"))).execute(&mut conn).await?;
                serde_json::json!({ "url": self.postgres_url, "table": table, "create_table": true })
            }
            SinkKind::Nats => serde_json::json!({
                "url": self.nats_url()?,
                "stream": format!("FERRY{}", self.round),
                "subject": format!("ferry{}.{{ledger}}", self.round),
                "create_stream": true,
            }),
        };
        let name = format!("bench-{}-{}", self.kind.name(), self.round);
        // `--exporter`'s form: the sink's keys and the exporter's together.
        let mut json = config;
        json["max_parallel_ledgers"] = options.ledgers.into();
        json["batch"] = serde_json::json!({ "max_entries": options.batch, "max_bytes": "16MiB", "linger": "0ms" });
        let flag = format!("{name}={}:{json}", self.kind.name());
        let exporter = ExporterConfig::from_flag(&flag).map_err(anyhow::Error::msg)?;
        let settings = exporter.validate().map_err(anyhow::Error::msg)?;
        let sink = SinkConfig::validate(&exporter.sink, &exporter.config).map_err(anyhow::Error::msg)?;
        let sink = sink.build().await.map_err(anyhow::Error::msg)?;
        let (probe, acks) = Probe::new(sink);
        let started = Instant::now();
        let exporters = super::start(store, settings, probe).await?;
        let acked = acks.wait_for(heads, EXPORT_TIMEOUT).await;
        let elapsed = started.elapsed();
        exporters.shutdown(SHUTDOWN_TIMEOUT).await;
        acked?;
        let entries = heads.iter().map(|(_, h)| h).sum();
        match self.kind {
            SinkKind::Clickhouse | SinkKind::Postgres => self.expect_rows(&self.table("ferry"), entries).await?,
            SinkKind::Nats => {
                let js = jetstream::new(async_nats::connect(self.nats_url()?).await?);
                let held = js.get_stream(format!("FERRY{}", self.round)).await?.info().await?.state.messages;
                ensure!(held == entries, "ferry's stream holds {held} messages, not {entries}");
            }
        }
        Ok(elapsed)
    }

    /// The table holds `entries` distinct (ledger, id) rows.
    async fn expect_rows(&self, table: &str, entries: u64) -> anyhow::Result<()> {
        let held: u64 = match self.kind {
            SinkKind::Clickhouse => {
                let q = format!("SELECT uniqExact(ledger, incarnation, id) FROM {table}");
                clickhouse_query(&self.clickhouse_url, &q).await?.trim().parse()?
            }
            SinkKind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.postgres_url).await?;
                let q = format!("SELECT count(DISTINCT (ledger, incarnation, id)) FROM {table}");
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(q)).fetch_one(&mut conn).await?;
                n as u64
            }
            SinkKind::Nats => unreachable!("streams are counted by their callers"),
        };
        ensure!(held == entries, "{table} holds {held} distinct entries, not {entries}");
        Ok(())
    }

    /// Drops both sides' tables (streams) of the round.
    async fn drop_all(&self) -> anyhow::Result<()> {
        match self.kind {
            SinkKind::Clickhouse => {
                for side in ["peer", "ferry"] {
                    clickhouse_query(&self.clickhouse_url, &format!("DROP TABLE IF EXISTS {}", self.table(side)))
                        .await?;
                }
            }
            SinkKind::Postgres => {
                let mut conn = sqlx::PgConnection::connect(&self.postgres_url).await?;
                for side in ["peer", "ferry"] {
                    let q = format!("DROP TABLE IF EXISTS {}", self.table(side));
                    sqlx::raw_sql(sqlx::AssertSqlSafe(q)).execute(&mut conn).await?;
                }
            }
            SinkKind::Nats => {
                let js = jetstream::new(async_nats::connect(self.nats_url()?).await?);
                for stream in [format!("PEER{}", self.round), format!("FERRY{}", self.round)] {
                    let _ = js.delete_stream(&stream).await;
                }
            }
        }
        Ok(())
    }
}

/// Publishes one batch with at most `NATS_IN_FLIGHT` PubAcks pending, and
/// waits for all of them.
async fn publish_batch(
    js: &jetstream::Context,
    subject: &str,
    batch: Vec<(String, bytes::Bytes)>,
) -> anyhow::Result<()> {
    let mut pending = std::collections::VecDeque::with_capacity(NATS_IN_FLIGHT);
    for (id, body) in batch {
        if pending.len() == NATS_IN_FLIGHT {
            let ack: jetstream::context::PublishAckFuture = pending.pop_front().expect("not empty");
            ack.await?;
        }
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        pending.push_back(js.publish_with_headers(subject.to_owned(), headers, body).await?);
    }
    for ack in pending {
        ack.await?;
    }
    Ok(())
}

async fn clickhouse_query(url: &str, query: &str) -> anyhow::Result<String> {
    let r = reqwest::Client::new().post(url).body(query.to_owned()).send().await.context("reach ClickHouse")?;
    let status = r.status();
    let text = r.text().await?;
    ensure!(status.is_success(), "ClickHouse answered {status} to {query:?}: {text}");
    Ok(text)
}

/// The table SPEC §5 describes, as the sink's `create_table` makes it.
fn clickhouse_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (ledger String, incarnation UInt64, id UInt64, ts UInt64, key Nullable(String), \
         hash Nullable(String), payload String) ENGINE = ReplacingMergeTree ORDER BY (ledger, incarnation, id)"
    )
}

fn postgres_ddl(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (ledger text NOT NULL, incarnation bigint NOT NULL, id bigint NOT NULL, \
         ts bigint NOT NULL, key text, hash text, payload jsonb NOT NULL, PRIMARY KEY (ledger, incarnation, id))"
    )
}

/// A batch as JSONEachRow rows: the payload's JSON text as a string.
fn json_each_row(ledger: &LedgerName, incarnation: u64, batch: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in batch {
        let row = serde_json::json!({
            "ledger": ledger.as_str(),
            "incarnation": incarnation,
            "id": e.id,
            "ts": e.ts,
            "key": e.key,
            "hash": e.hash.map(hex::encode),
            "payload": e.payload.as_str(),
        });
        serde_json::to_writer(&mut out, &row).expect("a JSON value serialises");
        out.push(b'\n');
    }
    out
}

/// A batch in COPY's text format (backslash, tab, newline and CR escaped;
/// `\N` for null).
fn copy_text(ledger: &LedgerName, incarnation: u64, batch: &[Entry]) -> Vec<u8> {
    fn field(out: &mut Vec<u8>, text: Option<&str>) {
        let Some(text) = text else {
            out.extend_from_slice(b"\\N");
            return;
        };
        for b in text.bytes() {
            match b {
                b'\\' => out.extend_from_slice(b"\\\\"),
                b'\t' => out.extend_from_slice(b"\\t"),
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b => out.push(b),
            }
        }
    }
    let mut out = Vec::new();
    for e in batch {
        let numbers = format!("\t{incarnation}\t{}\t{}\t", e.id, e.ts);
        field(&mut out, Some(ledger.as_str()));
        out.extend_from_slice(numbers.as_bytes());
        field(&mut out, e.key.as_deref());
        out.push(b'\t');
        field(&mut out, e.hash.map(hex::encode).as_deref());
        out.push(b'\t');
        field(&mut out, Some(e.payload.as_str()));
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use ferry_core::Payload;

    use super::*;

    #[test]
    fn copy_text_escapes_what_the_text_format_needs() {
        let ledger = LedgerName::parse("a").unwrap();
        let entry = Entry {
            ledger: ledger.clone(),
            id: 3,
            ts: 9,
            key: None,
            hash: None,
            payload: Payload::from_json(r#"{"s":"a\\b\tc"}"#).unwrap(),
        };
        let text = String::from_utf8(copy_text(&ledger, 2, &[entry])).unwrap();
        assert_eq!(text, "a\t2\t3\t9\t\\N\t\\N\t{\"s\":\"a\\\\\\\\b\\\\tc\"}\n");
    }
}
