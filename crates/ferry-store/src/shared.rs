//! What the store's threads share: the catalog, the ledgers, the segments,
//! the packs, the health flag, and the retention settings. The flusher
//! (appends, relocation), the freezer (freeze, retention, deletion,
//! segment release) and readers all work on one `Arc<Shared>`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use ferry_core::bus::Bus;
use ferry_core::events::{Appended, SystemEvent};
use ferry_core::limits::READ_BYTES_MAX;
use ferry_core::{EntryId, LedgerName};
use ferry_format::wal::decode_record;

use crate::catalog::Catalog;
use crate::chunks::{OwnedRecord, PackLayout};
use crate::error::{Result, StoreError};
use crate::health::Health;
use crate::ledger::LedgerState;
use crate::packs::{PackCache, owned};
use crate::wal::{RELEASED, RecordPos, Segments};
use ferry_fs::{RealFs, durable};

/// Something that needs a ledger's entries from some id on, so retention
/// must not prune them (an exporter's cursor, a snapshot pin).
pub trait RetentionHold: Send + Sync + std::fmt::Debug {
    /// The lowest id this holder still needs, or `None` for no need.
    fn needs_from(&self, ledger: &LedgerName) -> Option<EntryId>;
}

/// `[retention]`: how old a frozen chunk may get before it is pruned.
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    /// `None`: keep forever.
    pub max_age: Option<Duration>,
    /// Per-ledger overrides of `max_age`.
    pub ledgers: BTreeMap<LedgerName, Duration>,
}

impl RetentionPolicy {
    pub fn max_age(&self, ledger: &LedgerName) -> Option<Duration> {
        self.ledgers.get(ledger).copied().or(self.max_age)
    }
}

pub(crate) struct Shared {
    pub catalog: Box<dyn Catalog>,
    pub ledgers: RwLock<BTreeMap<LedgerName, Arc<LedgerState>>>,
    pub segments: Segments,
    pub health: Health,
    pub layout: PackLayout,
    pub packs: PackCache,
    pub vfs: RealFs,
    pub chunk_entries: u64,
    pub format_version: u32,
    /// A segment is sealed past this size.
    pub wal_segment_bytes: u64,
    pub retention: RetentionPolicy,
    pub holds: RwLock<Vec<Arc<dyn RetentionHold>>>,
    /// The durable end of the WAL as `segment << 32 | offset`.
    pub durable_end: AtomicU64,
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

    /// Unlinks every sealed segment with nothing live left, then syncs the
    /// hot directory once. A failure poisons the store.
    pub fn release_dead_segments(&self) -> Result<()> {
        let dead = self.segments.take_dead();
        if dead.is_empty() {
            return Ok(());
        }
        let result = dead
            .iter()
            .try_for_each(|path| durable::remove_file(path))
            .and_then(|()| durable::sync_dir(self.segments.dir()));
        match result {
            Ok(()) => {
                tracing::debug!(segments = dead.len(), "released WAL segments");
                Ok(())
            }
            Err(e) => {
                self.health.poison(e.to_string());
                Err(e.into())
            }
        }
    }

    /// Loads hot records at `positions` (ids from `from` on), one `pread`
    /// per run of adjacent records, checking each is the ledger and id the
    /// index said. `Err(None)` means a segment was released meanwhile (the
    /// records moved): look them up again.
    pub fn load_hot(
        &self,
        ledger: &LedgerName,
        from: EntryId,
        positions: &[RecordPos],
    ) -> std::result::Result<Vec<OwnedRecord>, Option<StoreError>> {
        let mut out = Vec::with_capacity(positions.len());
        let mut rest = positions;
        while let Some(first) = rest.first() {
            let run = rest
                .windows(2)
                .take_while(|w| w[1].segment == w[0].segment && w[1].offset == w[0].offset + w[0].len)
                .count()
                + 1;
            let (now, later) = rest.split_at(run);
            let end = now.last().map(|p| p.offset + p.len).expect("run is non-empty");
            let bytes = match self.segments.read_at(first.segment, first.offset.into(), (end - first.offset) as usize) {
                Ok(b) => b,
                Err(StoreError::Corrupted { reason, .. }) if reason == RELEASED => return Err(None),
                Err(e) => return Err(Some(e)),
            };
            for pos in now {
                let at = (pos.offset - first.offset) as usize;
                let id = from + out.len() as u64;
                out.push(self.decode_hot(ledger, id, *pos, &bytes[at..at + pos.len as usize]).map_err(Some)?);
            }
            rest = later;
        }
        Ok(out)
    }

