//! Backup and restore in the store (issue #18): reads through a snapshot
//! pin (capped at its cut, only from the incarnation it cut, idempotency
//! keys while young) and imports (entries applied exactly as given or
//! refused whole, merged with what is present, recovered after a restart
//! and passing `ferry verify`).

use std::path::Path;
use std::time::Duration;

use ferry_core::bus::Received;
use ferry_core::{Entry, LedgerName};
use ferry_format::chain::{self, ChainHash};
use ferry_store::verify::verify;
use ferry_store::{ImportEntry, ImportOutcome, PinnedEntry, Store, StoreConfig, StoreError};

use crate::support::*;

fn chunked(dir: &Path) -> StoreConfig {
    StoreConfig { chunk_entries: Some(4), ..config(dir) }
}

fn chained(dir: &Path) -> StoreConfig {
    StoreConfig { hash_chain: vec!["*".into()], ..chunked(dir) }
}

/// Appends `n` entries to `ledger`, one request each (so their ts may
/// differ): every other with a key, every third with an idempotency key.
async fn fill(store: &Store, ledger: &LedgerName, n: u64) {
    for i in 1..=n {
        let mut e = entry(&format!(r#"{{"n":{i},"text":"entry \"{i}\""}}"#));
        if i % 2 == 0 {
            e.key = Some(format!("user-{i}"));
        }
        if i % 3 == 0 {
            e.idempotency_key = Some(format!("req-{i}"));
        }
        store.append(ledger, vec![e]).await.unwrap();
    }
}

/// Every entry of `ledger` the pin holds, read in pages of 3.
async fn read_pin(store: &Store, pin: u64, ledger: &LedgerName) -> Vec<PinnedEntry> {
    let mut out = Vec::new();
    let mut from = None;
    loop {
        let read = store.read_pinned(pin, ledger, from, 3).await.unwrap();
        if read.entries.is_empty() {
            return out;
        }
        assert_eq!(read.next, read.entries.last().unwrap().entry.id + 1);
        from = Some(read.next);
        out.extend(read.entries);
    }
}

/// A backup's entries as an import takes them.
fn to_import(entries: &[PinnedEntry]) -> Vec<ImportEntry> {
    entries
        .iter()
        .map(|p| ImportEntry {
            id: p.entry.id,
            ts: p.entry.ts,
            key: p.entry.key.clone(),
            idempotency_key: p.idempotency_key.clone(),
            hash: p.entry.hash,
            payload: p.entry.payload.clone(),
        })
        .collect()
}

/// Store A's chained ledger `audit` of `n` entries (incarnation 2, so its
/// chain seed is foreign to a fresh store), read whole through a pin;
/// returns the entries and the hash before First.
async fn backup_of_a(dir: &Path, n: u64) -> (Vec<PinnedEntry>, ChainHash) {
    let a = open_with(chained(dir));
    let audit = ledger("audit");
    a.create_ledger(&ledger("before")).await.unwrap();
    fill(&a, &audit, n).await;
    let (pin, _) = a.create_pin(60_000, 4, Some("backup")).await.unwrap();
    let entries = read_pin(&a, pin, &audit).await;
    let seed = a.ledger_info(&audit).unwrap().first_prev_hash.expect("a chained ledger");
    close(a).await;
    (entries, chain::from_hex(&seed).unwrap())
}

fn entries_of(entries: &[PinnedEntry]) -> Vec<Entry> {
    entries.iter().map(|p| p.entry.clone()).collect()
}

fn conflict_at(result: Result<ImportOutcome, StoreError>) -> (u64, String) {
    match result {
        Err(StoreError::ImportConflict { id, reason, .. }) => (id, reason),
        other => panic!("expected an ImportConflict, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_ledger_read_through_a_pin_imports_into_a_fresh_store_identically() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let audit = ledger("audit");
    let (backup, seed) = backup_of_a(dir_a.path(), 10).await;
    assert_eq!(backup.len(), 10);
    let keys: Vec<Option<&str>> = backup.iter().map(|p| p.idempotency_key.as_deref()).collect();
    assert_eq!(keys[2], Some("req-3"), "a young entry's idempotency key is read through the pin");
    assert_eq!(keys[0], None);

    // B has no `hash_chain`: the import's prev_hash decides the chain.
    let b = open_with(StoreConfig { checkpoint_every: 4, ..chunked(dir_b.path()) });
    let mut appended = b.appends().subscribe("audit", 4);
    let mut checkpoints = b.events().subscribe("ledger.checkpoint/audit/", 4);
    let outcome = b.import(&audit, to_import(&backup), Some(seed)).await.unwrap();
    assert_eq!(outcome, ImportOutcome { imported: 10, present: 0, head: 10, incarnation: 1, created: true });
    match appended.recv().await {
        Some(Received::Message(a)) => assert_eq!((a.last_id, a.incarnation), (10, 1)),
        other => panic!("expected Appended, got {other:?}"),
    }
    for id in [4, 8] {
        match checkpoints.recv().await {
            Some(Received::Message(e)) => assert_eq!(e.data["id"], id),
            other => panic!("expected ledger.checkpoint, got {other:?}"),
        }
    }
    assert_eq!(read_all(&b, &audit), entries_of(&backup), "id, ts, key, hash and payload as in A");
    let info = b.ledger_info(&audit).unwrap();
    assert_eq!(info.first_prev_hash, Some(chain::to_hex(&seed)), "the chain seed is A's");
    let retry = b.append(&audit, vec![with_idempotency_key("req-6", r#"{"other":true}"#)]).await.unwrap();
    assert_eq!((retry.ids, retry.created), (vec![6], false), "a retry answers the imported id");
    // The chain goes on from the imported head.
    b.append(&audit, vec![entry("11")]).await.unwrap();
    close(b).await;

    let b = open_with(chunked(dir_b.path()));
    let read = read_all(&b, &audit);
    assert_eq!(read[..10], entries_of(&backup)[..], "recovered as imported");
    let after = chain::link(backup[9].entry.hash.as_ref().unwrap(), 11, read[10].ts, None, b"11");
    assert_eq!(read[10].hash, Some(after));
    let retry = b.append(&audit, vec![with_idempotency_key("req-9", "0")]).await.unwrap();
    assert_eq!(retry.ids, vec![9], "the imported keys are recovered");
    close(b).await;
    let report = verify(&chunked(dir_b.path())).unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_creates_a_ledger_from_a_chunk_boundary_and_nowhere_else() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (backup, _) = backup_of_a(dir_a.path(), 10).await;
    let b = open_with(chunked(dir_b.path()));

    let (id, reason) = conflict_at(b.import(&ledger("odd"), to_import(&backup[5..]), backup[4].entry.hash).await);
    assert_eq!(id, 6);
    assert!(reason.contains("chunk boundary") && reason.contains("chunk_entries 4"), "{reason}");
    assert!(b.ledger_info(&ledger("odd")).is_none(), "a refused import creates nothing");
    let (id, reason) = conflict_at(b.import(&ledger("odd"), to_import(&backup[4..]), None).await);
    assert_eq!((id, reason.as_str()), (5, "prev_hash is needed to check the chain"));
    assert!(b.ledger_info(&ledger("odd")).is_none());

    // From 5, chained from the hash of A's entry 4; the chunk 5..=8 fills
    // and freezes.
    let tail = ledger("tail");
    let mut frozen = b.events().subscribe("chunk.frozen/tail/", 4);
    let outcome = b.import(&tail, to_import(&backup[4..]), backup[3].entry.hash).await.unwrap();
    assert_eq!((outcome.imported, outcome.head, outcome.created), (6, 10, true));
    tokio::time::timeout(Duration::from_secs(20), frozen.recv()).await.expect("the full chunk freezes");
    let info = b.ledger_info(&tail).unwrap();
    assert_eq!((info.first, info.head, info.entries), (5, 10, 6));
    let read: Vec<Entry> = b.read(&tail, None, 100).await.unwrap().entries;
    let expected: Vec<Entry> = backup[4..].iter().map(|p| Entry { ledger: tail.clone(), ..p.entry.clone() }).collect();
    assert_eq!(read, expected);
    assert!(matches!(b.read(&tail, Some(4), 1).await, Err(StoreError::BelowFirst { first: 5, .. })));

    // Without hashes and without prev_hash: a ledger without a chain.
    let plain = ledger("plain");
    let unhashed: Vec<ImportEntry> =
        to_import(&backup[8..]).into_iter().map(|e| ImportEntry { hash: None, ..e }).collect();
    b.import(&plain, unhashed, None).await.unwrap();
    assert_eq!(b.ledger_info(&plain).unwrap().first_prev_hash, None);
    assert_eq!(b.read(&plain, None, 10).await.unwrap().entries[0].hash, None);
    close(b).await;

    let b = open_with(chunked(dir_b.path()));
    assert_eq!(b.read(&tail, None, 100).await.unwrap().entries, expected, "recovered from First 5");
    assert_eq!(b.ledger_info(&plain).unwrap().first, 9);
    b.append(&tail, vec![entry("11")]).await.unwrap();
    close(b).await;
    let report = verify(&chunked(dir_b.path())).unwrap();
    assert!(report.is_ok(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_merges_with_what_is_present_and_refuses_any_difference() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (backup, seed) = backup_of_a(dir_a.path(), 10).await;
    let b = open_with(chunked(dir_b.path()));
    let audit = ledger("audit");
    b.import(&audit, to_import(&backup[..4]), Some(seed)).await.unwrap();

    let whole = to_import(&backup);
    let outcome = b.import(&audit, whole.clone(), Some(seed)).await.unwrap();
    assert_eq!(outcome, ImportOutcome { imported: 6, present: 4, head: 10, incarnation: 1, created: false });
    let again = b.import(&audit, whole.clone(), Some(seed)).await.unwrap();
    assert_eq!((again.imported, again.present, again.head), (0, 10, 10), "a request sent twice is a no-op");
    // A run from the middle checks prev_hash against the stored chain.
    let middle = b.import(&audit, whole[5..].to_vec(), backup[4].entry.hash).await.unwrap();
    assert_eq!((middle.imported, middle.present), (0, 5));

    let mut changed = whole.clone();
    changed[2].payload = payload(r#"{"n":3,"text":"edited"}"#);
    let (id, reason) = conflict_at(b.import(&audit, changed, Some(seed)).await);
    assert!(id == 3 && reason.starts_with("payload differs"), "{id}: {reason}");
    let mut changed = whole.clone();
    changed[1].ts += 1;
    let (id, reason) = conflict_at(b.import(&audit, changed, Some(seed)).await);
    assert!(id == 2 && reason.starts_with("ts differs"), "{id}: {reason}");
    let mut changed = whole.clone();
    changed[6].key = Some("someone-else".into());
    let (id, reason) = conflict_at(b.import(&audit, changed, Some(seed)).await);
    assert!(id == 7 && reason.starts_with("key differs"), "{id}: {reason}");
    assert_eq!(read_all(&b, &audit), entries_of(&backup), "nothing changed");

    let (id, reason) = conflict_at(b.import(&audit, whole[..2].to_vec(), Some([7; 32])).await);
    assert!(id == 1 && reason.starts_with("the chain does not continue"), "{id}: {reason}");
    let mut gap = to_import(&backup[..1]);
    gap[0].id = 12;
    let (id, reason) = conflict_at(b.import(&audit, gap, None).await);
    assert_eq!((id, reason.as_str()), (12, "not contiguous: the head is 10"));
    let mut holes = whole[..3].to_vec();
    holes[2].id = 4;
    assert_eq!(conflict_at(b.import(&audit, holes, Some(seed)).await).0, 4);
    assert!(matches!(b.import(&audit, Vec::new(), None).await, Err(StoreError::EmptyBatch)));
    close(b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_hash_or_reused_key_refuses_the_whole_import() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (backup, seed) = backup_of_a(dir_a.path(), 10).await;
    let b = open_with(chunked(dir_b.path()));
    let audit = ledger("audit");

    let mut wrong = to_import(&backup);
    wrong[5].hash = Some([1; 32]);
    let (id, reason) = conflict_at(b.import(&audit, wrong.clone(), Some(seed)).await);
    assert!(id == 6 && reason.starts_with("chain hash differs: expected "), "{id}: {reason}");
    assert!(b.ledger_info(&audit).is_none(), "an absent ledger is not created");

    b.import(&audit, to_import(&backup[..4]), Some(seed)).await.unwrap();
    let (id, _) = conflict_at(b.import(&audit, wrong[4..].to_vec(), backup[3].entry.hash).await);
    assert_eq!(id, 6);
    assert_eq!(head(&b, &audit), 4, "nothing of the run was imported");

    // An entry without a hash gets the one the chain computes.
    let unhashed: Vec<ImportEntry> =
        to_import(&backup[4..]).into_iter().map(|e| ImportEntry { hash: None, ..e }).collect();
    let mut backwards = unhashed.clone();
    backwards[1].ts = backup[3].entry.ts - 1;
    let (id, reason) = conflict_at(b.import(&audit, backwards, None).await);
    assert!(id == 6 && reason.contains("below the previous entry's ts"), "{id}: {reason}");
    let mut reused = unhashed.clone();
    reused[2].idempotency_key = Some("req-3".into());
    let (id, reason) = conflict_at(b.import(&audit, reused, None).await);
    assert!(id == 7 && reason.contains("already used by id 3"), "{id}: {reason}");
    assert_eq!(head(&b, &audit), 4);
    b.import(&audit, unhashed, None).await.unwrap();
    assert_eq!(read_all(&b, &audit), entries_of(&backup), "the computed hashes are A's");

    // A ledger without a chain takes no hashes.
    let plain = ledger("plain");
    b.append(&plain, vec![entry("1")]).await.unwrap();
    let (id, reason) = conflict_at(b.import(&plain, to_import(&backup[1..2]), None).await);
    assert_eq!((id, reason.as_str()), (2, "the ledger has no hash chain"));
    close(b).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_read_stops_at_the_cut_while_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(chunked(dir.path()));
    let a = ledger("a");
    store.append(&a, vec![with_idempotency_key("k1", "1"), entry("2"), entry("3")]).await.unwrap();
    let (pin, _) = store.create_pin(60_000, 4, None).await.unwrap();
    store.append(&a, (4..=9).map(|i| entry(&i.to_string())).collect()).await.unwrap();

    let read = store.read_pinned(pin, &a, None, 100).await.unwrap();
    let ids: Vec<u64> = read.entries.iter().map(|p| p.entry.id).collect();
    assert_eq!((ids, read.next), (vec![1, 2, 3], 4), "never past the pinned head");
    assert_eq!(read.entries[0].idempotency_key.as_deref(), Some("k1"), "a young entry shows its key");
    assert_eq!(read.entries[1].idempotency_key, None);
    assert_eq!(read.entries[0].entry, store.read(&a, None, 1).await.unwrap().entries[0]);
    let done = store.read_pinned(pin, &a, Some(4), 100).await.unwrap();
    assert_eq!((done.entries.len(), done.next), (0, 4));
    let beyond = store.read_pinned(pin, &a, Some(50), 100).await.unwrap();
    assert_eq!((beyond.entries.len(), beyond.next), (0, 50));
    let blocking = store.clone();
    let two = tokio::task::spawn_blocking(move || blocking.read_pinned_blocking(pin, &ledger("a"), Some(2), 5))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((two.entries.len(), two.next), (2, 4));
    assert!(matches!(
        store.read_pinned(pin, &a, Some(0), 10).await,
        Err(StoreError::BelowFirst { from: 0, first: 1, .. })
    ));
    store.create_ledger(&ledger("later")).await.unwrap();
    assert!(matches!(store.read_pinned(pin, &ledger("later"), None, 10).await, Err(StoreError::NotInPin { .. })));
    assert!(matches!(store.read_pinned(pin + 1, &a, None, 10).await, Err(StoreError::PinNotFound(_))));

    let (short, _) = store.create_pin(200, 4, None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(matches!(store.read_pinned(short, &a, None, 10).await, Err(StoreError::PinNotFound(p)) if p == short));
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pinned_read_of_a_deleted_or_recreated_ledger_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(chunked(dir.path()));
    let (a, b) = (ledger("a"), ledger("b"));
    store.append(&a, vec![entry("1")]).await.unwrap();
    store.append(&b, vec![entry("1")]).await.unwrap();
    let (pin, pinned) = store.create_pin(60_000, 4, None).await.unwrap();
    let incarnation = pinned.ledgers[&a].incarnation;

    store.delete_ledger(&a).await.unwrap();
    let gone = store.read_pinned(pin, &a, None, 10).await;
    assert!(matches!(gone, Err(StoreError::PinnedLedgerGone { incarnation: i, .. }) if i == incarnation));
    store.append(&a, vec![entry(r#""again""#)]).await.unwrap();
    assert!(matches!(store.read_pinned(pin, &a, None, 10).await, Err(StoreError::PinnedLedgerGone { .. })));

    store.delete_ledger(&b).await.unwrap();
    store.create_ledger(&b).await.unwrap();
    assert!(matches!(store.read_pinned(pin, &b, None, 10).await, Err(StoreError::PinnedLedgerGone { .. })));
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_import_past_the_quota_is_refused_and_creates_nothing() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (backup, seed) = backup_of_a(dir_a.path(), 10).await;
    let b = open_with(StoreConfig { max_ledger_bytes: Some(600), ..chunked(dir_b.path()) });
    let audit = ledger("audit");
    let refused = b.import(&audit, to_import(&backup), Some(seed)).await;
    assert!(matches!(refused, Err(StoreError::QuotaExceeded { .. })), "{refused:?}");
    assert!(b.ledger_info(&audit).is_none());
    b.import(&audit, to_import(&backup[..2]), Some(seed)).await.unwrap();
    let refused = b.import(&audit, to_import(&backup[2..]), backup[1].entry.hash).await;
    assert!(matches!(refused, Err(StoreError::QuotaExceeded { .. })), "{refused:?}");
    assert_eq!(head(&b, &audit), 2);
    close(b).await;
}

/// A failed fdatasync refuses an import as it refuses an append: the store
/// is poisoned and nothing of it becomes visible. Needs the `failpoints`
/// feature (one process per test, as nextest runs them).
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread")]
async fn an_import_whose_sync_fails_is_refused_and_never_visible() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (backup, seed) = backup_of_a(dir_a.path(), 6).await;
    let scenario = fail::FailScenario::setup();
    let b = open_with(chunked(dir_b.path()));
    let audit = ledger("audit");
    b.import(&audit, to_import(&backup[..2]), Some(seed)).await.unwrap();
    fail::cfg("durable::sync_data", "return").unwrap();
    let refused = b.import(&audit, to_import(&backup[2..]), backup[1].entry.hash).await;
    assert!(matches!(refused, Err(StoreError::Poisoned(_))), "{refused:?}");
    fail::remove("durable::sync_data");
    assert_eq!(head(&b, &audit), 2);
    assert!(matches!(b.import(&audit, to_import(&backup[2..]), None).await, Err(StoreError::Poisoned(_))));
    close(b).await;
    scenario.teardown();
}
