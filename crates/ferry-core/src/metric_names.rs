//! Every Prometheus metric ferry records (SPEC §9), by name: the one place
//! a name is spelled, so the recording call sites, the descriptions
//! (`ferry_api::metrics`), the docs (`docs/metrics.md`) and the tests cannot
//! drift apart.
//!
//! Conventions: a `ferry_` prefix; the unit last in the name (`_seconds`,
//! `_bytes`, `_entries` for counts of entries, `_rows` for outbox rows);
//! counters end in `_total`. Labels are bounded: exporter and source names
//! (configured), fixed enums, and ledger names only for the ledgers that
//! `[server] metrics_ledgers` selects, at most
//! `limits::METRICS_LEDGERS_MAX`.

// --- labels -----------------------------------------------------------------

/// Label: an exporter's configured name.
pub const LABEL_EXPORTER: &str = "exporter";
/// Label: an outbox source's configured name.
pub const LABEL_SOURCE: &str = "source";
/// Label: a ledger's name (only on the per-ledger series).
pub const LABEL_LEDGER: &str = "ledger";
/// Label: a chunk's state, `hot` or `frozen`.
pub const LABEL_STATE: &str = "state";

// --- appends (the flusher) ---------------------------------------------------

/// Counter: entries appended durably (acknowledged after their fsync).
pub const APPENDED_ENTRIES_TOTAL: &str = "ferry_appended_entries_total";
/// Counter: encoded WAL record bytes appended durably.
pub const APPENDED_BYTES_TOTAL: &str = "ferry_appended_bytes_total";
/// Histogram: one append's latency, from its queueing to its durable ack.
pub const APPEND_SECONDS: &str = "ferry_append_seconds";
/// Histogram: one group commit's write and fdatasync (appends and imports).
pub const FSYNC_SECONDS: &str = "ferry_fsync_seconds";
/// Histogram: records written by one group commit.
pub const GROUP_COMMIT_ENTRIES: &str = "ferry_group_commit_entries";
/// Counter: entries written by the restore path (`POST …/import`).
pub const IMPORTED_ENTRIES_TOTAL: &str = "ferry_imported_entries_total";
/// Counter: appends refused because they would pass `max_ledger_bytes`.
pub const QUOTA_REFUSED_APPENDS_TOTAL: &str = "ferry_quota_refused_appends_total";

// --- storage -----------------------------------------------------------------

/// Gauge: ledgers in the store.
pub const LEDGERS: &str = "ferry_ledgers";
/// Gauge, labelled `state` (`hot` | `frozen`): retained chunks. A hot chunk
/// is in the WAL (the head's partial chunk included), a frozen one in a pack.
pub const CHUNKS: &str = "ferry_chunks";
/// Counter: chunks frozen into packs.
pub const CHUNKS_FROZEN_TOTAL: &str = "ferry_chunks_frozen_total";
/// Counter: chunks removed by retention.
pub const CHUNKS_PRUNED_TOTAL: &str = "ferry_chunks_pruned_total";
/// Counter: bytes of deleted ledgers' WAL records overwritten.
pub const SCRUBBED_BYTES_TOTAL: &str = "ferry_scrubbed_bytes_total";
/// Counter: `Store::read` calls (what idle exporters and watchers must not
/// cause).
pub const STORE_READS_TOTAL: &str = "ferry_store_reads_total";
/// Counter: idempotency keys that recovery could not restore.
pub const IDEMPOTENCY_KEYS_LOST_TOTAL: &str = "ferry_idempotency_keys_lost_total";
/// Gauge: live snapshot pins.
pub const PINS: &str = "ferry_pins";

// --- per ledger (only the ledgers `[server] metrics_ledgers` selects) --------

/// Gauge, labelled `ledger`: the ledger's head id.
pub const LEDGER_HEAD: &str = "ferry_ledger_head";
/// Gauge, labelled `ledger`: the bytes the ledger's records take (hot WAL
/// records plus frozen packs; the unit of quotas and retention by size).
pub const LEDGER_BYTES: &str = "ferry_ledger_bytes";
/// Gauge, labelled `exporter` and `ledger`: entries of the ledger the
/// exporter has not exported yet.
pub const EXPORTER_LEDGER_LAG_ENTRIES: &str = "ferry_exporter_ledger_lag_entries";
/// Gauge, labelled `exporter` and `ledger`: age of the ledger's oldest
/// entry the exporter has not exported (0 when caught up; NaN when behind
/// and not read since the start).
pub const EXPORTER_LEDGER_LAG_SECONDS: &str = "ferry_exporter_ledger_lag_seconds";

