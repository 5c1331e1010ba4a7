//! `/v1/watch`, `/v1/events` and `ferry tail` against a real server.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::{Duration, Instant};

use eventsource_stream::{Event, Eventsource as _};
use futures_util::{Stream, StreamExt as _};

use crate::support::*;

/// Opens a watch stream; `token` resumes.
async fn watch(server: &Server, query: &str, token: Option<&str>) -> impl Stream<Item = Event> + Unpin + use<> {
    let mut req = server.http.get(server.url(&format!("/v1/watch?{query}")));
    if let Some(t) = token {
        req = req.header("last-event-id", t);
    }
    let resp = req.send().await.expect("open the watch");
    assert_eq!(resp.status(), 200, "watch answered {}", resp.status());
    Box::pin(resp.bytes_stream().eventsource().map(|e| e.expect("a well-formed event")))
}

/// Collects entry events until `n` arrived (or panics after a deadline).
async fn take_entries(stream: &mut (impl Stream<Item = Event> + Unpin), n: usize) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < n {
        let e = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} entries arrived", out.len()))
            .expect("stream ended early");
        if e.event == "entry" {
            out.push((e.id, serde_json::from_str(&e.data).expect("entry JSON")));
        }
    }
    out
}

/// Per ledger, the ids seen, in arrival order.
fn ids_by_ledger(events: &[(String, serde_json::Value)]) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (_, e) in events {
        m.entry(e["ledger"].as_str().unwrap().to_owned()).or_default().push(e["id"].as_u64().unwrap());
    }
    m
}

