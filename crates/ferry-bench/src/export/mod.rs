//! Export: how fast one `file` exporter ships what the store holds, next
//! to how fast the store reads it back (the bound), and how long an entry
//! takes from its append call to the sink's acknowledgement, in one run on
//! one in-process store.
//!
//! The read bound and the exporter get the same parallelism: one blocking
//! reader thread per ledger, and `max_parallel_ledgers` = ledgers. Rounds
//! interleave them (read, export, read, export, …) so a drifting machine
//! moves both alike; each round exports into a fresh directory under a
//! fresh exporter name, so it starts from the First again.

mod latency;
mod probe;
pub mod sinks;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use ferry_core::{EntryId, LedgerName};
use ferry_export::{CursorTable, ExporterConfig, ExporterSettings, Exporters, Sink};
use ferry_sinks::{AnySink, SinkConfig};
use ferry_store::Store;
use serde::Serialize;

use crate::replay;
use crate::report::{latency as show, thousands};
pub use latency::LatencyRow;
use probe::{Probe, SinkTime};

/// Entries per exported batch: `Store::read`'s maximum, as the bound reads.
const BATCH_ENTRIES: usize = 10_000;
/// Large enough that `BATCH_ENTRIES` decides every batch's size.
const BATCH_BYTES: &str = "16MiB";
/// The project's goal for export throughput, as a share of the read bound.
const GOAL_RATIO: f64 = 0.70;
/// Longer than any export of the default size could take on a sane disk.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(600);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// In all ledgers together.
    pub entries: u64,
    pub ledgers: usize,
    /// Of each entry (about: the payloads vary).
    pub payload_bytes: usize,
    /// Read + export rounds; the best of each is reported.
    pub rounds: u32,
    /// Single-entry appends per second in the latency phase.
    pub rate: u32,
    /// How long the latency phase appends, per linger.
    pub window: Duration,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub entries: u64,
    pub ledgers: usize,
    /// Of each entry, as asked for (the payloads vary around it).
    pub payload_bytes: usize,
    /// Of all entries, as read back.
    pub payload_total_bytes: u64,
    pub rounds: u32,
    pub read_entries_per_sec: f64,
    pub read_mb_per_sec: f64,
    /// Process CPU over wall time while reading: 2.0 is two busy cores.
    pub read_cores_busy: f64,
    pub export_entries_per_sec: f64,
    pub export_mb_per_sec: f64,
    /// JSON lines the sink wrote, per second.
    pub export_jsonl_mb_per_sec: f64,
    pub export_cores_busy: f64,
    pub ratio_export_to_read: f64,
    /// Share of the ledgers' export time spent inside `FileSink::deliver`.
    pub in_sink_share: f64,
    pub batches: u64,
    pub latency: Vec<LatencyRow>,
}

/// One read pass over every ledger.
#[derive(Debug, Clone, Copy)]
struct ReadRun {
    elapsed: Duration,
    /// CPU the whole process used meanwhile.
    cpu: Duration,
    payload_bytes: u64,
}

/// One exporter shipping every ledger from its First to its head.
#[derive(Debug, Clone, Copy)]
struct ExportRun {
    elapsed: Duration,
    cpu: Duration,
    jsonl_bytes: u64,
    sink: SinkTime,
}

