//! What `GET /v1/exporters[/{name}]` returns (SPEC §5), shaped as the API
//! reports it.

use ferry_core::{EntryId, LedgerName};
use serde::{Deserialize, Serialize};

/// An exporter as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ExporterState {
    Running,
    /// A reset is in progress, or failed and left the exporter stopped
    /// (`resume` or another reset starts it again); also during shutdown.
    Stopped,
    Paused,
    /// No longer configured; its cursors are kept (and hold retention)
    /// until deleted through the API.
    Orphaned,
}

/// An exporter with one page of its ledgers (by name, after `Page::after`),
/// and totals over all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExporterStatus {
    pub name: LedgerName,
    /// The sink kind; `None` for an orphaned exporter.
    pub sink: Option<String>,
    pub state: ExporterState,
    /// `max_lag` in milliseconds: a ledger whose oldest unexported entry is
    /// older is stuck. `None`: never stuck.
    pub max_lag_ms: Option<u64>,
    /// Entries not yet exported, over all its ledgers.
    pub lag: u64,
    /// The age of the oldest unexported entry over all its ledgers (0 when
    /// every ledger is caught up; `None` when some ledger behind has not
    /// been read since the start, so the age is not known yet).
    pub oldest_unexported_age_ms: Option<u64>,
    /// Ledgers it exports, over all pages.
    pub ledgers_total: usize,
    /// Ledgers stuck (older than `max_lag`), over all pages.
    pub stuck_ledgers: usize,
    /// This page of its ledgers, in name order.
    pub ledgers: Vec<LedgerStatus>,
    /// The last ledger of this page when more follow: ask again with
    /// `after` = this.
    pub next: Option<LedgerName>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LedgerStatus {
    pub ledger: LedgerName,
    /// The last id the sink acknowledged.
    #[schema(value_type = u64)]
    pub cursor: EntryId,
    #[schema(value_type = u64)]
    pub head: EntryId,
    pub lag: u64,
    /// running | backing_off | paused | failed | dead_lettered (orphaned for
    /// an orphaned exporter).
    pub state: String,
    pub last_error: Option<String>,
    pub attempts: u32,
    /// Unix milliseconds of the last acknowledged delivery in this process.
    pub last_success_at: Option<u64>,
    /// Milliseconds since the oldest unexported entry was appended (its
    /// `ts`): 0 when caught up, `None` when behind but not read since the
    /// start. From timestamps the exporter holds in memory, never a read.
    pub oldest_unexported_age_ms: Option<u64>,
    /// Older than the exporter's `max_lag`.
    pub stuck: bool,
}

/// Which page of an exporter's ledgers to answer: those named after
/// `after`, at most `limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub after: Option<LedgerName>,
    pub limit: usize,
}

impl Default for Page {
    fn default() -> Self {
        Self { after: None, limit: ferry_core::limits::PAGE_LIMIT_DEFAULT }
    }
}

/// `GET /v1/health` of one exporter: its stuck ledgers, oldest first (at
/// most `HEALTH_STUCK_SHOWN`; `stuck_ledgers` counts them all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExporterHealth {
    pub name: LedgerName,
    pub max_lag_ms: Option<u64>,
    pub stuck_ledgers: usize,
    pub stuck: Vec<StuckLedger>,
    /// The age of its oldest unexported entry over all ledgers.
    pub oldest_unexported_age_ms: Option<u64>,
    /// Entries not yet exported over all ledgers.
    pub lag: u64,
}

/// A ledger whose oldest unexported entry is older than `max_lag`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StuckLedger {
    pub ledger: LedgerName,
    /// Milliseconds since the oldest unexported entry was appended.
    pub age_ms: u64,
    /// Entries not yet exported.
    pub lag: u64,
    pub state: String,
    pub last_error: Option<String>,
}
