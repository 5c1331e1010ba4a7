//! Startup recovery of the ledgers' indexes: frozen chunks from the
//! catalog, then one scan of the WAL. Records of deleted ledgers, of a
//! name's earlier incarnation, and of frozen chunks are dead and skipped; a
//! relocated copy replaces its original. At the end every ledger's hot ids
//! must be dense and their timestamps non-decreasing, or recovery stops
//! with an error that says where.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use ferry_core::events::SystemEvent;
use ferry_core::limits::IDEMPOTENCY_WINDOW_MS;
use ferry_core::{EntryId, LedgerName};
use ferry_format::fingerprints;
use ferry_format::keys::CatalogKey;
use nohash_hasher::IntSet;

use crate::error::{Result, StoreError};
use crate::idempotency::IdempotencyIndex;
use crate::ledger::LedgerState;
use crate::pack_protocols::PackInfo;
use crate::pack_reader::PackReader;
use crate::shared::Shared;
use crate::wal::{RecordPos, ScannedRecord};

/// Rebuilds the idempotency index from the records recovery finds. A key
/// that takes another id's fingerprint slot is settled (`displaced`) once
/// the indexes are installed and the other id can be read.
pub(crate) struct KeyLoader {
    pub index: IdempotencyIndex,
    /// (ledger, key if known, its id, the id whose slot it took)
    displaced: Vec<(Arc<LedgerState>, Option<String>, EntryId, EntryId)>,
    now: u64,
}

impl KeyLoader {
    pub fn new(now: u64, fingerprint_key: u64) -> Self {
        Self { index: IdempotencyIndex::new(fingerprint_key), displaced: Vec::new(), now }
    }

    /// Remembers a key recovery found, if its window has not passed.
    fn add(&mut self, state: &Arc<LedgerState>, key: &str, id: EntryId, ts: u64) {
        if ts + IDEMPOTENCY_WINDOW_MS < self.now {
            return;
        }
        if let Some(old) = self.index.insert(&state.name, state.incarnation, key, id) {
            self.displaced.push((state.clone(), Some(key.to_owned()), id, old));
        }
    }

    /// Remembers a key recovery found as a fingerprint (`keys:`), its
    /// chunk inside the window.
    fn add_fingerprint(&mut self, state: &Arc<LedgerState>, fingerprint: u64, id: EntryId) {
        if let Some(old) = self.index.insert_fingerprint(&state.name, state.incarnation, fingerprint, id) {
            self.displaced.push((state.clone(), None, id, old));
        }
    }

    /// Settles the displaced ids, reading them from the recovered store.
    pub fn finish(mut self, shared: &Shared) -> Result<IdempotencyIndex> {
        for (state, key, id, old) in std::mem::take(&mut self.displaced) {
            // A key known only by its fingerprint is read from its entry.
            let key = match key {
                Some(k) => Some(k),
                None => shared.stored_key(&state, id).ok().flatten().and_then(|(k, _)| k),
            };
            let Some(key) = key else {
                tracing::warn!(ledger = %state.name, id, "the idempotency key of an entry could not be read back");
                continue;
            };
            match shared.stored_key(&state, old) {
                Ok(stored) => self.index.displaced(&state.name, state.incarnation, &key, old, stored, self.now),
                Err(_) => self.index.unsettled(&state.name, state.incarnation, &key, id, old),
            }
        }
        Ok(self.index)
    }
}

/// Puts the catalog's frozen chunks into the indexes and reloads the
/// idempotency keys of packs that hold some inside their window (a pack
/// without keys is not read).
pub(crate) fn load_frozen(
    shared: &Shared,
    frozen: Vec<(LedgerName, u64, PackInfo)>,
    keys: &mut KeyLoader,
) -> Result<()> {
    let ledgers = shared.ledgers.read().expect("ledgers lock");
    for (ledger, chunk, info) in frozen {
        let state = ledgers.get(&ledger).ok_or_else(|| {
            StoreError::CatalogCorrupted(format!("chunk {chunk} of ledger {ledger}, which the catalog does not list"))
        })?;
        if info.idempotency_keys > 0 && info.last_ts + IDEMPOTENCY_WINDOW_MS >= keys.now {
            reload_keys(shared, state, chunk, &info, keys)?;
        }
        let mut index = state.index.write().expect("index lock");
        if info.last_id() < index.first {
            continue; // pruned in the catalog's view; its key is on its way out
        }
        let expected = index.hot_base;
        if info.first_id != expected {
            return Err(StoreError::CatalogCorrupted(format!(
                "ledger {ledger}: chunk {chunk} starts at id {} but ids from {expected} have no frozen chunk",
                info.first_id
            )));
        }
        index.hot_base = info.last_id() + 1;
        index.last_ts = info.last_ts;
        index.add_frozen(chunk, info);
    }
    Ok(())
}

