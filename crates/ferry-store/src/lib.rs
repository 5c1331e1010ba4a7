//! ferry's embedded durable log: the catalog, the hot tier (a segment WAL
//! shared by all ledgers, written by one group-commit flusher), recovery,
//! and the read path. No HTTP, no sinks.
//!
//! Data flow: `Store::append` → flusher queue → one write + one fdatasync
//! per group → ids become visible in each ledger's index → acks. Reads
//! resolve ids through the index and `pread` the WAL. See ARCHITECTURE.md.

mod catalog;
pub mod chunks;
mod error;
mod flusher;
mod freezer;
mod health;
mod ledger;
mod packs;
mod recovery;
mod shared;
pub mod sim;
mod store;
pub mod verify;
mod wal;

pub use ferry_fs::{RealFs, durable, vfs};

pub use catalog::{Catalog, CatalogOp, CursorValue, LedgerMeta, RedbCatalog};
pub use error::{Result, StoreError};
pub use shared::{RetentionHold, RetentionPolicy};
pub use store::{AppendOutcome, CursorUpdate, ExportCursor, LedgerHead, LedgerInfo, ReadBatch, Store, StoreConfig};
