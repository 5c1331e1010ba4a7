//! The idempotency index: keys seen in the last 24 h, per ledger, with the
//! id each got. Filled by recovery, used and updated by the flusher.

use std::collections::{HashMap, VecDeque};

use ferry_core::limits::IDEMPOTENCY_WINDOW_MS;
use ferry_core::{EntryId, LedgerName};

/// Idempotency keys seen in the last 24 h, per ledger, with the id they got.
#[derive(Debug, Default)]
pub(crate) struct IdempotencyIndex {
    ids: HashMap<(LedgerName, String), EntryId>,
    by_age: VecDeque<(u64, LedgerName, String, EntryId)>,
}

impl IdempotencyIndex {
    pub fn insert(&mut self, ledger: &LedgerName, key: &str, id: EntryId, ts: u64) {
        self.ids.insert((ledger.clone(), key.to_owned()), id);
        self.by_age.push_back((ts, ledger.clone(), key.to_owned(), id));
    }

    pub fn get(&self, ledger: &LedgerName, key: &str) -> Option<EntryId> {
        // Avoids allocating on the miss path only when the map is empty.
        if self.ids.is_empty() {
            return None;
        }
        self.ids.get(&(ledger.clone(), key.to_owned())).copied()
    }

    /// Forgets every key of a ledger.
    pub fn forget(&mut self, ledger: &LedgerName) {
        self.ids.retain(|(l, _), _| l != ledger);
        self.by_age.retain(|(_, l, ..)| l != ledger);
    }

    /// Forgets keys older than the window. A key used again after it had
    /// expired (recovery replays both uses) keeps its newer id.
    pub fn expire(&mut self, now: u64) {
        let horizon = now.saturating_sub(IDEMPOTENCY_WINDOW_MS);
        while self.by_age.front().is_some_and(|(ts, ..)| *ts < horizon) {
            let (_, ledger, key, id) = self.by_age.pop_front().expect("front exists");
            let slot = (ledger, key);
            if self.ids.get(&slot) == Some(&id) {
                self.ids.remove(&slot);
            }
        }
    }
}
