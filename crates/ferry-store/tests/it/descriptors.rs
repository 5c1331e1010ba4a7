//! Issue #12 item 9: running out of file descriptors (EMFILE) at a segment
//! roll, a pack open or a freeze is refused or retried, never poisons the
//! store, and the store recovers by itself once descriptors are free.
//!
//! Each test lowers its process's open-file limit and opens `/dev/null`
//! until none is left, so each runs again in a child process of its own
//! (whatever the test runner) and the parent only checks that it passed.

use std::fs::File;
use std::time::{Duration, Instant};

use ferry_core::LedgerName;
use ferry_store::{Store, StoreConfig, StoreError};

use crate::support::*;

/// Runs the calling test again in a child process of its own: true in the
/// child, which runs the body; false in the parent, once the child passed.
fn in_own_process(test: &str) -> bool {
    const VAR: &str = "FERRY_STORE_TEST_OWN_PROCESS";
    if std::env::var(VAR).as_deref() == Ok(test) {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(VAR, test)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in its own process: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    false
}

/// Every descriptor the process may still open, held open on `/dev/null`.
struct Hog(Vec<File>);

impl Hog {
    /// Lowers the soft open-file limit to 512 at most (this process only)
    /// and takes every descriptor left.
    fn all() -> Self {
        use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
        let hard = getrlimit(Resource::Nofile).maximum;
        setrlimit(Resource::Nofile, Rlimit { current: Some(hard.map_or(512, |h| h.min(512))), maximum: hard }).unwrap();
        let mut held = Vec::new();
        loop {
            match File::open("/dev/null") {
                Ok(f) => held.push(f),
                Err(e) if ferry_fs::descriptors::exhausted(&e) => return Self(held),
                Err(e) => panic!("open /dev/null: {e}"),
            }
        }
    }

    /// Frees `n` descriptors.
    fn free(&mut self, n: usize) {
        self.0.truncate(self.0.len() - n);
    }
}

fn assert_not_poisoned(store: &Store, err: &StoreError) {
    assert!(!matches!(err, StoreError::Poisoned(_)), "running out of descriptors poisoned the store: {err}");
    assert!(store.ready().is_ok(), "running out of descriptors made the store unready: {err}");
}

fn payloads(store: &Store, l: &LedgerName) -> Vec<String> {
    let entries = read_all(store, l);
    assert_dense_and_ordered(&entries, l);
    entries.iter().map(|e| e.payload.as_str().to_owned()).collect()
}

/// A payload of about 1.5 KiB: two fill a 4 KiB segment.
fn big(n: usize) -> ferry_core::NewEntry {
    entry(&format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(1500)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_segment_roll_without_descriptors_is_refused_and_the_store_recovers_by_itself() {
    if !in_own_process("descriptors::a_segment_roll_without_descriptors_is_refused_and_the_store_recovers_by_itself") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open_with(StoreConfig { wal_segment_bytes: 4096, ..config(dir.path()) });
    for n in 0..2 {
        store.append(&l, vec![big(n)]).await.unwrap();
    }
    let before = segments(dir.path()).len();

    let mut hog = Hog::all();
    // The next append needs a new segment, and no descriptor is left for it.
    let err = store.append(&l, vec![big(2)]).await.unwrap_err();
    assert!(err.to_string().contains("Too many open files"), "{err}");
    assert_not_poisoned(&store, &err);
    // One descriptor is enough: the new segment's (the directory is synced
    // through a handle the store holds).
    hog.free(1);
    store.append(&l, vec![big(3)]).await.expect("a roll with one free descriptor");
    drop(hog);
    assert_eq!(segments(dir.path()).len(), before + 1);

    store.append(&l, vec![big(4)]).await.unwrap();
    let want: Vec<String> = [0, 1, 3, 4].iter().map(|n| big(*n).payload.as_str().to_owned()).collect();
    assert_eq!(payloads(&store, &l), want, "every acknowledged entry, nothing of the refused one");
    close(store).await;
    let store = open(dir.path());
    assert_eq!(payloads(&store, &l), want, "the same after a restart");
    close(store).await;
}

/// Appends `chunks` full chunks of 4 and waits until each is frozen.
async fn frozen_chunks(store: &Store, l: &LedgerName, chunks: usize) {
    let mut frozen = store.events().subscribe(&format!("chunk.frozen/{l}/"), 64);
    store.append(l, (0..chunks * 4).map(|n| entry(&n.to_string())).collect()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = 0;
    while seen < chunks {
        assert!(Instant::now() < deadline, "only {seen} of {chunks} chunks frozen");
        match frozen.try_recv() {
            Some(_) => seen += 1,
            None => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

fn chunked(dir: &std::path::Path) -> StoreConfig {
    StoreConfig { chunk_entries: Some(4), ..config(dir) }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pack_that_cannot_be_opened_for_want_of_descriptors_is_an_error_to_retry_not_corruption() {
    if !in_own_process(
        "descriptors::a_pack_that_cannot_be_opened_for_want_of_descriptors_is_an_error_to_retry_not_corruption",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open_with(chunked(dir.path()));
    frozen_chunks(&store, &l, 3).await;
    close(store).await;
    // A fresh store: no pack is open yet.
    let store = open_with(chunked(dir.path()));

    let hog = Hog::all();
    let err = store.read_blocking(&l, Some(1), 4).unwrap_err();
    assert!(!matches!(err, StoreError::CorruptedPack { .. }), "not corruption: {err}");
    assert!(err.to_string().contains("Too many open files"), "{err}");
    assert_not_poisoned(&store, &err);
    drop(hog);

    // With packs open in the cache, a read of another one that finds no
    // descriptor closes them and opens its own.
    assert_eq!(store.read_blocking(&l, Some(1), 4).unwrap().entries.len(), 4);
    let hog = Hog::all();
    let read = store.read_blocking(&l, Some(5), 4).expect("the cache gives its descriptors up");
    assert_eq!(read.entries.first().map(|e| e.id), Some(5));
    drop(hog);

    let want: Vec<String> = (0..12).map(|n| n.to_string()).collect();
    assert_eq!(payloads(&store, &l), want);
    assert!(store.ready().is_ok());
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_chunk_that_cannot_be_frozen_for_want_of_descriptors_is_frozen_later_without_poisoning() {
    if !in_own_process(
        "descriptors::a_chunk_that_cannot_be_frozen_for_want_of_descriptors_is_frozen_later_without_poisoning",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open_with(chunked(dir.path()));
    store.create_ledger(&l).await.unwrap();
    let mut frozen = store.events().subscribe("chunk.frozen/audit/", 16);

    let hog = Hog::all();
    // The WAL needs no new descriptor; the freezer's pack.tmp does.
    store.append(&l, (0..4).map(|n| entry(&n.to_string())).collect()).await.unwrap();
    let until = Instant::now() + Duration::from_millis(1000);
    while Instant::now() < until {
        assert!(store.ready().is_ok(), "a freeze without descriptors poisoned the store: {:?}", store.ready());
        assert!(frozen.try_recv().is_none(), "frozen without a descriptor?");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(hog);

    let deadline = Instant::now() + Duration::from_secs(10);
    while frozen.try_recv().is_none() {
        assert!(Instant::now() < deadline, "the chunk was not frozen once descriptors were free");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let want: Vec<String> = (0..4).map(|n| n.to_string()).collect();
    assert_eq!(payloads(&store, &l), want);
    assert!(store.ready().is_ok());
    close(store).await;
    let store = open_with(chunked(dir.path()));
    assert_eq!(payloads(&store, &l), want, "the same after a restart");
    close(store).await;
}

/// Holds every entry of every ledger from retention until opened.
#[derive(Debug, Default)]
struct Gate(std::sync::atomic::AtomicBool);

impl ferry_store::RetentionHold for Gate {
    fn needs_from(&self, _: &LedgerName) -> Option<ferry_core::EntryId> {
        (!self.0.load(std::sync::atomic::Ordering::SeqCst)).then_some(1)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retention_sweep_without_descriptors_is_finished_later_without_poisoning() {
    if !in_own_process("descriptors::a_retention_sweep_without_descriptors_is_finished_later_without_poisoning") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let gate = std::sync::Arc::new(Gate::default());
    let mut c = chunked(dir.path());
    c.retention = ferry_store::RetentionPolicy { max_age: Some(Duration::ZERO), ..Default::default() };
    c.holds.push(gate.clone());
    let store = open_with(c);
    frozen_chunks(&store, &l, 2).await;
    store.append(&l, vec![entry("8")]).await.unwrap();

    let hog = Hog::all();
    // Retention may prune both chunks now; syncing their bucket directory
    // after the unlink needs a descriptor.
    gate.0.store(true, std::sync::atomic::Ordering::SeqCst);
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        assert!(store.ready().is_ok(), "a sweep without descriptors poisoned the store: {:?}", store.ready());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(store.ledger_info(&l).unwrap().first, 9, "the chunks are pruned for readers");
    drop(hog);
    // The sweeps left are finished within a tick (500 ms) or two.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(store.ready().is_ok());
    close(store).await;

    let catalog = ferry_store::RedbCatalog::open(&dir.path().join("catalog")).unwrap();
    let keys = ferry_store::Catalog::scan(&catalog, ferry_format::keys::CatalogKey::CHUNK_PREFIX).unwrap();
    assert!(keys.is_empty(), "every sweep finished, no pruning key left: {keys:?}");
    drop(catalog);
    let store = open_with(chunked(dir.path()));
    assert_eq!(store.ledger_info(&l).unwrap().first, 9);
    let ids: Vec<u64> = read_all(&store, &l).iter().map(|e| e.id).collect();
    assert_eq!(ids, vec![9]);
    close(store).await;
}
