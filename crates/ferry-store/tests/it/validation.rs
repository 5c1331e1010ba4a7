//! Bad input gets a precise error and changes nothing; ledgers exist only
//! when created (or auto-created).

use ferry_core::limits::{BATCH_ENTRIES_MAX, ENTRY_KEY_BYTES_MAX, IDEMPOTENCY_KEY_BYTES_MAX};
use ferry_core::{LedgerName, NewEntry};
use ferry_store::{Store, StoreError};

use crate::support::*;

/// The observable state of one ledger, to compare before and after.
fn snapshot(store: &Store, l: &LedgerName) -> (ferry_store::LedgerInfo, Vec<ferry_core::Entry>) {
    (store.ledger_info(l).expect("ledger exists"), read_all(store, l))
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_rejected_precisely_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.max_entry_bytes = 1000;
    let store = open_with(c.clone());
    let l = ledger("audit");
    store.append(&l, vec![keyed("k", r#"{"ok":1}"#)]).await.unwrap();
    let before = snapshot(&store, &l);

    let oversize = entry(&format!("\"{}\"", "x".repeat(999)));
    assert_eq!(oversize.payload.len(), 1001);
    let at_limit = entry(&format!("\"{}\"", "x".repeat(998)));
    let long_key = keyed(&"k".repeat(ENTRY_KEY_BYTES_MAX + 1), "1");
    let long_idem = with_idempotency_key(&"i".repeat(IDEMPOTENCY_KEY_BYTES_MAX + 1), "1");

    type Case = (&'static str, Vec<NewEntry>, fn(&StoreError) -> bool);
    let cases: Vec<Case> = vec![
        ("oversize payload", vec![oversize.clone()], |e| {
            matches!(e, StoreError::EntryTooLarge { size: 1001, max: 1000 })
        }),
        ("oversize payload at the end of a batch", vec![entry("1"), at_limit.clone(), oversize], |e| {
            matches!(e, StoreError::EntryTooLarge { size: 1001, max: 1000 })
        }),
        ("key over 256 bytes", vec![entry("1"), long_key], |e| {
            matches!(e, StoreError::FieldTooLong { field: "key", size: 257, max: 256 })
        }),
        ("idempotency key over 256 bytes", vec![long_idem], |e| {
            matches!(e, StoreError::FieldTooLong { field: "idempotency_key", size: 257, .. })
        }),
        ("empty batch", vec![], |e| matches!(e, StoreError::EmptyBatch)),
        (
            "too many entries",
            vec![entry("1"); BATCH_ENTRIES_MAX + 1],
            |e| matches!(e, StoreError::BatchTooLarge { count, max } if *count == BATCH_ENTRIES_MAX + 1 && *max == BATCH_ENTRIES_MAX),
        ),
    ];
    for (case, batch, expected) in cases {
        let err = store.append(&l, batch).await.unwrap_err();
        assert!(expected(&err), "{case}: got {err:?}");
        assert!(!err.to_string().is_empty());
        assert_eq!(snapshot(&store, &l), before, "{case} changed the ledger");
    }
    // Nothing half-written reaches the disk either.
    close(store).await;
    let store = open_with(c);
    assert_eq!(snapshot(&store, &l), before);
    // At the limit is fine, and ids continue from the real head.
    let ok = store.append(&l, vec![at_limit, keyed(&"k".repeat(256), "2")]).await.unwrap();
    assert_eq!(ok.ids, vec![2, 3]);
    assert_eq!(read_all(&store, &l)[2].key.as_deref().map(str::len), Some(256));
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_to_an_unknown_ledger_does_not_create_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let l = ledger("never");
    let err = store.append(&l, vec![]).await.unwrap_err();
    assert!(matches!(err, StoreError::EmptyBatch), "{err:?}");
    let err = store.append(&l, vec![keyed(&"k".repeat(300), "1")]).await.unwrap_err();
    assert!(matches!(err, StoreError::FieldTooLong { .. }), "{err:?}");
    assert!(store.ledger_info(&l).is_none());
    assert!(store.list_ledgers().is_empty());
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reading_an_unknown_ledger_or_below_first_fails_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let l = ledger("audit");
    store.append(&l, vec![entry("1")]).await.unwrap();

    let unknown = ledger("nope");
    match store.read_blocking(&unknown, None, 10) {
        Err(StoreError::LedgerNotFound(name)) => assert_eq!(name, unknown),
        other => panic!("expected LedgerNotFound, got {other:?}"),
    }
    assert!(store.ledger_info(&unknown).is_none());
    match store.read_blocking(&l, Some(0), 10) {
        Err(StoreError::BelowFirst { ledger, from, first }) => {
            assert_eq!((ledger, from, first), (l.clone(), 0, 1));
        }
        other => panic!("expected BelowFirst, got {other:?}"),
    }
    assert_eq!(head(&store, &l), 1);
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn without_auto_create_appends_need_a_created_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.auto_create_ledgers = false;
    let store = open_with(c.clone());
    let l = ledger("audit");

    let err = store.append(&l, vec![entry("1")]).await.unwrap_err();
    match &err {
        StoreError::LedgerNotFound(name) => assert_eq!(name, &l),
        other => panic!("expected LedgerNotFound, got {other:?}"),
    }
    assert!(err.to_string().contains("audit"));
    assert!(store.ledger_info(&l).is_none());

    assert!(store.create_ledger_blocking(&l).unwrap());
    let info = store.ledger_info(&l).unwrap();
    assert_eq!((info.first, info.head, info.entries, info.bytes), (1, 0, 0, 0));
    assert!(read_all(&store, &l).is_empty());
    assert_eq!(store.append(&l, vec![entry("1")]).await.unwrap().ids, vec![1]);
    assert!(!store.create_ledger_blocking(&l).unwrap(), "a second create reports it existed");
    assert_eq!(head(&store, &l), 1, "a second create leaves the ledger alone");
    close(store).await;

    // Created ledgers (even empty ones) survive a reopen.
    let store = open_with(c);
    let empty = ledger("empty");
    assert!(store.create_ledger_blocking(&empty).unwrap());
    close(store).await;
    let mut c = config(dir.path());
    c.auto_create_ledgers = false;
    let store = open_with(c);
    assert!(!store.create_ledger_blocking(&l).unwrap());
    assert_eq!(head(&store, &l), 1);
    assert_eq!(store.ledger_info(&empty).unwrap().head, 0);
    assert_eq!(store.append(&empty, vec![entry("1")]).await.unwrap().ids, vec![1]);
    close(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_first_appends_to_a_new_ledger_create_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let l = ledger("fresh");
    let mut tasks = Vec::new();
    for i in 0..16 {
        let (store, l) = (store.clone(), l.clone());
        tasks.push(tokio::spawn(async move { store.append(&l, vec![entry(&i.to_string())]).await.unwrap().ids[0] }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        ids.push(t.await.unwrap());
    }
    ids.sort();
    assert_eq!(ids, (1..=16).collect::<Vec<_>>());
    assert_eq!(store.list_ledgers().len(), 1);
    close(store).await;
}
