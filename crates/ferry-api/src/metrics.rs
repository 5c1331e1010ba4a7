//! `GET /metrics`: Prometheus text rendered from the process-wide `metrics`
//! recorder. The store, the exporters, the outbox sources and the API record
//! events as they happen with the `metrics` macros; this module installs the
//! recorder, describes every series once (names in
//! `ferry_core::metric_names`), and at each scrape sets the values that are
//! states rather than events (pins, chunks by tier, exporter lag in seconds,
//! the per-ledger series, the process) from memory, never from storage.

use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use ferry_core::LedgerName;
use ferry_core::limits::METRICS_LEDGERS_MAX;
use ferry_core::metric_names as names;
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::AppState;

/// Installs the Prometheus recorder for this process (once; later calls
/// return a handle that renders nothing new).
pub fn install() -> Option<PrometheusHandle> {
    let buckets = [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
    let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_entries".into()), &sizes))
        .ok()?
        .install_recorder()
        .ok()?;
    describe();
    register_at_zero();
    Some(handle)
}

/// Describes every metric of `ferry_core::metric_names` with its unit and
/// help text (the `# HELP` line).
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(names::APPENDED_ENTRIES_TOTAL, Unit::Count, "Entries appended durably");
    describe_counter!(names::APPENDED_BYTES_TOTAL, Unit::Bytes, "Encoded WAL record bytes appended durably");
    describe_histogram!(names::APPEND_SECONDS, Unit::Seconds, "Append latency, queue to durable ack");
    describe_histogram!(names::FSYNC_SECONDS, Unit::Seconds, "Time of one group commit's write + fdatasync");
    describe_histogram!(names::GROUP_COMMIT_ENTRIES, Unit::Count, "Records written by one group commit");
    describe_counter!(names::IMPORTED_ENTRIES_TOTAL, Unit::Count, "Entries written by the restore path (import)");
    describe_counter!(
        names::QUOTA_REFUSED_APPENDS_TOTAL,
        Unit::Count,
        "Appends refused because they would pass max_ledger_bytes"
    );
    describe_gauge!(names::LEDGERS, Unit::Count, "Ledgers in the store");
    describe_gauge!(names::CHUNKS, Unit::Count, "Retained chunks by state: hot (in the WAL) or frozen (in a pack)");
    describe_counter!(names::CHUNKS_FROZEN_TOTAL, Unit::Count, "Chunks frozen into packs");
    describe_counter!(names::CHUNKS_PRUNED_TOTAL, Unit::Count, "Chunks removed by retention");
    describe_counter!(names::SCRUBBED_BYTES_TOTAL, Unit::Bytes, "Bytes of deleted ledgers' WAL records overwritten");
    describe_counter!(names::STORE_READS_TOTAL, Unit::Count, "Store reads (packs and WAL)");
    describe_counter!(names::IDEMPOTENCY_KEYS_LOST_TOTAL, Unit::Count, "Idempotency keys recovery could not restore");
    describe_gauge!(names::PINS, Unit::Count, "Live snapshot pins");
    describe_gauge!(names::LEDGER_HEAD, Unit::Count, "A ledger's head id (ledgers selected by metrics_ledgers)");
    describe_gauge!(
        names::LEDGER_BYTES,
        Unit::Bytes,
        "Bytes a ledger's records take, hot and frozen (ledgers selected by metrics_ledgers)"
    );
    describe_gauge!(
        names::EXPORTER_LEDGER_LAG_ENTRIES,
        Unit::Count,
        "Entries of a ledger not yet exported (ledgers selected by metrics_ledgers)"
    );
    describe_gauge!(
        names::EXPORTER_LEDGER_LAG_SECONDS,
        Unit::Seconds,
        "Age of a ledger's oldest unexported entry; 0 caught up, NaN not known yet (ledgers selected by \
         metrics_ledgers)"
    );
    describe_gauge!(names::EXPORTER_LAG_ENTRIES, Unit::Count, "Entries not yet exported, over all ledgers");
    describe_gauge!(
        names::EXPORTER_LAG_SECONDS,
        Unit::Seconds,
        "Age of the oldest unexported entry over all ledgers; 0 caught up, NaN not known yet"
    );
    describe_counter!(names::EXPORTER_BATCHES_TOTAL, Unit::Count, "Batches the sink acknowledged");
    describe_counter!(names::EXPORTER_ENTRIES_TOTAL, Unit::Count, "Entries the sink acknowledged");
    describe_counter!(names::EXPORTER_ERRORS_TOTAL, Unit::Count, "Failed deliveries and unreadable batches");
    describe_counter!(names::EXPORTER_RETRIES_TOTAL, Unit::Count, "Deliveries retried after a failure");
    describe_counter!(names::EXPORTER_DEAD_LETTERED_TOTAL, Unit::Count, "Entries moved to the dead-letter ledger");
    describe_gauge!(names::OUTBOX_BACKLOG_ROWS, Unit::Count, "Pending outbox rows at the source's last look");
    describe_counter!(names::OUTBOX_ROWS_TOTAL, Unit::Count, "Outbox rows drained into ledgers");
    describe_counter!(names::OUTBOX_DEAD_LETTERED_TOTAL, Unit::Count, "Outbox rows moved to the dead-letter ledger");
    describe_counter!(names::OUTBOX_ERRORS_TOTAL, Unit::Count, "Failed outbox drain passes");
    describe_gauge!(names::WATCHERS, Unit::Count, "Open /v1/watch and /v1/events streams");
    describe_counter!(names::WATCHERS_LAGGED_TOTAL, Unit::Count, "Streams closed because the consumer fell behind");
    describe_gauge!(names::WATCH_SESSIONS, Unit::Count, "Watch sessions kept (resumable positions)");
    describe_counter!(names::HTTP_BUSY_TOTAL, Unit::Count, "Requests refused: the buffered-body budget was spent");
    describe_counter!(names::ACCEPT_ERRORS_TOTAL, Unit::Count, "Failed accepts of a connection");
    describe_counter!(names::PROCESS_CPU_SECONDS_TOTAL, Unit::Seconds, "CPU time used, user and system, whole seconds");
    describe_gauge!(names::PROCESS_RESIDENT_MEMORY_BYTES, Unit::Bytes, "Resident memory");
    describe_gauge!(names::PROCESS_VIRTUAL_MEMORY_BYTES, Unit::Bytes, "Virtual memory");
    describe_gauge!(names::PROCESS_VIRTUAL_MEMORY_MAX_BYTES, Unit::Bytes, "Address-space limit (soft; 0 unlimited)");
    describe_gauge!(names::PROCESS_OPEN_FDS, Unit::Count, "Open file descriptors");
    describe_gauge!(names::PROCESS_MAX_FDS, Unit::Count, "Open-file limit (soft; 0 unlimited)");
    describe_gauge!(names::PROCESS_START_TIME_SECONDS, Unit::Seconds, "Process start, Unix seconds");
    describe_gauge!(names::PROCESS_THREADS, Unit::Count, "OS threads");
}

