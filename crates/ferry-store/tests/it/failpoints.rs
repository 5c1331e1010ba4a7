//! Every step of the pack protocols failing in a real store: the fail point
//! returns an error there, the store must poison itself, and after a
//! restart recovery must leave the SPEC §3 invariants on the real
//! directory: no `.pack.tmp`, no file under `ledgers/` but
//! `{ledger}/{bucket:05}/{chunk:08}.pack`, every pack with a `frozen` key of
//! its length and SHA-256, no `freezing`/`pruning` key, and every
//! acknowledged entry readable exactly once with dense ids from First.
//!
//! Needs the `failpoints` feature and one process per test (the fail point
//! registry is global): run under cargo-nextest.
#![cfg(feature = "failpoints")]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_core::{Entry, LedgerName, NewEntry};
use ferry_format::keys::CatalogKey;
use ferry_format::pack::decode_pack;
use ferry_store::pack_protocols::{self, ChunkState, PackLayout};
use ferry_store::{Catalog, RedbCatalog, RetentionPolicy, Store, StoreConfig, StoreError};
use sha2::Digest as _;

use crate::support::*;

const CHUNK_ENTRIES: u64 = 4;
/// Two full chunks and one entry in the hot tier.
const ENTRIES: u64 = 9;

fn store_config(dir: &Path, prune_at_once: bool) -> StoreConfig {
    let mut c = config(dir);
    c.chunk_entries = Some(CHUNK_ENTRIES);
    if prune_at_once {
        c.retention = RetentionPolicy { max_age: Some(Duration::ZERO), ..RetentionPolicy::default() };
    }
    c
}