    fn decode_hot(&self, ledger: &LedgerName, id: EntryId, pos: RecordPos, bytes: &[u8]) -> Result<OwnedRecord> {
        let corrupted = |reason: String| StoreError::Corrupted {
            segment: self.segments.path(pos.segment),
            offset: pos.offset.into(),
            ledger: Some(ledger.clone()),
            reason,
        };
        let (record, _) = decode_record(bytes).map_err(|e| corrupted(e.to_string()))?;
        if record.ledger != ledger.as_str() || record.id != id {
            return Err(corrupted(format!(
                "index expected {ledger}/{id}, the record is {}/{}",
                record.ledger, record.id
            )));
        }
        owned(&record).map_err(corrupted)
    }

    /// Reads up to `limit` records from `from` (≥ First) across packs and
    /// the hot tier, stopping after `READ_BYTES_MAX` (at least one record).
    pub fn read_records(&self, state: &LedgerState, from: EntryId, limit: usize) -> Result<Vec<OwnedRecord>> {
        let mut out: Vec<OwnedRecord> = Vec::with_capacity(limit.min(16 * 1024));
        let mut released_retries = 0;
        let bytes = |out: &[OwnedRecord]| out.iter().map(|r| r.payload.len()).sum::<usize>();
        loop {
            let id = from + out.len() as u64;
            let left = limit - out.len();
            let used = bytes(&out);
            if left == 0 || (!out.is_empty() && used >= READ_BYTES_MAX) {
                return Ok(out);
            }
            let (first, hot_base, pack, positions) = {
                let index = state.index.read().expect("index lock");
                let chunk = id.saturating_sub(1) / self.chunk_entries;
                let pack = (id < index.hot_base).then(|| index.frozen.get(&chunk).cloned()).flatten();
                let positions = if id >= index.hot_base {
                    trim(index.hot_range(id, left), READ_BYTES_MAX - used.min(READ_BYTES_MAX))
                } else {
                    Vec::new()
                };
                (index.first, index.hot_base, pack.map(|p| (chunk, p)), positions)
            };
            if id < first {
                return Err(StoreError::BelowFirst { ledger: state.name.clone(), from: id, first });
            }
            if id < hot_base {
                let Some((chunk, info)) = pack else {
                    return Err(StoreError::CatalogCorrupted(format!(
                        "ledger {}: id {id} is below the hot tier but no frozen chunk holds it",
                        state.name
                    )));
                };
                let before = out.len();
                let reader = self.packs.get(&self.vfs, &self.layout, &state.name, chunk, &info);
                match reader.and_then(|r| r.read(id, left, READ_BYTES_MAX - used.min(READ_BYTES_MAX), &mut out)) {
                    Ok(()) if out.len() > before => continue,
                    Ok(()) => return Ok(out),
                    // Pruned while we read: `first` moved past it.
                    Err(_) if state.index.read().expect("index lock").first > id => continue,
                    Err(e) => return Err(e),
                }
            }
            if positions.is_empty() {
                return Ok(out);
            }
            match self.load_hot(&state.name, id, &positions) {
                Ok(records) => out.extend(records),
                Err(None) if released_retries < 8 => released_retries += 1,
                Err(None) => {
                    return Err(StoreError::io("read the hot tier", std::io::Error::other("segments keep moving")));
                }
                Err(Some(e)) => return Err(e),
            }
        }
    }
}

/// The leading positions whose records fit in `bytes_max` (at least one).
fn trim(positions: &[RecordPos], bytes_max: usize) -> Vec<RecordPos> {
    let mut bytes = 0usize;
    let n = positions
        .iter()
        .take_while(|p| {
            let fits = bytes < bytes_max.max(1);
            bytes += p.len as usize;
            fits
        })
        .count();
    positions[..n].to_vec()
}
