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
//! - `status.rs` — what `GET /v1/sources` shows.
//!
//! Every failure message passes `ferry_core::redact::redact_userinfo`
//! before it reaches status, events or logs: no URL password is shown.
//!
//! Data flow, per batch, in one source-database transaction: select the
//! oldest rows with `exported_at IS NULL … FOR UPDATE SKIP LOCKED`, append
//! them durably with idempotency key `outbox:{source}:{row id}`, mark them
//! `exported_at`, commit. A crash between the append and the commit
//! replays the batch, and the keys turn the replay into the original ids.
//!
//! Why each committed outbox row becomes exactly one entry:
//! - At least once. A row is marked only by the transaction that appended
//!   it, after the append returned (fsync'd). Anything failing before the
//!   commit (the store, the database, the process) rolls the mark back and
//!   the row is selected again. Rows are found by `exported_at IS NULL`,
//!   never by an id watermark: ids come from sequences and are not commit
//!   ordered, so a row whose transaction commits after a higher id was
//!   drained is still found on a later batch. `SKIP LOCKED` only skips rows
//!   some transaction holds right now; they are seen once it ends.
//! - At most once. A replayed row carries the same idempotency key, so the
//!   store answers the entry already written instead of writing another
//!   (for the store's idempotency window, 24 h: a row re-queued by hand
//!   later than that is appended again). One drainer per source: the batch
//!   runs on the very connection that holds the source's session lock
//!   (`pg_try_advisory_lock` / `GET_LOCK`), so a drainer that loses its
//!   connection loses the lock and its open batch together, and the next
//!   holder starts from what the database committed.
//! - Never stuck, never lost. A row that cannot be an entry (not JSON, not
//!   portable, a bad ledger name, too large) goes to the dead-letter ledger
//!   with the reason, marked in the same transaction and under its own key
//!   `outbox:{source}:{id}:dead`; without one, the rows before it are
//!   drained and the source turns `failed`, naming it, retrying every few
//!   seconds until the row is fixed or removed.

mod db;
mod drain;
mod runtime;
mod settings;
mod status;

pub use runtime::Sources;
pub use settings::{Columns, Driver, Ident, LedgerFrom, SettingsError, SourceConfig, SourceSettings};
pub use status::{SourceState, SourceStatus};