/// Registers the series without labels at zero, so each is on the first
/// scrape: `rate()` and `increase()` then see the first event as a change
/// from 0 rather than as a new series.
fn register_at_zero() {
    for name in [
        names::APPENDED_ENTRIES_TOTAL,
        names::APPENDED_BYTES_TOTAL,
        names::IMPORTED_ENTRIES_TOTAL,
        names::QUOTA_REFUSED_APPENDS_TOTAL,
        names::CHUNKS_FROZEN_TOTAL,
        names::CHUNKS_PRUNED_TOTAL,
        names::SCRUBBED_BYTES_TOTAL,
        names::STORE_READS_TOTAL,
        names::IDEMPOTENCY_KEYS_LOST_TOTAL,
        names::WATCHERS_LAGGED_TOTAL,
        names::HTTP_BUSY_TOTAL,
        names::ACCEPT_ERRORS_TOTAL,
    ] {
        counter!(name).increment(0);
    }
    for name in [names::APPEND_SECONDS, names::FSYNC_SECONDS, names::GROUP_COMMIT_ENTRIES] {
        let _registered = histogram!(name);
    }
    // Set by the store and the watch sessions when they open, and by every
    // change after; until then there are none.
    for name in [names::LEDGERS, names::WATCHERS, names::WATCH_SESSIONS] {
        gauge!(name).set(0.0);
    }
}

pub(crate) async fn render(State(state): State<AppState>) -> impl IntoResponse {
    let Some(handle) = state.config.metrics.as_ref() else {
        return ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], String::new());
    };
    sample_states(&state).await;
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render())
}

