//! A failed fsync poisons the store: the group fails, every later write
//! fails without touching the disk, and readiness turns false. Needs the
//! `failpoints` feature (run by `scripts/check.sh` under nextest, one
//! process per test, since the fail point registry is global).
#![cfg(feature = "failpoints")]

use crate::support::*;
use ferry_store::StoreError;

#[tokio::test(flavor = "multi_thread")]
async fn failed_fdatasync_poisons_the_store_and_is_never_retried() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open(dir.path());
    assert_eq!(store.append(&l, vec![entry("1")]).await.unwrap().ids, vec![1]);
    assert!(store.ready().is_ok());

    fail::cfg("durable::sync_data", "return").unwrap();
    let err = store.append(&l, vec![entry("2")]).await.unwrap_err();
    assert!(matches!(err, StoreError::Poisoned(_)), "{err}");
    assert!(err.to_string().contains("fdatasync"), "{err}");
    fail::remove("durable::sync_data");

    // The disk works again, but the store never retries: still poisoned.
    let again = store.append(&l, vec![entry("3")]).await.unwrap_err();
    assert!(matches!(again, StoreError::Poisoned(_)), "{again}");
    assert!(store.ready().is_err());
    assert!(matches!(store.create_ledger_blocking(&ledger("other")), Err(StoreError::Poisoned(_))));
    // The failed group's id never became visible.
    assert_eq!(head(&store, &l), 1);
    close(store).await;
    scenario.teardown();

    // A restart recovers from what is durable: entry 1, and a new id 2 if
    // the failed write happened to reach the disk (it was never acked).
    let store = open(dir.path());
    let entries = read_all(&store, &l);
    assert_eq!(entries[0].payload.as_str(), "1");
    assert!(entries.len() <= 2);
    assert!(store.ready().is_ok());
    close(store).await;
}

/// A failed write is not a failed sync: `Disk` cuts the segment back to its
/// synced length and refuses the group; the store stays ready, the refused
/// idempotency key is not remembered, and the next append takes the id the
/// refused one would have had.
#[tokio::test(flavor = "multi_thread")]
async fn a_failed_write_is_refused_and_cut_back_without_poisoning_the_store() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open(dir.path());
    assert_eq!(store.append(&l, vec![entry("1")]).await.unwrap().ids, vec![1]);
    let synced_len = file_len(&last_segment(dir.path()));

    fail::cfg("fs::segment_write", "return").unwrap();
    let err = store.append(&l, vec![with_idempotency_key("k", "2")]).await.unwrap_err();
    assert!(!matches!(err, StoreError::Poisoned(_)), "{err}");
    assert!(err.to_string().contains("refused"), "{err}");
    fail::remove("fs::segment_write");
    assert!(store.ready().is_ok(), "a refused write does not poison");
    assert_eq!(file_len(&last_segment(dir.path())), synced_len, "cut back to the synced length");

    let again = store.append(&l, vec![with_idempotency_key("k", "2")]).await.unwrap();
    assert_eq!((again.ids, again.created), (vec![2], true), "the refused key was not remembered");
    close(store).await;
    scenario.teardown();

    let store = open(dir.path());
    let payloads: Vec<String> = read_all(&store, &l).iter().map(|e| e.payload.as_str().to_owned()).collect();
    assert_eq!(payloads, ["1", "2"]);
    close(store).await;
}

/// A write refused because the disk is full (ENOSPC, from a fail point
/// here; `full_disk.rs` fills a real tmpfs) is `NoSpace`, which the API
/// answers 507: cut back, refused, the store still ready, and the next
/// append goes through once the disk takes writes again.
#[tokio::test(flavor = "multi_thread")]
async fn a_write_refused_for_lack_of_space_is_no_space_and_the_store_stays_ready() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open(dir.path());
    assert_eq!(store.append(&l, vec![entry("1")]).await.unwrap().ids, vec![1]);
    fail::cfg("fs::segment_write", "return(enospc)").unwrap();
    let err = store.append(&l, vec![entry("2")]).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSpace(_)), "{err}");
    assert!(err.to_string().contains("No space left on device"), "{err}");
    assert!(store.ready().is_ok());
    fail::remove("fs::segment_write");
    assert_eq!(store.append(&l, vec![entry("2")]).await.unwrap().ids, vec![2]);
    close(store).await;
    scenario.teardown();
}

/// Issue #12 item 11: a store thread that panics (a broken invariant, or a
/// key that cannot be formatted) can no longer do its work, so the store
/// must say it is not ready instead of staying green.
#[tokio::test(flavor = "multi_thread")]
async fn a_panic_on_the_freezer_thread_makes_the_store_unready() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(ferry_store::StoreConfig { chunk_entries: Some(4), ..config(dir.path()) });
    fail::cfg("freezer::freeze_chunk", "panic").unwrap();
    store.append(&ledger("audit"), (0..4).map(|i| entry(&i.to_string())).collect()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while store.ready().is_ok() && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let err = store.ready().unwrap_err();
    assert!(err.to_string().contains("ferry-freezer"), "{err}");
    let refused = store.append(&ledger("audit"), vec![entry("5")]).await.unwrap_err();
    assert!(matches!(refused, StoreError::Poisoned(_)), "{refused}");
    fail::remove("freezer::freeze_chunk");
    drop(store);
    scenario.teardown();
}

/// Issue #12 items 9 and 12: a deletion that runs out of space never
/// poisons. Refused at its one commit, nothing changed: the ledger stays,
/// takes appends, and a retried DELETE goes through. Refused in a sweep
/// after that commit, the ledger is deleted and the sweep left is finished
/// a tick later; the name can be created again meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn a_deletion_short_of_space_never_poisons_and_finishes_by_itself() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let c = ferry_store::StoreConfig { chunk_entries: Some(4), ..config(dir.path()) };
    let l = ledger("audit");
    let store = open_with(c.clone());
    store.append(&l, (0..9).map(|i| entry(&i.to_string())).collect()).await.unwrap();
    let pack = |chunk: u64| dir.path().join(format!("ledgers/audit/00000/{chunk:08}.pack"));
    wait_for_file(&pack(1), "chunks 0 and 1 were not frozen").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;

    fail::cfg("catalog::commit", "1*return").unwrap();
    let err = store.delete_ledger(&l).await.unwrap_err();
    assert!(matches!(err, StoreError::NoSpace(_)), "{err}");
    assert!(store.ready().is_ok(), "{:?}", store.ready());
    assert_eq!(read_all(&store, &l).len(), 9, "nothing of the ledger changed");
    assert_eq!(store.append(&l, vec![entry("10")]).await.unwrap().ids, vec![10], "it takes appends again");

    fail::cfg("sweep::unlinked", "1*return(enospc)").unwrap();
    store.delete_ledger(&l).await.expect("deleted, with a sweep left for later");
    assert!(store.ready().is_ok(), "{:?}", store.ready());
    assert!(store.ledger_info(&l).is_none());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while pack(0).exists() || pack(1).exists() {
        assert!(std::time::Instant::now() < deadline, "the sweep left was not finished");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let again = store.append(&l, vec![entry(r#""new""#)]).await.unwrap();
    assert_eq!((again.ids, again.created), (vec![1], true));
    close(store).await;
    scenario.teardown();

    let store = open_with(c);
    let entries = read_all(&store, &l);
    assert_eq!(entries.len(), 1, "only the new ledger's entry");
    assert_eq!(entries[0].payload.as_str(), r#""new""#);
    assert!(store.ready().is_ok());
    close(store).await;
}
