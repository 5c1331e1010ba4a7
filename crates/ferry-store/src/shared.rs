//! What the store's threads share: the catalog, the ledgers, the segments,
//! the packs, the health flag, and the retention settings (the read path
//! over them is `read.rs`). The flusher
//! (appends, relocation), the freezer (freeze, retention, deletion,
//! segment release) and readers all work on one `Arc<Shared>`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use ferry_core::bus::Bus;
use ferry_core::events::{Appended, SystemEvent};
use ferry_core::{EntryId, LedgerName, NewEntry};
use ferry_format::wal as wal_format;

use crate::catalog::{Catalog, CatalogOp};
use crate::config::{RetentionHold, RetentionPolicy};
use crate::disk::Disk;
use crate::error::{Result, StoreError};
use crate::health::Health;
use crate::ledger::LedgerState;
use crate::pack_protocols::PackLayout;
use crate::pack_reader::PackCache;
use crate::wal::Segments;
use ferry_fs::RealFs;

pub(crate) struct Shared {
    pub catalog: Box<dyn Catalog>,
    pub ledgers: RwLock<BTreeMap<LedgerName, Arc<LedgerState>>>,
    pub segments: Segments,
    pub health: Arc<Health>,
    /// The checked disk every WAL file operation goes through.
    pub disk: Disk,
    pub layout: PackLayout,
    pub packs: PackCache,
    pub vfs: RealFs,
    pub chunk_entries: u64,
    pub format_version: u32,
    /// `config:fingerprint_key`: the secret of idempotency-key fingerprints.
    pub fingerprint_key: u64,
    /// A segment is sealed past this size.
    pub wal_segment_bytes: u64,
    pub retention: RetentionPolicy,
    /// `[storage] max_ledger_bytes`; `None`: no quota.
    pub max_ledger_bytes: Option<u64>,
    pub holds: RwLock<Vec<Arc<dyn RetentionHold>>>,
    /// The snapshot pins (also one of `holds`).
    pub pins: Arc<crate::pins::PinTable>,
    /// `[storage] hash_chain`: a ledger created with a matching name gets
    /// a hash chain.
    pub hash_chain: Vec<glob::Pattern>,
    /// `[storage] checkpoint_every` (0: no checkpoint events).
    pub checkpoint_every: u64,
    /// The durable end of the WAL as `segment << 32 | offset`.
    pub durable_end: AtomicU64,
    /// No new entry is stamped below this (unix ms): raised by the cut at
    /// the start of a watch (`watch_sessions.rs`), so that entries after
    /// the cut stay after it even if the clock steps back.
    pub ts_floor: AtomicU64,
    /// Set by shutdown: background work stops between steps (a freeze in
    /// progress finishes; the rest waits for the next start).
    pub stopping: std::sync::atomic::AtomicBool,
    /// New entries, under the ledger's name: wakes watchers and exporters.
    pub appends: Bus<Appended>,
    /// System events, under their keys.
    pub events: Bus<SystemEvent>,
    /// Held while cursors are checked and written, and while a deletion
    /// removes a ledger's cursors: a cursor never outlives its ledger.
    pub cursor_lock: std::sync::Mutex<()>,
    /// Cursor commits waiting for the holder of `cursor_lock` (group
    /// commit: see `Store::commit_cursors_blocking`).
    pub cursor_queue: std::sync::Mutex<Vec<crate::store::QueuedCursors>>,
    /// `Store::read` calls, so tests and metrics can prove idle work reads
    /// nothing.
    pub reads: AtomicU64,
}

impl Shared {
    pub fn ledger(&self, name: &LedgerName) -> Option<Arc<LedgerState>> {
        self.ledgers.read().expect("ledgers lock").get(name).cloned()
    }

    pub fn set_durable_end(&self, segment: u32, offset: u64) {
        self.durable_end.store((u64::from(segment) << 32) | offset, Ordering::SeqCst);
    }

    pub fn durable_end(&self) -> (u32, u64) {
        let v = self.durable_end.load(Ordering::SeqCst);
        ((v >> 32) as u32, v & u64::from(u32::MAX))
    }

    /// The lowest id any hold needs of `ledger`.
    pub fn hold_floor(&self, ledger: &LedgerName) -> Option<EntryId> {
        self.holds.read().expect("holds lock").iter().filter_map(|h| h.needs_from(ledger)).min()
    }

    /// Admits an append of `entries` to a ledger holding `held` bytes (its
    /// `bytes` plus what earlier appends of the same group add), or refuses
    /// it with `QuotaExceeded` when it would pass `max_ledger_bytes`.
    /// Returns the bytes it adds. O(entries): nothing is walked.
    pub fn admit<'a>(
        &self,
        ledger: &LedgerName,
        chained: bool,
        held: u64,
        entries: impl Iterator<Item = &'a NewEntry>,
    ) -> Result<u64> {
        let adding = entries.map(|e| wal_bytes(ledger, e, chained)).sum();
        match self.max_ledger_bytes {
            Some(max) if held + adding > max => {
                metrics::counter!(ferry_core::metric_names::QUOTA_REFUSED_APPENDS_TOTAL).increment(1);
                Err(StoreError::QuotaExceeded { ledger: ledger.clone(), bytes: held, adding, max })
            }
            _ => Ok(adding),
        }
    }

    /// One durable catalog commit of a serving store: refused for lack of
    /// space, it changed nothing and the store goes on (`NoSpace`); any
    /// other failure poisons the store, as a failed sync does.
    pub fn commit_or_poison(&self, ops: &[CatalogOp]) -> Result<()> {
        let committed = self.catalog.commit(ops);
        if let Err(e) = &committed
            && !e.is_no_space()
        {
            self.health.poison(e.to_string());
        }
        committed
    }

    /// Unlinks every sealed segment with nothing live left, then syncs the
    /// hot directory once. A failure poisons the store (inside `Disk`).
    pub fn release_dead_segments(&self) -> Result<()> {
        let dead = self.segments.take_dead();
        if dead.is_empty() {
            return Ok(());
        }
        dead.iter().try_for_each(|path| self.disk.remove_segment(path))?;
        self.disk.sync_dir(self.segments.dir())?;
        tracing::debug!(segments = dead.len(), "released WAL segments");
        Ok(())
    }
}

/// The bytes `entry` takes as a WAL record of `ledger` (with its chain hash
/// if `chained`): what it adds to the ledger's `bytes` while hot.
pub(crate) fn wal_bytes(ledger: &LedgerName, entry: &NewEntry, chained: bool) -> u64 {
    wal_format::encoded_len(&wal_format::WalRecord {
        ledger: ledger.as_str(),
        id: 1,
        ts: 0,
        key: entry.key.as_deref(),
        idempotency_key: entry.idempotency_key.as_deref(),
        batch_continues: false,
        group_start: false,
        relocated: false,
        hash: chained.then_some([0; wal_format::HASH_BYTES]),
        payload: entry.payload.as_str().as_bytes(),
    }) as u64
}
