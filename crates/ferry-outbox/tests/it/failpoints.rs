//! A failure between the append and the source's commit replays the batch:
//! the idempotency keys make the replay answer the original entries.
//! Needs the `failpoints` feature and one process per test (the fail
//! points are global): `cargo nextest run -p ferry-outbox --all-features`.
#![cfg(feature = "failpoints")]

use std::time::Duration;

use ferry_core::bus::Received;
use ferry_outbox::Sources;

use crate::support::*;

async fn a_failure_after_the_append_replays_without_duplicates(driver: Driver, point: &str) {
    let db = TestDb::new(driver, PayloadType::Json).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    for i in 0..6 {
        db.insert(None, None, &format!("{{\"n\":{i}}}")).await;
    }
    let mut events = store.events().subscribe("source.", 16);
    fail::cfg(point, "1*return").unwrap();
    let sources = Sources::start(store.clone(), vec![db.source("app", "ledger = \"audit\"")]);
    let start = std::time::Instant::now();
    while !db.rows().await.iter().all(|r| r.1) {
        assert!(start.elapsed() < Duration::from_secs(15), "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    fail::remove(point);
    let got: Vec<String> = read_all(&store, &ledger("audit")).iter().map(|e| e.payload.as_str().to_owned()).collect();
    let want: Vec<String> = (0..6).map(|i| format!("{{\"n\":{i}}}")).collect();
    assert_eq!(got, want, "the replayed batch added nothing");
    until("the status", || status(&sources, "app").drained == 6).await;
    assert!(status(&sources, "app").last_error.is_none());
    // The fail point did fire: the source failed once, then recovered.
    let mut kinds = Vec::new();
    while let Some(Received::Message(e)) = events.try_recv() {
        kinds.push(e.kind);
    }
    assert_eq!(kinds, ["source.failed", "source.recovered"]);
    sources.shutdown(Duration::from_secs(10)).await;
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replays_after_append() {
    a_failure_after_the_append_replays_without_duplicates(Driver::Postgres, "outbox::after_append").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_replays_after_append() {
    a_failure_after_the_append_replays_without_duplicates(Driver::Mysql, "outbox::after_append").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_replays_before_commit() {
    a_failure_after_the_append_replays_without_duplicates(Driver::Postgres, "outbox::before_commit").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_replays_before_commit() {
    a_failure_after_the_append_replays_without_duplicates(Driver::Mysql, "outbox::before_commit").await;
}
