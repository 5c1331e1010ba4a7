//! Erasing a deleted ledger's records from the WAL (issue #13 item 11).
//!
//! A deleted ledger's records stay in every segment that other ledgers'
//! records keep alive, and the segment being written is never released, so
//! without this its payloads would stay readable for as long as the
//! others' chunks take to fill. Copying the others' records forward to
//! release those segments would cost every live byte of every segment the
//! ledger touched; scrubbing costs only the ledger's own bytes
//! (`docs/decisions/2026-12-04-deleted-data-in-the-wal.md`).
//!
//! The protocol (mark, then write):
//!
//! 1. The deletion's one catalog commit also puts `scrub:{ledger}`: the WAL
//!    position before which every record of the name is dead (`before`, the
//!    durable end once the flusher passed the deletion's barrier) and the
//!    segments that hold one.
//! 2. In each of those segments still there, every record of the name
//!    before `before` is written over in place with its scrubbed form
//!    (`ferry_format::wal::scrub_record`: same length, flags, ledger, id
//!    and timestamp; key, idempotency key and payload zeroed; checksum
//!    recomputed), then the segment is fdatasync'd.
//! 3. The key is deleted.
//!
//! A crash at any point leaves the key, and recovery redoes step 2 for every
//! key before it scans the WAL. A record torn by the crash keeps its framing
//! and its ledger name (the scrub writes them back unchanged), so the walk
//! finds it and scrubs it again; every other record on the way must decode,
//! and the walk must land exactly on the segment's end (or on `before`), so
//! a damaged length can never steer a write into another ledger's record.
//!
//! **Architecture Invariant:** a scrub writes only inside records of the
//! ledger it names that lie before its `before`: records no live ledger
//! owns (a name created again starts its records at a `wal_from` at or
//! after `before`).

use std::collections::BTreeSet;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ferry_core::LedgerName;
use ferry_format::keys::CatalogKey;
use ferry_format::wal::{SEGMENT_HEADER_BYTES, decode_record, record_shape, scrub_record};
use ferry_fs::vfs::VfsSegment;

use crate::catalog::{Catalog, CatalogOp};
use crate::disk::Disk;
use crate::error::{Result, StoreError};
use crate::ledger::LedgerState;
use crate::shared::Shared;

/// The value of `scrub:{ledger}`: what is left to erase of the name's
/// deleted records.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub(crate) struct ScrubIntent {
    /// (segment, offset): every record of the name before it is dead.
    pub before: (u32, u64),
    /// The segments that held a record of the name when it was deleted.
    pub segments: Vec<u32>,
}

impl ScrubIntent {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a scrub intent serialises")
    }

    pub fn decode(key: &CatalogKey, value: &[u8]) -> Result<Self> {
        serde_json::from_slice(value).map_err(|e| StoreError::CatalogCorrupted(format!("{key}: {e}")))
    }

    /// One intent for two deletions of the same name (the first one's scrub
    /// still waiting): every record of the name before the later `before`
    /// is dead.
    fn merge(self, other: Self) -> Self {
        let segments: BTreeSet<u32> = self.segments.into_iter().chain(other.segments).collect();
        Self { before: self.before.max(other.before), segments: segments.into_iter().collect() }
    }

    /// Where the walk of `segment` stops: at `before` in its segment, at the
    /// end of an earlier one.
    pub fn end_in(&self, segment: u32) -> Option<u64> {
        (segment == self.before.0).then_some(self.before.1)
    }
}

/// The catalog write that goes into the deletion's one commit (step 1), or
/// `None` when no segment holds a record of the ledger. Called once the
/// flusher passed the deletion's barrier: no record of the ledger is
/// written after that.
pub(crate) fn intent_op(shared: &Shared, state: &LedgerState) -> Result<Option<CatalogOp>> {
    let segments = shared.segments.holding(state.incarnation);
    if segments.is_empty() {
        return Ok(None);
    }
    let key = CatalogKey::Scrub(state.name.clone());
    let mut intent = ScrubIntent { before: shared.durable_end(), segments };
    if let Some(value) = shared.catalog.get(&key)? {
        intent = ScrubIntent::decode(&key, &value)?.merge(intent);
    }
    Ok(Some(CatalogOp::Put(key, intent.encode())))
}

