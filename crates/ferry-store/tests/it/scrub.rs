//! Issue #13 item 11: deleting a ledger scrubs its records from the WAL
//! segments that stay, so once the deletion returned no file of the store
//! holds its payloads, keys or idempotency keys; a scrub stopped by a
//! refused write is finished a tick later, and one stopped by a crash by
//! the next start. The fail point tests need the `failpoints` feature and
//! one process per test (cargo-nextest): the registry is global.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_core::Entry;
use ferry_store::verify::verify;
use ferry_store::{Store, StoreConfig};

use crate::support::*;

/// 64-entry chunks and the smallest segments: the deleted ledger (120
/// entries) has a pack, frozen records left dead in sealed segments, and
/// live hot records; the other ledger's larger entries (60, none frozen)
/// keep every segment more than half live, so none is released or
/// relocated and the scrub must reach them all.
fn small(dir: &Path) -> StoreConfig {
    StoreConfig { chunk_entries: Some(64), wal_segment_bytes: 4096, ..config(dir) }
}

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for item in std::fs::read_dir(&d).unwrap() {
            let path = item.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if std::fs::read(&path).unwrap().windows(needle.len()).any(|w| w == needle.as_bytes()) {
                found.push(path);
            }
        }
    }
    found
}

/// Appends to `gone` (every field carrying `marker`) and `kept` in turns,
/// across several segments; returns `kept`'s entries.
async fn fill(store: &Store, dir: &Path, marker: &str) -> Vec<Entry> {
    let filler = "x".repeat(250);
    for i in 0..60 {
        let secret = |j| ferry_core::NewEntry {
            key: Some(format!("{marker}-key-{i}-{j}")),
            idempotency_key: Some(format!("{marker}-idem-{i}-{j}")),
            ..entry(&format!(r#""{marker}-{i}-{j}""#))
        };
        store.append(&ledger("gone"), vec![secret(0), secret(1)]).await.unwrap();
        let kept = keyed(&format!("k{i}"), &format!(r#"{{"n":{i},"f":"{filler}"}}"#));
        store.append(&ledger("kept"), vec![kept]).await.unwrap();
    }
    wait_for_file(&dir.join("ledgers/gone/00000/00000000.pack"), "gone's chunk 0 frozen").await;
    let kept = read_all(store, &ledger("kept"));
    assert_eq!(kept.len(), 60);
    kept
}

/// Waits (up to 20 s) until no file under `dir` holds `marker`.
async fn wait_scrubbed(dir: &Path, marker: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = files_containing(dir, marker);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: the deleted ledger's data is still in {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deletion_leaves_nothing_of_the_ledger_in_any_file_and_nothing_else_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(small(dir.path()));
    let kept = fill(&store, dir.path(), "marker").await;
    let holding = files_containing(&hot_dir(dir.path()), "marker");
    assert!(holding.len() >= 5, "the deleted ledger's records span segments: {holding:?}");

    store.delete_ledger(&ledger("gone")).await.unwrap();
    assert_eq!(files_containing(dir.path(), "marker"), Vec::<PathBuf>::new());
    assert_eq!(read_all(&store, &ledger("kept")), kept);
    // The name is created again: its records come after the scrub's end.
    store.append(&ledger("gone"), vec![entry(r#""reborn""#)]).await.unwrap();
    close(store).await;

    let report = verify(&small(dir.path())).unwrap();
    assert!(report.findings.is_empty(), "{:#?}", report.findings);
    let store = open_with(small(dir.path()));
    assert_eq!(read_all(&store, &ledger("kept")), kept);
    let reborn = read_all(&store, &ledger("gone"));
    assert_eq!(reborn.iter().map(|e| e.payload.as_str()).collect::<Vec<_>>(), [r#""reborn""#]);
    close(store).await;
}

/// A scrub write the disk refuses (here after its first write) leaves the
/// deletion done and the store ready; the scrub is done again a tick later.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_scrub_is_done_again_a_tick_later() {
    let scenario = fail::FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(small(dir.path()));
    let kept = fill(&store, dir.path(), "marker").await;

    fail::cfg("scrub::overwritten", "1*return").unwrap();
    store.delete_ledger(&ledger("gone")).await.unwrap();
    assert!(store.ready().is_ok(), "a refused scrub does not poison");
    assert!(store.ledger_info(&ledger("gone")).is_none());
    wait_scrubbed(dir.path(), "marker", "the retry a tick later").await;
    assert_eq!(read_all(&store, &ledger("kept")), kept);
    close(store).await;
    scenario.teardown();
    assert!(verify(&small(dir.path())).unwrap().findings.is_empty());
}

/// A scrub stopped after some of its writes, before its segment's sync or
/// before its intent went, as a crash leaves it: `ferry verify` says the
/// next start finishes it, and the next start does, before it serves.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread")]
async fn a_scrub_a_crash_stopped_is_finished_by_the_next_start() {
    let scenario = fail::FailScenario::setup();
    for point in ["scrub::overwritten", "scrub::synced"] {
        let dir = tempfile::tempdir().unwrap();
        let store = open_with(small(dir.path()));
        let kept = fill(&store, dir.path(), "marker").await;
        fail::cfg(point, "return").unwrap();
        store.delete_ledger(&ledger("gone")).await.unwrap();
        assert!(store.ready().is_ok(), "{point}: a stopped scrub does not poison");
        close(store).await;
        fail::remove(point);

        let report = verify(&small(dir.path())).unwrap();
        assert_eq!(report.faults(), 0, "{point}: {:#?}", report.findings);
        assert!(
            report.findings.iter().any(|f| f.message.contains("scrub:gone") && f.message.contains("next start")),
            "{point}: {:#?}",
            report.findings
        );
        if point == "scrub::synced" {
            assert_eq!(files_containing(dir.path(), "marker"), Vec::<PathBuf>::new(), "{point}: written and synced");
        }
        let store = open_with(small(dir.path()));
        assert_eq!(files_containing(dir.path(), "marker"), Vec::<PathBuf>::new(), "{point}: finished at the start");
        assert_eq!(read_all(&store, &ledger("kept")), kept, "{point}");
        assert!(store.ledger_info(&ledger("gone")).is_none());
        close(store).await;
        assert!(verify(&small(dir.path())).unwrap().findings.is_empty(), "{point}: the intent is gone");
    }
    scenario.teardown();
}