/// Reloads a frozen chunk's idempotency keys: from its `keys:` value
/// (format 3; the pack is not read), or, for a chunk frozen before format
/// 3 or whose value does not decode, from its pack.
fn reload_keys(
    shared: &Shared,
    state: &Arc<LedgerState>,
    chunk: u64,
    info: &PackInfo,
    keys: &mut KeyLoader,
) -> Result<()> {
    let ledger = &state.name;
    let key = CatalogKey::Keys(ledger.clone(), chunk);
    if let Some(value) = shared.catalog.get(&key)? {
        match fingerprints::decode(&value, info.count) {
            Ok(entries) => {
                for (offset, fp) in entries {
                    keys.add_fingerprint(state, fp, info.first_id + u64::from(offset));
                }
                return Ok(());
            }
            Err(e) => tracing::warn!(%key, error = %e, "a stored key list does not decode; reading the pack instead"),
        }
    }
    match PackReader::open(&shared.vfs, &shared.layout, ledger, chunk, info).and_then(|r| r.all()) {
        Ok(records) => {
            for r in records {
                if let Some(k) = &r.idempotency_key {
                    keys.add(state, k, r.id, r.ts);
                }
            }
        }
        // SPEC §2.3: damage fails the reads of its range, not the store;
        // what it costs here is said loudly.
        Err(e) => report_lost_keys(shared, ledger, chunk, info, &e),
    }
    Ok(())
}

/// A pack whose idempotency keys could not be reloaded: retries of them
/// are no longer recognised. Logged, counted and published as
/// `chunk.keys_lost`.
fn report_lost_keys(shared: &Shared, ledger: &LedgerName, chunk: u64, info: &PackInfo, error: &StoreError) {
    tracing::error!(
        %ledger, chunk, keys = info.idempotency_keys, %error,
        "the idempotency keys of a damaged pack are lost: retries of them append again (ferry verify lists the damage)"
    );
    metrics::counter!(ferry_core::metric_names::IDEMPOTENCY_KEYS_LOST_TOTAL).increment(info.idempotency_keys);
    let mut event = SystemEvent::chunk("chunk.keys_lost", ledger, chunk, info.first_id, info.last_id());
    event.data["idempotency_keys"] = info.idempotency_keys.into();
    event.data["error"] = error.to_string().into();
    shared.events.publish(&event.key, &event);
}

/// Sets each chained ledger's `last_hash` from the hash stored with its head
/// entry, once the indexes are installed: its WAL record, or for a frozen
/// head the `last_hash` its chunk's catalog value took from the pack's
/// records (no pack is opened). The chain goes on from what is stored,
/// never from a recomputation. A ledger without entries keeps the hash
/// before First (`LedgerState::new`).
pub(crate) fn restore_chain_heads(shared: &Shared) -> Result<()> {
    let ledgers: Vec<Arc<LedgerState>> = shared.ledgers.read().expect("ledgers lock").values().cloned().collect();
    for state in ledgers {
        let (chained, first, head, frozen_head) = {
            let index = state.index.read().expect("index lock");
            let frozen_head = (index.head() < index.hot_base)
                .then(|| index.frozen.values().next_back().map(|info| info.last_hash.clone()))
                .flatten();
            (index.chained, index.first, index.head(), frozen_head)
        };
        if !chained || head < first {
            continue;
        }
        let hash = match frozen_head {
            Some(text) => text.as_deref().and_then(ferry_format::chain::from_hex),
            None => shared.read_records(&state, head, 1)?.pop().filter(|r| r.id == head).and_then(|r| r.hash),
        };
        let Some(hash) = hash else {
            return Err(StoreError::CatalogCorrupted(format!(
                "ledger {}: it has a hash chain but its head entry {head} carries no hash",
                state.name
            )));
        };
        state.index.write().expect("index lock").last_hash = Some(hash);
    }
    Ok(())
}

