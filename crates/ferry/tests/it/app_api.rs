//! What application developers expect of a log API (issue #15):
//! conditional appends (`expected_head`, 412 `head_mismatch`), reads by
//! time (`from_ts`, `ferry read --since`) and long-poll reads (`wait`),
//! through a real `ferry serve`.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::*;

/// The `error` object of an error answer.
fn error_of(r: &Resp) -> Value {
    r.json()["error"].clone()
}

/// Every entry's (id, ts, payload text) of a ledger.
async fn entries(server: &Server, ledger: &str) -> Vec<(u64, u64, String)> {
    let lines = server.read_all(ledger).await;
    lines
        .iter()
        .map(|l| {
            let e = parse_line(l);
            (e.id, e.ts, e.payload.get().to_owned())
        })
        .collect()
}

#[tokio::test]
async fn of_k_racing_conditional_appends_exactly_one_wins_and_the_losers_write_nothing() {
    let env = Env::new();
    let server = env.serve().await;
    for i in 0..3 {
        assert_eq!(server.append("orders", format!(r#"{{"payload":{i}}}"#)).await.status, 201);
    }
    const K: usize = 8;
    // Half the writers send one entry, half a batch of two.
    let body = |w: usize| match w % 2 {
        0 => format!(r#"{{"payload":{{"writer":{w}}},"expected_head":3}}"#),
        _ => format!(
            r#"{{"entries":[{{"payload":{{"writer":{w}}}}},{{"payload":{{"writer":{w}}}}}],"expected_head":3}}"#
        ),
    };
    let answers = futures_util::future::join_all((0..K).map(|w| server.append("orders", body(w)))).await;
    let winners: Vec<usize> = (0..K).filter(|&w| answers[w].status == 201).collect();
    assert_eq!(winners.len(), 1, "exactly one writer wins: {answers:#?}");
    let winner = winners[0];
    let won = answers[winner].ids();
    assert_eq!(won.first(), Some(&4), "the winner's first id is expected_head + 1");
    let head = 3 + won.len() as u64;
    for (w, r) in answers.iter().enumerate().filter(|(w, _)| *w != winner) {
        r.assert_error(412, "head_mismatch");
        assert_eq!(error_of(r)["head"], head, "writer {w} is told the head that beat it: {}", r.text);
    }
    let stored = entries(&server, "orders").await;
    assert_eq!(stored.len() as u64, head, "losers wrote nothing: {stored:?}");
    for (_, _, payload) in &stored[3..] {
        assert_eq!(payload, &format!(r#"{{"writer":{winner}}}"#), "only the winner's entries were added");
    }
}

#[tokio::test]
async fn expected_head_zero_creates_an_absent_ledger_and_any_other_is_412_with_head_zero_creating_nothing() {
    let env = Env::new();
    let server = env.serve().await;
    let r = server.append("fresh", r#"{"payload":1,"expected_head":2}"#).await;
    r.assert_error(412, "head_mismatch");
    assert_eq!(error_of(&r)["head"], 0);
    assert_eq!(server.head("fresh").await, None, "a refused conditional append creates no ledger");
    let r = server.append("fresh", r#"{"payload":1,"expected_head":0}"#).await;
    assert_eq!((r.status, r.ids()), (201, vec![1]), "{}", r.text);
    let r = server.append("fresh", r#"{"payload":2,"expected_head":0}"#).await;
    r.assert_error(412, "head_mismatch");
    assert_eq!(error_of(&r)["head"], 1);
    let r = server.append("fresh", r#"{"entries":[{"payload":2},{"payload":3}],"expected_head":1}"#).await;
    assert_eq!((r.status, r.ids()), (201, vec![2, 3]), "{}", r.text);
    for bad in [r#"{"payload":1,"expected_head":-1}"#, r#"{"payload":1,"expected_head":"3"}"#] {
        server.append("fresh", bad).await.assert_error(422, "invalid_entry");
    }
    assert_eq!(server.head("fresh").await, Some(3));
}

#[tokio::test]
async fn a_repeat_answers_its_original_ids_even_after_the_head_moved_and_a_mixed_batch_checks_the_head_before_its_new_entries()
 {
    let env = Env::new();
    let server = env.serve().await;
    let r = server.append("pay", r#"{"payload":"a","idempotency_key":"a","expected_head":0}"#).await;
    assert_eq!((r.status, r.ids()), (201, vec![1]), "{}", r.text);
    assert_eq!(server.append("pay", r#"{"payload":"b"}"#).await.status, 201);
    // The head is 2 now: the repeat still answers its original id.
    let r = server.append("pay", r#"{"payload":"a","idempotency_key":"a","expected_head":0}"#).await;
    assert_eq!((r.status, r.ids()), (200, vec![1]), "{}", r.text);
    // A batch of a repeat and a new entry: the head (2) is checked before the new one.
    let mixed = |expected: u64| {
        format!(
            r#"{{"entries":[{{"payload":"a","idempotency_key":"a"}},{{"payload":"c","idempotency_key":"c"}}],"expected_head":{expected}}}"#
        )
    };
    let r = server.append("pay", mixed(0)).await;
    r.assert_error(412, "head_mismatch");
    assert_eq!(error_of(&r)["head"], 2);
    let r = server.append("pay", mixed(2)).await;
    assert_eq!((r.status, r.ids()), (201, vec![1, 3]), "{}", r.text);
    // Now every entry is a repeat: the original ids, whatever the head.
    let r = server.append("pay", mixed(2)).await;
    assert_eq!((r.status, r.ids()), (200, vec![1, 3]), "{}", r.text);
    assert_eq!(entries(&server, "pay").await.len(), 3);
}

/// Appends `n` entries one at a time, a few ms apart, so timestamps differ.
async fn append_spread(server: &Server, ledger: &str, n: usize) {
    for i in 0..n {
        let r = server.append(ledger, format!(r#"{{"payload":{i}}}"#)).await;
        assert_eq!(r.status, 201, "{}", r.text);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
}

/// `GET …/entries?{query}` as JSON: (ids, next).
async fn page(server: &Server, ledger: &str, query: &str) -> (Vec<u64>, u64) {
    let r = server.get(&format!("/v1/ledgers/{ledger}/entries?{query}")).await;
    assert_eq!(r.status, 200, "{query}: {}", r.text);
    let v = r.json();
    let ids = v["entries"].as_array().expect("entries").iter().map(|e| e["id"].as_u64().expect("id")).collect();
    (ids, v["next"].as_u64().expect("next"))
}

#[tokio::test]
async fn from_ts_starts_at_the_first_entry_stamped_at_or_after_it_in_frozen_and_hot_ranges() {
    let env = Env::new();
    let data = env.data_dir();
    let server = env.serve_with("[storage]\nchunk_entries = 4\n").await;
    append_spread(&server, "ev", 14).await;
    // Chunks 0..=2 frozen, ids 13 and 14 hot.
    eventually("three chunks frozen", async || {
        std::fs::read_dir(data.join("ledgers/ev/00000")).map(|d| d.count()).unwrap_or(0) == 3
    })
    .await;
    let stored = entries(&server, "ev").await;
    for &(_, ts, _) in &stored {
        for probe in [ts - 1, ts, ts + 1] {
            let want = stored.iter().find(|(_, t, _)| *t >= probe).map(|(id, _, _)| *id);
            let (ids, next) = page(&server, "ev", &format!("from_ts={probe}&limit=3")).await;
            match want {
                Some(id) => assert_eq!(ids.first(), Some(&id), "from_ts={probe}: {stored:?}"),
                None => assert_eq!((ids.len(), next), (0, 15), "from_ts={probe} after the last entry"),
            }
        }
    }
    assert_eq!(page(&server, "ev", "from_ts=0&limit=1").await.0, vec![1]);
    assert_eq!(page(&server, "ev", &format!("from_ts={}", u64::MAX)).await, (vec![], 15));
    // NDJSON takes it too.
    let last_ts = stored[13].1;
    let r = server.ndjson("ev", &format!("from_ts={last_ts}")).await;
    assert_eq!(parse_line(r.text.lines().next().expect("a line")).ts, last_ts);
    let r = server.get("/v1/ledgers/ev/entries?from=2&from_ts=5").await;
    r.assert_error(400, "invalid_query");
    server.get("/v1/ledgers/nope/entries?from_ts=5").await.assert_error(404, "ledger_not_found");
}

#[tokio::test]
async fn from_ts_before_the_first_retained_entry_starts_at_first() {
    let env = Env::new();
    let data = env.data_dir();
    let server = env.serve_with("[storage]\nchunk_entries = 4\n[retention.ledgers]\nev = { max_bytes = 1 }\n").await;
    append_spread(&server, "ev", 10).await;
    eventually("the frozen chunks pruned", async || {
        server.first_and_head("ev").await.is_some_and(|(first, _)| first == 9)
            && std::fs::read_dir(data.join("ledgers/ev/00000")).map(|d| d.count()).unwrap_or(0) == 0
    })
    .await;
    assert_eq!(page(&server, "ev", "from_ts=0").await, (vec![9, 10], 11), "like Kafka's offsetsForTimes");
    server.get("/v1/ledgers/ev/entries?from=1").await.assert_error(410, "below_first");
}

#[tokio::test]
async fn a_long_poll_read_answers_as_soon_as_an_entry_is_appended_and_with_an_empty_page_after_the_wait() {
    let env = Env::new();
    let server = env.serve().await;
    assert_eq!(server.append("q", r#"{"payload":1}"#).await.status, 201);
    // An entry already there: no wait at all.
    assert_eq!(page(&server, "q", "from=1&wait=30s").await, (vec![1], 2));
    // Nothing comes: an empty page after the wait.
    let started = Instant::now();
    assert_eq!(page(&server, "q", "from=2&wait=1s").await, (vec![], 2));
    assert!(started.elapsed() >= Duration::from_millis(900), "it waited: {:?}", started.elapsed());
    // An append wakes a waiting read: measured from sending the append to
    // the waiting read's answer, beside the append's own round trip.
    let (mut woken, mut appended) = (Vec::new(), Vec::new());
    for round in 0..5u64 {
        let from = 2 + round;
        let path = format!("/v1/ledgers/q/entries?from={from}&wait=30s");
        let waiting = async { (server.get(&path).await, Instant::now()) };
        let append = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let sent = Instant::now();
            let r = server.append("q", format!(r#"{{"payload":{from}}}"#)).await;
            assert_eq!(r.status, 201);
            (sent, sent.elapsed())
        };
        let ((r, answered), (sent, round_trip)) = tokio::join!(waiting, append);
        assert_eq!(r.status, 200, "{}", r.text);
        assert_eq!(r.json()["entries"][0]["id"], from, "{}", r.text);
        woken.push(answered.duration_since(sent));
        appended.push(round_trip);
    }
    woken.sort();
    appended.sort();
    println!(
        "long-poll wake-up, from sending the append to the waiting read's answer: median {:?}, max {:?} \
         (the append's own round trip: median {:?})",
        woken[2], woken[4], appended[2]
    );
    assert!(woken[4] < Duration::from_secs(1), "a sanity bound only: {woken:?}");
    // from_ts with wait: waits for the first entry stamped at or after it.
    let future = now_ms() + 200;
    let path = format!("/v1/ledgers/q/entries?from_ts={future}&wait=10s");
    let waiting = server.get(&path);
    let append = async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(server.append("q", r#"{"payload":"later"}"#).await.status, 201);
    };
    let (r, ()) = tokio::join!(waiting, append);
    assert_eq!(r.json()["entries"][0]["payload"], "later", "{}", r.text);
}

#[tokio::test]
async fn long_poll_waits_are_bounded_and_count_against_max_watchers() {
    let env = Env::new();
    let server = env.serve_with("[server]\nmax_watchers = 1\n").await;
    assert_eq!(server.append("q", r#"{"payload":1}"#).await.status, 201);
    for bad in ["wait=61s", "wait=soon", "wait=-1s"] {
        server.get(&format!("/v1/ledgers/q/entries?from=2&{bad}")).await.assert_error(400, "invalid_wait");
    }
    let holding = server.get("/v1/ledgers/q/entries?from=2&wait=3s");
    let second = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        server.get("/v1/ledgers/q/entries?from=2&wait=3s").await
    };
    let (first, second) = tokio::join!(holding, second);
    assert_eq!(first.status, 200, "{}", first.text);
    second.assert_error(429, "too_many_watchers");
    // The slot is free again once the wait ended.
    assert_eq!(page(&server, "q", "from=2&wait=100ms").await, (vec![], 2));
}

#[tokio::test]
async fn the_cli_appends_with_an_expected_head_and_reads_since_a_time() {
    let env = Env::new();
    let server = env.serve().await;
    let cli = |args: &[&str]| {
        let mut cmd = ferry();
        cmd.args(args).arg("--server").arg(server.url(""));
        run_to_exit(cmd, None)
    };
    let out = cli(&["append", "cli", "1", "--expected-head", "0"]);
    assert_exit(&out, 0, "append with --expected-head 0");
    let out = cli(&["append", "cli", "2", "--expected-head", "0"]);
    assert_exit(&out, 1, "append with a stale --expected-head");
    assert!(out.stderr.contains("head_mismatch"), "{}", out.stderr);
    assert_eq!(server.head("cli").await, Some(1));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let since = now_ms();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_exit(&cli(&["append", "cli", "3", "--expected-head", "1"]), 0, "append at head 1");
    let rfc3339 = |ms: u64| {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(ms);
        humantime::format_rfc3339_millis(t).to_string()
    };
    let out = cli(&["read", "cli", "--since", &rfc3339(since)]);
    assert_exit(&out, 0, "read --since");
    let ids: Vec<u64> = out.stdout.lines().map(|l| parse_line(l).id).collect();
    assert_eq!(ids, vec![2]);
    let out = cli(&["read", "cli", "--since", "yesterday"]);
    assert_exit(&out, 2, "read --since with no RFC 3339 time");
    let out = cli(&["read", "cli", "--since", &rfc3339(since), "--from", "1"]);
    assert_exit(&out, 2, "read with both --since and --from");
}
