//! Backups of ferry ledgers (SPEC §7) that `cat`, `jq` and `sha256sum`
//! can read and check without ferry, and restore exactly.
//!
//! - `create` takes a snapshot pin through a [`Source`] (a running server,
//!   or a stopped node's store opened in-process), renews it every third
//!   of its ttl, reads every ledger from First to its pinned head and
//!   writes the layout of `layout.rs`, `MANIFEST.json` last and atomically.
//! - `verify` checks a backup (or a chain of incremental backups) from the
//!   files alone: the manifest's own hash, `CHECKSUMS`, every line, dense
//!   ids and the hash chain across files and backups.
//! - `restore` verifies first, then imports every ledger through a
//!   [`Target`] (the server's import route, or a store opened in-process).
//!
//! Data flows one way: source → writer (create), files → verify → target
//! (restore). The format is documented in `docs/backup.md`.

mod create;
mod error;
mod layout;
mod line;
mod manifest;
mod progress;
mod restore;
mod source;
mod target;
mod verify;
mod writer;

pub use create::{CreateOptions, CreateReport, create};
pub use error::{BackupError, Result};
pub use layout::{FILE_BYTES_MAX, MANIFEST};
pub use line::BackupLine;
pub use manifest::{FileManifest, Incremental, LedgerFile, LedgerManifest, Manifest, PinRecord};
pub use restore::{RestoreMode, RestoreReport, restore};
pub use source::Source;
pub use target::Target;
pub use verify::{Verified, prove_anchor, verify, verify_chain};
