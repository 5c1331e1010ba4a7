//! The scrub protocol on the simulated disk. Two ledgers share the WAL's
//! segments; `gone` is deleted (its intent committed), a ledger of the same
//! name is created again and appends, and the deletion's scrub runs. A
//! crash is put at every sync point in turn, WAL and catalog alike, and
//! recovery runs on what a power loss leaves, on what a `kill -9` leaves,
//! and again after a power loss that follows that restart. Every
//! acknowledged record of `kept` and of the new `gone` must come back
//! intact; once the deletion is committed, no byte of the old `gone`'s
//! payloads may be left in any file, and no intent in the catalog.

use std::collections::{BTreeMap, BTreeSet};

use ferry_format::wal::{WalRecord, encode_record, is_scrubbed};
use ferry_fs::sim::{CrashClock, SimFs};
use ferry_fs::vfs::Vfs as _;

use super::*;
use crate::sim::MemCatalog;
use crate::wal::sim_tests::{Fault, Faulty, disk_on, hot};
use crate::wal::{SegmentWriter, replay};

const FORMAT: u32 = ferry_core::limits::FORMAT_VERSION;
/// Small segments: the deleted ledger's records spread over several.
const SEGMENT_BYTES: u64 = 400;
const GROUPS: u64 = 10;
/// What only the deleted ledger's payloads contain.
const SECRET: &[u8] = b"secret-";

fn gone() -> LedgerName {
    LedgerName::parse("gone").unwrap()
}

fn payload(ledger: &str, id: u64) -> String {
    match ledger {
        "gone" => format!("\"secret-{id:04}\""),
        "reborn" => format!("\"reborn-{id:04}\""),
        _ => format!("{{\"n\":{id}}}"),
    }
}

fn record(ledger: &str, id: u64, group_start: bool, out: &mut Vec<u8>) {
    let name = if ledger == "reborn" { "gone" } else { ledger };
    let payload = payload(ledger, id);
    let r = WalRecord {
        ledger: name,
        id,
        ts: id,
        key: Some("k"),
        idempotency_key: Some("i"),
        batch_continues: false,
        group_start,
        relocated: false,
        hash: None,
        payload: payload.as_bytes(),
    };
    encode_record(&r, out);
}

/// How far a run got before the crash.
#[derive(Debug, Default, Clone, Copy)]
struct Progress {
    /// The last acknowledged id of `kept` (one per group).
    kept: u64,
    /// The deletion (with its intent) is committed.
    deleted: bool,
    /// Where the WAL ended at the deletion: `gone` records before it are
    /// the deleted ledger's, after it the new one's.
    before: (u32, u64),
    /// The new `gone`'s acknowledged record.
    reborn: bool,
}

/// Appends one group durably, rolling segments as the flusher does.
fn append(disk: &Disk, writer: &mut SegmentWriter, group: &[u8]) -> Result<()> {
    if writer.len > SEGMENT_HEADER_BYTES as u64 && writer.len + group.len() as u64 > SEGMENT_BYTES {
        *writer = SegmentWriter::create(disk, hot(), writer.seq + 1, FORMAT)?;
    }
    writer.append_durably(disk, group)
}

/// Opens a segment still on the disk.
fn opener(disk: &Disk) -> impl Fn(u32) -> Result<Option<OpenSegment>> + '_ {
    |segment| {
        let path = hot().join(crate::wal::segment_name(segment.into()));
        Ok(Some((disk.open_segment(&path)?, path)))
    }
}

