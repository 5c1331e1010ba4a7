//! In-memory state of one ledger: its catalog metadata and the index from id
//! to WAL position of every visible entry.
//!
//! **Architecture Invariant:** only the flusher pushes to an index, and only
//! after the records are durable; so every id a reader can see is durable,
//! and `head` only moves forward.

use std::sync::RwLock;

use ferry_core::{EntryId, LedgerName};

use crate::catalog::LedgerMeta;
use crate::wal::RecordPos;

#[derive(Debug)]
pub(crate) struct LedgerState {
    pub name: LedgerName,
    pub meta: LedgerMeta,
    pub index: RwLock<LedgerIndex>,
}

impl LedgerState {
    pub fn new(name: LedgerName, meta: LedgerMeta) -> Self {
        let index = LedgerIndex { first: meta.first, positions: Vec::new(), last_ts: 0, bytes: 0 };
        Self { name, meta, index: RwLock::new(index) }
    }
}

/// Positions of ids `first ..= head`, densely: `positions[id - first]`.
#[derive(Debug)]
pub(crate) struct LedgerIndex {
    pub first: EntryId,
    pub positions: Vec<RecordPos>,
    /// Timestamp of the head entry (0 for an empty ledger).
    pub last_ts: u64,
    /// Encoded size of the indexed records.
    pub bytes: u64,
}

impl LedgerIndex {
    /// The highest id, or `first - 1` when there is none.
    pub fn head(&self) -> EntryId {
        self.first + self.positions.len() as u64 - 1
    }

    pub fn next_id(&self) -> EntryId {
        self.head() + 1
    }

    /// Adds the next entry. Panics if ids or timestamps would go backwards:
    /// that is a broken storage invariant, and the process must stop.
    pub fn push(&mut self, id: EntryId, ts: u64, pos: RecordPos) {
        assert_eq!(id, self.next_id(), "ids must be dense");
        assert!(ts >= self.last_ts, "timestamps must not decrease");
        self.positions.push(pos);
        self.last_ts = ts;
        self.bytes += u64::from(pos.len);
    }

    /// Positions of `from ..= from + limit - 1`, clipped to the head.
    pub fn range(&self, from: EntryId, limit: usize) -> &[RecordPos] {
        let start = (from.saturating_sub(self.first) as usize).min(self.positions.len());
        let end = start.saturating_add(limit).min(self.positions.len());
        &self.positions[start..end]
    }
}