/// Steps 2 and 3 for a ledger whose deletion is committed: scrubs every
/// segment of its intent that is still there, then deletes the intent. A
/// refused write leaves the intent for a retry (or the next start).
pub(crate) fn finish(shared: &Shared, ledger: &LedgerName) -> Result<()> {
    let key = CatalogKey::Scrub(ledger.clone());
    let Some(value) = shared.catalog.get(&key)? else { return Ok(()) };
    let intent = ScrubIntent::decode(&key, &value)?;
    // A segment released meanwhile took its records with it.
    let still_there = |segment| Ok(shared.segments.file(segment).map(|f| (f, shared.segments.path(segment))));
    let bytes = carry_out(&shared.disk, &*shared.catalog, ledger, &intent, still_there)?;
    tracing::debug!(%ledger, bytes, "scrubbed a deleted ledger's records from the WAL");
    Ok(())
}

/// Recovery, before the WAL is scanned: finishes every scrub a crash (or a
/// refused write) interrupted, so the scan meets no record torn by one.
pub(crate) fn finish_interrupted(disk: &Disk, catalog: &dyn Catalog, dir: &Path) -> Result<()> {
    let left = catalog.scan(CatalogKey::SCRUB_PREFIX)?;
    if left.is_empty() {
        return Ok(());
    }
    let present: BTreeSet<String> = disk.list_dir(dir)?.into_iter().collect();
    for (key, value) in left {
        let CatalogKey::Scrub(ledger) = &key else {
            return Err(StoreError::CatalogCorrupted(format!("{key} under the scrub prefix")));
        };
        let intent = ScrubIntent::decode(&key, &value)?;
        let still_there = |segment: u32| {
            let name = super::segment_name(segment.into());
            if !present.contains(&name) {
                return Ok(None); // released before the crash
            }
            let path = dir.join(name);
            Ok(Some((disk.open_segment(&path)?, path)))
        };
        let bytes = carry_out(disk, catalog, ledger, &intent, still_there)?;
        tracing::info!(%ledger, bytes, "finished scrubbing a deleted ledger's records from the WAL");
    }
    Ok(())
}

/// A segment's handle and path.
type OpenSegment = (Arc<dyn VfsSegment>, PathBuf);

/// Steps 2 and 3 of one intent, at run time and in recovery alike;
/// `still_there` opens a segment unless it was released. Returns the bytes
/// written over.
fn carry_out(
    disk: &Disk,
    catalog: &dyn Catalog,
    ledger: &LedgerName,
    intent: &ScrubIntent,
    still_there: impl Fn(u32) -> Result<Option<OpenSegment>>,
) -> Result<u64> {
    let mut bytes = 0;
    for &segment in &intent.segments {
        if let Some((file, path)) = still_there(segment)? {
            bytes += scrub_segment(disk, &*file, &path, ledger, intent.end_in(segment))?;
        }
    }
    fail::fail_point!("scrub::synced", |_| Err(StoreError::io(
        "scrub",
        std::io::Error::other("injected by fail point scrub::synced")
    )));
    // Only now: every segment it names is synced.
    catalog.commit(&[CatalogOp::Delete(CatalogKey::Scrub(ledger.clone()))])?;
    metrics::counter!(ferry_core::metric_names::SCRUBBED_BYTES_TOTAL).increment(bytes);
    Ok(bytes)
}

