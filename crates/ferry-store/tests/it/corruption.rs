//! Damage to acknowledged data is never repaired silently: reopening fails
//! with `Corrupted`, naming the segment and the offset, and leaves the file
//! as it found it.

use std::path::Path;
use std::time::Instant;

use ferry_core::limits::{READ_BYTES_MAX, READ_LIMIT_MAX, WAL_SEGMENT_BYTES_MAX};
use ferry_core::{Entry, NewEntry};
use ferry_store::StoreError;

use crate::support::*;

async fn store_with_entries(dir: &Path, n: usize) -> Vec<Entry> {
    let l = ledger("audit");
    let store = open(dir);
    for i in 0..n {
        let e = keyed(&format!("k{i}"), &format!(r#"{{"i":{i},"pad":"{}"}}"#, "p".repeat(40)));
        store.append(&l, vec![e]).await.unwrap();
    }
    let entries = read_all(&store, &l);
    close(store).await;
    entries
}

/// Flips `bit` at `offset`, checks that opening fails with `Corrupted` at
/// `record_offset` of `segment` and leaves the file untouched, then flips
/// the bit back and checks the store opens with every entry.
fn assert_flip_is_reported(dir: &Path, segment: &Path, offset: usize, record_offset: u64, expected: &[Entry]) {
    flip_bit(segment, offset, 3);
    let damaged = std::fs::read(segment).unwrap();
    let err = open_err(config(dir));
    assert_corrupted_at(&err, segment, record_offset);
    assert_eq!(std::fs::read(segment).unwrap(), damaged, "a failed open must not touch damaged data");
    flip_bit(segment, offset, 3);
    let store = open(dir);
    assert_eq!(read_all(&store, &ledger("audit")), expected);
    drop(store);
}

#[tokio::test(flavor = "multi_thread")]
async fn bit_flip_in_an_older_record_of_the_last_segment_fails_open_naming_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let entries = store_with_entries(dir.path(), 20).await;
    let segment = last_segment(dir.path());
    let recs = records(&std::fs::read(&segment).unwrap());
    assert_eq!(recs.len(), 20);

    let target = &recs[7];
    let cases = [
        ("length field", target.offset + 1),
        ("checksum field", target.offset + 5),
        ("flags", target.offset + 8),
        ("ledger name", target.offset + 10),
        ("id", target.offset + 8 + 2 + "audit".len()),
        ("payload", target.offset + target.len - 2),
    ];
    for (case, offset) in cases {
        eprintln!("case: {case}");
        assert_flip_is_reported(dir.path(), &segment, offset, target.offset as u64, &entries);
    }
    // The second-to-last record is acknowledged too, and a valid record follows it.
    let target = &recs[18];
    assert_flip_is_reported(dir.path(), &segment, target.offset + target.len / 2, target.offset as u64, &entries);
}

#[tokio::test(flavor = "multi_thread")]
async fn bit_flip_in_the_header_of_a_segment_fails_open_at_offset_zero() {
    let dir = tempfile::tempdir().unwrap();
    let entries = store_with_entries(dir.path(), 3).await;
    let segment = last_segment(dir.path());
    assert_flip_is_reported(dir.path(), &segment, 2, 0, &entries);
    assert_flip_is_reported(dir.path(), &segment, 13, 0, &entries);
}

/// Ends the current segment by hand the way the flusher does when it is
/// full: a new segment with only a header becomes the last one.
async fn two_segments(dir: &Path) -> Vec<Entry> {
    let l = ledger("audit");
    let older = store_with_entries(dir, 10).await;
    std::fs::write(segment_path(dir, 2), segment_header()).unwrap();
    let store = open(dir);
    for i in 0..5 {
        store.append(&l, vec![entry(&format!(r#"{{"later":{i}}}"#))]).await.unwrap();
    }
    let all = read_all(&store, &l);
    assert_eq!(&all[..10], older);
    assert_dense_and_ordered(&all, &l);
    close(store).await;
    assert_eq!(records(&std::fs::read(segment_path(dir, 2)).unwrap()).len(), 5);
    all
}

#[tokio::test(flavor = "multi_thread")]
async fn bit_flip_in_a_segment_that_is_not_the_last_fails_open_naming_segment_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let entries = two_segments(dir.path()).await;
    let first = segment_path(dir.path(), 1);
    let recs = records(&std::fs::read(&first).unwrap());
    assert_eq!(recs.len(), 10);
    // Even the last record of an older segment is acknowledged data.
    for target in [&recs[3], &recs[9]] {
        assert_flip_is_reported(dir.path(), &first, target.offset + target.len - 1, target.offset as u64, &entries);
    }
    flip_bit(&first, recs[9].offset + 12, 0);
    let err = open_err(config(dir.path()));
    assert!(err.to_string().contains("not the last"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn segment_that_is_not_the_last_and_ends_early_fails_open() {
    let dir = tempfile::tempdir().unwrap();
    two_segments(dir.path()).await;
    let first = segment_path(dir.path(), 1);
    let bytes = std::fs::read(&first).unwrap();
    let recs = records(&bytes);
    let last = recs.last().unwrap();
    // Cut inside the last record of the older segment: acknowledged data lost.
    std::fs::write(&first, &bytes[..last.offset + 5]).unwrap();
    let err = open_err(config(dir.path()));
    assert_corrupted_at(&err, &first, last.offset as u64);
    // Trailing zeros after the last record of an older segment are damage too.
    let mut padded = bytes.clone();
    padded.extend_from_slice(&[0; 64]);
    std::fs::write(&first, padded).unwrap();
    let err = open_err(config(dir.path()));
    assert_corrupted_at(&err, &first, bytes.len() as u64);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_segment_rolls_over_reads_span_segments_and_damage_in_the_older_one_is_reported() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("bulk");
    let store = open(dir.path());
    // ~0.9 MiB string payloads, eight per append, until past one segment.
    let big = format!("\"{}\"", "x".repeat(900 * 1024));
    let big = payload(&big);
    let per_batch = 8;
    let batches = (WAL_SEGMENT_BYTES_MAX as usize / (big.len() * per_batch)) + 2;
    for b in 0..batches {
        let batch: Vec<NewEntry> = (0..per_batch)
            .map(|i| NewEntry { key: Some(format!("{b}-{i}")), idempotency_key: None, payload: big.clone() })
            .collect();
        store.append(&l, batch).await.unwrap();
    }
    let n = (batches * per_batch) as u64;
    assert_eq!(head(&store, &l), n);
    let segs = segments(dir.path());
    assert_eq!(segs.len(), 2, "the WAL rolled over to a second segment");
    assert!(file_len(&segs[0]) <= WAL_SEGMENT_BYTES_MAX);

    let check = |store: &ferry_store::Store| {
        let mut from = 1;
        while from <= n {
            let batch = store.read_blocking(&l, Some(from), 13).unwrap();
            for e in &batch.entries {
                assert_eq!(e.id, from);
                assert_eq!(e.key, Some(format!("{}-{}", (from - 1) / per_batch as u64, (from - 1) % per_batch as u64)));
                assert_eq!(e.payload, big);
                from += 1;
            }
        }
    };
    check(&store);
    // One page stops after the entry that crosses READ_BYTES_MAX.
    let page = store.read_blocking(&l, Some(3), READ_LIMIT_MAX).unwrap();
    let per_record = records(&std::fs::read(&segs[0]).unwrap())[0].len;
    let fit = READ_BYTES_MAX.div_ceil(per_record);
    assert_eq!(page.entries.len(), fit);
    assert_eq!(page.next, 3 + fit as u64);
    assert_eq!(page.entries[0].id, 3);
    close(store).await;
    let store = open(dir.path());
    check(&store);
    let outcome = store.append(&l, vec![entry("1")]).await.unwrap();
    assert_eq!(outcome.ids, vec![n + 1]);
    close(store).await;

    let first = &segs[0];
    let recs = records(&std::fs::read(first).unwrap());
    let target = &recs[recs.len() / 2];
    flip_bit(first, target.offset + target.len / 2, 6);
    let err = open_err(config(dir.path()));
    assert_corrupted_at(&err, first, target.offset as u64);
    assert!(matches!(err, StoreError::Corrupted { .. }));
    eprintln!("rollover test took {:?}", started.elapsed());
}

/// SPEC §2.3: a damaged pack is reported where it is read, and only there.
/// The store opens (startup reloads the idempotency keys of recent keyed
/// packs, and must not stop at one it cannot read), serves every other
/// ledger and range, and a read of the damaged range fails with
/// `CorruptedPack` naming the ledger, the chunk and the offset.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_recent_pack_fails_only_the_reads_of_its_range() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.chunk_entries = Some(4);
    let (audit, other) = (ledger("audit"), ledger("other"));
    let store = open_with(c.clone());
    for i in 1..=10 {
        store.append(&audit, vec![with_idempotency_key(&format!("k{i}"), &format!(r#"{{"i":{i}}}"#))]).await.unwrap();
    }
    store.append(&other, vec![entry("1"), entry("2")]).await.unwrap();
    let pack = dir.path().join("ledgers/audit/00000/00000000.pack");
    let next = dir.path().join("ledgers/audit/00000/00000001.pack");
    wait_for_file(&pack, "chunks 0 and 1 were not frozen").await;
    wait_for_file(&next, "chunks 0 and 1 were not frozen").await;
    let before = read_all(&store, &audit);
    close(store).await;

    let len = std::fs::metadata(&pack).unwrap().len() as usize;
    flip_bit(&pack, len / 2, 5);
    let store = open_with(c);
    assert_eq!(read_all(&store, &other).len(), 2, "another ledger is served");
    let tail = store.read_blocking(&audit, Some(5), 100).unwrap();
    assert_eq!(tail.entries, before[4..], "the ranges of other chunks are served");
    match store.read_blocking(&audit, Some(1), 100) {
        Err(StoreError::CorruptedPack { ledger, chunk, offset, .. }) => {
            assert_eq!((ledger.as_str(), chunk), ("audit", 0));
            assert!(offset > 0, "the offset of the damaged block");
        }
        other => panic!("a read of the damaged range must fail with CorruptedPack, got {other:?}"),
    }
    // Appends go on.
    assert_eq!(store.append(&audit, vec![entry("11")]).await.unwrap().ids, vec![11]);
    close(store).await;
}

/// A chunk frozen before format 3 has no `keys:` value: startup reads its
/// pack to reload its keys. If that pack is damaged the store still opens
/// (the keys are reported lost), and — the documented cost — a retry of
/// one of those keys appends again.
#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_pack_without_a_key_list_costs_its_keys_but_not_the_store() {
    use ferry_format::keys::CatalogKey;
    use ferry_store::{Catalog, CatalogOp, RedbCatalog};

    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.chunk_entries = Some(4);
    let l = ledger("audit");
    let store = open_with(c.clone());
    for i in 1..=5 {
        store.append(&l, vec![with_idempotency_key(&format!("k{i}"), &i.to_string())]).await.unwrap();
    }
    let pack = dir.path().join("ledgers/audit/00000/00000000.pack");
    wait_for_file(&pack, "chunk 0 was not frozen").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    close(store).await;
    {
        let catalog = RedbCatalog::open(&dir.path().join("catalog")).unwrap();
        let key = CatalogKey::Keys(l.clone(), 0);
        assert!(catalog.get(&key).unwrap().is_some(), "format 3 stored the chunk's keys");
        catalog.commit(&[CatalogOp::Delete(key)]).unwrap();
    }
    let len = std::fs::metadata(&pack).unwrap().len() as usize;
    flip_bit(&pack, len / 2, 4);
    let store = open_with(c);
    let again = store.append(&l, vec![with_idempotency_key("k1", r#""again""#)]).await.unwrap();
    assert_eq!((again.ids, again.created), (vec![6], true), "the lost key appends again");
    let hot = store.append(&l, vec![with_idempotency_key("k5", r#""again""#)]).await.unwrap();
    assert_eq!((hot.ids, hot.created), (vec![5], false), "keys of the hot tier are unaffected");
    close(store).await;
}
