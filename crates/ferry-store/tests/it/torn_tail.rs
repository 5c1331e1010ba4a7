//! Torn tails: what a crash can leave at the end of the last segment is
//! dropped on reopen, and nothing acknowledged goes with it.

use std::path::Path;

use ferry_core::{Entry, NewEntry};
use rand::{Rng as _, SeedableRng as _};

use crate::support::*;

/// A store with `n` single-entry appends to `audit`, closed. Returns the
/// entries and the last segment's length after each append (`lens[0]` is
/// the length before the first).
async fn store_with_singles(dir: &Path, n: usize) -> (Vec<Entry>, Vec<u64>) {
    let l = ledger("audit");
    let store = open(dir);
    assert!(store.create_ledger_blocking(&l).unwrap());
    let segment = last_segment(dir);
    let mut lens = vec![file_len(&segment)];
    for i in 0..n {
        let e = if i % 2 == 0 {
            keyed(&format!("key-{i}"), &format!(r#"{{"i":{i},"s":"{}"}}"#, "x".repeat(i * 7)))
        } else {
            entry(&format!("[{i}]"))
        };
        store.append(&l, vec![e]).await.unwrap();
        lens.push(file_len(&segment));
    }
    assert_eq!(segments(dir), vec![segment], "everything is in one segment");
    let entries = read_all(&store, &l);
    close(store).await;
    (entries, lens)
}

/// Reopens after the segment was damaged, checks that exactly `expected`
/// survived and the segment was cut back to `kept_len`, appends one entry,
/// and checks it got the next id, also after another reopen.
async fn assert_recovers_to(dir: &Path, expected: &[Entry], kept_len: u64, case: &str) {
    let l = ledger("audit");
    let segment = last_segment(dir);
    let store = open(dir);
    assert_eq!(head(&store, &l), expected.len() as u64, "{case}");
    assert_eq!(read_all(&store, &l), expected, "{case}");
    assert_eq!(file_len(&segment), kept_len, "{case}: torn bytes are cut off");
    let next = expected.len() as u64 + 1;
    let outcome = store.append(&l, vec![entry(r#"{"after":"recovery"}"#)]).await.unwrap();
    assert_eq!(outcome.ids, vec![next], "{case}: ids continue densely");
    close(store).await;

    let store = open(dir);
    let all = read_all(&store, &l);
    assert_eq!(all.len() as u64, next, "{case}");
    assert_eq!(&all[..expected.len()], expected, "{case}");
    assert_eq!(all[expected.len()].payload.as_str(), r#"{"after":"recovery"}"#);
    assert_dense_and_ordered(&all, &l);
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn torn_tail_of_last_segment_is_truncated_and_acked_entries_survive() {
    let dir = tempfile::tempdir().unwrap();
    let n = 12;
    let (entries, lens) = store_with_singles(dir.path(), n).await;
    let segment = last_segment(dir.path());
    let original = std::fs::read(&segment).unwrap();
    assert_eq!(original.len() as u64, lens[n]);
    let (start, end) = (lens[n - 1] as usize, lens[n] as usize);
    let record_len = end - start;
    assert!(record_len > 30);

    let cuts = [
        ("one byte of the prefix", start + 1),
        ("most of the prefix", start + 7),
        ("exactly the prefix", start + 8),
        ("the prefix and one body byte", start + 9),
        ("half the record", start + record_len / 2),
        ("all but the last byte", end - 1),
    ];
    for (case, cut) in cuts {
        std::fs::write(&segment, &original[..cut]).unwrap();
        assert_recovers_to(dir.path(), &entries[..n - 1], start as u64, case).await;
    }

    // Cut exactly at a record boundary: nothing is torn and nothing is lost.
    std::fs::write(&segment, &original[..start]).unwrap();
    assert_recovers_to(dir.path(), &entries[..n - 1], start as u64, "record boundary").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn zeros_or_garbage_after_the_last_record_are_dropped_and_every_entry_survives() {
    let dir = tempfile::tempdir().unwrap();
    let n = 9;
    let (entries, lens) = store_with_singles(dir.path(), n).await;
    let segment = last_segment(dir.path());
    let original = std::fs::read(&segment).unwrap();

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut random = vec![0u8; 3000];
    rng.fill(&mut random[..]);
    // A prefix promising a 100-byte body that never arrived.
    let mut promise = 100u32.to_le_bytes().to_vec();
    promise.extend_from_slice(&[0xAB; 12]);
    let tails: [(&str, Vec<u8>); 5] = [
        ("one zero byte", vec![0]),
        ("a page of zeros", vec![0; 4096]),
        ("random garbage", random),
        ("a prefix whose body never arrived", promise),
        ("0xFF bytes", vec![0xFF; 64]),
    ];
    for (case, tail) in tails {
        let mut bytes = original.clone();
        bytes.extend_from_slice(&tail);
        std::fs::write(&segment, bytes).unwrap();
        assert_recovers_to(dir.path(), &entries, lens[n], case).await;
        std::fs::write(&segment, &original).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_torn_in_its_middle_disappears_whole_and_its_idempotency_keys_are_free() {
    let dir = tempfile::tempdir().unwrap();
    let n = 5;
    let (singles, lens) = store_with_singles(dir.path(), n).await;
    let l = ledger("audit");
    let batch: Vec<NewEntry> =
        (0..5).map(|i| with_idempotency_key(&format!("b-{i}"), &format!(r#"{{"b":{i}}}"#))).collect();
    let store = open(dir.path());
    let outcome = store.append(&l, batch.clone()).await.unwrap();
    assert_eq!(outcome.ids, vec![6, 7, 8, 9, 10]);
    close(store).await;

    let segment = last_segment(dir.path());
    let original = std::fs::read(&segment).unwrap();
    let batch_start = lens[n] as usize;
    let recs: Vec<RecordAt> = records(&original).into_iter().filter(|r| r.offset >= batch_start).collect();
    assert_eq!(
        recs.iter().map(|r| (r.id, r.batch_continues)).collect::<Vec<_>>(),
        [(6, true), (7, true), (8, true), (9, true), (10, false)],
        "every record of a batch but the last carries the continues flag"
    );

    let cuts = [
        ("at the boundary after the 2nd record", recs[2].offset),
        ("inside the 3rd record's prefix", recs[2].offset + 3),
        ("inside the 3rd record's body", recs[2].offset + recs[2].len / 2),
        ("at the boundary before the last record", recs[4].offset),
        ("one byte before the end", recs[4].offset + recs[4].len - 1),
    ];
    for (case, cut) in cuts {
        std::fs::write(&segment, &original[..cut]).unwrap();
        let store = open(dir.path());
        assert_eq!(head(&store, &l), n as u64, "{case}: the batch is gone whole");
        assert_eq!(read_all(&store, &l), singles, "{case}");
        assert_eq!(file_len(&segment), batch_start as u64, "{case}");
        // Its idempotency keys were never acknowledged, so they are new.
        let again = store.append(&l, batch.clone()).await.unwrap();
        assert_eq!((again.ids, again.created), (vec![6, 7, 8, 9, 10], true), "{case}");
        close(store).await;
        let store = open(dir.path());
        assert_eq!(head(&store, &l), 10, "{case}");
        close(store).await;
        std::fs::write(&segment, &original).unwrap();
    }
}

/// A crash while a new segment is being created can leave it empty or with
/// part of its header: nothing was ever acknowledged in it.
#[tokio::test(flavor = "multi_thread")]
async fn new_last_segment_with_a_torn_header_is_recreated_and_acked_entries_survive() {
    let header = segment_header();
    let partials: [(&str, &[u8]); 4] = [
        ("an empty file", &[]),
        ("part of the header", &header[..6]),
        ("all but the header's last byte", &header[..header.len() - 1]),
        ("a header-sized run of zeros", &[0; 16]),
    ];
    let l = ledger("audit");
    let n = 4;
    for (case, partial) in partials {
        let dir = tempfile::tempdir().unwrap();
        let (entries, _) = store_with_singles(dir.path(), n).await;
        let second = segment_path(dir.path(), 2);
        std::fs::write(&second, partial).unwrap();

        let store = open(dir.path());
        assert_eq!(read_all(&store, &l), entries, "{case}");
        let outcome = store.append(&l, vec![entry("\"new\"")]).await.unwrap();
        assert_eq!(outcome.ids, vec![n as u64 + 1], "{case}");
        close(store).await;
        assert_eq!(std::fs::read(&second).unwrap()[..header.len()], header, "{case}: the segment has its header again");

        let store = open(dir.path());
        let all = read_all(&store, &l);
        assert_eq!(&all[..n], entries, "{case}");
        assert_eq!(all[n].payload.as_str(), "\"new\"", "{case}");
        close(store).await;
    }
}

/// After a power loss the pages of the last, unsynced group write may land
/// in any order: a hole with valid records of the same group after it is a
/// torn write (nothing in it was acknowledged), not corruption. Damage
/// followed by a later group's first record is corruption.
#[tokio::test(flavor = "multi_thread")]
async fn hole_in_the_last_group_with_its_later_records_intact_is_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let n = 4;
    let (singles, lens) = store_with_singles(dir.path(), n).await;
    let l = ledger("audit");
    // One append of 6 entries is one group write.
    let batch: Vec<NewEntry> = (0..6).map(|i| entry(&format!(r#"{{"g":{i},"pad":"{}"}}"#, "p".repeat(40)))).collect();
    let store = open(dir.path());
    assert_eq!(store.append(&l, batch).await.unwrap().ids, vec![5, 6, 7, 8, 9, 10]);
    close(store).await;

    let segment = last_segment(dir.path());
    let original = std::fs::read(&segment).unwrap();
    let group = records(&original).into_iter().filter(|r| r.offset >= lens[n] as usize).collect::<Vec<_>>();
    assert_eq!(group.len(), 6);
    // Zero the 2nd and 3rd records, as if their page never reached the disk.
    let mut holed = original.clone();
    holed[group[1].offset..group[3].offset].fill(0);
    std::fs::write(&segment, &holed).unwrap();
    assert_recovers_to(dir.path(), &singles, lens[n], "hole inside the last group").await;

    // The same damage in an earlier group, with a later group after it,
    // refuses to open and names the damaged offset.
    let dir = tempfile::tempdir().unwrap();
    let (_, lens) = store_with_singles(dir.path(), n).await;
    let segment = last_segment(dir.path());
    let mut damaged = std::fs::read(&segment).unwrap();
    let second = lens[1] as usize;
    damaged[second..second + 10].fill(0);
    std::fs::write(&segment, &damaged).unwrap();
    let err = open_err(config(dir.path()));
    assert_corrupted_at(&err, &segment, second as u64);
}
