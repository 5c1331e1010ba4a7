//! The idempotency index: for every ledger, a 64-bit fingerprint of each
//! idempotency key used in the last 24 h → the id it got. Filled by
//! recovery, used and updated by the flusher.
//!
//! The key itself is not kept: it is in the entry's record, and a
//! fingerprint hit is confirmed by reading that record (`StoredKey`), which
//! also tells whether the key is still inside its window. So memory is
//! about 16 bytes per live key plus the table's slack, whatever the keys'
//! length (see `docs/decisions/2026-12-04-bounded-idempotency-index.md`).
//! Fingerprints are `ferry_format::fingerprints` (SipHash-1-3 under the
//! data directory's secret key), the same the catalog keeps for frozen
//! chunks, so a restart reloads them without reading packs. Two live keys
//! of one ledger with the same fingerprint — a 2⁻⁶⁴ event per pair, which
//! a client cannot aim at without the secret — are both kept exact: the
//! older one moves to a small map of whole keys.
//!
//! **Architecture Invariant:** a key maps to at most one id, and to the
//! id its first use within the window got; an answer is never taken from a
//! fingerprint alone.

use std::collections::{BTreeMap, HashMap, VecDeque};

use ferry_core::limits::IDEMPOTENCY_WINDOW_MS;
use ferry_core::{EntryId, LedgerName};
use nohash_hasher::BuildNoHashHasher;

use crate::error::Result;

/// How often the index drops the fingerprints of keys whose window has
/// passed. Until then an expired key costs memory only: every hit is
/// checked against the record's timestamp.
const SWEEP_EVERY_MS: u64 = 60_000;
/// Table entries one sweep step visits before it yields to the flusher's
/// next group (about a millisecond of work).
const SWEEP_STEP_ENTRIES: usize = 256 * 1024;

/// What the store holds under an id: the entry's idempotency key and ts, or
/// `None` when the id is no longer (or not yet) readable.
pub(crate) type StoredKey = Option<(Option<String>, u64)>;

/// What a key was used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// Used within the window: the id its first use got.
    Original(EntryId),
    /// Not used within the window.
    New,
}

/// One ledger's keys.
#[derive(Debug)]
struct KeyTable {
    /// The ledger incarnation the keys belong to: a table of an earlier
    /// ledger of the name is never consulted.
    incarnation: u64,
    ids: HashMap<u64, EntryId, BuildNoHashHasher<u64>>,
    /// Live keys whose fingerprint a later live key of the ledger holds.
    collided: HashMap<String, EntryId>,
}

impl KeyTable {
    fn new(incarnation: u64) -> Self {
        Self { incarnation, ids: HashMap::default(), collided: HashMap::new() }
    }
}

/// Idempotency keys seen in the last 24 h, per ledger, with the id they got.
#[derive(Debug)]
pub(crate) struct IdempotencyIndex {
    /// `config:fingerprint_key`.
    secret: u64,
    ledgers: HashMap<LedgerName, KeyTable>,
    /// The ledgers the current sweep round has yet to visit, and when the
    /// next round may start.
    round: VecDeque<LedgerName>,
    next_round_at: u64,
}

impl IdempotencyIndex {
    pub fn new(secret: u64) -> Self {
        Self { secret, ledgers: HashMap::new(), round: VecDeque::new(), next_round_at: 0 }
    }

    pub fn fingerprint(&self, key: &str) -> u64 {
        ferry_format::fingerprints::fingerprint(self.secret, key)
    }

    fn table(&self, ledger: &LedgerName, incarnation: u64) -> Option<&KeyTable> {
        self.ledgers.get(ledger).filter(|t| t.incarnation == incarnation)
    }

    /// Whether `key` was used in `ledger` within the window before `now`.
    /// `stored` reads what the store holds under an id; it is called only
    /// on a fingerprint hit.
    pub fn seen(
        &self,
        ledger: &LedgerName,
        incarnation: u64,
        key: &str,
        now: u64,
        mut stored: impl FnMut(EntryId) -> Result<StoredKey>,
    ) -> Result<Seen> {
        let Some(table) = self.table(ledger, incarnation) else { return Ok(Seen::New) };
        let live = |ts: u64| ts + IDEMPOTENCY_WINDOW_MS >= now;
        if let Some(&id) = table.ids.get(&self.fingerprint(key))
            && let Some((Some(stored_key), ts)) = stored(id)?
            && stored_key == key
            && live(ts)
        {
            return Ok(Seen::Original(id));
        }
        if let Some(&id) = table.collided.get(key)
            && let Some((_, ts)) = stored(id)?
            && live(ts)
        {
            return Ok(Seen::Original(id));
        }
        Ok(Seen::New)
    }

    /// Remembers that `key` got `id` (a new use: `seen` said `New`, or
    /// recovery found it). Returns the id whose fingerprint slot it took,
    /// if another id held it: the caller settles that one with `displaced`
    /// once it can read it.
    #[must_use = "a displaced id must be settled with `displaced`"]
    pub fn insert(&mut self, ledger: &LedgerName, incarnation: u64, key: &str, id: EntryId) -> Option<EntryId> {
        let fingerprint = self.fingerprint(key);
        let displaced = self.insert_fingerprint(ledger, incarnation, fingerprint, id);
        if let Some(table) = self.ledgers.get_mut(ledger) {
            table.collided.remove(key);
        }
        displaced
    }