/// Scrubs the records of `ledger` in one segment (up to `end`, or its whole
/// length) and syncs it, changed or not; returns how many bytes were
/// written over.
fn scrub_segment(
    disk: &Disk,
    file: &dyn VfsSegment,
    path: &Path,
    ledger: &LedgerName,
    end: Option<u64>,
) -> Result<u64> {
    let mut bytes = disk.read_all(file, path)?;
    let end = end.unwrap_or(bytes.len() as u64);
    let changed = scrub_bytes(&mut bytes, ledger.as_str(), end).map_err(|damage| StoreError::Corrupted {
        segment: path.to_path_buf(),
        offset: damage.offset,
        ledger: Some(ledger.clone()),
        reason: format!("scrubbing the deleted ledger's records: {}", damage.reason),
    })?;
    let mut written = 0;
    for range in changed {
        disk.overwrite(file, path, &bytes[range.clone()], range.start as u64)?;
        written += range.len() as u64;
        fail::fail_point!("scrub::overwritten", |_| Err(StoreError::io(
            "scrub",
            std::io::Error::other("injected by fail point scrub::overwritten")
        )));
    }
    // Also when nothing changed: a pass killed before its sync may have
    // left its writes in the page cache only, where this pass saw them.
    disk.sync(file, path)?;
    Ok(written)
}

/// Damage met while walking a segment's records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Damage {
    pub offset: u64,
    pub reason: String,
}

/// Scrubs, in `bytes` (a whole segment), every record of `ledger` from the
/// header up to `end`; returns the byte ranges that changed (adjacent ones
/// merged). The pure core of the protocol, which `ferry verify` also
/// applies to a segment an interrupted scrub left. Every record on the way
/// must decode or be one of `ledger` whose framing holds (a scrub torn by a
/// crash), and the walk must land on `end`: otherwise nothing is changed
/// and the damage is returned.
pub(crate) fn scrub_bytes(bytes: &mut [u8], ledger: &str, end: u64) -> std::result::Result<Vec<Range<usize>>, Damage> {
    let damage = |offset: usize, reason: String| Damage { offset: offset as u64, reason };
    let end = usize::try_from(end).ok().filter(|e| *e <= bytes.len()).ok_or_else(|| {
        damage(bytes.len(), format!("the segment ends at {} before the scrub's end {end}", bytes.len()))
    })?;
    if end < SEGMENT_HEADER_BYTES {
        return Err(damage(0, format!("the scrub's end {end} lies inside the segment header")));
    }
    let mut records = Vec::new();
    let mut at = SEGMENT_HEADER_BYTES;
    while at < end {
        let rest = &bytes[at..end];
        let len = match decode_record(rest) {
            Ok((record, len)) => {
                if record.ledger == ledger {
                    records.push(at..at + len);
                }
                len
            }
            Err(e) => match record_shape(rest) {
                Ok(shape) if shape.ledger == ledger.as_bytes() => {
                    records.push(at..at + shape.len);
                    shape.len
                }
                _ => return Err(damage(at, e.to_string())),
            },
        };
        at += len;
    }
    let mut changed: Vec<Range<usize>> = Vec::new();
    for range in records {
        let mut scrubbed = bytes[range.clone()].to_vec();
        scrub_record(&mut scrubbed).map_err(|e| damage(range.start, e.to_string()))?;
        if scrubbed == bytes[range.clone()] {
            continue;
        }
        bytes[range.clone()].copy_from_slice(&scrubbed);
        match changed.last_mut() {
            Some(last) if last.end == range.start => last.end = range.end,
            _ => changed.push(range),
        }
    }
    Ok(changed)
}

#[cfg(test)]
mod sim_tests;

#[cfg(test)]
mod tests {
    use ferry_format::wal::{WalRecord, encode_record, encode_segment_header, is_scrubbed};

    use super::*;

    fn record(ledger: &str, id: u64, payload: &str, out: &mut Vec<u8>) {
        let r = WalRecord {
            ledger,
            id,
            ts: id,
            key: Some("k"),
            idempotency_key: None,
            batch_continues: false,
            group_start: true,
            relocated: false,
            hash: None,
            payload: payload.as_bytes(),
        };
        encode_record(&r, out);
    }