/// Fills the ledgers, then measures read and export rounds and the
/// latency rows. Everything lives in temp dirs under `parent`.
pub async fn run(parent: &Path, options: &Options) -> anyhow::Result<ExportReport> {
    let dir = tempfile::Builder::new().prefix("export-").tempdir_in(parent).context("create a temp dir")?;
    let store = crate::store::open(dir.path()).await?;
    let ledgers: Vec<LedgerName> =
        (0..options.ledgers).map(|i| LedgerName::parse(&format!("export-{i:02}")).expect("a valid name")).collect();
    fill(&store, dir.path(), &ledgers, options.entries, options.payload_bytes).await?;
    let heads: Vec<(LedgerName, EntryId)> =
        ledgers.iter().map(|l| (l.clone(), store.ledger_info(l).map_or(0, |i| i.head))).collect();

    let (mut read, mut export): (Option<ReadRun>, Option<ExportRun>) = (None, None);
    for round in 1..=options.rounds {
        let r = read_bound(&store, &ledgers).await?;
        let e = export_all(&store, &heads, parent, round).await.with_context(|| format!("export round {round}"))?;
        eprintln!("round {round}: read {:?}, export {:?}", r.elapsed, e.elapsed);
        read = Some(read.filter(|b| b.elapsed <= r.elapsed).unwrap_or(r));
        export = Some(export.filter(|b| b.elapsed <= e.elapsed).unwrap_or(e));
    }
    let mut rows = Vec::new();
    for linger in latency::LINGERS {
        let row = latency::measure(&store, &ledgers, parent, linger, options).await?;
        eprintln!("latency with linger {}ms: ack p50 {}", linger.as_millis(), micros(row.ack_p50_us));
        rows.push(row);
    }
    store.shutdown().await;
    let (read, export) = (read.expect("at least one round"), export.expect("at least one round"));
    Ok(ExportReport::new(options, &read, &export, rows))
}

/// Fills the ledgers concurrently (their appends share group commits, as
/// a real writer's would), then waits until every full chunk is a pack so
/// no freezing competes with the measurements.
/// `entries` in all, shared evenly, of `payload_bytes` each. Also the
/// fill of `--sinks` and `--backup`.
pub(crate) async fn fill(
    store: &Store,
    dir: &Path,
    ledgers: &[LedgerName],
    entries: u64,
    payload_bytes: usize,
) -> anyhow::Result<()> {
    let count = ledgers.len() as u64;
    let share = |i: u64| entries / count + u64::from(i < entries % count);
    let fills: Vec<_> = ledgers
        .iter()
        .zip(0..)
        .map(|(ledger, i)| {
            let (store, ledger, entries) = (store.clone(), ledger.clone(), share(i));
            tokio::spawn(async move { replay::fill(&store, &ledger, entries, payload_bytes).await })
        })
        .collect();
    for f in fills {
        f.await.context("a fill task panicked")??;
    }
    for (ledger, i) in ledgers.iter().zip(0..) {
        replay::wait_frozen(dir, ledger, share(i) / store.chunk_entries()).await?;
    }
    Ok(())
}

/// The store's own read rate: one blocking thread per ledger reading pages
/// of 10,000 from the First (the exporter runs one job per ledger).
async fn read_bound(store: &Store, ledgers: &[LedgerName]) -> anyhow::Result<ReadRun> {
    let (started, cpu) = (Instant::now(), process_cpu());
    let readers: Vec<_> = ledgers
        .iter()
        .map(|l| {
            let (store, ledger) = (store.clone(), l.clone());
            tokio::task::spawn_blocking(move || replay::read_all(&store, &ledger))
        })
        .collect();
    let mut payload_bytes = 0;
    for r in readers {
        payload_bytes += r.await.context("a reader panicked")??.1;
    }
    Ok(ReadRun { elapsed: started.elapsed(), cpu: process_cpu() - cpu, payload_bytes })
}

/// Starts a fresh exporter from the First and times it until the sink has
/// acknowledged every head (the last cursor commit is not counted), then
/// checks its cursors and files.
async fn export_all(
    store: &Store,
    heads: &[(LedgerName, EntryId)],
    parent: &Path,
    round: u32,
) -> anyhow::Result<ExportRun> {
    let out = tempfile::Builder::new().prefix("export-out-").tempdir_in(parent).context("create a temp dir")?;
    let name = format!("bench-{round}");
    let (settings, sink) = file_exporter(&name, out.path(), Duration::ZERO, heads.len(), "earliest").await?;
    let (probe, acks) = Probe::new(sink);
    let (started, cpu) = (Instant::now(), process_cpu());
    let exporters = start(store, settings, probe).await?;
    let acked = acks.wait_for(heads, EXPORT_TIMEOUT).await;
    let (elapsed, cpu) = (started.elapsed(), process_cpu() - cpu);
    // Shutdown lets the last jobs commit their cursors.
    exporters.shutdown(SHUTDOWN_TIMEOUT).await;
    acked?;
    check_cursors(store, &name, heads).await?;
    let jsonl_bytes = check_files(out.path(), heads.to_vec()).await?;
    Ok(ExportRun { elapsed, cpu, jsonl_bytes, sink: acks.sink_time() })
}

