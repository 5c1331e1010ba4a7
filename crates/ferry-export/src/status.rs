//! What `GET /v1/exporters[/{name}]` returns (SPEC §5), shaped as the API
//! reports it.

use ferry_core::{EntryId, LedgerName};
use serde::{Deserialize, Serialize};

/// An exporter as a whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExporterStatus {
    pub name: LedgerName,
    /// The sink kind; `None` for an orphaned exporter.
    pub sink: Option<String>,
    pub state: ExporterState,
    pub ledgers: Vec<LedgerStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerStatus {
    pub ledger: LedgerName,
    /// The last id the sink acknowledged.
    pub cursor: EntryId,
    pub head: EntryId,
    pub lag: u64,
    /// running | backing_off | paused | failed | dead_lettered (orphaned for
    /// an orphaned exporter).
    pub state: String,
    pub last_error: Option<String>,
    pub attempts: u32,
    /// Unix milliseconds of the last acknowledged delivery in this process.
    pub last_success_at: Option<u64>,
}