/// The live hot records of one ledger as a WAL replay finds them, keyed by
/// id: the rules recovery applies and `ferry verify` checks by (one home).
/// `P` is where a record lies (recovery: `RecordPos`; verify: segment and
/// offset).
#[derive(Debug)]
pub(crate) struct HotRecords<P> {
    slots: BTreeMap<EntryId, (P, u64)>,
    /// The highest id seen in an original (not relocated) record.
    max_original: EntryId,
}

/// What is wrong just before a hot record, in id order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HotFault {
    /// Ids `from..=to` are in neither a pack nor the WAL.
    Gap { from: EntryId, to: EntryId },
    /// The record's ts is before the previous entry's.
    TsBack { ts: u64, previous: u64 },
}

impl<P: Copy> Default for HotRecords<P> {
    fn default() -> Self {
        Self { slots: BTreeMap::new(), max_original: 0 }
    }
}

impl<P: Copy> HotRecords<P> {
    /// A WAL record of a listed ledger is dead when it lies before the
    /// ledger's `wal_from` (an earlier ledger of the name) or a pack holds
    /// its id.
    pub fn is_dead(wal_from: (u32, u64), at: (u64, u64), id: EntryId, hot_base: EntryId) -> bool {
        before_wal_from(wal_from, at) || id < hot_base
    }

    /// Takes a live record. Originals are written in id order, so an
    /// original whose id does not increase is damage (the reason is
    /// returned); a relocated copy replaces the record of its id.
    pub fn offer(&mut self, id: EntryId, ts: u64, at: P, relocated: bool) -> std::result::Result<(), String> {
        if !relocated {
            if id <= self.max_original {
                return Err(format!("id {id} after id {} (ids must increase)", self.max_original));
            }
            self.max_original = id;
        }
        self.slots.insert(id, (at, ts));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// The records in id order from `next` (the first hot id) with what is
    /// wrong before each: ids must be dense and timestamps must not
    /// decrease, starting from `last_ts` (the frozen part's last).
    pub fn in_order(&self, mut next: EntryId, mut last_ts: u64) -> Vec<(EntryId, P, u64, Option<HotFault>)> {
        let mut out = Vec::with_capacity(self.slots.len());
        for (&id, &(at, ts)) in &self.slots {
            let fault = if id != next {
                Some(HotFault::Gap { from: next, to: id - 1 })
            } else if ts < last_ts {
                Some(HotFault::TsBack { ts, previous: last_ts })
            } else {
                None
            };
            out.push((id, at, ts, fault));
            (next, last_ts) = (id.saturating_add(1), ts);
        }
        out
    }
}

/// A record at `at` lies before the ledger's `wal_from`: it belongs to an
/// earlier, deleted ledger of the name.
fn before_wal_from(wal_from: (u32, u64), at: (u64, u64)) -> bool {
    at < (u64::from(wal_from.0), wal_from.1)
}

/// Collects the WAL's live records, then installs them in the indexes.
pub(crate) struct WalIndexer<'a> {
    ledgers: &'a BTreeMap<LedgerName, Arc<LedgerState>>,
    found: HashMap<LedgerName, HotRecords<RecordPos>>,
    keys: &'a mut KeyLoader,
    hot_dir: &'a Path,
    /// Per segment, the incarnations of the listed ledgers with a record in
    /// it, live or frozen: what a later deletion scrubs.
    holders: HashMap<u32, IntSet<u64>>,
}

impl<'a> WalIndexer<'a> {
    pub fn new(
        ledgers: &'a BTreeMap<LedgerName, Arc<LedgerState>>,
        keys: &'a mut KeyLoader,
        hot_dir: &'a Path,
    ) -> Self {
        Self { ledgers, found: HashMap::new(), keys, hot_dir, holders: HashMap::new() }
    }

