//! In-memory state of one ledger: its catalog metadata, its frozen chunks,
//! and the index from id to WAL position of every entry still in the hot
//! tier.
//!
//! **Architecture Invariant:** only the flusher appends to an index, and
//! only after the records are durable; only the freezer moves ids from the
//! hot part to `frozen`, and only after their `frozen` key is durable. So
//! every id a reader can see is durable, `head` only moves forward, and
//! `first <= hot_base`.

use std::collections::BTreeMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use ferry_core::{EntryId, LedgerName};
use ferry_format::chain::{self, ChainHash};

use crate::catalog::LedgerMeta;
use crate::pack_protocols::PackInfo;
use crate::wal::RecordPos;

#[derive(Debug)]
pub(crate) struct LedgerState {
    pub name: LedgerName,
    pub meta: LedgerMeta,
    /// `meta.incarnation`: tells this ledger from every earlier or later
    /// one of the same name, across restarts (a cursor write for a deleted
    /// ledger must not land on its successor).
    pub incarnation: u64,
    pub index: RwLock<LedgerIndex>,
    /// Set when deletion begins: the flusher takes no more appends for it.
    deleted: AtomicBool,
    /// Set while the freezer has been told about a full chunk.
    pub freeze_queued: AtomicBool,
}

impl LedgerState {
    pub fn new(name: LedgerName, meta: LedgerMeta, chunk_entries: u64) -> Self {
        let mut index = LedgerIndex::new(meta.first, chunk_entries);
        if meta.chain {
            // Before the first retained entry: `h_0` until retention pruned
            // the front, then what the prune recorded. Recovery moves
            // `last_hash` to the head's stored hash.
            let before_first = match &meta.first_prev_hash {
                Some(hex) => chain::from_hex(hex),
                None if meta.first == 1 => Some(chain::genesis(name.as_str(), meta.incarnation)),
                None => None,
            };
            index.first_prev_hash = before_first;
            index.last_hash = before_first;
            index.chained = true;
        }
        Self {
            name,
            incarnation: meta.incarnation,
            meta,
            index: RwLock::new(index),
            deleted: AtomicBool::new(false),
            freeze_queued: AtomicBool::new(false),
        }
    }

    pub fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::SeqCst);
    }

    /// A deletion refused before anything durable changed (no space, no
    /// descriptor): the ledger takes appends again.
    pub fn unmark_deleted(&self) {
        self.deleted.store(false, Ordering::SeqCst);
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::SeqCst)
    }
}

/// Where a ledger's ids are: `[first, hot_base)` in frozen packs,
/// `[hot_base, head]` in the WAL at `positions[id - hot_base]`.
#[derive(Debug)]
pub(crate) struct LedgerIndex {
    pub first: EntryId,
    pub chunk_entries: u64,
    /// Retained frozen chunks by chunk number; added and removed only
    /// through `add_frozen`, `freeze_front` and `prune_front`, which keep
    /// `frozen_bytes`.
    pub frozen: BTreeMap<u64, PackInfo>,
    /// The pack sizes of `frozen`, kept as it changes: the quota check on
    /// every append and each retention pass read it without a walk.
    frozen_bytes: u64,
    /// The first id in the hot tier; `hot_base - 1` is a chunk boundary.
    pub hot_base: EntryId,
    pub positions: Vec<RecordPos>,
    /// Timestamp of the head entry (0 for an empty ledger).
    pub last_ts: u64,
    /// Encoded size of the hot records.
    pub hot_bytes: u64,
    /// The first chunk whose `keys:` value may still be in the catalog:
    /// those before it passed their window and were deleted.
    pub keys_kept_from: u64,
    /// The ledger has a hash chain (`LedgerMeta::chain`).
    pub chained: bool,
    /// The chain hash of the head entry (of the entry before First for a
    /// ledger without entries): what the next append chains from. Set by
    /// the flusher with each durable group and by recovery from the head's
    /// stored record, never recomputed from anything mutable. `None` for a
    /// ledger without a chain.
    pub last_hash: Option<ChainHash>,
    /// The chain hash of the entry before First (`h_0` while First is 1).
    pub first_prev_hash: Option<ChainHash>,
}

impl LedgerIndex {
    pub fn new(first: EntryId, chunk_entries: u64) -> Self {
        // Everything below `first` was frozen and pruned, so the hot tier
        // starts at the chunk boundary `first` sits on.
        Self {
            first,
            chunk_entries,
            frozen: BTreeMap::new(),
            frozen_bytes: 0,
            hot_base: first,
            positions: Vec::new(),
            last_ts: 0,
            hot_bytes: 0,
            keys_kept_from: 0,
            chained: false,
            last_hash: None,
            first_prev_hash: None,
        }
    }

