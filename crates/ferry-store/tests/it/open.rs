//! Opening a store: one owner per storage root, and the pinned layout.

use ferry_store::StoreError;

use crate::support::*;

#[tokio::test(flavor = "multi_thread")]
async fn second_open_of_a_locked_data_dir_fails_naming_the_root_until_the_first_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open(dir.path());
    store.append(&l, vec![entry("1")]).await.unwrap();

    let err = open_err(config(dir.path()));
    match &err {
        StoreError::Locked { root, lock } => {
            assert_eq!(root, dir.path());
            assert_eq!(lock, &dir.path().join("ferry.lock"));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
    // The failed open changed nothing for the owner.
    assert_eq!(store.append(&l, vec![entry("2")]).await.unwrap().ids, vec![2]);

    // A clone keeps the store (and its locks) alive.
    let clone = store.clone();
    close(store).await;
    assert!(matches!(open_err(config(dir.path())), StoreError::Locked { .. }));
    drop(clone);

    let store = open(dir.path());
    assert_eq!(head(&store, &l), 2);
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn each_storage_root_holds_its_own_lock() {
    let shared_hot = tempfile::tempdir().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let with_shared_hot = |data: &std::path::Path| {
        let mut c = config(data);
        c.hot_dir = Some(shared_hot.path().to_path_buf());
        c
    };
    let store = open_with(with_shared_hot(a.path()));
    match open_err(with_shared_hot(b.path())) {
        StoreError::Locked { root, .. } => assert_eq!(root, shared_hot.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    close(store).await;
    let store = open_with(with_shared_hot(b.path()));
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn chunk_entries_is_pinned_at_first_open_and_a_different_value_is_refused_naming_the_pinned_one() {
    let dir = tempfile::tempdir().unwrap();
    let with_chunk = |chunk: Option<u64>| {
        let mut c = config(dir.path());
        c.chunk_entries = chunk;
        c
    };
    let store = open_with(with_chunk(Some(1024)));
    assert_eq!(store.chunk_entries(), 1024);
    store.append(&ledger("audit"), vec![entry("1")]).await.unwrap();
    close(store).await;

    let err = open_err(with_chunk(Some(2048)));
    match &err {
        StoreError::PinnedMismatch { name, pinned, configured } => {
            assert_eq!(*name, "chunk_entries");
            assert_eq!(pinned, "1024");
            assert_eq!(configured, "2048");
        }
        other => panic!("expected PinnedMismatch, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains("chunk_entries") && message.contains("1024"), "{message}");

    // The refused open released its locks and left the pin alone.
    let store = open_with(with_chunk(None));
    assert_eq!(store.chunk_entries(), 1024);
    assert_eq!(head(&store, &ledger("audit")), 1);
    close(store).await;
    let store = open_with(with_chunk(Some(1024)));
    assert_eq!(store.chunk_entries(), 1024);
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn first_open_without_chunk_entries_pins_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let default = store.chunk_entries();
    assert_eq!(default, ferry_core::limits::CHUNK_ENTRIES_DEFAULT);
    close(store).await;
    let mut c = config(dir.path());
    c.chunk_entries = Some(default + 1);
    assert!(matches!(open_err(c), StoreError::PinnedMismatch { .. }));
}

#[test]
fn a_fresh_store_creates_its_layout_and_is_ready() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("nested/data");
    let store = open(&data);
    assert!(store.ready().is_ok());
    assert!(store.list_ledgers().is_empty());
    for sub in ["catalog", "hot", "ledgers"] {
        assert!(data.join(sub).is_dir(), "{sub}");
        assert!(data.join(sub).join(".ferry.lock").is_file(), "{sub} has its lock file");
    }
    assert!(data.join("ferry.lock").is_file());
    assert_eq!(segments(&data), vec![segment_path(&data, 1)]);
    drop(store);
}

/// Appends whose callers gave up are still in the flusher's queue when the
/// last handle is dropped; the flusher writes them afterwards. Until it has
/// stopped, the data dir must stay locked, or a second store would recover
/// and append to a segment that is still being written.
#[tokio::test(flavor = "multi_thread")]
async fn store_dropped_with_queued_appends_stays_locked_until_its_flusher_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let l = ledger("audit");
    let store = open(dir.path());
    assert!(store.create_ledger_blocking(&l).unwrap());
    let big = entry(&format!("\"{}\"", "q".repeat(512 * 1024)));
    for _ in 0..24 {
        let append = store.append(&l, vec![big.clone(); 8]);
        // Polled once: queued to the flusher, then abandoned.
        let _ = tokio::time::timeout(std::time::Duration::ZERO, append).await;
    }
    drop(store);

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let store = loop {
        match ferry_store::Store::open(config(dir.path())) {
            Ok(store) => break store,
            Err(StoreError::Locked { .. }) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            Err(e) => panic!("reopen failed: {e}"),
        }
    };
    // (records, bytes) of every segment on disk.
    let wal = || {
        segments(dir.path()).iter().fold((0, 0), |(n, bytes), s| {
            let recs = records(&std::fs::read(s).unwrap()).len() as u64;
            (n + recs, bytes + file_len(s))
        })
    };
    let head_at_open = head(&store, &l);
    assert_eq!(head_at_open % 8, 0, "abandoned batches are whole or absent");
    let (records_at_open, bytes_at_open) = wal();
    assert_eq!(records_at_open, head_at_open);
    let indexed = store.ledger_info(&l).unwrap().bytes;
    let outcome = store.append(&l, vec![entry("\"mine\"")]).await.unwrap();
    assert_eq!(outcome.ids, vec![head_at_open + 1]);
    let mine = store.ledger_info(&l).unwrap().bytes - indexed;
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(wal(), (head_at_open + 1, bytes_at_open + mine), "only the new store wrote to the WAL after it opened");
    close(store).await;

    let store = open(dir.path());
    let all = read_all(&store, &l);
    assert_eq!(all.len() as u64, head_at_open + 1);
    assert_eq!(all.last().unwrap().payload.as_str(), "\"mine\"");
    close(store).await;
}
