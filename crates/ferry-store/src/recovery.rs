//! Startup recovery of the ledgers' indexes: frozen chunks from the
//! catalog, then one scan of the WAL. Records of deleted ledgers, of a
//! name's earlier incarnation, and of frozen chunks are dead and skipped; a
//! relocated copy replaces its original. At the end every ledger's hot ids
//! must be dense and their timestamps non-decreasing, or recovery stops
//! with an error that says where.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use ferry_core::limits::IDEMPOTENCY_WINDOW_MS;
use ferry_core::{EntryId, LedgerName};

use crate::error::{Result, StoreError};
use crate::idempotency::IdempotencyIndex;
use crate::ledger::LedgerState;
use crate::pack_protocols::PackInfo;
use crate::pack_reader::PackReader;
use crate::shared::Shared;
use crate::wal::{RecordPos, ScannedRecord};

/// Puts the catalog's frozen chunks into the indexes and reloads the
/// idempotency keys of packs younger than the idempotency window.
pub(crate) fn load_frozen(
    shared: &Shared,
    frozen: Vec<(LedgerName, u64, PackInfo)>,
    idempotency: &mut IdempotencyIndex,
    now: u64,
) -> Result<()> {
    let ledgers = shared.ledgers.read().expect("ledgers lock");
    for (ledger, chunk, info) in frozen {
        let state = ledgers.get(&ledger).ok_or_else(|| {
            StoreError::CatalogCorrupted(format!("chunk {chunk} of ledger {ledger}, which the catalog does not list"))
        })?;
        if info.last_ts + IDEMPOTENCY_WINDOW_MS >= now {
            let reader = PackReader::open(&shared.vfs, &shared.layout, &ledger, chunk, &info)?;
            for r in reader.all()? {
                if let Some(k) = &r.idempotency_key {
                    idempotency.insert(&ledger, k, r.id, r.ts);
                }
            }
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
        index.frozen.insert(chunk, info);
    }
    Ok(())
}

/// Hot records found for one ledger, by id.
#[derive(Default)]
struct Found {
    slots: BTreeMap<EntryId, (RecordPos, u64)>,
    /// The highest id seen in an original (not relocated) record.
    max_original: EntryId,
}

/// Collects the WAL's live records, then installs them in the indexes.
pub(crate) struct WalIndexer<'a> {
    ledgers: &'a BTreeMap<LedgerName, Arc<LedgerState>>,
    found: HashMap<LedgerName, Found>,
    idempotency: &'a mut IdempotencyIndex,
    hot_dir: &'a Path,
}

impl<'a> WalIndexer<'a> {
    pub fn new(
        ledgers: &'a BTreeMap<LedgerName, Arc<LedgerState>>,
        idempotency: &'a mut IdempotencyIndex,
        hot_dir: &'a Path,
    ) -> Self {
        Self { ledgers, found: HashMap::new(), idempotency, hot_dir }
    }

    pub fn visit(&mut self, path: &Path, scanned: ScannedRecord<'_>) -> Result<()> {
        let ScannedRecord { record, pos } = scanned;
        let Some(state) = LedgerName::parse(record.ledger).ok().and_then(|n| self.ledgers.get(&n)) else {
            return Ok(()); // a deleted ledger's record
        };
        if (pos.segment, u64::from(pos.offset)) < state.meta.wal_from {
            return Ok(()); // an earlier incarnation of the name
        }
        if record.id < state.index.read().expect("index lock").hot_base {
            return Ok(()); // frozen: the pack holds it
        }
        let found = self.found.entry(state.name.clone()).or_default();
        if !record.relocated {
            if record.id <= found.max_original {
                return Err(StoreError::Corrupted {
                    segment: path.to_path_buf(),
                    offset: pos.offset.into(),
                    ledger: Some(state.name.clone()),
                    reason: format!("id {} after id {} (ids must increase)", record.id, found.max_original),
                });
            }
            found.max_original = record.id;
        }
        found.slots.insert(record.id, (pos, record.ts));
        if let Some(key) = record.idempotency_key {
            self.idempotency.insert(&state.name, key, record.id, record.ts);
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
            for (id, (pos, ts)) in found.slots {
                if id != index.next_id() {
                    return Err(StoreError::MissingEntries { ledger: name.clone(), from: index.next_id(), to: id - 1 });
                }
                if ts < index.last_ts {
                    return Err(StoreError::Corrupted {
                        segment: self.hot_dir.join(crate::wal::segment_name(pos.segment.into())),
                        offset: pos.offset.into(),
                        ledger: Some(name.clone()),
                        reason: format!("timestamp {ts} of id {id} is before the previous {}", index.last_ts),
                    });
                }
                index.push(id, ts, pos);
                live.push(pos);
            }
        }
        Ok(live)
    }
}
