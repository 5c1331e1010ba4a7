//! What the server answers with: entries, ledgers, exporter and source
//! status and system events, in the JSON forms README's HTTP API table documents.
//! Fields the server adds later land in each type's `extra`, so a client
//! older than its server loses nothing it passes on.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A stored entry:
/// `{"ledger":"audit","id":42,"ts":1763769600123,"key":"user-7","payload":{…}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    /// The ledger's name.
    pub ledger: String,
    /// 1, 2, 3, … within the ledger, with no gaps.
    pub id: u64,
    /// Unix milliseconds ferry stamped it with; never decreasing within a
    /// ledger.
    pub ts: u64,
    /// The routing key it was appended with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The payload's JSON text byte for byte as stored (key order and number
    /// spelling kept); `serde_json::from_str(entry.payload.get())` reads it.
    pub payload: Box<RawValue>,
}

/// A ledger as `GET /v1/ledgers` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// The ledger's name.
    pub name: String,
    /// Never reused for the name: a deleted and re-created ledger has a new
    /// one.
    pub incarnation: u64,
    /// The oldest id kept (retention raises it).
    pub first: u64,
    /// The newest id; `first - 1` when the ledger is empty.
    pub head: u64,
    /// How many entries are kept.
    pub entries: u64,
    /// Bytes of the stored records.
    pub bytes: u64,
    /// Unix milliseconds of its creation.
    pub created_at: u64,
    /// Fields this client does not know yet.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One page of `GET /v1/ledgers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerPage {
    /// In name order.
    pub ledgers: Vec<Ledger>,
    /// Where the next page starts (`after`), when there is one.
    pub next: Option<String>,
}

/// An exporter's status (`GET /v1/exporters/{name}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExporterStatus {
    /// The exporter's name.
    pub name: String,
    /// The sink kind; `None` for an orphaned exporter.
    pub sink: Option<String>,
    /// `running`, `stopped`, `paused` or `orphaned`.
    pub state: String,
    /// `max_lag` in milliseconds; `None`: never stuck.
    #[serde(default)]
    pub max_lag_ms: Option<u64>,
    /// Entries not yet exported, over all its ledgers.
    #[serde(default)]
    pub lag: u64,
    /// The age of the oldest unexported entry over all its ledgers; `None`
    /// while not known.
    #[serde(default)]
    pub oldest_unexported_age_ms: Option<u64>,
    /// Ledgers it exports, over all pages.
    #[serde(default)]
    pub ledgers_total: usize,
    /// Ledgers older than `max_lag`, over all pages.
    #[serde(default)]
    pub stuck_ledgers: usize,
    /// Where it stands per ledger (one page, in name order).
    pub ledgers: Vec<ExporterLedger>,
    /// Where the next page of ledgers starts (`after`), when there is one.
    #[serde(default)]
    pub next: Option<String>,
    /// Fields this client does not know yet.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One ledger of an exporter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExporterLedger {
    /// The ledger's name.
    pub ledger: String,
    /// The last id the sink acknowledged.
    pub cursor: u64,
    /// The ledger's head.
    pub head: u64,
    /// Entries not yet exported.
    pub lag: u64,
    /// `running`, `backing_off`, `paused`, `failed` or `dead_lettered`.
    pub state: String,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Attempts of the current batch.
    pub attempts: u32,
    /// Unix milliseconds of the last acknowledged delivery.
    pub last_success_at: Option<u64>,
    /// Milliseconds since the oldest unexported entry was appended: 0
    /// when caught up, `None` while not known.
    #[serde(default)]
    pub oldest_unexported_age_ms: Option<u64>,
    /// Older than the exporter's `max_lag`.
    #[serde(default)]
    pub stuck: bool,
    /// Fields this client does not know yet.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `GET /v1/health`: whether data moves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    /// `ok`, `stuck` or `not_ready`.
    pub status: String,
    /// Why the store is not ready, when it is not.
    pub reason: Option<String>,
    /// Each configured exporter.
    pub exporters: Vec<ExporterHealth>,
    /// Each outbox source.
    pub sources: Vec<SourceHealth>,
    /// Fields this client does not know yet.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One exporter in `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExporterHealth {
    /// The exporter's name.
    pub name: String,
    /// `max_lag` in milliseconds; `None`: never stuck.
    pub max_lag_ms: Option<u64>,
    /// Stuck ledgers, all counted.
    pub stuck_ledgers: usize,
    /// The stuck ledgers, oldest first (the first 100).
    pub stuck: Vec<StuckLedger>,
    /// The age of the oldest unexported entry over all its ledgers.
    pub oldest_unexported_age_ms: Option<u64>,
    /// Entries not yet exported over all its ledgers.
    pub lag: u64,
    /// Fields this client does not know yet.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A ledger an exporter is stuck on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StuckLedger {
    /// The ledger's name.
    pub ledger: String,
    /// Milliseconds since its oldest unexported entry was appended.
    pub age_ms: u64,
    /// Entries not yet exported.
    pub lag: u64,
    /// `running`, `backing_off`, `paused`, `failed` or `dead_lettered`.
    pub state: String,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Fields this client does not know yet.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// One outbox source in `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceHealth {
    /// The source's name.
    pub name: String,
    /// Its oldest pending row is older than its `max_lag`.
    pub stuck: bool,
    /// Age in milliseconds of the oldest pending row at the last look.
    pub oldest_pending_age_ms: Option<u64>,
    /// Rows pending at the last look.
    pub backlog: Option<u64>,
    /// As in [`SourceStatus::state`].
    pub state: String,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Fields this client does not know yet.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// An outbox source's status (`GET /v1/sources/{name}`; the list answers