/// One batch, so both chunks fill in one group commit (before retention can
/// run). No idempotency keys: a chunk holding some is kept for their window.
fn batch() -> Vec<NewEntry> {
    (1..=ENTRIES)
        .map(|i| keyed(&format!("k-{i}"), &format!(r#"{{"n":{i},"pad":"{}"}}"#, "p".repeat(i as usize))))
        .collect()
}

fn pack(dir: &Path, ledger: &str, chunk: u64) -> PathBuf {
    dir.join("ledgers").join(ledger).join(format!("{:05}", chunk / 1000)).join(format!("{chunk:08}.pack"))
}

/// Waits until `cond` holds, or the deadline passes; says which.
async fn within(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn eventually(what: &str, cond: impl FnMut() -> bool) {
    assert!(within(Duration::from_secs(20), cond).await, "timed out waiting for: {what}");
}

async fn poisoned(store: &Store) -> bool {
    within(Duration::from_secs(10), || store.ready().is_err()).await
}

/// Every entry from First, with the id, key and payload of what was acked.
fn assert_reads(store: &Store, l: &LedgerName, first: u64, acked: &[NewEntry]) {
    let info = store.ledger_info(l).expect("ledger exists");
    assert_eq!((info.first, info.head), (first, acked.len() as u64), "First and head of {l}");
    let mut got: Vec<Entry> = Vec::new();
    let mut from = None;
    loop {
        let batch = store.read_blocking(l, from, 3).expect("read");
        if batch.entries.is_empty() {
            break;
        }
        from = Some(batch.next);
        got.extend(batch.entries);
    }
    let ids: Vec<u64> = got.iter().map(|e| e.id).collect();
    assert_eq!(ids, (first..=acked.len() as u64).collect::<Vec<_>>(), "dense ids from First, each once");
    for e in &got {
        let want = &acked[e.id as usize - 1];
        assert_eq!(e.key, want.key, "key of id {}", e.id);
        assert_eq!(e.payload.as_str(), want.payload.as_str(), "payload of id {}", e.id);
    }
}

/// The invariants on the closed store's directory: files against the
/// catalog's keys, keys against files. Returns the frozen (ledger, chunk)s.
fn assert_disk(dir: &Path) -> Vec<(String, u64)> {
    let root = dir.join("ledgers");
    let layout = PackLayout { root: root.clone() };
    let mut files = Vec::new();
    walk(&root, &mut files);
    let catalog = RedbCatalog::open(&dir.join("catalog")).expect("open the catalog");
    for path in &files {
        let rel = path.strip_prefix(&root).expect("under the root");
        if rel == Path::new(".ferry.lock") {
            continue;
        }
        let Some((ledger, chunk)) = pack_protocols::parse_pack_path(&layout, path) else {
            panic!("{} is not a {{ledger}}/{{bucket:05}}/{{chunk:08}}.pack file", path.display());
        };
        let key = CatalogKey::Chunk(ledger, chunk);
        let value = catalog.get(&key).expect("catalog get");
        let Some(value) = value else { panic!("{} has no catalog key", path.display()) };
        assert!(matches!(ChunkState::decode(&key, &value), Ok(ChunkState::Frozen(_))), "{key} of {}", path.display());
    }
    let mut frozen = Vec::new();
    for (key, value) in catalog.scan(CatalogKey::CHUNK_PREFIX).expect("scan chunk keys") {
        let CatalogKey::Chunk(ledger, chunk) = &key else { panic!("{key} under the chunk prefix") };
        let state = ChunkState::decode(&key, &value).expect("chunk state decodes");
        let ChunkState::Frozen(info) = state else { panic!("{key} is {state:?} after recovery") };
        let path = layout.pack_path(ledger, *chunk);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{key}: its file {}: {e}", path.display()));
        assert_eq!(bytes.len() as u64, info.len, "{key}: length");
        assert_eq!(pack_protocols::hex(&sha2::Sha256::digest(&bytes)), info.sha256, "{key}: SHA-256");
        let mut records = 0;
        let decoded = decode_pack(&bytes, |_| records += 1).unwrap_or_else(|e| panic!("{key}: {e}"));
        let h = &decoded.header;
        assert_eq!(
            (h.ledger.as_str(), h.chunk, h.first_id, h.count, records),
            (ledger.as_str(), *chunk, chunk * CHUNK_ENTRIES + 1, CHUNK_ENTRIES, CHUNK_ENTRIES),
            "{key}: pack header"
        );
        frozen.push((ledger.to_string(), *chunk));
    }
    frozen
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries {
        let path = entry.expect("dir entry").path();
        if path.is_dir() { walk(&path, out) } else { out.push(path) }
    }
}

/// A step of the freeze fails: the store poisons itself; after a restart
/// the chunk is frozen again and every acked entry is there.
async fn freeze_step_fails(point: &str) {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open_with(store_config(dir.path(), false));
    fail::cfg(point, "return").unwrap();
    let acked = batch();
    let ids = store.append(&l, acked.clone()).await.unwrap().ids;
    assert_eq!(ids, (1..=ENTRIES).collect::<Vec<_>>());
    let was_poisoned = poisoned(&store).await;
    fail::remove(point);
    // Poisoned or not, what was acknowledged is readable.
    assert_reads(&store, &l, 1, &acked);
    close(store).await;

    let store = open_with(store_config(dir.path(), false));
    assert!(store.ready().is_ok(), "a restart clears the poison");
    assert_reads(&store, &l, 1, &acked);
    eventually("both chunks frozen again", || pack(dir.path(), "audit", 1).exists()).await;
    assert_reads(&store, &l, 1, &acked);
    close(store).await;
    assert_eq!(assert_disk(dir.path()), vec![("audit".into(), 0), ("audit".into(), 1)]);

    // And once more: a clean restart changes nothing.
    let store = open_with(store_config(dir.path(), false));
    assert_reads(&store, &l, 1, &acked);
    close(store).await;
    assert_eq!(assert_disk(dir.path()), vec![("audit".into(), 0), ("audit".into(), 1)]);
    scenario.teardown();
    assert!(was_poisoned, "a failure at {point} must poison the store");
}

/// A step of retention's sweep of chunk 0 fails: the store poisons itself;
/// after a restart the sweep is finished (chunk 0 gone, First = 5).
async fn retention_sweep_step_fails(point: &str) {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open_with(store_config(dir.path(), true));
    fail::cfg(point, "return").unwrap();
    let acked = batch();
    store.append(&l, acked.clone()).await.unwrap();
    let was_poisoned = poisoned(&store).await;
    fail::remove(point);
    close(store).await;

    // Reopened without retention: what the interrupted sweep left, finished.
    let store = open_with(store_config(dir.path(), false));
    assert!(store.ready().is_ok());
    assert_reads(&store, &l, CHUNK_ENTRIES + 1, &acked);
    eventually("chunk 1 frozen", || pack(dir.path(), "audit", 1).exists()).await;
    assert!(!pack(dir.path(), "audit", 0).exists(), "the pruned chunk's file is gone");
    assert!(matches!(store.read_blocking(&l, Some(1), 10), Err(StoreError::BelowFirst { first: 5, .. })));
    close(store).await;
    assert_eq!(assert_disk(dir.path()), vec![("audit".into(), 1)]);

    let store = open_with(store_config(dir.path(), false));
    assert_reads(&store, &l, CHUNK_ENTRIES + 1, &acked);
    close(store).await;
    assert_eq!(assert_disk(dir.path()), vec![("audit".into(), 1)]);
    scenario.teardown();
    assert!(was_poisoned, "a failure at {point} must poison the store");
}

/// A step of a ledger deletion's sweep fails: the deletion fails and the
/// store poisons itself; after a restart the ledger is gone with all its
/// files and keys, and a new ledger of the name starts at id 1.
async fn deletion_sweep_step_fails(point: &str) {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let keep = ledger("keep");
    let store = open_with(store_config(dir.path(), false));
    let acked = batch();
    store.append(&l, acked.clone()).await.unwrap();
    store.append(&keep, acked.clone()).await.unwrap();
    eventually("both ledgers' chunks frozen", || {
        pack(dir.path(), "audit", 1).exists() && pack(dir.path(), "keep", 1).exists()
    })
    .await;
    fail::cfg(point, "return").unwrap();
    let deleted = store.delete_ledger(&l).await;
    assert!(deleted.is_err(), "the deletion reports the failure at {point}");
    let was_poisoned = poisoned(&store).await;
    fail::remove(point);
    close(store).await;

    let store = open_with(store_config(dir.path(), false));
    assert!(store.ready().is_ok());
    assert!(store.ledger_info(&l).is_none(), "the deletion was committed before the sweep; it is finished");
    assert!(!pack(dir.path(), "audit", 0).exists() && !pack(dir.path(), "audit", 1).exists());
    assert_reads(&store, &keep, 1, &acked);
    close(store).await;
    assert_eq!(assert_disk(dir.path()), vec![("keep".into(), 0), ("keep".into(), 1)]);

    let store = open_with(store_config(dir.path(), false));
    let again = vec![entry(r#"{"again":1}"#)];
    assert_eq!(store.append(&l, again.clone()).await.unwrap().ids, vec![1], "a re-created ledger starts at 1");
    assert_reads(&store, &l, 1, &again);
    assert_reads(&store, &keep, 1, &acked);
    close(store).await;
    assert_eq!(assert_disk(dir.path()), vec![("keep".into(), 0), ("keep".into(), 1)]);
    scenario.teardown();
    assert!(was_poisoned, "a failure at {point} while deleting a ledger must poison the store");
}

#[tokio::test(flavor = "multi_thread")]
async fn freeze_marked_fails() {
    freeze_step_fails("freeze::marked").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn freeze_written_fails() {
    freeze_step_fails("freeze::written").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn freeze_synced_fails() {
    freeze_step_fails("freeze::synced").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn freeze_renamed_fails() {
    freeze_step_fails("freeze::renamed").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn freeze_dir_synced_fails() {
    freeze_step_fails("freeze::dir_synced").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn freeze_frozen_fails() {
    freeze_step_fails("freeze::frozen").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_demoted_fails_in_retention() {
    retention_sweep_step_fails("sweep::demoted").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_unlinked_fails_in_retention() {
    retention_sweep_step_fails("sweep::unlinked").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_dir_synced_fails_in_retention() {
    retention_sweep_step_fails("sweep::dir_synced").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_deleted_fails_in_retention() {
    retention_sweep_step_fails("sweep::deleted").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_unlinked_fails_in_ledger_deletion() {
    deletion_sweep_step_fails("sweep::unlinked").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_dir_synced_fails_in_ledger_deletion() {
    deletion_sweep_step_fails("sweep::dir_synced").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sweep_deleted_fails_in_ledger_deletion() {
    deletion_sweep_step_fails("sweep::deleted").await;
}

/// Recovery itself fails half-way through an unfinished freeze (after the
/// files went, before the key did): the open fails; the next open finishes
/// the job and the freezer redoes the chunk.
#[tokio::test(flavor = "multi_thread")]
async fn recover_freezing_unlinked_fails() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open_with(store_config(dir.path(), false));
    // Leave a `freezing` key with its renamed pack behind.
    fail::cfg("freeze::renamed", "return").unwrap();
    let acked = batch();
    store.append(&l, acked.clone()).await.unwrap();
    let was_poisoned = poisoned(&store).await;
    fail::remove("freeze::renamed");
    close(store).await;
    assert!(pack(dir.path(), "audit", 0).exists(), "the failed freeze left its renamed pack");

    fail::cfg("recover::freezing_unlinked", "return").unwrap();
    let err = open_err(store_config(dir.path(), false));
    assert!(err.to_string().contains("recover::freezing_unlinked"), "{err}");
    fail::remove("recover::freezing_unlinked");
    assert!(!pack(dir.path(), "audit", 0).exists(), "recovery unlinked the unfinished pack before failing");

    let store = open_with(store_config(dir.path(), false));
    assert!(store.ready().is_ok());
    assert_reads(&store, &l, 1, &acked);
    eventually("both chunks frozen again", || pack(dir.path(), "audit", 1).exists()).await;
    assert_reads(&store, &l, 1, &acked);
    close(store).await;
    assert_eq!(assert_disk(dir.path()), vec![("audit".into(), 0), ("audit".into(), 1)]);
    scenario.teardown();
    assert!(was_poisoned, "a failure at freeze::renamed must poison the store");
}
