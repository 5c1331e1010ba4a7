//! Freezing full chunks into packs, reads across packs and the hot tier,
//! and the release of WAL segments (with a slow ledger beside fast ones).

use std::time::{Duration, Instant};

use ferry_core::LedgerName;
use ferry_store::Store;

use crate::support::*;

fn pack(dir: &std::path::Path, ledger: &str, chunk: u64) -> std::path::PathBuf {
    dir.join("ledgers").join(ledger).join(format!("{:05}", chunk / 1000)).join(format!("{chunk:08}.pack"))
}

/// Waits until `cond` holds (the freezer works in the background).
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn append_n(store: &Store, l: &LedgerName, n: usize, tag: &str) {
    for i in 0..n {
        store.append(l, vec![keyed(&format!("{tag}-{i}"), &format!(r#"{{"{tag}":{i}}}"#))]).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn full_chunks_are_frozen_and_reads_span_packs_and_hot_tier_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.chunk_entries = Some(4);
    let store = open_with(c.clone());
    let l = ledger("audit");
    append_n(&store, &l, 10, "a").await;
    eventually("chunks 0 and 1 frozen", || pack(dir.path(), "audit", 1).exists()).await;
    assert!(pack(dir.path(), "audit", 0).exists());
    assert!(!pack(dir.path(), "audit", 2).exists(), "chunk 2 is not full");
    let all = read_all(&store, &l);
    assert_eq!(all.len(), 10);
    assert_dense_and_ordered(&all, &l);
    // A read starting inside a pack runs on into the hot tier.
    let page = store.read_blocking(&l, Some(7), 100).unwrap();
    assert_eq!(page.entries.iter().map(|e| e.id).collect::<Vec<_>>(), vec![7, 8, 9, 10]);
    close(store).await;

    let store = open_with(c);
    assert_eq!(read_all(&store, &l), all, "the same after a restart");
    append_n(&store, &l, 2, "b").await;
    eventually("chunk 2 frozen", || pack(dir.path(), "audit", 2).exists()).await;
    let again = read_all(&store, &l);
    assert_eq!(&again[..10], &all[..]);
    assert_eq!(again.len(), 12);
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_ledger_does_not_pin_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.chunk_entries = Some(64);
    c.wal_segment_bytes = 16 * 1024;
    let store = open_with(c.clone());
    let (fast, slow) = (ledger("fast"), ledger("slow"));
    let payload = format!(r#"{{"pad":"{}"}}"#, "x".repeat(200));
    let mut slow_written = 0;
    for round in 0..40 {
        for _ in 0..64 {
            store.append(&fast, vec![entry(&payload)]).await.unwrap();
        }
        if round % 8 == 0 {
            store.append(&slow, vec![entry(&format!("{round}"))]).await.unwrap();
            slow_written += 1;
        }
    }
    // Everything of `fast` freezes; `slow` keeps 5 entries in the hot tier.
    // Its few records must not keep the ~40 segments written meanwhile.
    eventually("hot tier shrinks to a few segments", || store.hot_disk_bytes() < 4 * 16 * 1024).await;
    assert_eq!(read_all(&store, &slow).len(), slow_written);
    assert_eq!(read_all(&store, &fast).len(), 40 * 64);
    let segments_before = segments(dir.path()).len();
    close(store).await;

    let store = open_with(c);
    let slow_entries = read_all(&store, &slow);
    assert_eq!(slow_entries.len(), slow_written, "relocated records survive a restart");
    assert_dense_and_ordered(&slow_entries, &slow);
    assert_eq!(read_all(&store, &fast).len(), 40 * 64);
    assert!(segments(dir.path()).len() <= segments_before + 1);
    close(store).await;
}

/// Issue #12 item 11: a file someone left in a ledger's directory (an
/// editor's backup, a copied note) must not make the deletion fail with
/// ENOTEMPTY and poison the store. The deletion removes what is ferry's and
/// leaves (and reports) the rest.
#[tokio::test(flavor = "multi_thread")]
async fn a_stray_file_in_a_ledger_directory_does_not_stop_its_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open_with(ferry_store::StoreConfig { chunk_entries: Some(4), ..config(dir.path()) });
    append_n(&store, &l, 9, "a").await;
    eventually("chunk 1 frozen", || pack(dir.path(), "audit", 1).exists()).await;
    let stray = dir.path().join("ledgers/audit/notes.txt");
    let stray_in_bucket = dir.path().join("ledgers/audit/00000/copy.bak");
    std::fs::write(&stray, b"mine").unwrap();
    std::fs::write(&stray_in_bucket, b"mine too").unwrap();

    store.delete_ledger(&l).await.unwrap();
    assert!(store.ready().is_ok(), "a stray file is not a storage failure");
    assert!(!pack(dir.path(), "audit", 0).exists() && !pack(dir.path(), "audit", 1).exists(), "ferry's files are gone");
    assert_eq!(std::fs::read(&stray).unwrap(), b"mine", "the stray file is left as it was");
    assert_eq!(std::fs::read(&stray_in_bucket).unwrap(), b"mine too");

    // The name works again, and its packs go beside the stray files.
    append_n(&store, &l, 5, "b").await;
    eventually("chunk 0 of the new ledger frozen", || pack(dir.path(), "audit", 0).exists()).await;
    assert_eq!(read_all(&store, &l).len(), 5);
    close(store).await;
}
