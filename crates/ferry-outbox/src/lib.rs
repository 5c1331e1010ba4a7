//! The transactional outbox source (SPEC §6): applications write an
//! outbox row in the same transaction as their business change; ferry
//! drains those rows into ledgers, without a replication slot, without
//! losing a row whose transaction commits late and without duplicating
//! one after a crash.
//!
//! - `settings.rs` — `[[sources]]` as written (`SourceConfig`), validated
//!   into `SourceSettings` without touching the network; every table and
//!   column name is a checked identifier before it reaches SQL.
//! - `runtime.rs` — `Sources`: one task per source, its status, shutdown.
//! - `drain.rs` — a source's task: lock, batches, backoff, status; the
//!   exactly-once argument in full.
//! - `db.rs` — the two drivers behind one connection type: quoted
//!   statements, the lock and who holds it.
//! - `redact.rs` — no URL password in any message.
//! - `status.rs` — what `GET /v1/sources` shows.
//!
//! Data flow, per batch, in one source-database transaction: select the
//! oldest rows with `exported_at IS NULL … FOR UPDATE SKIP LOCKED`, append
//! them durably with idempotency key `outbox:{source}:{row id}`, mark them
//! `exported_at`, commit. A crash between the append and the commit
//! replays the batch, and the keys turn the replay into the original ids.

mod db;
mod drain;
mod redact;
mod runtime;
mod settings;
mod status;

pub use runtime::Sources;
pub use settings::{Columns, Driver, Ident, LedgerFrom, SettingsError, SourceConfig, SourceSettings};
pub use status::{SourceState, SourceStatus};
