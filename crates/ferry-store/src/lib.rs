//! ferry's embedded durable log: the catalog, the hot tier (a segment WAL
//! shared by all ledgers, written by one group-commit flusher), recovery,
//! and the read path. No HTTP, no sinks.
//!
//! Data flow: `Store::append` → flusher queue → one write + one fdatasync
//! per group → ids become visible in each ledger's index → acks. Reads
//! resolve ids through the index and `pread` the WAL. See ARCHITECTURE.md.

mod catalog;
mod config;
mod disk;
mod error;
mod flusher;
mod freezer;
mod health;
mod idempotency;
mod import;
mod layout;
mod ledger;
mod messages;
pub mod pack_protocols;
mod pack_reader;
mod pins;
mod read;
mod recovery;
mod roots;
mod shared;
pub mod sim;
mod store;
pub mod verify;
mod wal;
mod watch_sessions;

pub use ferry_fs::{RealFs, durable, vfs};

pub use catalog::{Catalog, CatalogOp, CursorValue, LedgerMeta, RedbCatalog};
pub use config::CHECKPOINT_EVERY_DEFAULT;
pub use config::{LedgerRetention, RetentionHold, RetentionPolicy, StoreConfig};
pub use error::{Result, StoreError};
pub use ferry_format::keys::WATCH_SESSION_DIGITS;
pub use import::ImportEntry;
pub use messages::{AppendOutcome, ImportOutcome};
pub use pins::{Pin, PinnedEntry, PinnedLedger, PinnedRead};
pub use roots::{LockedRoots, Roots, lock_roots};
pub use store::{ChainHead, ChunkCounts, CursorUpdate, ExportCursor, LedgerHead, LedgerInfo, ReadBatch, Store};
pub use watch_sessions::{WatchCut, WatchFrom, WatchPosition, WatchPositionRecord, WatchSessionRecord, WatchWrite};
