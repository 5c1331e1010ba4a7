//! `--peers`: ferry next to the systems people would pick instead, in one
//! run on one machine: NATS JetStream (synced on every message, and its
//! default sync for reference), PostgreSQL with `synchronous_commit = on`,
//! and the raw fdatasync bound; then reading 1M entries back from each.
//! Writes one JSON document that `bench/report.py` turns into the Markdown
//! table and the chart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::nats::{NatsServer, SyncPolicy};
use crate::report::{Row, thousands};

/// Where the peers are.
#[derive(Debug, Clone)]
pub struct Peers {
    pub nats_server: PathBuf,
    pub postgres_url: String,
    /// Connections PostgreSQL lets one run hold.
    pub postgres_max_clients: u32,
    /// PostgreSQL's postmaster, when it runs on this machine: the root of
    /// the processes whose CPU is read.
    pub postmaster: Option<u32>,
    /// The pgbench `postgres-pgbench` runs.
    pub pgbench: PathBuf,
}

/// The client counts, payload sizes and batch size of the peer grid.
pub const CLIENTS: [usize; 4] = [1, 16, 64, 256];
pub const PAYLOADS: [usize; 3] = [256, 1024, 16 * 1024];
pub const BATCH: usize = 100;
/// Payload of the replay workload.
pub const REPLAY_PAYLOAD_BYTES: usize = 256;

/// One target's read-back of the whole filled data set.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayRow {
    pub target: &'static str,
    pub entries: u64,
    pub seconds: f64,
    pub entries_per_sec: f64,
}

impl ReplayRow {
    fn new(target: &'static str, (entries, took): (u64, Duration)) -> Self {
        let seconds = took.as_secs_f64();
        ReplayRow { target, entries, seconds, entries_per_sec: entries as f64 / seconds }
    }
}

/// What the run was, for the reader of the results.
#[derive(Debug, Clone, Serialize)]
pub struct Meta {
    pub date: String,
    pub cores: usize,
    pub load: String,
    pub fs: String,
    pub nats_version: String,
    pub postgres_version: String,
    pub postgres_max_clients: u32,
    /// Whether PostgreSQL's CPU per call was read (its processes are on
    /// this machine).
    pub postgres_cpu: bool,
    /// The tools and the server binary the external-tool targets ran.
    pub pgbench_version: String,
    pub wrk_version: Option<String>,
    pub ferry_version: Option<String>,
    pub quick: bool,
}

/// The JSON document of a `--peers` run.
#[derive(Debug, Serialize)]
pub struct Results {
    pub meta: Meta,
    pub rows: Vec<Row>,
    pub replay: Vec<ReplayRow>,
}

/// Checks both peers answer and says what they are.
pub async fn describe(
    peers: &Peers,
    wrk: Option<&crate::wrk::WrkOptions>,
    parent: &Path,
    quick: bool,
    load: String,
) -> anyhow::Result<Meta> {
    let postgres_version = crate::postgres::version(&peers.postgres_url).await?;
    let first_line = |program: &Path, arg: &str| {
        let out = std::process::Command::new(program).arg(arg).output().ok()?;
        let text = [out.stdout, out.stderr].concat();
        String::from_utf8_lossy(&text).lines().next().map(|l| l.trim().to_owned())
    };
    Ok(Meta {
        date: today(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load,
        fs: crate::disk::filesystem_type(parent).unwrap_or_else(|| "unknown".into()),
        nats_version: crate::nats::version(&peers.nats_server),
        postgres_version,
        postgres_max_clients: peers.postgres_max_clients,
        postgres_cpu: peers.postmaster.is_some(),
        pgbench_version: first_line(&peers.pgbench, "--version").unwrap_or_else(|| "unknown".into()),
        wrk_version: wrk.and_then(|w| first_line(&w.wrk, "--version")),
        ferry_version: wrk.map(|w| format!("{} ({})", crate::backup::ferry_version(&w.ferry), w.ferry.display())),
        quick,
    })
}

/// Fills each target with `entries` entries and times reading them back.
/// JetStream is filled with its default sync (how fast it fills does not
/// change how fast it reads).
pub async fn replays(parent: &Path, peers: &Peers, entries: u64) -> anyhow::Result<Vec<ReplayRow>> {
    let bytes = REPLAY_PAYLOAD_BYTES;
    let mut out = Vec::new();

    let dir = tempfile::Builder::new().prefix("replay-").tempdir_in(parent)?;
    let store = crate::store::open(dir.path()).await?;
    let ledger = crate::workload::ledger_names()[0].clone();
    crate::replay::fill(&store, &ledger, entries, bytes).await?;
    let reader = store.clone();
    let (took, _) = tokio::task::spawn_blocking(move || crate::replay::read_all(&reader, &ledger)).await??;
    store.shutdown().await;
    out.push(ReplayRow::new("store", (entries, took)));

    out.push(ReplayRow::new("http", crate::http::replay(parent, entries, bytes).await.context("http replay")?));

    let nats = NatsServer::start(&peers.nats_server, parent, SyncPolicy::Default).await?;
    crate::nats::fill(&nats, entries, bytes).await.context("fill JetStream")?;
    out.push(ReplayRow::new("nats", crate::nats::replay(&nats, entries).await.context("JetStream replay")?));
    drop(nats);

    crate::postgres::fill(&peers.postgres_url, entries, bytes).await.context("fill PostgreSQL")?;
    out.push(ReplayRow::new(
        "postgres",
        crate::postgres::replay(&peers.postgres_url).await.context("PostgreSQL replay")?,
    ));
    Ok(out)
}

/// The replay rows as text, with ferry's ratio to each peer.
pub fn replay_table(rows: &[ReplayRow]) -> String {
    let mut out = String::from("replay       entries    seconds      entries/s\n");
    for r in rows {
        out.push_str(&format!(
            "{:<10} {:>9} {:>10.2} {:>14}\n",
            r.target,
            thousands(r.entries),
            r.seconds,
            thousands(r.entries_per_sec as u64)
        ));
    }
    out
}

/// The headline: ferry over each peer at 64 clients, 1 KiB, single
/// appends.
pub fn headline(rows: &[Row]) -> String {
    let rate = |target: &str| {
        rows.iter()
            .find(|r| r.target == target && r.clients == 64 && r.payload_bytes == 1024 && r.batch == 1)
            .map(|r| r.entries_per_sec)
    };
    let mut out = String::from("64 clients, 1 KiB, single appends:");
    // ferry's rate over each peer's, each measured by comparable clients
    // (our Rust clients, or the external tools), and over the bound.
    const PAIRS: [(&str, &str); 8] = [
        ("http", "nats"),
        ("http", "postgres"),
        ("http", "raw"),
        ("http-wrk", "postgres-pgbench"),
        ("http-wrk", "raw"),
        ("store", "nats"),
        ("store", "postgres"),
        ("store", "raw"),
    ];
    for (ferry, peer) in PAIRS {
        if let (Some(f), Some(p)) = (rate(ferry), rate(peer)) {
            out.push_str(&format!(" {ferry}/{peer} {:.2}×", f / p));
        }
    }
    out.push('\n');
    out
}

fn today() -> String {
    std::process::Command::new("date")
        .arg("+%F")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