// --- exporters (labelled `exporter`) -----------------------------------------

/// Gauge: entries not yet exported, over all the exporter's ledgers.
pub const EXPORTER_LAG_ENTRIES: &str = "ferry_exporter_lag_entries";
/// Gauge: age of the exporter's oldest unexported entry over all its
/// ledgers (0 when caught up; NaN when some ledger behind has not been read
/// since the start).
pub const EXPORTER_LAG_SECONDS: &str = "ferry_exporter_lag_seconds";
/// Counter: batches the sink acknowledged.
pub const EXPORTER_BATCHES_TOTAL: &str = "ferry_exporter_batches_total";
/// Counter: entries the sink acknowledged.
pub const EXPORTER_ENTRIES_TOTAL: &str = "ferry_exporter_entries_total";
/// Counter: failed deliveries (and unreadable batches).
pub const EXPORTER_ERRORS_TOTAL: &str = "ferry_exporter_errors_total";
/// Counter: deliveries retried after a failure.
pub const EXPORTER_RETRIES_TOTAL: &str = "ferry_exporter_retries_total";
/// Counter: entries moved to the exporter's dead-letter ledger.
pub const EXPORTER_DEAD_LETTERED_TOTAL: &str = "ferry_exporter_dead_lettered_total";

// --- outbox sources (labelled `source`) --------------------------------------

/// Gauge: pending outbox rows at the source's last look.
pub const OUTBOX_BACKLOG_ROWS: &str = "ferry_outbox_backlog_rows";
/// Counter: outbox rows drained into ledgers.
pub const OUTBOX_ROWS_TOTAL: &str = "ferry_outbox_rows_total";
/// Counter: outbox rows moved to the source's dead-letter ledger.
pub const OUTBOX_DEAD_LETTERED_TOTAL: &str = "ferry_outbox_dead_lettered_total";
/// Counter: failed drain passes.
pub const OUTBOX_ERRORS_TOTAL: &str = "ferry_outbox_errors_total";

// --- HTTP and watchers -------------------------------------------------------

/// Gauge: open `/v1/watch` and `/v1/events` streams.
pub const WATCHERS: &str = "ferry_watchers";
/// Counter: streams closed because their consumer fell behind.
pub const WATCHERS_LAGGED_TOTAL: &str = "ferry_watchers_lagged_total";
/// Gauge: watch sessions kept (resumable positions).
pub const WATCH_SESSIONS: &str = "ferry_watch_sessions";
/// Counter: requests refused because the buffered-body budget was spent.
pub const HTTP_BUSY_TOTAL: &str = "ferry_http_busy_total";
/// Counter: failed `accept` calls (e.g. out of descriptors).
pub const ACCEPT_ERRORS_TOTAL: &str = "ferry_accept_errors_total";

// --- the process (Linux; sampled at each scrape) -----------------------------

/// Counter: CPU time used, user and system, in whole seconds.
pub const PROCESS_CPU_SECONDS_TOTAL: &str = "ferry_process_cpu_seconds_total";
/// Gauge: resident memory.
pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "ferry_process_resident_memory_bytes";
/// Gauge: virtual memory.
pub const PROCESS_VIRTUAL_MEMORY_BYTES: &str = "ferry_process_virtual_memory_bytes";
/// Gauge: the address-space limit (soft; 0 when unlimited).
pub const PROCESS_VIRTUAL_MEMORY_MAX_BYTES: &str = "ferry_process_virtual_memory_max_bytes";
/// Gauge: open file descriptors (a walk of `/proc/self/fd`).
pub const PROCESS_OPEN_FDS: &str = "ferry_process_open_fds";
/// Gauge: the open-file limit (soft; 0 when unlimited).
pub const PROCESS_MAX_FDS: &str = "ferry_process_max_fds";
/// Gauge: the process's start, in Unix seconds.
pub const PROCESS_START_TIME_SECONDS: &str = "ferry_process_start_time_seconds";
/// Gauge: OS threads.
pub const PROCESS_THREADS: &str = "ferry_process_threads";