    /// `insert` by fingerprint (recovery from a `keys:` value).
    #[must_use = "a displaced id must be settled with `displaced`"]
    pub fn insert_fingerprint(
        &mut self,
        ledger: &LedgerName,
        incarnation: u64,
        fingerprint: u64,
        id: EntryId,
    ) -> Option<EntryId> {
        let table = self.ledgers.entry(ledger.clone()).or_insert_with(|| KeyTable::new(incarnation));
        if table.incarnation != incarnation {
            *table = KeyTable::new(incarnation);
        }
        table.ids.insert(fingerprint, id).filter(|&old| old != id)
    }

    /// Settles an id `insert` displaced, given the key its slot now holds
    /// and what the store holds under the displaced id: a live entry with
    /// another key stays findable by its whole key; the same key used again
    /// after its window, or an entry gone, is forgotten.
    pub fn displaced(
        &mut self,
        ledger: &LedgerName,
        incarnation: u64,
        new_key: &str,
        old_id: EntryId,
        stored: StoredKey,
        now: u64,
    ) {
        let Some((Some(old_key), ts)) = stored else { return };
        if old_key == new_key || ts + IDEMPOTENCY_WINDOW_MS < now {
            return;
        }
        if let Some(table) = self.ledgers.get_mut(ledger).filter(|t| t.incarnation == incarnation) {
            table.collided.insert(old_key, old_id);
        }
    }

    /// Undoes `insert`'s take-over when the displaced id cannot be read:
    /// the slot goes back to it and the new key is kept whole, so both stay
    /// exact.
    pub fn unsettled(&mut self, ledger: &LedgerName, incarnation: u64, key: &str, id: EntryId, old_id: EntryId) {
        let fingerprint = self.fingerprint(key);
        if let Some(table) = self.ledgers.get_mut(ledger).filter(|t| t.incarnation == incarnation) {
            table.ids.insert(fingerprint, old_id);
            table.collided.insert(key.to_owned(), id);
        }
    }

    /// Forgets every key of a ledger (it is being deleted): O(1) but for
    /// freeing the table.
    pub fn forget(&mut self, ledger: &LedgerName) {
        self.ledgers.remove(ledger);
    }

    /// Drops, a bounded step at a time, the fingerprints of keys whose
    /// window has passed. `expired_below(ledger, incarnation)` is an id
    /// below which every entry of the ledger is older than the window (a
    /// lower bound is enough: what it keeps, `seen` still judges by the
    /// record's ts), or `None` when the ledger is gone.
    pub fn sweep_step(&mut self, now: u64, mut expired_below: impl FnMut(&LedgerName, u64) -> Option<EntryId>) {
        if self.round.is_empty() {
            if now < self.next_round_at {
                return;
            }
            // A round visits the ledgers that have keys now; one that gets
            // its first key meanwhile waits for the next round.
            self.round = self.ledgers.keys().cloned().collect();
            self.next_round_at = now + SWEEP_EVERY_MS;
        }
        let mut visited = 0;
        while visited < SWEEP_STEP_ENTRIES
            && let Some(name) = self.round.pop_front()
        {
            let Some(table) = self.ledgers.get_mut(&name) else { continue };
            visited += table.ids.len() + table.collided.len();
            let Some(below) = expired_below(&name, table.incarnation) else {
                self.ledgers.remove(&name);
                continue;
            };
            let before = table.ids.len();
            table.ids.retain(|_, id| *id >= below);
            table.collided.retain(|_, id| *id >= below);
            if table.ids.is_empty() && table.collided.is_empty() {
                self.ledgers.remove(&name);
            } else if table.ids.len() < before {
                table.ids.shrink_to_fit();
            }
        }
    }

    /// Keys held (fingerprints plus whole keys).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.ledgers.values().map(|t| t.ids.len() + t.collided.len()).sum()
    }
}

