//! Appends and reads: dense ids, ordered timestamps, byte-identical keys and
//! payloads, under concurrency and across a reopen.

use std::collections::BTreeMap;

use ferry_core::limits::ENTRY_KEY_BYTES_MAX;
use ferry_core::{EntryId, LedgerName, NewEntry};
use ferry_format::chain;
use ferry_store::{StoreConfig, StoreError};

use crate::support::*;

/// A payload that exercises what must be kept byte for byte: escapes,
/// non-ASCII text, number spellings, nesting and key order.
fn payload_json(task: usize, round: usize, i: usize) -> String {
    format!(
        r#"{{ "task": {task}, "round": {round}, "i": {i},
            "text": "caf\u00e9 \"quoted\" é ☃ \\ tab\t",
            "n": 2.50e3, "z": -0.0, "nested": [{{"b": null, "a": true}}, []] }}"#
    )
}

fn key_for(task: usize, round: usize, i: usize) -> Option<String> {
    match (round + i) % 4 {
        0 => None,
        1 => Some(format!("user-{task}-\"{round}\"-ü")),
        2 => Some("k".repeat(ENTRY_KEY_BYTES_MAX)),
        _ => Some(String::new()),
    }
}

fn new_entry(task: usize, round: usize, i: usize) -> NewEntry {
    NewEntry { key: key_for(task, round, i), idempotency_key: None, payload: payload(&payload_json(task, round, i)) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 8)]