/// Every metric name above, for the descriptions and the tests that prove
/// each one is exposed.
pub const ALL: &[&str] = &[
    APPENDED_ENTRIES_TOTAL,
    APPENDED_BYTES_TOTAL,
    APPEND_SECONDS,
    FSYNC_SECONDS,
    GROUP_COMMIT_ENTRIES,
    IMPORTED_ENTRIES_TOTAL,
    QUOTA_REFUSED_APPENDS_TOTAL,
    LEDGERS,
    CHUNKS,
    CHUNKS_FROZEN_TOTAL,
    CHUNKS_PRUNED_TOTAL,
    SCRUBBED_BYTES_TOTAL,
    STORE_READS_TOTAL,
    IDEMPOTENCY_KEYS_LOST_TOTAL,
    PINS,
    LEDGER_HEAD,
    LEDGER_BYTES,
    EXPORTER_LEDGER_LAG_ENTRIES,
    EXPORTER_LEDGER_LAG_SECONDS,
    EXPORTER_LAG_ENTRIES,
    EXPORTER_LAG_SECONDS,
    EXPORTER_BATCHES_TOTAL,
    EXPORTER_ENTRIES_TOTAL,
    EXPORTER_ERRORS_TOTAL,
    EXPORTER_RETRIES_TOTAL,
    EXPORTER_DEAD_LETTERED_TOTAL,
    OUTBOX_BACKLOG_ROWS,
    OUTBOX_ROWS_TOTAL,
    OUTBOX_DEAD_LETTERED_TOTAL,
    OUTBOX_ERRORS_TOTAL,
    WATCHERS,
    WATCHERS_LAGGED_TOTAL,
    WATCH_SESSIONS,
    HTTP_BUSY_TOTAL,
    ACCEPT_ERRORS_TOTAL,
    PROCESS_CPU_SECONDS_TOTAL,
    PROCESS_RESIDENT_MEMORY_BYTES,
    PROCESS_VIRTUAL_MEMORY_BYTES,
    PROCESS_VIRTUAL_MEMORY_MAX_BYTES,
    PROCESS_OPEN_FDS,
    PROCESS_MAX_FDS,
    PROCESS_START_TIME_SECONDS,
    PROCESS_THREADS,
];

/// The names that appear only with an outbox source configured; every
/// other name is on every scrape (the per-ledger ones once a ledger matches
/// `[server] metrics_ledgers`, the per-exporter ones once an exporter is
/// configured).
pub const WITH_SOURCES: &[&str] =
    &[OUTBOX_BACKLOG_ROWS, OUTBOX_ROWS_TOTAL, OUTBOX_DEAD_LETTERED_TOTAL, OUTBOX_ERRORS_TOTAL];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `pub const … = "ferry_…"` of this file, read from its source.
    fn declared() -> Vec<&'static str> {
        include_str!("metric_names.rs")
            .lines()
            .filter(|l| l.starts_with("pub const ") && l.contains(": &str = \"ferry_"))
            .filter_map(|l| l.split('"').nth(1))
            .collect()
    }

    #[test]
    fn all_lists_every_name_once() {
        let declared = declared();
        assert_eq!(declared.len(), ALL.len(), "ALL and the constants differ");
        for name in &declared {
            assert_eq!(ALL.iter().filter(|n| *n == name).count(), 1, "{name} in ALL once");
        }
        assert!(WITH_SOURCES.iter().all(|c| ALL.contains(c)));
    }

    #[test]
    fn names_follow_the_conventions() {
        for name in ALL {
            assert!(name.starts_with("ferry_"), "{name}");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'), "{name}");
            // A unit, when there is one, comes last (before `_total`).
            let stem = name.strip_suffix("_total").unwrap_or(name);
            for unit in ["seconds", "bytes", "entries", "rows"] {
                assert!(!stem.contains(&format!("_{unit}_")), "{name}: the unit {unit} is not last");
            }
        }
    }
}
