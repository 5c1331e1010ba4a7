//! ferry's vocabulary: the names, entries, payloads and limits every other
//! crate speaks, and the in-process event bus. Pure data, validation and
//! in-memory channels; no I/O.

pub mod bus;
mod entry;
pub mod events;
mod ledger_name;
pub mod limits;
pub mod metric_names;
mod payload;
pub mod redact;
pub mod units;

pub use entry::{Entry, EntryId, NewEntry};
pub use ledger_name::{InvalidLedgerName, LedgerName};
pub use payload::{InvalidPayload, Payload, Problem, Unportable, check_portable};

/// Milliseconds since the unix epoch, as stored in entry timestamps.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