async fn concurrent_single_and_batch_appends_on_many_ledgers_get_dense_ids_and_survive_reopen() {
    const LEDGERS: usize = 8;
    const TASKS: usize = 32;
    const ROUNDS: usize = 30;
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());

    let mut tasks = Vec::new();
    for task in 0..TASKS {
        let store = store.clone();
        let name = ledger(&format!("ledger-{}.t_x", task % LEDGERS));
        tasks.push(tokio::spawn(async move {
            let mut sent: Vec<(EntryId, NewEntry)> = Vec::new();
            for round in 0..ROUNDS {
                let size = if round % 3 == 0 { 1 } else { round % 7 + 2 };
                let batch: Vec<NewEntry> = (0..size).map(|i| new_entry(task, round, i)).collect();
                let outcome = store.append(&name, batch.clone()).await.expect("append");
                assert!(outcome.created);
                assert_eq!(outcome.ids.len(), batch.len());
                for w in outcome.ids.windows(2) {
                    assert_eq!(w[1], w[0] + 1, "a batch gets contiguous ids");
                }
                if let Some((last, _)) = sent.last() {
                    assert!(outcome.ids[0] > *last, "a later append of one task gets higher ids");
                }
                sent.extend(outcome.ids.into_iter().zip(batch));
            }
            (name, sent)
        }));
    }

    let mut expected: BTreeMap<LedgerName, BTreeMap<EntryId, NewEntry>> = BTreeMap::new();
    for task in tasks {
        let (name, sent) = task.await.expect("task");
        let ledger_entries = expected.entry(name).or_default();
        for (id, e) in sent {
            assert!(ledger_entries.insert(id, e).is_none(), "id {id} handed out twice");
        }
    }
    assert_eq!(expected.len(), LEDGERS);

    let mut before = BTreeMap::new();
    for (name, sent) in &expected {
        let n = sent.len() as u64;
        assert_eq!(
            sent.keys().copied().collect::<Vec<_>>(),
            (1..=n).collect::<Vec<_>>(),
            "the ids acknowledged on {name} are dense from 1"
        );
        let read = read_all(&store, name);
        assert_eq!(read.len() as u64, n);
        assert_dense_and_ordered(&read, name);
        for e in &read {
            let want = &sent[&e.id];
            assert_eq!(e.key, want.key, "key of {name}/{}", e.id);
            assert_eq!(e.payload.as_str().as_bytes(), want.payload.as_str().as_bytes(), "payload of {name}/{}", e.id);
        }
        let info = store.ledger_info(name).unwrap();
        assert_eq!((info.first, info.head, info.entries), (1, n, n));
        assert!(info.bytes > 0);
        before.insert(name.clone(), read);
    }
    let infos = store.list_ledgers();
    assert_eq!(infos.len(), LEDGERS);

    close(store).await;
    let store = open(dir.path());
    assert_eq!(store.list_ledgers(), infos, "ledger infos are identical after reopen");
    for (name, read) in &before {
        assert_eq!(&read_all(&store, name), read, "{name} is identical after reopen");
        let last = read.last().unwrap();
        let outcome = store.append(name, vec![entry(r#"{"after":"reopen"}"#)]).await.unwrap();
        assert_eq!(outcome.ids, vec![last.id + 1]);
        let again = store.read_blocking(name, Some(last.id + 1), 10).unwrap();
        assert_eq!(again.entries.len(), 1);
        assert!(again.entries[0].ts >= last.ts);
    }
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn reads_start_at_from_honour_limit_and_report_next() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let l = ledger("audit");
    let batch: Vec<NewEntry> = (0..10).map(|i| keyed(&format!("k{i}"), &format!(r#"{{"i":{i}}}"#))).collect();
    assert_eq!(store.append(&l, batch).await.unwrap().ids, (1..=10).collect::<Vec<_>>());

    let page = store.read_blocking(&l, None, 3).unwrap();
    assert_eq!(page.entries.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(page.next, 4);
    let page = store.read_blocking(&l, Some(8), 100).unwrap();
    assert_eq!(page.entries.iter().map(|e| e.id).collect::<Vec<_>>(), [8, 9, 10]);
    assert_eq!(page.next, 11);
    assert_eq!(page.entries[2].key.as_deref(), Some("k9"));
    assert_eq!(page.entries[2].payload.as_str(), r#"{"i":9}"#);
    let past = store.read_blocking(&l, Some(11), 100).unwrap();
    assert!(past.entries.is_empty());
    assert_eq!(past.next, 11);
    let far = store.read_blocking(&l, Some(1_000), 100).unwrap();
    assert!(far.entries.is_empty());
    assert_eq!(far.next, 1_000);
    let none = store.read_blocking(&l, Some(2), 0).unwrap();
    assert!(none.entries.is_empty());
    assert_eq!(none.next, 2);
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn entry_json_form_is_the_spec_form_with_the_stored_payload() {
    let dir = tempfile::tempdir().unwrap();
    let store = open_with(StoreConfig { hash_chain: vec!["audit".into()], ..config(dir.path()) });
    let l = ledger("audit");
    store.append(&l, vec![keyed("user-7", r#"{ "a" : [1, 2.0] }"#), entry("null")]).await.unwrap();
    store.append(&ledger("plain"), vec![entry("1")]).await.unwrap();
    let plain = read_all(&store, &ledger("plain"));
    assert_eq!(plain[0].to_json(), format!(r#"{{"ledger":"plain","id":1,"ts":{},"payload":1}}"#, plain[0].ts));
    let entries = read_all(&store, &l);
    let (a, b) = (&entries[0], &entries[1]);
    // A chained ledger's entries carry `hash` (issue #21), before the
    // payload, which stays last.
    let h1 = chain::link(&chain::genesis("audit", 1), 1, a.ts, Some("user-7"), br#"{"a":[1,2.0]}"#);
    let h2 = chain::link(&h1, 2, b.ts, None, b"null");
    assert_eq!((a.hash, b.hash), (Some(h1), Some(h2)));
    assert_eq!(
        a.to_json(),
        format!(
            r#"{{"ledger":"audit","id":1,"ts":{},"key":"user-7","hash":"{}","payload":{{"a":[1,2.0]}}}}"#,
            a.ts,
            chain::to_hex(&h1)
        )
    );
    assert_eq!(
        b.to_json(),
        format!(r#"{{"ledger":"audit","id":2,"ts":{},"hash":"{}","payload":null}}"#, b.ts, chain::to_hex(&h2))
    );
    close(store).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn appends_after_shutdown_fail_and_shutdown_can_be_called_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let l = ledger("audit");
    store.append(&l, vec![entry("1")]).await.unwrap();
    store.shutdown().await;
    store.shutdown().await;
    let err = store.append(&l, vec![entry("2")]).await.unwrap_err();
    assert!(matches!(err, StoreError::ShuttingDown), "{err:?}");
    assert_eq!(head(&store, &l), 1);
    assert_eq!(read_all(&store, &l).len(), 1, "reads still work");
    drop(store);
    let store = open(dir.path());
    assert_eq!(head(&store, &l), 1);
    close(store).await;
}
