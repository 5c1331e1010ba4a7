//! Idempotency keys: a repeat returns the original ids and appends nothing,
//! before and after a reopen.

use ferry_core::limits::IDEMPOTENCY_WINDOW_MS;
use ferry_core::now_ms;
use ferry_format::wal::WalRecord;
use ferry_store::{StoreConfig, StoreError};

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn repeated_idempotency_key_returns_original_ids_and_appends_nothing_also_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let l = ledger("payments.eu");

    let first = store.append(&l, vec![with_idempotency_key("order-1", r#"{"v":1}"#)]).await.unwrap();
    assert_eq!((first.ids.clone(), first.created), (vec![1], true));

    let repeat = store.append(&l, vec![with_idempotency_key("order-1", r#"{"v":"other"}"#)]).await.unwrap();
    assert_eq!((repeat.ids, repeat.created), (vec![1], false));
    assert_eq!(head(&store, &l), 1);

    let batch = store
        .append(&l, vec![with_idempotency_key("order-2", r#"{"v":2}"#), with_idempotency_key("order-3", r#"{"v":3}"#)])
        .await
        .unwrap();
    assert_eq!((batch.ids, batch.created), (vec![2, 3], true));
    let batch_repeat = store
        .append(
            &l,
            vec![with_idempotency_key("order-2", r#"{"v":"x"}"#), with_idempotency_key("order-3", r#"{"v":"y"}"#)],
        )
        .await
        .unwrap();
    assert_eq!((batch_repeat.ids, batch_repeat.created), (vec![2, 3], false));

    // A batch mixing repeats and new keys appends only the new entries.
    let mixed = store
        .append(
            &l,
            vec![
                with_idempotency_key("order-4", r#"{"v":4}"#),
                with_idempotency_key("order-1", r#"{"v":"again"}"#),
                entry(r#"{"v":5}"#),
            ],
        )
        .await
        .unwrap();
    assert_eq!((mixed.ids, mixed.created), (vec![4, 1, 5], true));
    assert_eq!(head(&store, &l), 5);

    // Keys are per ledger.
    let other = ledger("payments.us");
    let elsewhere = store.append(&other, vec![with_idempotency_key("order-1", r#"{"v":1}"#)]).await.unwrap();
    assert_eq!((elsewhere.ids, elsewhere.created), (vec![1], true));

    let before = read_all(&store, &l);
    let payloads: Vec<&str> = before.iter().map(|e| e.payload.as_str()).collect();
    assert_eq!(payloads, [r#"{"v":1}"#, r#"{"v":2}"#, r#"{"v":3}"#, r#"{"v":4}"#, r#"{"v":5}"#]);

    close(store).await;
    let store = open(dir.path());
    for (key, id) in [("order-1", 1), ("order-2", 2), ("order-3", 3), ("order-4", 4)] {
        let again = store.append(&l, vec![with_idempotency_key(key, r#"{"v":"late"}"#)]).await.unwrap();
        assert_eq!((again.ids, again.created), (vec![id], false), "{key}");
    }
    assert_eq!(head(&store, &l), 5);
    assert_eq!(read_all(&store, &l), before);
    let fresh = store.append(&l, vec![with_idempotency_key("order-6", r#"{"v":6}"#)]).await.unwrap();
    assert_eq!((fresh.ids, fresh.created), (vec![6], true));
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn batch_with_the_same_idempotency_key_twice_is_rejected_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let l = ledger("audit");
    store.append(&l, vec![entry("0")]).await.unwrap();

    let err = store
        .append(&l, vec![with_idempotency_key("dup", "1"), entry("2"), with_idempotency_key("dup", "3")])
        .await
        .unwrap_err();
    match &err {
        StoreError::DuplicateIdempotencyKey(k) => assert_eq!(k, "dup"),
        other => panic!("expected DuplicateIdempotencyKey, got {other:?}"),
    }
    assert_eq!(head(&store, &l), 1);
    assert_eq!(read_all(&store, &l).len(), 1);

    // The key was not remembered: its first real use creates an entry.
    let outcome = store.append(&l, vec![with_idempotency_key("dup", "4")]).await.unwrap();
    assert_eq!((outcome.ids, outcome.created), (vec![2], true));

    close(store).await;
    let store = open(dir.path());
    assert_eq!(head(&store, &l), 2);
    close(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_appends_with_one_idempotency_key_create_exactly_one_entry() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let l = ledger("audit");
    let mut tasks = Vec::new();
    for i in 0..32 {
        let (store, l) = (store.clone(), l.clone());
        tasks.push(tokio::spawn(async move {
            store.append(&l, vec![with_idempotency_key("same", &format!(r#"{{"i":{i}}}"#))]).await.unwrap()
        }));
    }
    let mut created = 0;
    for t in tasks {
        let outcome = t.await.unwrap();
        assert_eq!(outcome.ids, vec![1]);
        created += usize::from(outcome.created);
    }
    assert_eq!(created, 1, "exactly one append created the entry");
    assert_eq!(head(&store, &l), 1);
    close(store).await;
}

/// The first process used key `k` at T1, and again at T2 more than 24 h
/// later (the first use had expired, so the second is a new entry). After a
/// restart within 24 h of T2, a retry of the second use must still be
/// recognised.
#[tokio::test(flavor = "multi_thread")]
async fn idempotency_key_reused_after_its_window_is_remembered_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    // The records written by hand below carry no chain hash.
    let unchained = StoreConfig { hash_chain: Vec::new(), ..config(dir.path()) };
    let store = open_with(unchained.clone());
    assert!(store.create_ledger_blocking(&l).unwrap());
    close(store).await;

    let now = now_ms();
    let t1 = now - IDEMPOTENCY_WINDOW_MS - 3_600_000;
    let t2 = now - 3_600_000;
    let record = |id, ts, payload: &'static [u8]| WalRecord {
        ledger: "audit",
        id,
        ts,
        key: None,
        idempotency_key: Some("k"),
        batch_continues: false,
        group_start: true,
        relocated: false,
        hash: None,
        payload,
    };
    let segment = last_segment(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend(encode(&[record(1, t1, b"1"), record(2, t2, b"2")]));
    std::fs::write(&segment, bytes).unwrap();

    let store = open_with(unchained);
    assert_eq!(head(&store, &l), 2);
    let retry = store.append(&l, vec![with_idempotency_key("k", "2")]).await.unwrap();
    assert_eq!((retry.ids, retry.created), (vec![2], false), "the use at T2 is within the window");
    assert_eq!(head(&store, &l), 2);
    close(store).await;
}

/// Deleting a ledger deletes its idempotency keys too: a ledger created
/// later under the name treats a key as new, before and after a restart.
#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_ledger_takes_its_idempotency_keys_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open(dir.path());
    store.append(&l, vec![entry("0"), entry("0")]).await.unwrap();
    let first = store.append(&l, vec![with_idempotency_key("k", "1")]).await.unwrap();
    assert_eq!(first.ids, vec![3]);
    store.delete_ledger(&l).await.unwrap();
    let again = store.append(&l, vec![with_idempotency_key("k", r#""new""#)]).await.unwrap();
    assert_eq!((again.ids, again.created), (vec![1], true), "the old key does not answer for the new ledger");
    close(store).await;

    let store = open(dir.path());
    let repeat = store.append(&l, vec![with_idempotency_key("k", r#""new""#)]).await.unwrap();
    assert_eq!((repeat.ids, repeat.created), (vec![1], false));
    let entries = read_all(&store, &l);
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].payload.as_str(), r#""new""#);
    close(store).await;
}

/// The index keeps fingerprints only and confirms each hit on the stored
/// record: a retry must be recognised whether its original is hot or in a
/// pack, before and after a restart, and a new key must never be taken for
/// an old one.
#[tokio::test(flavor = "multi_thread")]
async fn retries_are_recognised_when_their_originals_are_frozen_in_packs() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.chunk_entries = Some(4);
    c.hash_chain = Vec::new(); // the records written by hand below carry no chain hash
    let l = ledger("audit");
    let mut store = open_with(c.clone());
    for i in 1..=10 {
        let out = store.append(&l, vec![with_idempotency_key(&format!("k{i}"), &i.to_string())]).await.unwrap();
        assert_eq!(out.ids, vec![i]);
    }
    let frozen = dir.path().join("ledgers/audit/00000/00000001.pack");
    wait_for_file(&frozen, "chunk 1 was not frozen").await;
    for round in 0..2u64 {
        for i in 1..=10 {
            let again = store.append(&l, vec![with_idempotency_key(&format!("k{i}"), r#""late""#)]).await.unwrap();
            assert_eq!((again.ids, again.created), (vec![i], false), "round {round}: k{i}");
        }
        let new = store.append(&l, vec![with_idempotency_key(&format!("new{round}"), "0")]).await.unwrap();
        assert_eq!((new.ids, new.created), (vec![11 + round], true));
        close(store).await;
        store = open_with(c.clone());
        assert_eq!(head(&store, &l), 11 + round);
    }
    let payloads: Vec<String> = read_all(&store, &l).iter().map(|e| e.payload.as_str().to_owned()).collect();
    assert_eq!(payloads, ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "0", "0"]);
    close(store).await;
}

/// Issue #12 item 7: a restart reloads a frozen chunk's idempotency keys
/// from the catalog (their fingerprints, stored with the chunk's `frozen`
/// key), not by reading its pack. Proven with a damaged pack: its keys
/// still answer after the restart — a retry is refused with the damage
/// (its original cannot be read to confirm) instead of appended again.
#[tokio::test(flavor = "multi_thread")]
async fn a_restart_reloads_frozen_keys_without_reading_their_pack() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.chunk_entries = Some(4);
    c.hash_chain = Vec::new(); // the records written by hand below carry no chain hash
    let l = ledger("audit");
    let store = open_with(c.clone());
    for i in 1..=5 {
        store.append(&l, vec![with_idempotency_key(&format!("k{i}"), &i.to_string())]).await.unwrap();
    }
    let pack = dir.path().join("ledgers/audit/00000/00000000.pack");
    wait_for_file(&pack, "chunk 0 was not frozen").await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    close(store).await;

    let len = std::fs::metadata(&pack).unwrap().len() as usize;
    flip_bit(&pack, len / 2, 2);
    let store = open_with(c);
    for i in 1..=4 {
        match store.append(&l, vec![with_idempotency_key(&format!("k{i}"), r#""again""#)]).await {
            Err(StoreError::CorruptedPack { chunk: 0, .. }) => {}
            other => panic!("k{i}: a retry whose original is in the damaged pack must be refused, got {other:?}"),
        }
    }
    let hot = store.append(&l, vec![with_idempotency_key("k5", r#""again""#)]).await.unwrap();
    assert_eq!((hot.ids, hot.created), (vec![5], false));
    assert_eq!(head(&store, &l), 5, "nothing appended twice");
    close(store).await;
}

/// A chunk's stored key list (`keys:`) goes once its keys' window has
/// passed: a restart then need not load keys no retry can use. Entries
/// written by hand a day and more ago fill a chunk; it freezes with its
/// key list, and the next retention pass deletes the list.
#[tokio::test(flavor = "multi_thread")]
async fn a_frozen_chunks_key_list_is_deleted_once_its_window_has_passed() {
    use ferry_format::keys::CatalogKey;
    use ferry_store::{Catalog, RedbCatalog};

    let dir = tempfile::tempdir().unwrap();
    let mut c = config(dir.path());
    c.chunk_entries = Some(4);
    c.hash_chain = Vec::new(); // the records written by hand below carry no chain hash
    let l = ledger("audit");
    let store = open_with(c.clone());
    assert!(store.create_ledger_blocking(&l).unwrap());
    close(store).await;

    let old = now_ms() - IDEMPOTENCY_WINDOW_MS - 3_600_000;
    let keys = ["a", "b", "c", "d"];
    let records: Vec<WalRecord<'_>> = (0..4)
        .map(|i| WalRecord {
            ledger: "audit",
            id: i as u64 + 1,
            ts: old + i as u64,
            key: None,
            idempotency_key: Some(keys[i]),
            batch_continues: false,
            group_start: true,
            relocated: false,
            hash: None,
            payload: b"1",
        })
        .collect();
    let segment = last_segment(dir.path());
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes.extend(encode(&records));
    std::fs::write(&segment, bytes).unwrap();

    let store = open_with(c);
    let pack = dir.path().join("ledgers/audit/00000/00000000.pack");
    wait_for_file(&pack, "chunk 0 was not frozen").await;
    // A retention pass runs every second.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let again = store.append(&l, vec![with_idempotency_key("a", "2")]).await.unwrap();
    assert_eq!((again.ids, again.created), (vec![5], true), "a key past its window is new");
    close(store).await;
    let catalog = RedbCatalog::open(&dir.path().join("catalog")).unwrap();
    assert!(catalog.get(&CatalogKey::Chunk(l.clone(), 0)).unwrap().is_some(), "chunk 0 is frozen");
    assert_eq!(catalog.get(&CatalogKey::Keys(l, 0)).unwrap(), None, "its expired key list is gone");
}