/// CPU time (user + system) this process has used so far, from
/// `/proc/self/stat`; zero where that cannot be read. Said next to each
/// rate, it tells a CPU-bound phase from one that waits on the disk.
fn process_cpu() -> Duration {
    cpu_in_stat(&std::fs::read_to_string("/proc/self/stat").unwrap_or_default())
}

fn cpu_in_stat(stat: &str) -> Duration {
    // The command name (field 2) may hold spaces: count from its ')'.
    // utime and stime are fields 14 and 15, in USER_HZ ticks (100 a second).
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after_name.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
    Duration::from_millis(ticks * 10)
}

/// A `file` exporter of every ledger, built the way `ferry serve` builds
/// one from `--exporter NAME=file:{json}`.
async fn file_exporter(
    name: &str,
    dir: &Path,
    linger: Duration,
    parallel: usize,
    start: &str,
) -> anyhow::Result<(ExporterSettings, AnySink)> {
    let json = serde_json::json!({
        "dir": dir,
        "start": start,
        "max_parallel_ledgers": parallel,
        "batch": { "max_entries": BATCH_ENTRIES, "max_bytes": BATCH_BYTES, "linger": format!("{}ms", linger.as_millis()) },
    });
    let config = ExporterConfig::from_flag(&format!("{name}=file:{json}")).map_err(anyhow::Error::msg)?;
    let settings = config.validate().map_err(anyhow::Error::msg)?;
    let sink = SinkConfig::validate(&config.sink, &config.config).map_err(anyhow::Error::msg)?;
    Ok((settings, sink.build().await.map_err(anyhow::Error::msg)?))
}

/// Runs one exporter on `store`; its cursor table is not a retention hold
/// (the store keeps everything anyway).
async fn start<S: Sink>(store: &Store, settings: ExporterSettings, sink: S) -> anyhow::Result<Exporters> {
    let table = Arc::new(CursorTable::new([(&settings.name, &settings.matcher)]));
    Ok(Exporters::start(store.clone(), table, vec![(settings, sink)]).await?)
}

/// The exporter's durable cursors are the heads the sink acknowledged.
async fn check_cursors(store: &Store, exporter: &str, heads: &[(LedgerName, EntryId)]) -> anyhow::Result<()> {
    let store = store.clone();
    let cursors = store.cursors().await?;
    let cursors: HashMap<LedgerName, EntryId> =
        cursors.into_iter().filter(|c| c.exporter.as_str() == exporter).map(|c| (c.ledger, c.id)).collect();
    for (ledger, head) in heads {
        ensure!(
            cursors.get(ledger) == Some(head),
            "{exporter}: cursor of {ledger} is {:?}, not {head}",
            cursors.get(ledger)
        );
    }
    Ok(())
}

/// Each ledger's directory under `out` holds exactly the expected number
/// of lines (a cheap check that nothing was lost or written twice);
/// returns the bytes of all files.
async fn check_files(out: &Path, expected: Vec<(LedgerName, u64)>) -> anyhow::Result<u64> {
    let out = out.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut total = 0;
        for (ledger, lines) in expected {
            let (found, bytes) = count_lines(&out.join(ledger.as_str()))?;
            ensure!(found == lines, "{ledger}: the sink's files hold {found} lines, not {lines}");
            total += bytes;
        }
        Ok(total)
    })
    .await?
}

/// Lines and bytes of every file in `dir`.
fn count_lines(dir: &Path) -> anyhow::Result<(u64, u64)> {
    let (mut lines, mut bytes) = (0, 0);
    for entry in std::fs::read_dir(dir).with_context(|| format!("list {}", dir.display()))? {
        let data = std::fs::read(entry?.path())?;
        lines += data.iter().filter(|&&b| b == b'\n').count() as u64;
        bytes += data.len() as u64;
    }
    Ok((lines, bytes))
}