/// an array of these).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceStatus {
    /// The source's name.
    pub name: String,
    /// `postgres` or `mysql`.
    pub driver: String,
    /// The outbox table it drains.
    pub table: String,
    /// `running`, `standby` (another process holds the source's lock),
    /// `backing_off`, `failed` or `stopped`.
    pub state: String,
    /// Rows appended and marked by the server's process since it started.
    pub drained: u64,
    /// Rows moved to the dead-letter ledger since it started.
    pub dead_lettered: u64,
    /// Rows with `exported_at IS NULL` at the last look (`None`: not known
    /// yet).
    pub backlog: Option<u64>,
    /// Age in milliseconds of the oldest pending row at the last look.
    pub oldest_pending_age_ms: Option<u64>,
    /// True when `max_lag` is set and the oldest pending row is older.
    pub stuck: bool,
    /// The last failure (secrets removed), if any since the last success.
    pub last_error: Option<String>,
    /// Who holds the source's lock, if known.
    pub lock_holder: Option<String>,
    /// Unix milliseconds of the last batch drained.
    pub last_success_at: Option<u64>,
    /// Fields this client does not know yet.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A system event of `/v1/events`: `{"kind","key","at","data"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemEvent {
    /// `ledger.created`, `chunk.frozen`, `exporter.failed`, …
    pub kind: String,
    /// The key prefixes are matched on, e.g. `chunk.frozen/audit/00000003`.
    pub key: String,
    /// Unix milliseconds.
    pub at: u64,
    /// The kind's details.
    #[serde(default)]
    pub data: Value,
}

/// The range check of an exporter (`GET /v1/exporters/{name}/check`): does
/// the destination hold exactly ids First..=cursor of each ledger?
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExporterCheck {
    /// The exporter's name.
    pub exporter: String,
    /// The sink kind.
    pub sink: String,
    /// True when no ledger has a fault.
    pub ok: bool,
    /// One per ledger, by name.
    pub ledgers: Vec<LedgerCheck>,
    /// Fields this client does not know yet.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The range check of one ledger.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerCheck {
    /// The ledger's name.
    pub ledger: String,
    /// The ledger's incarnation.
    pub incarnation: u64,
    /// The ledger's First: the range the destination should hold exactly
    /// is `first..=cursor`.
    pub first: u64,
    /// The exporter's cursor.
    pub cursor: u64,
    /// What the destination was counted to hold (absent when it could not
    /// be asked): `in_range`, `distinct`, `below_first`, `above_cursor`,
    /// `min`, `max`, and for a chained ledger `chain` (`{"state":
    /// "intact"|"broken"|"uncheckable", …}`, `docs/sinks.md`).
    pub holding: Option<Value>,
    /// Gaps, repeats, a chain break ("chain breaks at id N: …"), or why
    /// the destination could not be asked.
    pub faults: Vec<String>,
    /// Rows outside the range, or why the sink was not asked.
    pub notes: Vec<String>,
}