async fn append_many(server: &Server, ledgers: &[&str], per_ledger: usize, tasks: usize) {
    let mut handles = Vec::new();
    for t in 0..tasks {
        let (http, base) = (server.http.clone(), server.base.clone());
        let ledgers: Vec<String> = ledgers.iter().map(|s| s.to_string()).collect();
        handles.push(tokio::spawn(async move {
            for i in (t..per_ledger).step_by(tasks) {
                for l in &ledgers {
                    let r = http
                        .post(format!("{base}/v1/ledgers/{l}/entries"))
                        .body(format!(r#"{{"payload":{{"i":{i}}}}}"#))
                        .send()
                        .await
                        .expect("append");
                    assert_eq!(r.status(), 201);
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("append task");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_sees_exactly_the_matching_entries_in_order_per_ledger() {
    let env = Env::new();
    let server = env.serve().await;
    server.append("w.old", r#"{"payload":"before the watch"}"#).await;
    let mut w = watch(&server, "prefix=w.", None).await;
    let mut all = watch(&server, "prefix=", None).await;
    append_many(&server, &["w.old", "w.a", "w.b", "x.other"], 60, 8).await;

    let seen = take_entries(&mut w, 3 * 60).await;
    let by = ids_by_ledger(&seen);
    assert_eq!(by.keys().collect::<Vec<_>>(), ["w.a", "w.b", "w.old"], "only matching ledgers");
    assert_eq!(by["w.a"], (1..=60).collect::<Vec<_>>(), "new ledgers from id 1, in order");
    assert_eq!(by["w.b"], (1..=60).collect::<Vec<_>>());
    assert_eq!(by["w.old"], (2..=61).collect::<Vec<_>>(), "an existing ledger from what came after the watch began");
    let everything = take_entries(&mut all, 4 * 60).await;
    assert_eq!(ids_by_ledger(&everything)["x.other"], (1..=60).collect::<Vec<_>>());
    // Nothing more arrives.
    assert!(tokio::time::timeout(Duration::from_millis(300), w.next()).await.is_err(), "no extra event");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reconnecting_with_the_last_event_id_resumes_with_no_gap_and_no_duplicate() {
    let env = Env::new();
    let server = env.serve().await;
    let mut w = watch(&server, "prefix=r.", None).await;
    append_many(&server, &["r.a", "r.b"], 50, 4).await;
    let first = take_entries(&mut w, 40).await;
    drop(w); // the connection drops mid-stream
    append_many(&server, &["r.a", "r.b", "r.c"], 20, 4).await;

    let token = first.last().unwrap().0.clone();
    let mut again = watch(&server, "prefix=r.", Some(&token)).await;
    let rest = take_entries(&mut again, 100 + 60 - 40).await;
    let mut by = ids_by_ledger(&first);
    for (l, ids) in ids_by_ledger(&rest) {
        by.entry(l).or_default().extend(ids);
    }
    assert_eq!(by["r.a"], (1..=70).collect::<Vec<_>>(), "no gap, no duplicate");
    assert_eq!(by["r.b"], (1..=70).collect::<Vec<_>>());
    assert_eq!(by["r.c"], (1..=20).collect::<Vec<_>>(), "a ledger created while disconnected");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn from_starts_one_ledger_at_an_id() {
    let env = Env::new();
    let server = env.serve().await;
    append_many(&server, &["f.a"], 10, 1).await;
    let mut w = watch(&server, "prefix=f.&from=f.a:4", None).await;
    let got = take_entries(&mut w, 7).await;
    assert_eq!(ids_by_ledger(&got)["f.a"], (4..=10).collect::<Vec<_>>());
    let bad = server.get("/v1/watch?prefix=f.&from=nope").await;
    bad.assert_error(400, "invalid_from");
    let bad = server.send(server.http.get(server.url("/v1/watch")).header("last-event-id", "garbage")).await;
    bad.assert_error(400, "invalid_resume_token");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_consumer_is_told_it_lagged_while_others_and_appends_go_on() {
    let env = Env::new();
    let server = env.serve().await;
    let slow_resp = server.http.get(server.url("/v1/watch?prefix=s")).send().await.expect("open slow watch");
    let mut fast = watch(&server, "prefix=s", None).await;
    // Many requests (one notification each) with big entries: the slow
    // client reads nothing, its socket fills, its notifications overflow.
    let payload = "y".repeat(8 * 1024);
    let n = 2600;
    let mut handles = Vec::new();
    for t in 0..16 {
        let (http, base, payload) = (server.http.clone(), server.base.clone(), payload.clone());
        handles.push(tokio::spawn(async move {
            for i in (t..n).step_by(16) {
                let body = format!(r#"{{"payload":{{"i":{i},"pad":"{payload}"}}}}"#);
                let r = http.post(format!("{base}/v1/ledgers/s.one/entries")).body(body).send().await.expect("append");
                assert_eq!(r.status(), 201, "appends are unaffected by a slow watcher");
            }
        }));
    }
    let fast_seen = take_entries(&mut fast, n).await;
    for h in handles {
        h.await.unwrap();
    }
    assert_eq!(ids_by_ledger(&fast_seen)["s.one"], (1..=n as u64).collect::<Vec<_>>());

    let mut slow = Box::pin(slow_resp.bytes_stream().eventsource());
    let (mut entries, mut lagged) = (0, None);
    while let Some(e) = tokio::time::timeout(Duration::from_secs(30), slow.next()).await.expect("slow stream stalled") {
        let e = e.expect("event");
        match e.event.as_str() {
            "entry" => entries += 1,
            "lagged" => lagged = Some(e.id),
            other => panic!("unexpected event {other}"),
        }
    }
    let token = lagged.expect("the slow consumer got `event: lagged` and the stream closed");
    assert!(entries < n, "it was cut off before the end");
    // It resumes with the token and gets the rest, exactly.
    let mut resumed = watch(&server, "prefix=s", Some(&token)).await;
    let rest = take_entries(&mut resumed, n - entries).await;
    assert_eq!(rest.first().unwrap().1["id"].as_u64().unwrap(), entries as u64 + 1);
    assert_eq!(rest.last().unwrap().1["id"].as_u64().unwrap(), n as u64);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watcher_1025_gets_429_and_memory_stays_bounded_with_1024_watchers() {
    let env = Env::new();
    let server = env.serve().await;
    let pid = server.pid();
    let rss = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap().to_owned();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() // KiB
    };
    let before = rss();
    // Separate connections: one client per 64 watchers (its own pool).
    let mut streams = Vec::new();
    for i in 0..1024 {
        let resp = server.http.get(server.url(&format!("/v1/watch?prefix=m{}", i % 8))).send().await.unwrap();
        assert_eq!(resp.status(), 200, "watcher {}", i + 1);
        streams.push(resp);
    }
    let over = server.get("/v1/watch?prefix=m").await;
    over.assert_error(429, "too_many_watchers");
    append_many(&server, &["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"], 20, 4).await;
    let after = rss();
    eprintln!("server RSS: {before} KiB idle, {after} KiB with 1024 watchers");
    assert!(after < before + 256 * 1024, "1024 watchers took {} KiB", after - before);
    let metrics = server.get("/metrics").await.text;
    assert!(metrics.contains("ferry_watchers 1024"), "{metrics}");
    drop(streams);
    // Closed watchers are gone at once: a new one is accepted.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server.http.get(server.url("/v1/watch?prefix=m")).send().await.unwrap();
        if r.status() == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "watchers were not released");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn system_events_stream_ledger_and_chunk_events_by_key_prefix() {
    let env = Env::new();
    let server = env.serve_with("[storage]\nchunk_entries = 4\n").await;
    let resp = server.http.get(server.url("/v1/events?prefix=chunk.frozen/ev")).send().await.unwrap();
    let mut chunks = Box::pin(resp.bytes_stream().eventsource());
    let resp = server.http.get(server.url("/v1/events?prefix=ledger.")).send().await.unwrap();
    let mut ledgers = Box::pin(resp.bytes_stream().eventsource());
    append_many(&server, &["ev"], 8, 1).await;
    append_many(&server, &["other"], 8, 1).await;
    server.send(server.http.delete(server.url("/v1/ledgers/ev"))).await;
    let mut kinds = Vec::new();
    for _ in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(20), chunks.next()).await.unwrap().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(e.event, "chunk.frozen");
        kinds.push(v["key"].as_str().unwrap().to_owned());
    }
    assert_eq!(kinds, ["chunk.frozen/ev/00000000", "chunk.frozen/ev/00000001"]);
    let mut seen = Vec::new();
    for _ in 0..3 {
        let e = tokio::time::timeout(Duration::from_secs(20), ledgers.next()).await.unwrap().unwrap().unwrap();
        let v: serde_json::Value = serde_json::from_str(&e.data).unwrap();
        seen.push(v["key"].as_str().unwrap().to_owned());
    }
    assert_eq!(seen, ["ledger.created/ev", "ledger.created/other", "ledger.deleted/ev"]);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ferry_tail_resumes_across_a_dropped_connection_and_a_server_restart() {
    let env = Env::new();
    let server = env.serve().await;
    let port = server.addr.port();
    let out_path = env.dir.path().join("tail.out");
    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["tail", "t.", "--server", &server.base])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry tail");
    tokio::time::sleep(Duration::from_millis(500)).await;
    append_many(&server, &["t.a", "t.b"], 30, 2).await;
    server.kill(); // the connection drops and the server is gone
    let server = Server::start_on(&env.data_dir(), None, port).await;
    append_many(&server, &["t.a", "t.b", "t.c"], 30, 2).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let lines = loop {
        let text = std::fs::read_to_string(&out_path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= 150 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = tail.kill();
    let _ = tail.wait();
    let events: Vec<(String, serde_json::Value)> = lines.into_iter().map(|v| (String::new(), v)).collect();
    let by = ids_by_ledger(&events);
    assert_eq!(by["t.a"], (1..=60).collect::<Vec<_>>(), "no gap, no duplicate across the restart");
    assert_eq!(by["t.b"], (1..=60).collect::<Vec<_>>());
    assert_eq!(by["t.c"], (1..=30).collect::<Vec<_>>());
    server.stop();
}
