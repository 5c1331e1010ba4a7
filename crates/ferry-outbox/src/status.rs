//! What `GET /v1/sources` shows of a source.

use serde::{Deserialize, Serialize};

/// Where a source stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SourceState {
    /// Holding the lock, draining.
    Running,
    /// Another process holds the source's lock; this one waits to take over.
    Standby,
    /// The database is unreachable or refused a statement; retrying with backoff.
    BackingOff,
    /// A row cannot be appended and there is no dead-letter ledger:
    /// nothing behind it moves until the row is fixed (retried periodically).
    Failed,
    /// Shut down.
    Stopped,
}

/// A source's status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SourceStatus {
    pub name: String,
    pub driver: String,
    pub table: String,
    pub state: SourceState,
    /// Rows drained (appended and marked) by this process.
    pub drained: u64,
    /// Rows moved to the dead-letter ledger by this process.
    pub dead_lettered: u64,
    /// Rows with `exported_at IS NULL` at the last look (`None`: not known yet).
    pub backlog: Option<u64>,
    /// Age in milliseconds of the oldest pending row at the last look.
    pub oldest_pending_age_ms: Option<u64>,
    /// True when `max_lag` is set and the oldest pending row is older.
    pub stuck: bool,
    /// The last failure (secrets removed), if any since the last success.
    pub last_error: Option<String>,
    /// Who holds the source's lock (this process or another), if known.
    pub lock_holder: Option<String>,
    /// Unix milliseconds of the last batch drained.
    pub last_success_at: Option<u64>,
}