    /// The holders of each segment found so far (`Segments::note_holders`).
    pub fn take_holders(&mut self) -> HashMap<u32, IntSet<u64>> {
        std::mem::take(&mut self.holders)
    }

    pub fn visit(&mut self, path: &Path, scanned: ScannedRecord<'_>) -> Result<()> {
        let ScannedRecord { record, pos } = scanned;
        let Some(state) = LedgerName::parse(record.ledger).ok().and_then(|n| self.ledgers.get(&n)) else {
            return Ok(()); // a deleted ledger's record
        };
        let hot_base = state.index.read().expect("index lock").hot_base;
        let at = (u64::from(pos.segment), u64::from(pos.offset));
        if !before_wal_from(state.meta.wal_from, at) {
            self.holders.entry(pos.segment).or_default().insert(state.incarnation);
        }
        if HotRecords::<RecordPos>::is_dead(state.meta.wal_from, at, record.id, hot_base) {
            return Ok(()); // an earlier ledger of the name, or frozen
        }
        let found = self.found.entry(state.name.clone()).or_default();
        found.offer(record.id, record.ts, pos, record.relocated).map_err(|reason| StoreError::Corrupted {
            segment: path.to_path_buf(),
            offset: pos.offset.into(),
            ledger: Some(state.name.clone()),
            reason,
        })?;
        if let Some(key) = record.idempotency_key {
            self.keys.add(state, key, record.id, record.ts);
        }
        Ok(())
    }

    /// Checks density and order and fills the indexes; returns every live
    /// position (for segment accounting).
    pub fn install(self) -> Result<Vec<RecordPos>> {
        let mut live = Vec::new();
        for (name, found) in self.found {
            let state = &self.ledgers[&name];
            let mut index = state.index.write().expect("index lock");
            for (id, pos, ts, fault) in found.in_order(index.next_id(), index.last_ts) {
                match fault {
                    Some(HotFault::Gap { from, to }) => {
                        return Err(StoreError::MissingEntries { ledger: name.clone(), from, to });
                    }
                    Some(HotFault::TsBack { ts, previous }) => {
                        return Err(StoreError::Corrupted {
                            segment: self.hot_dir.join(crate::wal::segment_name(pos.segment.into())),
                            offset: pos.offset.into(),
                            ledger: Some(name.clone()),
                            reason: format!("timestamp {ts} of id {id} is before the previous {previous}"),
                        });
                    }
                    None => {}
                }
                index.push(id, ts, pos);
                live.push(pos);
            }
        }
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_records_find_gaps_timestamps_going_back_and_originals_out_of_order() {
        let mut hot = HotRecords::<u32>::default();
        hot.offer(5, 10, 0, false).unwrap();
        hot.offer(6, 9, 1, false).unwrap();
        hot.offer(8, 11, 2, false).unwrap();
        assert!(hot.offer(7, 11, 3, false).unwrap_err().contains("id 7 after id 8"));
        hot.offer(5, 10, 4, true).unwrap(); // a relocated copy replaces the original
        let faults: Vec<_> = hot.in_order(5, 10).into_iter().map(|(id, at, _, f)| (id, at, f)).collect();
        assert_eq!(
            faults,
            [
                (5, 4, None),
                (6, 1, Some(HotFault::TsBack { ts: 9, previous: 10 })),
                (8, 2, Some(HotFault::Gap { from: 7, to: 7 })),
            ]
        );
        assert_eq!(hot.in_order(4, 0)[0].3, Some(HotFault::Gap { from: 4, to: 4 }), "the hot tier starts at hot_base");
    }

    #[test]
    fn records_before_wal_from_or_below_the_hot_base_are_dead() {
        let dead = HotRecords::<u32>::is_dead;
        assert!(dead((2, 100), (1, 500), 9, 1), "an earlier ledger of the name");
        assert!(dead((2, 100), (2, 99), 9, 1));
        assert!(!dead((2, 100), (2, 100), 9, 1));
        assert!(dead((0, 0), (3, 0), 4, 5), "frozen");
    }
}