/// The workload, then the deletion: intent, a new ledger of the name,
/// scrub, intent removed. Stops at the first failure (the crash).
fn run(disk: &Disk, catalog: &MemCatalog, progress: &mut Progress) -> Result<()> {
    let mut wal = replay(disk, hot(), FORMAT, |_, _| Ok(()))?;
    let mut segments = BTreeSet::new();
    for id in 1..=GROUPS {
        let mut group = Vec::new();
        record("gone", id, true, &mut group);
        record("kept", id, false, &mut group);
        append(disk, &mut wal.writer, &group)?;
        segments.insert(wal.writer.seq);
        progress.kept = id;
    }
    let intent = ScrubIntent { before: (wal.writer.seq, wal.writer.len), segments: segments.into_iter().collect() };
    progress.before = intent.before;
    catalog.commit(&[CatalogOp::Put(CatalogKey::Scrub(gone()), intent.encode())])?;
    progress.deleted = true;
    let mut group = Vec::new();
    record("reborn", 1, true, &mut group);
    record("kept", GROUPS + 1, false, &mut group);
    append(disk, &mut wal.writer, &group)?;
    (progress.reborn, progress.kept) = (true, GROUPS + 1);
    carry_out(disk, catalog, &gone(), &intent, opener(disk))?;
    Ok(())
}

/// Recovers an image (scrub redo, then replay) and checks it.
fn check(fs: &SimFs, catalog: &MemCatalog, p: Progress, what: &str) {
    let disk = disk_on(fs);
    finish_interrupted(&disk, catalog, hot()).unwrap_or_else(|e| panic!("{what}: finishing the scrub failed: {e}"));
    let mut found: BTreeMap<(String, u64), (Vec<u8>, bool)> = BTreeMap::new();
    replay(&disk, hot(), FORMAT, |_, r| {
        let at = (r.pos.segment, u64::from(r.pos.offset));
        let ledger =
            if r.record.ledger == "gone" && at >= p.before && p.before != (0, 0) { "reborn" } else { r.record.ledger };
        found.insert((ledger.to_owned(), r.record.id), (r.record.payload.to_vec(), is_scrubbed(&r.record)));
        Ok(())
    })
    .unwrap_or_else(|e| panic!("{what}: replay failed: {e}"));

    for id in 1..=p.kept {
        let (bytes, _) = found.get(&("kept".to_owned(), id)).unwrap_or_else(|| panic!("{what}: kept {id} lost"));
        assert_eq!(bytes, payload("kept", id).as_bytes(), "{what}: kept {id}");
    }
    if p.reborn {
        let (bytes, _) = found.get(&("reborn".to_owned(), 1)).unwrap_or_else(|| panic!("{what}: the new gone lost"));
        assert_eq!(bytes, payload("reborn", 1).as_bytes(), "{what}: the new ledger's record was scrubbed");
    }
    for ((ledger, id), (bytes, scrubbed)) in &found {
        match ledger.as_str() {
            "gone" if p.deleted => assert!(*scrubbed, "{what}: gone {id} was not scrubbed"),
            "gone" => assert!(!*scrubbed, "{what}: gone {id} scrubbed before its deletion"),
            _ => assert!(!*scrubbed, "{what}: {ledger} {id} scrubbed"),
        }
        if !*scrubbed {
            assert_eq!(bytes, payload(ledger, *id).as_bytes(), "{what}: {ledger} {id}");
        }
    }
    if p.deleted {
        for path in fs.files() {
            let bytes = fs.read(&path).unwrap();
            assert!(!bytes.windows(SECRET.len()).any(|w| w == SECRET), "{what}: {} holds a secret", path.display());
        }
        assert!(catalog.scan(CatalogKey::SCRUB_PREFIX).unwrap().is_empty(), "{what}: the intent is left");
    }
}

