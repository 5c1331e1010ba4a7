//! The read path: entries of one ledger from any id, across frozen packs
//! (one zstd block per read) and the hot tier (one `pread` per run of
//! adjacent WAL records), each record checked to be the ledger and id the
//! index said.

use ferry_core::limits::READ_BYTES_MAX;
use ferry_core::{EntryId, LedgerName};
use ferry_format::wal::{decode_record, is_scrubbed};

use crate::error::{Result, StoreError};
use crate::idempotency::StoredKey;
use crate::ledger::LedgerState;
use crate::pack_protocols::OwnedRecord;
use crate::pack_reader::owned;
use crate::shared::Shared;
use crate::wal::{RELEASED, RecordPos};

impl Shared {
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
        // A read that looked its positions up before the ledger's deletion
        // and reads after its scrub: the entry is gone, not damaged.
        if is_scrubbed(&record) {
            return Err(StoreError::LedgerNotFound(ledger.clone()));
        }
        owned(&record).map_err(corrupted)
    }

    /// The idempotency key and ts of entry `id`, for the idempotency index
    /// to confirm a fingerprint hit; `None` when the id is not readable
    /// (pruned, or above the head).
    pub fn stored_key(&self, state: &LedgerState, id: EntryId) -> Result<StoredKey> {
        match self.read_records(state, id, 1) {
            Ok(mut records) => Ok(records.pop().filter(|r| r.id == id).map(|r| (r.idempotency_key, r.ts))),
            Err(StoreError::BelowFirst { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The id of the first entry stamped at or after `ts`, or `head + 1`
    /// when there is none yet. Timestamps never decrease within a ledger, so
    /// this is a search, not a scan: the frozen chunks' `first_ts`/`last_ts`
    /// (their catalog values, in memory) pick the one chunk, or the hot
    /// tier, that holds the answer, then a bisection reads single entries
    /// there: at most ⌈log2(chunk_entries)⌉ reads of one pack block or one
    /// WAL record each. `BelowFirst` when retention pruned under the search:
    /// the caller searches again.
    pub fn first_stamped_at_or_after(&self, state: &LedgerState, ts: u64) -> Result<EntryId> {
        let (mut lo, mut hi) = {
            let index = state.index.read().expect("index lock");
            let head = index.head();
            if head < index.first || index.last_ts < ts {
                return Ok(head + 1);
            }
            match index.frozen.values().find(|info| info.last_ts >= ts) {
                Some(info) if info.first_ts >= ts => return Ok(info.first_id),
                Some(info) => (info.first_id, info.last_id()),
                None => (index.hot_base, head),
            }
        };
        // Entry `hi` is stamped at or after `ts`; every entry before `lo` is not.
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let record = self
                .read_records(state, mid, 1)?
                .pop()
                .filter(|r| r.id == mid)
                .ok_or_else(|| StoreError::MissingEntries { ledger: state.name.clone(), from: mid, to: mid })?;
            if record.ts >= ts {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Ok(lo)
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
                // Read while the deletion scrubbed it (a write half seen).
                Err(Some(StoreError::Corrupted { .. })) if state.is_deleted() => {
                    return Err(StoreError::LedgerNotFound(state.name.clone()));
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
