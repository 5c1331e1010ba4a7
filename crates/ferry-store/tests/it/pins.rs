//! Snapshot pins (format 6): a consistent cut of every ledger, a retention
//! hold while alive, at most `max` live, renewed or expired, durable
//! across a restart.

use std::time::{Duration, Instant};

use ferry_core::bus::Received;
use ferry_store::{RetentionPolicy, StoreConfig, StoreError};

use crate::support::{close, config, entry, ledger, open_with};

fn chunked(dir: &std::path::Path) -> StoreConfig {
    StoreConfig { chunk_entries: Some(4), ..config(dir) }
}

/// A pin holds every ledger from the First it saw, whatever retention
/// wants; deleting it lets retention prune.
#[tokio::test(flavor = "multi_thread")]
async fn a_pin_holds_retention_from_its_first_until_it_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = chunked(dir.path());
    c.retention = RetentionPolicy { max_age: Some(Duration::ZERO), ..Default::default() };
    let store = open_with(c);
    let (a, b) = (ledger("a"), ledger("b"));
    store.append(&a, vec![entry("1"), entry("2")]).await.unwrap();
    store.create_ledger(&b).await.unwrap();
    let (id, pin) = store.create_pin(60_000, 4, Some("backup")).await.unwrap();
    let cut: Vec<(&str, u64, u64)> = pin.ledgers.iter().map(|(l, p)| (l.as_str(), p.first, p.head)).collect();
    assert_eq!(cut, [("a", 1, 2), ("b", 1, 0)], "an empty ledger is in the cut with head First - 1");
    assert_eq!(pin.by.as_deref(), Some("backup"));
    let mut frozen = store.events().subscribe("chunk.frozen/a/", 16);
    store.append(&a, (3..=12).map(|n| entry(&n.to_string())).collect()).await.unwrap();
    for _ in 0..3 {
        tokio::time::timeout(Duration::from_secs(20), frozen.recv()).await.expect("chunks freeze");
    }
    // Retention runs every second: give it three turns.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(store.ledger_info(&a).unwrap().first, 1, "the pin holds from its First");
    store.delete_pin(id).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.ledger_info(&a).unwrap().first == 1 {
        assert!(Instant::now() < deadline, "retention never pruned after the pin went");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(matches!(store.delete_pin(id).await, Err(StoreError::PinNotFound(p)) if p == id));
    close(store).await;
}

/// At most `max` live pins; expired ones count for nothing, cannot be
/// renewed, and the expiry pass deletes them (durably) with `pin.expired`.
#[tokio::test(flavor = "multi_thread")]
async fn live_pins_are_bounded_renewed_and_expired_durably() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(chunked(dir.path()));
    store.append(&ledger("a"), vec![entry("1")]).await.unwrap();
    let (short, _) = store.create_pin(300, 2, None).await.unwrap();
    let (long, pin) = store.create_pin(60_000, 2, None).await.unwrap();
    assert!(matches!(store.create_pin(60_000, 2, None).await, Err(StoreError::TooManyPins { max: 2 })));
    let renewed = store.renew_pin(long, 120_000).await.unwrap();
    assert!(renewed.expires_at > pin.expires_at);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.live_pins(), 1);
    assert!(matches!(store.renew_pin(short, 60_000).await, Err(StoreError::PinNotFound(_))));
    store.create_pin(60_000, 2, None).await.expect("an expired pin frees its place");
    let mut expired = store.events().subscribe("pin.expired", 4);
    assert_eq!(store.expire_pins().await.unwrap(), 1);
    assert!(matches!(expired.recv().await, Some(Received::Message(_))));
    let kept: Vec<u64> = store.pins().iter().map(|(id, _)| *id).collect();
    assert_eq!(kept.len(), 2);
    assert!(kept.contains(&long) && !kept.contains(&short));
    let before = store.pins();
    close(store).await;
    let store = open_with(chunked(dir.path()));
    assert_eq!(store.pins(), before, "pins are durable");
    close(store).await;
}

/// The cut is one instant: a writer that appends to `a`, waits for the
/// acknowledgement, then appends to `b`, and so on, can never be seen by a
/// pin with `b` ahead of `a`, nor `a` more than one ahead of `b`.
#[tokio::test(flavor = "multi_thread")]
async fn a_pin_is_a_consistent_cut_across_ledgers() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(config(dir.path()));
    let (a, b) = (ledger("a"), ledger("b"));
    store.create_ledger(&a).await.unwrap();
    store.create_ledger(&b).await.unwrap();
    let writer = {
        let (store, a, b) = (store.clone(), a.clone(), b.clone());
        tokio::spawn(async move {
            for n in 0..400 {
                store.append(&a, vec![entry(&n.to_string())]).await.unwrap();
                store.append(&b, vec![entry(&n.to_string())]).await.unwrap();
            }
        })
    };
    let mut cuts = 0;
    while !writer.is_finished() {
        let (id, pin) = store.create_pin(60_000, 4, None).await.unwrap();
        let (ha, hb) = (pin.ledgers[&a].head, pin.ledgers[&b].head);
        assert!(ha == hb || ha == hb + 1, "cut a={ha} b={hb} is not one instant");
        store.delete_pin(id).await.unwrap();
        cuts += 1;
    }
    writer.await.unwrap();
    assert!(cuts > 3, "only {cuts} cuts taken while writing");
    close(store).await;
}
