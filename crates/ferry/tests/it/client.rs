//! The `ferry-client` crate against a real `ferry serve`: typed errors,
//! idempotent retries, watches that resume across restarts and lag.

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_client::{Append, Client, Error, NewEntry, ReadQuery, RetryPolicy, SystemNotice, WatchEvent, WatchOptions};

use crate::support::*;

/// The server's error, asserting status and code.
#[track_caller]
fn api_error(result: Result<impl std::fmt::Debug, Error>, status: u16, code: &str) -> ferry_client::ApiError {
    let e = result.expect_err("the server refuses it");
    let api = e.api().unwrap_or_else(|| panic!("expected {status} {code}, got {e:?}")).clone();
    assert_eq!((api.status.as_u16(), api.code.as_str()), (status, code), "{api}");
    assert!(!api.message.is_empty(), "an error with a message");
    assert!(!e.is_retryable(), "{code} is the same answer next time");
    api
}

fn payload(i: u64) -> NewEntry {
    NewEntry::from_json(format!(r#"{{"i":{i}}}"#)).unwrap()
}

/// Watch events until `n` entries arrived (30 s at most): per ledger the
/// ids delivered, and the notices seen on the way.
async fn watch_entries(watch: &mut ferry_client::Watch, n: usize) -> (BTreeMap<String, Vec<u64>>, Vec<String>) {
    let (mut ids, mut notices) = (BTreeMap::<String, Vec<u64>>::new(), Vec::new());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut got = 0;
    while got < n {
        let event = tokio::time::timeout_at(deadline, watch.next())
            .await
            .unwrap_or_else(|_| panic!("only {got} of {n} entries arrived; notices {notices:?}"))
            .expect("the watch goes on");
        match event {
            WatchEvent::Entry(e) => {
                ids.entry(e.ledger).or_default().push(e.id);
                got += 1;
            }
            WatchEvent::LedgerDeleted { ledger, .. } => notices.push(format!("deleted {ledger}")),
            WatchEvent::Lagged => notices.push("lagged".into()),
            WatchEvent::Reconnecting { .. } => notices.push("reconnecting".into()),
            WatchEvent::ResumingEarlier => notices.push("resuming earlier".into()),
            other => panic!("unexpected {other:?}"),
        }
    }
    (ids, notices)
}

/// No further entry within 300 ms (a duplicate would show by then).
async fn assert_no_more_entries(watch: &mut ferry_client::Watch) {
    let quiet = tokio::time::sleep(Duration::from_millis(300));
    tokio::pin!(quiet);
    loop {
        tokio::select! {
            _ = &mut quiet => return,
            e = watch.next() => if let Ok(WatchEvent::Entry(e)) = e { panic!("an extra entry: {e:?}") },
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_the_status_code_message_and_extra_fields_and_change_nothing() {
    let env = Env::new();
    let server = env.serve().await;
    let client = server.client();
    client.append("e.a", &Append::one(payload(1))).await.expect("append");
    let before = server.snapshot().await;

    api_error(client.ledger("e.none").await, 404, "ledger_not_found");
    api_error(client.ledger("Not-A-Name").await, 400, "invalid_ledger_name");
    let gone =
        api_error(client.read("e.a", &ReadQuery { from: Some(0), ..Default::default() }).await, 410, "below_first");
    assert_eq!(gone.first(), Some(1), "410 names First: {gone:?}");
    let gone = api_error(
        client.read_lines("e.a", &ReadQuery { from: Some(0), ..Default::default() }).await,
        410,
        "below_first",
    );
    assert_eq!(gone.first(), Some(1));
    let big = NewEntry::new(&"x".repeat(1024 * 1024 + 1)).unwrap();
    api_error(client.append("e.a", &Append::one(big)).await, 413, "entry_too_large");
    let twice = Append::batch(vec![payload(2).idempotency_key("k"), payload(3).idempotency_key("k")]);
    api_error(client.append("e.a", &twice).await, 422, "duplicate_idempotency_key");
    api_error(client.append_with_retry("e.a", Append::batch(vec![])).await, 422, "empty_batch");
    let e = api_error(client.exporter("e.none").await, 404, "exporter_not_found");
    assert_eq!(e.to_string(), format!("404 Not Found: exporter_not_found: {}", e.message));

    assert_eq!(server.snapshot().await, before, "refused requests change nothing");
    assert!(matches!(Client::new("localhost:7070"), Err(Error::InvalidInput(_))), "a URL without a scheme");
    assert!(NewEntry::from_json("{not json").is_err(), "a payload is checked before sending");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledgers_reads_and_exporters_round_trip_through_the_typed_api() {
    let env = Env::new();
    let server = env.serve_with("[[exporters]]\nname = \"o\"\nsink = \"stdout\"\n").await;
    let client = server.client();
    assert!(client.create_ledger("r.a").await.unwrap(), "201: new");
    assert!(!client.create_ledger("r.a").await.unwrap(), "200: it existed");
    let sent = [r#"{"b":1,"a":2.50}"#, r#"[1, 2]"#, r#""three""#];
    let batch = Append::batch(sent.iter().map(|p| NewEntry::from_json(*p).unwrap().key("k")).collect());
    let appended = client.append("r.a", &batch).await.unwrap();
    assert_eq!((appended.ids, appended.repeated), (vec![1, 2, 3], false));

    let page = client.read("r.a", &ReadQuery { from: Some(2), limit: Some(1), ..Default::default() }).await.unwrap();
    assert_eq!((page.entries.len(), page.next), (1, 3));
    assert_eq!(
        (page.entries[0].id, page.entries[0].payload.get(), page.entries[0].key.as_deref()),
        (2, "[1,2]", Some("k"))
    );
    let mut lines = client.read_lines("r.a", &ReadQuery::default()).await.unwrap();
    let served = server.read_all("r.a").await;
    for line in &served {
        assert_eq!(
            lines.next_line().await.unwrap().as_deref(),
            Some(line.as_bytes()),
            "lines as the server sends them"
        );
    }
    assert!(lines.next_line().await.unwrap().is_none());
    let first = client.read_lines("r.a", &ReadQuery::default()).await.unwrap().next_entry().await.unwrap().unwrap();
    assert_eq!(first.payload.get(), r#"{"b":1,"a":2.50}"#, "payload bytes kept");

    let ledger = client.ledger("r.a").await.unwrap();
    assert_eq!((ledger.name.as_str(), ledger.first, ledger.head, ledger.entries), ("r.a", 1, 3, 3));
    assert_eq!(client.ledgers().await.unwrap(), vec![ledger]);

    let paused = client.pause_exporter("o").await.unwrap();
    assert_eq!((paused.name.as_str(), paused.state.as_str(), paused.sink.as_deref()), ("o", "paused", Some("stdout")));
    assert_eq!(client.resume_exporter("o").await.unwrap().state, "running");
    client.reset_exporter("o", Some("r.a"), Some(2)).await.unwrap();
    assert_eq!(client.exporters().await.unwrap()[0].name, "o");
    api_error(client.delete_exporter("o").await, 409, "exporter_configured");

    let mut events = client.events("ledger.").await.unwrap();
    client.delete_ledger("r.a").await.unwrap();
    api_error(client.ledger("r.a").await, 404, "ledger_not_found");
    let notice = tokio::time::timeout(Duration::from_secs(10), events.next()).await.unwrap().unwrap();
    match notice {
        Some(SystemNotice::Event(e)) => {
            assert_eq!((e.kind.as_str(), e.key.as_str()), ("ledger.deleted", "ledger.deleted/r.a"))
        }
        other => panic!("expected the deletion event, got {other:?}"),
    }
    client.health().await.unwrap();
    client.ready().await.unwrap();
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_sent_again_with_the_same_keys_returns_the_same_ids_and_appends_nothing() {
    let env = Env::new();
    let server = env.serve().await;
    let client = server.client();
    let append = Append::batch((1..=3).map(payload).collect()).with_idempotency_keys();
    assert!(append.entries().iter().all(|e| e.get_idempotency_key().is_some()), "every entry got a key");
    let first = client.append("i.a", &append).await.unwrap();
    client.append("i.a", &Append::one(payload(4))).await.unwrap(); // the head moves on
    let again = client.append("i.a", &append).await.unwrap();
    assert_eq!(first.ids, vec![1, 2, 3]);
    assert_eq!((again.ids, again.repeated), (first.ids, true), "the original ids, nothing appended");
    assert_eq!(server.head("i.a").await, Some(4));
    server.stop();
}

/// The first attempts find no server (connection refused, retryable); the
/// append goes through once it is up, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_with_retry_rides_out_a_server_that_is_not_up_yet() {
    let env = Env::new();
    let port = free_port();
    let policy =
        RetryPolicy { max_retries: 60, min_delay: Duration::from_millis(50), max_delay: Duration::from_millis(500) };
    let client = Client::with_http(http(), &format!("http://127.0.0.1:{port}")).unwrap().with_retry_policy(policy);
    let refused = client.append("x.a", &Append::one(payload(0))).await.expect_err("nobody listens yet");
    assert!(matches!(refused, Error::Transport(_)) && refused.is_retryable(), "{refused:?}");

    let append = tokio::spawn({
        let client = client.clone();
        async move { client.append_with_retry("x.a", Append::batch((1..=5).map(payload).collect())).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let server = Server::start_on(&env.data_dir(), None, port).await;
    let appended =
        tokio::time::timeout(Duration::from_secs(60), append).await.unwrap().unwrap().expect("it went through");
    assert_eq!(appended.ids, vec![1, 2, 3, 4, 5]);
    assert_eq!(server.read_all("x.a").await.len(), 5, "appended once");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_resumes_across_a_server_restart_with_no_gap_and_no_duplicate() {
    let env = Env::new();
    let server = env.serve().await;
    let port = server.addr.port();
    let client = server.client();
    let mut watch = client.watch(WatchOptions::prefix("w.")).await.unwrap();
    for i in 1..=10 {
        client.append("w.a", &Append::one(payload(i))).await.unwrap();
    }
    let (before, _) = watch_entries(&mut watch, 10).await;
    server.stop();
    let server = Server::start_on(&env.data_dir(), None, port).await;
    for i in 11..=20 {
        client.append("w.a", &Append::one(payload(i))).await.unwrap();
        client.append("w.b", &Append::one(payload(i))).await.unwrap();
    }
    let (after, notices) = watch_entries(&mut watch, 20).await;
    assert!(notices.contains(&"reconnecting".to_owned()), "{notices:?}");
    assert_eq!(before["w.a"], (1..=10).collect::<Vec<_>>());
    assert_eq!(after["w.a"], (11..=20).collect::<Vec<_>>(), "no gap, no duplicate across the restart");
    assert_eq!(after["w.b"], (1..=10).collect::<Vec<_>>());
    assert_no_more_entries(&mut watch).await;
    assert!(watch.token().is_some_and(|t| t.len() <= 58), "a bounded token: {:?}", watch.token());
    server.stop();
}

/// The fail point stops the periodic flushes, so `kill -9` loses every
/// token: the server answers 410 `token_expired` with `resume_from`, the
/// watch resumes there and drops what it had delivered.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_whose_position_a_crash_lost_resumes_earlier_and_delivers_nothing_twice() {
    let env = Env::new();
    let server = Server::start_env(&env.data_dir(), None, &[("FAILPOINTS", "watch::flush=return")]).await;
    let port = server.addr.port();
    let client = server.client();
    let mut watch = client.watch(WatchOptions::prefix("k.")).await.unwrap();
    for i in 1..=10 {
        client.append("k.a", &Append::one(payload(i))).await.unwrap();
    }
    let (before, _) = watch_entries(&mut watch, 10).await;
    tokio::time::sleep(Duration::from_millis(1_500)).await; // a flush would have run by now
    server.kill();
    let server = Server::start_on(&env.data_dir(), None, port).await;
    for i in 11..=15 {
        client.append("k.a", &Append::one(payload(i))).await.unwrap();
        client.append("k.b", &Append::one(payload(i))).await.unwrap();
    }
    let (after, notices) = watch_entries(&mut watch, 10).await;
    assert!(notices.contains(&"resuming earlier".to_owned()), "{notices:?}");
    assert_eq!(before["k.a"], (1..=10).collect::<Vec<_>>());
    assert_eq!(after["k.a"], (11..=15).collect::<Vec<_>>(), "what was delivered is not delivered again");
    assert_eq!(after["k.b"], (1..=5).collect::<Vec<_>>());
    assert_no_more_entries(&mut watch).await;
    server.stop();
}

/// A watch nobody reads falls behind: the server closes it with `event:
/// lagged`, and the watch resumes from storage with every entry once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagged_watch_resumes_from_storage_and_misses_nothing() {
    let env = Env::new();
    let server = env.serve().await;
    let client = server.client();
    let mut watch = client.watch(WatchOptions::prefix("s")).await.unwrap();
    let pad = "y".repeat(8 * 1024);
    let n = 2600u64;
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (client, pad) = (client.clone(), pad.clone());
        tasks.push(tokio::spawn(async move {
            for i in (t..n).step_by(16) {
                let e = NewEntry::new(&serde_json::json!({"i": i, "pad": pad})).unwrap();
                client.append("s.one", &Append::one(e)).await.expect("appends are unaffected by a slow watcher");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let (ids, notices) = watch_entries(&mut watch, n as usize).await;
    assert!(notices.contains(&"lagged".to_owned()), "the unread watch lagged: {notices:?}");
    assert_eq!(ids["s.one"], (1..=n).collect::<Vec<_>>(), "no gap, no duplicate");
    assert_no_more_entries(&mut watch).await;
    server.stop();
}

/// `expected_head`: a conditional append that finds another head is 412
/// `head_mismatch`, typed with the head it found, and appends nothing;
/// with the right head it goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conditional_append_on_a_moved_head_is_a_typed_412_with_the_head() {
    let env = Env::new();
    let server = env.serve().await;
    let client = server.client();
    client.append("c.a", &Append::batch((1..=2).map(payload).collect())).await.unwrap();
    let err = client.append("c.a", &Append::one(payload(3)).expected_head(1)).await.unwrap_err();
    let api = err.api().unwrap_or_else(|| panic!("an API error: {err:?}"));
    assert_eq!((api.status.as_u16(), api.code.as_str(), api.head()), (412, "head_mismatch", Some(2)));
    assert!(!err.is_retryable(), "a lost race is not retried blindly");
    assert_eq!(server.head("c.a").await, Some(2), "nothing appended");
    let ok = client.append("c.a", &Append::one(payload(3)).expected_head(2)).await.unwrap();
    assert_eq!(ok.ids, vec![3]);
    server.stop();
}