    /// The highest id, or `first - 1` when there is none.
    pub fn head(&self) -> EntryId {
        self.hot_base + self.positions.len() as u64 - 1
    }

    pub fn next_id(&self) -> EntryId {
        self.head() + 1
    }

    /// The chunk the hot tier starts with, and whether it is complete.
    pub fn next_chunk_to_freeze(&self) -> Option<u64> {
        (self.positions.len() as u64 >= self.chunk_entries).then(|| (self.hot_base - 1) / self.chunk_entries)
    }

    /// Adds the next entry. Panics if ids or timestamps would go backwards:
    /// that is a broken storage invariant, and the process must stop.
    pub fn push(&mut self, id: EntryId, ts: u64, pos: RecordPos) {
        assert_eq!(id, self.next_id(), "ids must be dense");
        assert!(ts >= self.last_ts, "timestamps must not decrease");
        self.positions.push(pos);
        self.last_ts = ts;
        self.hot_bytes += u64::from(pos.len);
    }

    /// Hot positions of `from ..= from + limit - 1`, clipped to the head;
    /// `from` must be at least `hot_base`.
    pub fn hot_range(&self, from: EntryId, limit: usize) -> &[RecordPos] {
        let start = (from.saturating_sub(self.hot_base) as usize).min(self.positions.len());
        let end = start.saturating_add(limit).min(self.positions.len());
        &self.positions[start..end]
    }

    /// Where `id` is in the WAL, if it is hot.
    pub fn hot_pos(&self, id: EntryId) -> Option<RecordPos> {
        id.checked_sub(self.hot_base).and_then(|i| self.positions.get(i as usize)).copied()
    }

    /// Moves a frozen chunk out of the hot tier; returns the positions it
    /// leaves (for segment accounting).
    pub fn freeze_front(&mut self, chunk: u64, info: PackInfo) -> Vec<RecordPos> {
        assert_eq!(info.first_id, self.hot_base, "chunks freeze in order");
        assert_eq!(info.count, self.chunk_entries);
        let left: Vec<RecordPos> = self.positions.drain(..self.chunk_entries as usize).collect();
        self.hot_bytes -= left.iter().map(|p| u64::from(p.len)).sum::<u64>();
        self.hot_base += self.chunk_entries;
        self.add_frozen(chunk, info);
        left
    }

    /// Adds a frozen chunk (at recovery, from its catalog key).
    pub fn add_frozen(&mut self, chunk: u64, info: PackInfo) {
        self.frozen_bytes += info.len;
        if let Some(replaced) = self.frozen.insert(chunk, info) {
            self.frozen_bytes -= replaced.len;
        }
    }

    /// Drops a pruned chunk; `first` moves past it.
    pub fn prune_front(&mut self, chunk: u64) -> Option<PackInfo> {
        let info = self.frozen.remove(&chunk)?;
        self.frozen_bytes -= info.len;
        assert!(info.last_id() + 1 > self.first, "first only moves forward");
        self.first = info.last_id() + 1;
        if self.chained {
            self.first_prev_hash = info.last_hash.as_deref().and_then(chain::from_hex);
        }
        Some(info)
    }

    /// What the ledger's records take in storage, the unit of `bytes` in
    /// the API, of retention by size and of the quota: the encoded WAL
    /// records of its hot entries plus the files of its frozen chunks.
    pub fn bytes(&self) -> u64 {
        self.hot_bytes + self.frozen_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(first_id: EntryId, count: u64, len: u64) -> PackInfo {
        PackInfo {
            len,
            sha256: String::new(),
            format_version: 3,
            first_id,
            count,
            first_ts: 1,
            last_ts: 1,
            idempotency_keys: 0,
            last_hash: None,
        }
    }

    #[test]
    fn bytes_follow_appends_freezes_and_prunes_without_a_walk() {
        let mut index = LedgerIndex::new(1, 2);
        for id in 1..=5 {
            index.push(id, 1, RecordPos { segment: 1, offset: 100 * id as u32, len: 40 });
        }
        assert_eq!(index.bytes(), 200);
        index.freeze_front(0, pack(1, 2, 30));
        index.freeze_front(1, pack(3, 2, 25));
        assert_eq!(index.bytes(), 40 + 30 + 25, "a frozen chunk counts its pack, its records leave");
        index.prune_front(0);
        assert_eq!((index.bytes(), index.first), (40 + 25, 3));
        // Recovery adds frozen chunks from their keys; the same chunk twice
        // counts once.
        let mut recovered = LedgerIndex::new(3, 2);
        recovered.add_frozen(1, pack(3, 2, 25));
        recovered.add_frozen(1, pack(3, 2, 25));
        assert_eq!(recovered.bytes(), 25);
    }
}
