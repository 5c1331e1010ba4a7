//! The per-ledger quota (`StoreConfig::max_ledger_bytes`, issue #13 item
//! 2b) under concurrent appends: appends that share one group commit count
//! each other, so the quota holds exactly, never by a group's worth.

use ferry_store::{StoreConfig, StoreError};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_fill_a_quota_exactly_and_the_rest_are_refused() {
    const FIT: usize = 10;
    let dir = tempfile::tempdir().unwrap();
    let (tenant, other) = (ledger("tenant"), ledger("other1"));
    // Every entry encodes to the same size: measure one.
    let size = {
        let probe = tempfile::tempdir().unwrap();
        let store = open(probe.path());
        store.append(&tenant, vec![entry(r#"{"i":"000"}"#)]).await.unwrap();
        let bytes = store.ledger_info(&tenant).unwrap().bytes;
        close(store).await;
        bytes
    };
    let max = FIT as u64 * size + size / 2;
    let store = open_with(StoreConfig { max_ledger_bytes: Some(max), ..config(dir.path()) });
    store.create_ledger(&tenant).await.unwrap();
    let tasks: Vec<_> = (0..5 * FIT)
        .map(|i| {
            let store = store.clone();
            let (tenant, other) = (tenant.clone(), other.clone());
            tokio::spawn(async move {
                let mine = store.append(&tenant, vec![entry(&format!(r#"{{"i":"{i:03}"}}"#))]).await;
                let theirs = store.append(&other, vec![entry(r#"{"i":"000"}"#)]).await;
                (mine, theirs)
            })
        })
        .collect();
    let (mut accepted, mut refused, mut other_refused) = (0, 0, 0);
    for task in tasks {
        let (mine, theirs) = task.await.unwrap();
        match mine {
            Ok(_) => accepted += 1,
            Err(StoreError::QuotaExceeded { ledger, max: m, .. }) => {
                assert_eq!((ledger, m), (tenant.clone(), max));
                refused += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
        // `other1` (one byte longer a name) has room for fewer, its own.
        other_refused += usize::from(theirs.is_err());
    }
    assert_eq!((accepted, refused), (FIT, 4 * FIT), "exactly what fits is accepted");
    let info = store.ledger_info(&tenant).unwrap();
    assert_eq!((info.head, info.bytes), (FIT as u64, FIT as u64 * size));
    assert!(store.ledger_info(&other).unwrap().bytes <= max && other_refused > 0);
    assert_eq!(read_all(&store, &tenant).len(), FIT);
    close(store).await;
}