/// The bound `sweep_step` asks for, from a ledger's chunks: the first id of
/// the oldest frozen chunk whose last entry is inside the window, or the
/// hot tier's first id when no frozen chunk is.
pub(crate) fn expired_below(
    frozen: &BTreeMap<u64, crate::pack_protocols::PackInfo>,
    hot_base: EntryId,
    now: u64,
) -> EntryId {
    let horizon = now.saturating_sub(IDEMPOTENCY_WINDOW_MS);
    frozen.values().find(|info| info.last_ts >= horizon).map_or(hot_base, |info| info.first_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> LedgerName {
        LedgerName::parse(s).unwrap()
    }

    /// A store of (id → key, ts) for the tests.
    struct Records(HashMap<EntryId, (String, u64)>);

    impl Records {
        fn stored(&self, id: EntryId) -> Result<StoredKey> {
            Ok(self.0.get(&id).map(|(k, ts)| (Some(k.clone()), *ts)))
        }
    }

    #[test]
    fn a_key_is_seen_with_its_id_within_the_window_and_new_after_it() {
        let l = name("audit");
        let mut index = IdempotencyIndex::new(1);
        let records = Records(HashMap::from([(7, ("k".to_owned(), 1_000))]));
        assert_eq!(index.seen(&l, 1, "k", 1_000, |id| records.stored(id)).unwrap(), Seen::New);
        assert_eq!(index.insert(&l, 1, "k", 7), None);
        let at = |now| index.seen(&l, 1, "k", now, |id| records.stored(id)).unwrap();
        assert_eq!(at(1_000), Seen::Original(7));
        assert_eq!(at(1_000 + IDEMPOTENCY_WINDOW_MS), Seen::Original(7), "kept for at least the window");
        assert_eq!(at(1_001 + IDEMPOTENCY_WINDOW_MS), Seen::New);
        assert_eq!(index.seen(&l, 2, "k", 1_000, |id| records.stored(id)).unwrap(), Seen::New, "another incarnation");
        assert_eq!(index.seen(&name("other"), 1, "k", 1_000, |id| records.stored(id)).unwrap(), Seen::New);
    }

    #[test]
    fn a_fingerprint_hit_is_confirmed_by_the_stored_key() {
        let l = name("audit");
        let mut index = IdempotencyIndex::new(1);
        assert_eq!(index.insert(&l, 1, "k", 7), None);
        // The record under id 7 carries another key: the hit is not an answer.
        let other = Records(HashMap::from([(7, ("not-k".to_owned(), 1_000))]));
        assert_eq!(index.seen(&l, 1, "k", 1_000, |id| other.stored(id)).unwrap(), Seen::New);
        let gone = Records(HashMap::new());
        assert_eq!(index.seen(&l, 1, "k", 1_000, |id| gone.stored(id)).unwrap(), Seen::New);
    }

    #[test]
    fn colliding_live_keys_both_stay_exact() {
        let l = name("audit");
        let mut index = IdempotencyIndex::new(1);
        let records = Records(HashMap::from([(1, ("a".to_owned(), 10)), (2, ("b".to_owned(), 20))]));
        let _ = index.insert(&l, 1, "a", 1);
        // Force "b" into "a"'s slot, as a fingerprint collision would.
        let fp_a = index.fingerprint("a");
        index.ledgers.get_mut(&l).unwrap().ids.insert(fp_a, 2);
        index.displaced(&l, 1, "b", 1, records.stored(1).unwrap(), 30);
        let seen = |key| index.seen(&l, 1, key, 30, |id| records.stored(id)).unwrap();
        assert_eq!(seen("a"), Seen::Original(1), "the displaced key is found by its whole key");
        // A key used again after its window displaces its own old id: nothing to keep.
        index.displaced(&l, 1, "a", 1, records.stored(1).unwrap(), 30);
        // A displaced id that cannot be read: both keys stay exact.
        let mut unread = IdempotencyIndex::new(1);
        let _ = unread.insert(&l, 1, "a", 1);
        let _ = unread.insert(&l, 1, "a", 3); // "a" again after its window, say
        unread.unsettled(&l, 1, "a", 3, 1);
        let both =
            Records(HashMap::from([(1, ("a".to_owned(), 10)), (3, ("a".to_owned(), 10 + IDEMPOTENCY_WINDOW_MS + 1))]));
        let now = 20 + IDEMPOTENCY_WINDOW_MS;
        assert_eq!(unread.seen(&l, 1, "a", now, |id| both.stored(id)).unwrap(), Seen::Original(3));
        let later = 11 + IDEMPOTENCY_WINDOW_MS;
        let mut fresh = IdempotencyIndex::new(1);
        fresh.displaced(&l, 1, "b", 1, records.stored(1).unwrap(), later);
        assert_eq!(fresh.len(), 0, "an expired displaced key is dropped");
    }

    #[test]
    fn the_sweep_drops_expired_keys_and_gone_ledgers_in_bounded_steps() {
        let mut index = IdempotencyIndex::new(1);
        for l in ["a", "b", "c"] {
            for id in 1..=10 {
                let _ = index.insert(&name(l), 1, &format!("{l}{id}"), id);
            }
        }
        index.sweep_step(0, |l, _| match l.as_str() {
            "a" => Some(6),
            "b" => None,
            _ => Some(1),
        });
        assert_eq!(index.len(), 5 + 10);
        index.sweep_step(1, |_, _| None);
        assert_eq!(index.len(), 15, "a new round waits for the sweep period");
        index.sweep_step(SWEEP_EVERY_MS, |_, _| None);
        assert_eq!(index.len(), 0);
    }

    #[test]
    fn forgetting_a_ledger_leaves_the_others() {
        let mut index = IdempotencyIndex::new(1);
        let _ = index.insert(&name("a"), 1, "k", 1);
        let _ = index.insert(&name("b"), 2, "k", 1);
        index.forget(&name("a"));
        assert_eq!(index.len(), 1);
    }
}