    fn segment() -> Vec<u8> {
        let mut s = encode_segment_header(3).to_vec();
        record("gone", 1, r#""secret-1""#, &mut s);
        record("kept", 1, r#""kept-1""#, &mut s);
        record("gone", 2, r#""secret-2""#, &mut s);
        record("gone", 3, r#""secret-3""#, &mut s);
        record("kept", 2, r#""kept-2""#, &mut s);
        s
    }

    /// Scrubs `gone` in the whole segment.
    fn whole(bytes: &mut [u8]) -> std::result::Result<Vec<Range<usize>>, Damage> {
        let len = bytes.len() as u64;
        scrub_bytes(bytes, "gone", len)
    }

    fn records(bytes: &[u8]) -> Vec<(String, u64, Vec<u8>, bool)> {
        let mut out = Vec::new();
        let mut at = SEGMENT_HEADER_BYTES;
        while at < bytes.len() {
            let (r, len) = decode_record(&bytes[at..]).unwrap();
            out.push((r.ledger.to_owned(), r.id, r.payload.to_vec(), is_scrubbed(&r)));
            at += len;
        }
        out
    }

    #[test]
    fn only_the_named_ledgers_records_change_and_twice_changes_nothing() {
        let original = segment();
        let mut bytes = original.clone();
        let changed = whole(&mut bytes).unwrap();
        assert_eq!(changed.len(), 2, "gone 2 and 3 are adjacent: one range");
        let found = records(&bytes);
        assert_eq!(
            found.iter().map(|r| (r.0.as_str(), r.1, r.3)).collect::<Vec<_>>(),
            [("gone", 1, true), ("kept", 1, false), ("gone", 2, true), ("gone", 3, true), ("kept", 2, false)]
        );
        assert_eq!(found[1].2, br#""kept-1""#);
        assert!(!bytes.windows(6).any(|w| w == b"secret"));
        for (i, (a, b)) in original.iter().zip(&bytes).enumerate() {
            assert!(a == b || changed.iter().any(|r| r.contains(&i)), "byte {i} changed outside the ranges");
        }
        assert_eq!(whole(&mut bytes).unwrap(), []);
    }

    #[test]
    fn the_walk_stops_at_the_end_it_is_given() {
        let mut bytes = segment();
        let mut later = Vec::new();
        record("gone", 1, r#""reborn""#, &mut later);
        let before = bytes.len() as u64;
        bytes.extend_from_slice(&later);
        scrub_bytes(&mut bytes, "gone", before).unwrap();
        let found = records(&bytes);
        assert_eq!(found.last().unwrap().2, br#""reborn""#, "a record after `before` is a new ledger's");
        assert!(!found.last().unwrap().3);
        let mid = SEGMENT_HEADER_BYTES as u64 + 3;
        assert!(scrub_bytes(&mut segment(), "gone", mid).is_err(), "an end inside a record is damage");
    }

    #[test]
    fn damage_outside_the_ledgers_records_changes_nothing() {
        let original = segment();
        let kept_at = SEGMENT_HEADER_BYTES + decode_record(&original[SEGMENT_HEADER_BYTES..]).unwrap().1;
        let mut bytes = original.clone();
        bytes[kept_at + 20] ^= 1; // inside `kept`'s first record
        let damage = whole(&mut bytes).unwrap_err();
        assert_eq!(damage.offset, kept_at as u64);
        let mut expected = original;
        expected[kept_at + 20] ^= 1;
        assert_eq!(bytes, expected, "nothing written on damage");

        // A length that points elsewhere in a record of the ledger is caught
        // by the walk, whatever the record's own checksum says.
        let mut bytes = segment();
        bytes[SEGMENT_HEADER_BYTES] += 1;
        assert!(whole(&mut bytes).is_err());
    }

    #[test]
    fn intents_of_two_deletions_merge() {
        let a = ScrubIntent { before: (2, 100), segments: vec![1, 2] };
        let b = ScrubIntent { before: (3, 16), segments: vec![2, 3] };
        assert_eq!(a.merge(b), ScrubIntent { before: (3, 16), segments: vec![1, 2, 3] });
        let key = CatalogKey::Scrub(LedgerName::parse("gone").unwrap());
        let i = ScrubIntent { before: (4, 80), segments: vec![4] };
        assert_eq!(ScrubIntent::decode(&key, &i.encode()).unwrap(), i);
        assert_eq!(String::from_utf8(i.encode()).unwrap(), r#"{"before":[4,80],"segments":[4]}"#);
    }
}
