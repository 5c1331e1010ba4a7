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

/// Concurrent cursor commits share catalog commits, yet each caller gets
/// all or nothing for its own updates: a caller naming a ledger that does
/// not exist (or an id past the head) fails alone, and every other
/// caller's cursor is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_cursor_commits_succeed_or_fail_each_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let mut incarnations = Vec::new();
    for i in 0..40 {
        let l = ledger(&format!("l{i}"));
        store.append(&l, vec![entry("1"), entry("2")]).await.unwrap();
        incarnations.push(store.ledger_head(&l).unwrap().incarnation);
    }
    let mut tasks = Vec::new();
    for round in 0..5u64 {
        for (i, incarnation) in incarnations.iter().copied().enumerate() {
            let store = store.clone();
            let name = format!("l{i}");
            tasks.push(tokio::spawn(async move {
                // Every seventh caller is wrong: past the head, or a ledger
                // that does not exist; it adds a good update too, which must
                // not be written either.
                let updates = match (i + round as usize) % 7 {
                    0 => vec![set(&name, incarnation, 9, None)],
                    1 => vec![set(&name, incarnation, 1, None), set("nowhere", 1, 1, None)],
                    _ => vec![set(&name, incarnation, 1 + round % 2, None)],
                };
                (i, round, store.commit_cursors(updates).await)
            }));
        }
    }
    for t in tasks {
        let (i, round, result) = t.await.unwrap();
        match (i + round as usize) % 7 {
            0 => assert!(matches!(result, Err(StoreError::InvalidCursor { .. })), "{i}/{round}: {result:?}"),
            1 => assert!(matches!(result, Err(StoreError::LedgerNotFound(_))), "{i}/{round}: {result:?}"),
            _ => assert!(result.is_ok(), "{i}/{round}: {result:?}"),
        }
    }
    let cursors = store.cursors().await.unwrap();
    assert!(cursors.iter().all(|c| c.ledger.as_str() != "nowhere" && (1..=2).contains(&c.id)), "{cursors:?}");
    assert_eq!(cursors.len(), 40, "every ledger got a good update in some round");
    assert!(store.ready().is_ok());
    close(store).await;
}