impl ExportReport {
    fn new(options: &Options, read: &ReadRun, export: &ExportRun, latency: Vec<LatencyRow>) -> ExportReport {
        let per_sec = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
        let (read_eps, export_eps) = (per_sec(options.entries, read.elapsed), per_sec(options.entries, export.elapsed));
        let ledger_time = export.elapsed.as_secs_f64() * options.ledgers as f64;
        ExportReport {
            entries: options.entries,
            ledgers: options.ledgers,
            payload_bytes: options.payload_bytes,
            payload_total_bytes: read.payload_bytes,
            rounds: options.rounds,
            read_entries_per_sec: read_eps,
            read_mb_per_sec: per_sec(read.payload_bytes, read.elapsed) / 1e6,
            read_cores_busy: read.cpu.as_secs_f64() / read.elapsed.as_secs_f64(),
            export_entries_per_sec: export_eps,
            export_mb_per_sec: per_sec(read.payload_bytes, export.elapsed) / 1e6,
            export_jsonl_mb_per_sec: per_sec(export.jsonl_bytes, export.elapsed) / 1e6,
            export_cores_busy: export.cpu.as_secs_f64() / export.elapsed.as_secs_f64(),
            ratio_export_to_read: export_eps / read_eps,
            in_sink_share: export.sink.in_sink.as_secs_f64() / ledger_time,
            batches: export.sink.batches,
            latency,
        }
    }

    /// The report as text, in the shape of the other modes' reports.
    pub fn text(&self) -> String {
        let verdict = if self.ratio_export_to_read >= GOAL_RATIO { "met" } else { "NOT met" };
        let mut out = format!(
            "export: {} entries, {:.1} MB payload, in {} ledgers; file sink, batch.max_entries {BATCH_ENTRIES}, \
             max_bytes {BATCH_BYTES}, linger 0ms, max_parallel_ledgers {}; best of {} rounds\n\
             Store::read ({} threads)  {:>12} entries/s {:>8.1} MB/s (payload)   {:.1} cores busy\n\
             file exporter          {:>12} entries/s {:>8.1} MB/s (payload)   {:.1} cores busy   \
             {:.1} MB/s of JSON lines written\n\
             ratio export/read      {:>11.0}%   (goal ≥ {:.0}%: {verdict})\n\
             exporter time per ledger: {:.0}% inside FileSink::deliver, {:.0}% between deliveries \
             (store read, cursor commit, scheduling); {} batches\n",
            thousands(self.entries),
            self.payload_total_bytes as f64 / 1e6,
            self.ledgers,
            self.ledgers,
            self.rounds,
            self.ledgers,
            thousands(self.read_entries_per_sec.round() as u64),
            self.read_mb_per_sec,
            self.read_cores_busy,
            thousands(self.export_entries_per_sec.round() as u64),
            self.export_mb_per_sec,
            self.export_cores_busy,
            self.export_jsonl_mb_per_sec,
            100.0 * self.ratio_export_to_read,
            100.0 * GOAL_RATIO,
            100.0 * self.in_sink_share,
            100.0 * (1.0 - self.in_sink_share),
            self.batches,
        );
        out.push_str(&latency::table(&self.latency, self.ledgers));
        out
    }
}

/// Shown for a latency in the tables.
fn micros(us: u64) -> String {
    show(Duration::from_micros(us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_run_exports_every_entry_and_times_the_appends() {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            entries: 403,
            ledgers: 2,
            payload_bytes: 256,
            rounds: 2,
            rate: 500,
            window: Duration::from_millis(100),
        };
        let report = run(dir.path(), &options).await.unwrap();
        assert_eq!((report.entries, report.batches), (403, 2), "one batch per ledger: 202 + 201 entries");
        assert!(report.ratio_export_to_read > 0.0);
        assert_eq!(report.latency.len(), latency::LINGERS.len());
        assert!(report.latency.iter().all(|r| r.appends == 50 && r.ack_p50_us > 0));
        assert!(report.text().contains("ratio export/read"));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "every temp dir is gone");
    }

    #[test]
    fn cpu_time_is_utime_plus_stime() {
        let stat = "4242 (tokio (rt) x) S 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0";
        assert_eq!(cpu_in_stat(stat), Duration::from_millis(2670));
        assert_eq!(cpu_in_stat(""), Duration::ZERO);
    }
}
