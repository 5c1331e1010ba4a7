//! Deleting a ledger while the name is reused. Needs the `failpoints`
//! feature (a fail point holds the freezer at the start of each deletion)
//! and one process per test: run under cargo-nextest.
#![cfg(feature = "failpoints")]

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use ferry_store::{StoreConfig, StoreError};

use crate::support::*;

/// Holds each hit of the fail point `name` until the test lets one through
/// (a send on the returned channel).
fn gate(name: &str) -> mpsc::Sender<()> {
    let (tx, rx) = mpsc::channel::<()>();
    let rx = Arc::new(Mutex::new(rx));
    fail::cfg_callback(name, move || {
        let _ = rx.lock().unwrap().recv_timeout(Duration::from_secs(30));
    })
    .unwrap();
    tx
}

/// Issue #12 item 1: a client retries `DELETE L` while the first deletion
/// runs, the name is created again and takes an acknowledged append, and
/// only then does the retried deletion reach the freezer. It must not
/// delete the new ledger: it answers "not found" and changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_retried_delete_never_deletes_the_ledger_created_again_under_the_name() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open_with(StoreConfig { chunk_entries: Some(4), ..config(dir.path()) });
    store.append(&l, (0..6).map(|i| entry(&i.to_string())).collect()).await.unwrap();
    let old = store.ledger_info(&l).unwrap().incarnation;

    let go = gate("freezer::delete");
    let first = tokio::spawn({
        let (store, l) = (store.clone(), l.clone());
        async move { store.delete_ledger(&l).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // the freezer holds at the first deletion
    let retry = tokio::spawn({
        let (store, l) = (store.clone(), l.clone());
        async move { store.delete_ledger(&l).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await; // the retry is queued behind it
    go.send(()).unwrap();
    first.await.unwrap().unwrap();

    // The name is created again while the retry waits at the freezer.
    let acked = store.append(&l, vec![entry(r#""new""#)]).await.unwrap();
    assert_eq!(acked.ids, [1]);
    let new = store.ledger_info(&l).unwrap().incarnation;
    assert!(new > old);

    go.send(()).unwrap();
    let err = retry.await.unwrap().unwrap_err();
    assert!(matches!(err, StoreError::LedgerNotFound(_)), "{err}");
    assert!(store.ready().is_ok());
    assert_eq!(store.ledger_info(&l).unwrap().incarnation, new, "the new ledger is still there");
    let entries = read_all(&store, &l);
    assert_eq!(entries.iter().map(|e| e.payload.as_str()).collect::<Vec<_>>(), [r#""new""#]);
    close(store).await;
    scenario.teardown();

    let store = open(dir.path());
    assert_eq!(store.ledger_info(&l).map(|i| i.incarnation), Some(new), "durable across a restart");
    let entries = read_all(&store, &l);
    assert_eq!(entries.iter().map(|e| e.payload.as_str()).collect::<Vec<_>>(), [r#""new""#]);
    close(store).await;
}

/// Issue #12 item 2: a read racing a deletion re-opens a pack of the old
/// ledger after the deletion forgot its cached packs; once the name holds
/// a new ledger with a pack of the same chunk number, reads must get the
/// new ledger's entries, never the old pack's.
#[tokio::test(flavor = "multi_thread")]
async fn a_pack_opened_during_a_deletion_is_never_served_for_the_ledger_created_again() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open_with(StoreConfig { chunk_entries: Some(4), ..config(dir.path()) });
    store.append(&l, (1..=9).map(|i| entry(&format!(r#""old-{i}""#))).collect()).await.unwrap();
    let pack1 = dir.path().join("ledgers/audit/00000/00000001.pack");
    wait_for_file(&pack1, "chunk 1 frozen").await;

    // Hold the sweep after its first unlink (chunk 0), and read chunk 1
    // meanwhile: the read opens (and caches) the old pack 1.
    let tx = gate("sweep::unlinked");
    let deletion = tokio::spawn({
        let (store, l) = (store.clone(), l.clone());
        async move { store.delete_ledger(&l).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let during = store.read(&l, Some(5), 4).await.unwrap();
    assert_eq!(during.entries[0].payload.as_str(), r#""old-5""#);
    tx.send(()).unwrap();
    tx.send(()).unwrap();
    deletion.await.unwrap().unwrap();
    fail::remove("sweep::unlinked");

    store.append(&l, (1..=9).map(|i| entry(&format!(r#""new-{i}""#))).collect()).await.unwrap();
    wait_for_file(&pack1, "the new chunk 1 frozen").await;
    let after = store.read(&l, Some(5), 4).await.unwrap();
    let payloads: Vec<&str> = after.entries.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(payloads, [r#""new-5""#, r#""new-6""#, r#""new-7""#, r#""new-8""#]);
    close(store).await;
    scenario.teardown();
}
