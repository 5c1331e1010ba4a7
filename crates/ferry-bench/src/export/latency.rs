//! Append → sink-ack latency: one task appends single entries at a steady
//! rate, round-robin over the ledgers, while a `file` exporter that starts
//! at the heads ships them; the probe times each entry from its append
//! call's start to the acknowledgement of the batch holding it. The
//! append's own durable round trip is measured in the same loop.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use ferry_core::{EntryId, LedgerName, NewEntry, Payload};
use ferry_store::Store;
use hdrhistogram::Histogram;
use serde::Serialize;

use super::probe::{Acks, Probe};
use super::{SHUTDOWN_TIMEOUT, check_files, file_exporter, micros, start};
use crate::driver::{micros as us, new_histogram};
use crate::replay::audit_payload;

/// One row each: no linger (a batch goes as soon as a slot is free) and a
/// short one (entries arriving within 5 ms share a batch and an fsync).
pub const LINGERS: [Duration; 2] = [Duration::ZERO, Duration::from_millis(5)];
/// How long the sink may take to catch up once the appends stop.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// One linger's latencies, in microseconds.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyRow {
    pub linger_ms: u64,
    /// Appends per second asked for, and for how long.
    pub rate: u32,
    pub window_ms: u64,
    pub appends: u64,
    /// The append call's durable round trip.
    pub append_p50_us: u64,
    pub append_p99_us: u64,
    /// Append-call start → the sink's acknowledgement.
    pub ack_p50_us: u64,
    pub ack_p99_us: u64,
    pub ack_p999_us: u64,
    pub ack_max_us: u64,
}

/// Runs one exporter with `linger` from the current heads while appending
/// at `options.rate` for `options.window`, waits for the sink to catch up,
/// and checks its files hold exactly the appended entries.
pub async fn measure(
    store: &Store,
    ledgers: &[LedgerName],
    parent: &Path,
    linger: Duration,
    options: &super::Options,
) -> anyhow::Result<LatencyRow> {
    let out = tempfile::Builder::new().prefix("export-lat-").tempdir_in(parent).context("create a temp dir")?;
    let name = format!("latency-{}ms", linger.as_millis());
    let (settings, sink) = file_exporter(&name, out.path(), linger, ledgers.len(), "latest").await?;
    let (probe, acks) = Probe::new(sink);
    let exporters = start(store, settings, probe).await?;
    let appended = append_steadily(store, ledgers, &acks, options).await;
    let acked = match &appended {
        Ok(a) => acks.wait_for(&a.heads, DRAIN_TIMEOUT).await,
        Err(_) => Ok(()),
    };
    exporters.shutdown(SHUTDOWN_TIMEOUT).await;
    let appended = appended?;
    acked?;
    ensure!(acks.unacknowledged() == 0, "{} watched entries were never acknowledged", acks.unacknowledged());
    check_files(out.path(), ledgers.iter().cloned().zip(appended.counts).collect()).await?;
    let ack = acks.latency();
    let at = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q);
    Ok(LatencyRow {
        linger_ms: linger.as_millis() as u64,
        rate: options.rate,
        window_ms: options.window.as_millis() as u64,
        appends: appended.rtt.len(),
        append_p50_us: at(&appended.rtt, 0.50),
        append_p99_us: at(&appended.rtt, 0.99),
        ack_p50_us: at(&ack, 0.50),
        ack_p99_us: at(&ack, 0.99),
        ack_p999_us: at(&ack, 0.999),
        ack_max_us: ack.max(),
    })
}

/// What the appending loop did.
struct Appended {
    /// Round trip of each append call, in µs.
    rtt: Histogram<u64>,
    /// Each ledger's head afterwards.
    heads: Vec<(LedgerName, EntryId)>,
    /// Entries appended to each ledger.
    counts: Vec<u64>,
}

/// Appends `rate × window` single entries from this task, one per tick.
/// Each entry is watched under the id it will get (the ledger's next id:
/// nothing else appends) before its call starts, so even an acknowledgement
/// that beats the append's reply finds it.
async fn append_steadily(
    store: &Store,
    ledgers: &[LedgerName],
    acks: &Acks,
    options: &super::Options,
) -> anyhow::Result<Appended> {
    let first: Vec<EntryId> = ledgers.iter().map(|l| store.ledger_info(l).map_or(1, |i| i.head + 1)).collect();
    let mut next = first.clone();
    let total = u64::from(options.rate) * options.window.as_millis() as u64 / 1000;
    // A late tick fires at once (the default): the rate holds on average.
    let mut ticks = tokio::time::interval(Duration::from_secs(1) / options.rate);
    let mut rtt = new_histogram();
    for k in 0..total {
        ticks.tick().await;
        let i = k as usize % ledgers.len();
        let payload = Payload::from_json(&audit_payload(k, options.payload_bytes))?;
        let entry = NewEntry { key: None, idempotency_key: None, payload };
        let started = Instant::now();
        acks.watch(&ledgers[i], next[i], started);
        let outcome = store.append(&ledgers[i], vec![entry]).await?;
        rtt.saturating_record(us(started.elapsed()));
        ensure!(outcome.ids == [next[i]], "{}: expected id {}, got {:?}", ledgers[i], next[i], outcome.ids);
        next[i] += 1;
    }
    let heads = ledgers.iter().cloned().zip(next.iter().map(|n| n - 1)).collect();
    let counts = next.iter().zip(&first).map(|(n, f)| n - f).collect();
    Ok(Appended { rtt, heads, counts })
}

/// The rows as a table under a line saying what was run.
pub fn table(rows: &[LatencyRow], ledgers: usize) -> String {
    let Some(first) = rows.first() else { return String::new() };
    let mut out = format!(
        "\nappend → file-sink ack: {} single-entry appends/s for {:?} from one task, round-robin over {ledgers} \
         ledgers; batch.max_entries as above, max_parallel_ledgers {ledgers}\n",
        first.rate,
        Duration::from_millis(first.window_ms),
    );
    out.push_str(&format!(
        "{:<6}  {:>7}  {:>10}  {:>10}  {:>9}  {:>9}  {:>9}  {:>9}\n",
        "linger", "appends", "append p50", "append p99", "ack p50", "ack p99", "ack p999", "ack max"
    ));
    for r in rows {
        out.push_str(&format!(
            "{:<6}  {:>7}  {:>10}  {:>10}  {:>9}  {:>9}  {:>9}  {:>9}\n",
            format!("{}ms", r.linger_ms),
            r.appends,
            micros(r.append_p50_us),
            micros(r.append_p99_us),
            micros(r.ack_p50_us),
            micros(r.ack_p99_us),
            micros(r.ack_p999_us),
            micros(r.ack_max_us),
        ));
    }
    out
}
