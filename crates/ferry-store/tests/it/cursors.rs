//! Exporter cursors in the catalog: the record's optional `sent_to` (the
//! last id of a short batch in flight, format 3) is written only within
//! `id + 1..=head`, read back by `cursors`, cleared by the next write, and
//! checked by `ferry verify`.

use ferry_format::keys::CatalogKey;
use ferry_store::verify::verify;
use ferry_store::{Catalog, CatalogOp, CursorUpdate, RedbCatalog, StoreError};

use crate::support::*;

fn set(ledger_name: &str, incarnation: u64, id: u64, sent_to: Option<u64>) -> CursorUpdate {
    CursorUpdate::Set { exporter: ledger("x"), ledger: ledger(ledger_name), incarnation, id, sent_to }
}

fn raw_cursor(dir: &std::path::Path, ledger_name: &str) -> String {
    let catalog = RedbCatalog::open(&dir.join("catalog")).unwrap();
    let value = catalog.get(&CatalogKey::Cursor(ledger("x"), ledger(ledger_name))).unwrap().expect("a cursor");
    String::from_utf8(value).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cursor_names_the_batch_in_flight_until_the_next_write_clears_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let a = ledger("a");
    store.append(&a, (1..=5).map(|i| entry(&i.to_string())).collect()).await.unwrap();
    let incarnation = store.ledger_head(&a).unwrap().incarnation;

    store.commit_cursors(vec![set("a", incarnation, 1, Some(3))]).await.unwrap();
    let cursors = store.cursors().await.unwrap();
    assert_eq!((cursors[0].id, cursors[0].sent_to), (1, Some(3)));
    for bad in [1, 0, 6] {
        match store.commit_cursors(vec![set("a", incarnation, 1, Some(bad))]).await {
            Err(StoreError::InvalidSentTo { sent_to, head: 5, .. }) if sent_to == bad => {}
            other => panic!("sent_to {bad}: expected InvalidSentTo, got {other:?}"),
        }
    }
    assert_eq!(store.cursors().await.unwrap()[0].sent_to, Some(3), "a refused write changes nothing");
    close(store).await;
    assert_eq!(raw_cursor(dir.path(), "a"), r#"{"id":1,"sent_to":3}"#);
    assert!(verify(&config(dir.path())).unwrap().is_ok());

    let store = open(dir.path());
    assert_eq!(store.cursors().await.unwrap()[0].sent_to, Some(3), "durable across a restart");
    store.commit_cursors(vec![set("a", incarnation, 3, None)]).await.unwrap();
    let cursors = store.cursors().await.unwrap();
    assert_eq!((cursors[0].id, cursors[0].sent_to), (3, None), "the acknowledgement clears it");
    close(store).await;
    assert_eq!(raw_cursor(dir.path(), "a"), r#"{"id":3}"#, "no field when none is in flight");
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_flags_a_sent_to_not_after_the_cursor_or_beyond_the_head_and_a_cursor_beyond_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for l in ["a", "b", "c", "d", "e"] {
        store.append(&ledger(l), (1..=5).map(|i| entry(&i.to_string())).collect()).await.unwrap();
    }
    close(store).await;
    let catalog = RedbCatalog::open(&dir.path().join("catalog")).unwrap();
    let put = |l: &str, value: &str| CatalogOp::Put(CatalogKey::Cursor(ledger("x"), ledger(l)), value.into());
    catalog
        .commit(&[
            put("a", r#"{"id":2,"sent_to":2}"#),
            put("b", r#"{"id":2,"sent_to":6}"#),
            put("c", r#"{"id":2,"sent_to":5,"extra":1}"#),
            put("d", r#"{"id":2,"sent_to":5}"#),
            put("e", r#"{"id":9}"#),
        ])
        .unwrap();
    drop(catalog);
    let report = verify(&config(dir.path())).unwrap();
    let faults: Vec<&str> = report.findings.iter().map(|f| f.message.as_str()).collect();
    assert_eq!(report.faults(), 4, "{faults:#?}");
    assert!(faults.contains(&"cursor:x:e: cursor 9 is beyond the head 5"), "{faults:#?}");
    assert!(faults.contains(&"cursor:x:a: sent_to 2 is not after the cursor 2"), "{faults:#?}");
    assert!(faults.contains(&"cursor:x:b: sent_to 6 is beyond the head 5"), "{faults:#?}");
    assert!(faults.iter().any(|f| f.starts_with("cursor:x:c: bad cursor value") && f.contains("extra")), "{faults:#?}");
}