#[test]
fn a_crash_at_every_sync_point_loses_nothing_and_leaves_nothing_of_the_deleted_ledger() {
    let clock = CrashClock::new();
    let fs = SimFs::new(&[hot()], clock.clone());
    let catalog = MemCatalog::new(clock.clone());
    let mut whole = Progress::default();
    run(&disk_on(&fs), &catalog, &mut whole).unwrap();
    let syncs = clock.syncs();
    let segments = whole.before.0 as u64;
    assert!(segments >= 3, "the deleted ledger's records span {segments} segments");
    // Each group, each roll (file and directory), then the intent, the new
    // ledger's group, each segment's scrub and the intent's removal.
    let expected = GROUPS + 2 * (segments - 1) + 3 + segments;
    assert!(syncs >= expected, "{syncs} sync points, {expected} expected");
    check(&fs.crash_image(true), &catalog.crash_image(), whole, "no crash");

    for n in 1..=syncs {
        let clock = CrashClock::new();
        let fs = SimFs::new(&[hot()], clock.clone());
        let catalog = MemCatalog::new(clock.clone());
        clock.crash_at(n);
        let mut p = Progress::default();
        assert!(run(&disk_on(&fs), &catalog, &mut p).is_err(), "sync point {n} was reached");
        // A crash can leave the group in flight written, not acknowledged:
        // it may come back, and is checked when it does.
        check(&fs.crash_image(true), &catalog.crash_image(), p, &format!("crash at sync {n}, synced image"));
        check(&fs.crash_image(false), &catalog.crash_image(), p, &format!("crash at sync {n}, live image"));
        let (restarted, catalog) = (fs.process_crash(), catalog.crash_image());
        check(&restarted, &catalog, p, &format!("kill -9 at sync {n}"));
        let what = format!("kill -9 at sync {n}, then a power loss after the restart");
        check(&restarted.crash_image(true), &catalog.crash_image(), p, &what);
    }
}

/// A scrub whose write is torn (half of it reaches the file, as a crash in
/// the middle of the write leaves it) is finished by the next start: the
/// torn records keep their framing and ledger, so the walk finds them.
#[test]
fn a_torn_scrub_write_is_finished_by_the_next_start() {
    let fs = SimFs::new(&[hot()], CrashClock::new());
    let catalog = MemCatalog::new(CrashClock::new());
    let disk = disk_on(&fs);
    let mut wal = replay(&disk, hot(), FORMAT, |_, _| Ok(())).unwrap();
    let mut group = Vec::new();
    for id in 1..=3 {
        record("gone", id, id == 1, &mut group);
        record("kept", id, false, &mut group);
    }
    wal.writer.append_durably(&disk, &group).unwrap();
    let intent = ScrubIntent { before: (wal.writer.seq, wal.writer.len), segments: vec![wal.writer.seq] };
    catalog.commit(&[CatalogOp::Put(CatalogKey::Scrub(gone()), intent.encode())]).unwrap();
    let torn = |segment: u32| {
        let (file, path) = opener(&disk)(segment)?.expect("the segment is there");
        Ok(Some((Faulty::wrap(file, Fault::ShortWrite), path)))
    };
    let err = carry_out(&disk, &catalog, &gone(), &intent, torn).unwrap_err();
    assert!(!matches!(err, StoreError::Poisoned(_)), "a refused scrub write does not poison: {err}");
    assert!(disk.health().check().is_ok());
    assert_eq!(catalog.scan(CatalogKey::SCRUB_PREFIX).unwrap().len(), 1, "the intent stays");

    let p = Progress { kept: 3, deleted: true, before: intent.before, reborn: false };
    let restarted = fs.process_crash();
    // Why the redo comes before the scan: in the last segment a torn
    // record with no group start after it looks like a torn tail, and the
    // scan would cut it, `kept`'s acknowledged records after it included.
    let mut kept_seen = 0;
    replay(&disk_on(&restarted.crash_image(false)), hot(), FORMAT, |_, r| {
        kept_seen += u64::from(r.record.ledger == "kept");
        Ok(())
    })
    .unwrap();
    assert!(kept_seen < 3, "the scan alone keeps what follows the torn record");
    check(&restarted, &catalog.crash_image(), p, "kill -9 after a torn scrub write");
    check(&restarted.crash_image(true), &catalog, p, "and a power loss after the restart");
}