/// Sets the gauges that tell a state, from memory.
async fn sample_states(state: &AppState) {
    let store = &state.store;
    gauge!(names::PINS).set(store.live_pins() as f64);
    let chunks = store.chunk_counts();
    gauge!(names::CHUNKS, names::LABEL_STATE => "hot").set(chunks.hot as f64);
    gauge!(names::CHUNKS, names::LABEL_STATE => "frozen").set(chunks.frozen as f64);
    sample_process();
    let ledgers = per_ledger(state);
    if let Some(exporters) = &state.config.exporters {
        for health in exporters.health().await {
            let exporter = health.name.to_string();
            gauge!(names::EXPORTER_LAG_SECONDS, names::LABEL_EXPORTER => exporter.clone())
                .set(seconds(health.oldest_unexported_age_ms));
            gauge!(names::EXPORTER_LAG_ENTRIES, names::LABEL_EXPORTER => exporter.clone()).set(health.lag as f64);
            for name in [
                names::EXPORTER_BATCHES_TOTAL,
                names::EXPORTER_ENTRIES_TOTAL,
                names::EXPORTER_ERRORS_TOTAL,
                names::EXPORTER_RETRIES_TOTAL,
                names::EXPORTER_DEAD_LETTERED_TOTAL,
            ] {
                counter!(name, names::LABEL_EXPORTER => exporter.clone()).increment(0);
            }
            if ledgers.is_empty() {
                continue;
            }
            for l in exporters.ledgers(&health.name, ledgers.clone()).await {
                let labels = [(names::LABEL_EXPORTER, exporter.clone()), (names::LABEL_LEDGER, l.ledger.to_string())];
                gauge!(names::EXPORTER_LEDGER_LAG_ENTRIES, &labels).set(l.lag as f64);
                gauge!(names::EXPORTER_LEDGER_LAG_SECONDS, &labels).set(seconds(l.oldest_unexported_age_ms));
            }
        }
    }
    if let Some(sources) = &state.config.sources {
        for source in sources.status() {
            for name in [names::OUTBOX_ROWS_TOTAL, names::OUTBOX_DEAD_LETTERED_TOTAL, names::OUTBOX_ERRORS_TOTAL] {
                counter!(name, names::LABEL_SOURCE => source.name.clone()).increment(0);
            }
        }
    }
}

/// The ledgers `metrics_ledgers` selects, in name order, at most
/// `METRICS_LEDGERS_MAX`, with their head and bytes set; the walk stops at
/// the cap, which is logged the first time it is hit.
fn per_ledger(state: &AppState) -> Vec<LedgerName> {
    static CAP_LOGGED: AtomicBool = AtomicBool::new(false);
    let globs = &state.config.metrics_ledgers;
    if globs.is_empty() {
        return Vec::new();
    }
    let keep = |name: &LedgerName| globs.iter().any(|g| g.matches(name.as_str()));
    let (page, more) = state.store.list_ledgers_page(None, METRICS_LEDGERS_MAX, keep);
    if more.is_some() && !CAP_LOGGED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            cap = METRICS_LEDGERS_MAX,
            after = %page.last().map(|l| l.name.as_str()).unwrap_or_default(),
            "server.metrics_ledgers matches more ledgers than /metrics shows; the ones after are left out"
        );
    }
    for info in &page {
        let ledger = info.name.to_string();
        gauge!(names::LEDGER_HEAD, names::LABEL_LEDGER => ledger.clone()).set(info.head as f64);
        gauge!(names::LEDGER_BYTES, names::LABEL_LEDGER => ledger).set(info.bytes as f64);
    }
    page.into_iter().map(|l| l.name).collect()
}

/// The process's CPU, memory, descriptors, threads and start time, read
/// from `/proc` (a few small reads and a walk of `/proc/self/fd`).
fn sample_process() {
    let p = metrics_process::collector::collect();
    if let Some(cpu) = p.cpu_seconds_total {
        counter!(names::PROCESS_CPU_SECONDS_TOTAL).absolute(cpu as u64);
    }
    for (name, value) in [
        (names::PROCESS_RESIDENT_MEMORY_BYTES, p.resident_memory_bytes),
        (names::PROCESS_VIRTUAL_MEMORY_BYTES, p.virtual_memory_bytes),
        (names::PROCESS_VIRTUAL_MEMORY_MAX_BYTES, p.virtual_memory_max_bytes),
        (names::PROCESS_OPEN_FDS, p.open_fds),
        (names::PROCESS_MAX_FDS, p.max_fds),
        (names::PROCESS_START_TIME_SECONDS, p.start_time_seconds),
        (names::PROCESS_THREADS, p.threads),
    ] {
        if let Some(v) = value {
            gauge!(name).set(v as f64);
        }
    }
}

/// Milliseconds as seconds; NaN when not known.
fn seconds(ms: Option<u64>) -> f64 {
    ms.map_or(f64::NAN, |ms| ms as f64 / 1000.0)
}
