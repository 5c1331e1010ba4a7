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

/// Like `take_entries`, but a `lagged` event (or the stream's end after
/// one) is followed by resuming with its token, as a client would.
async fn take_entries_resuming(
    server: &Server,
    query: &str,
    stream: &mut (impl Stream<Item = Event> + Unpin),
    n: usize,
) -> Vec<(String, serde_json::Value)> {
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut resumed: Option<std::pin::Pin<Box<dyn Stream<Item = Event> + Send>>> = None;
    while out.len() < n {
        let next = match resumed.as_mut() {
            Some(r) => tokio::time::timeout_at(deadline, r.next()).await,
            None => tokio::time::timeout_at(deadline, stream.next()).await,
        };
        let e =
            next.unwrap_or_else(|_| panic!("only {} of {n} entries arrived", out.len())).expect("stream ended early");
        match e.event.as_str() {
            "entry" => out.push((e.id, serde_json::from_str(&e.data).expect("entry JSON"))),
            "lagged" => resumed = Some(Box::pin(watch(server, query, Some(&e.id)).await)),
            _ => {}
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

#[tokio::test]
async fn from_ts_starts_every_ledger_of_the_watch_at_its_first_entry_stamped_at_or_after_it() {
    let env = Env::new();
    let server = env.serve().await;
    let mut stamps = Vec::new();
    for (ledger, i) in [("t.a", 1), ("t.a", 2), ("t.b", 1), ("t.a", 3), ("t.b", 2)] {
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(server.append(ledger, format!(r#"{{"payload":{i}}}"#)).await.status, 201);
        let last = server.read_all(ledger).await.last().map(|l| parse_line(l).ts).expect("an entry");
        stamps.push((ledger, i, last));
    }
    let (_, _, since) = stamps[1];
    let mut w = watch(&server, &format!("prefix=t.&from_ts={since}"), None).await;
    let mut got = take_entries(&mut w, 4).await;
    assert_eq!(server.append("t.a", r#"{"payload":4}"#).await.status, 201);
    got.extend(take_entries(&mut w, 1).await);
    let ids = ids_by_ledger(&got);
    assert_eq!((ids["t.a"].clone(), ids["t.b"].clone()), (vec![2, 3, 4], vec![1, 2]), "{stamps:?}");
    let later = now_ms() + 60_000;
    server.get(&format!("/v1/watch?prefix=t.&from_ts={later}")).await.assert_error(400, "invalid_from_ts");
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
    // "Fast" only as fast as the machine lets it: under load it may lag
    // too, and then it resumes with its token, missing nothing.
    let fast_seen = take_entries_resuming(&server, "prefix=s", &mut fast, n).await;
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

// ---- Issue #13 items 6 and 7: bounded resume tokens, incarnations. ----

/// Every event (entries, deletion notices, `lagged`) until `entries` entry
/// events arrived, or until nothing came for `quiet`.
async fn events_until(stream: &mut (impl Stream<Item = Event> + Unpin), entries: usize, quiet: Duration) -> Vec<Event> {
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < entries {
        match tokio::time::timeout(quiet, stream.next()).await {
            Ok(Some(e)) => {
                seen += usize::from(e.event == "entry");
                out.push(e);
            }
            Ok(None) | Err(_) => break,
        }
    }
    out
}

/// Events as comparable lines: `entry LEDGER ID` or `EVENT DATA`.
fn summary(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| match e.event.as_str() {
            "entry" => {
                let v: serde_json::Value = serde_json::from_str(&e.data).expect("entry JSON");
                format!("entry {} {}", v["ledger"].as_str().unwrap(), v["id"])
            }
            other => format!("{other} {}", e.data),
        })
        .collect()
}

fn entries_summary(ledger: &str, ids: std::ops::RangeInclusive<u64>) -> Vec<String> {
    ids.map(|id| format!("entry {ledger} {id}")).collect()
}

/// The documented parts of a resume token: `{session}.{epoch}.{seq}`.
fn token_parts(token: &str) -> (String, u64, u64) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a resume token is SESSION.EPOCH.SEQ: {token:?}");
    (parts[0].to_owned(), parts[1].parse().expect("epoch"), parts[2].parse().expect("seq"))
}

/// Asks for a watch that must be refused; panics if a stream opens.
async fn watch_refused(server: &Server, query: &str, token: &str) -> Resp {
    let req = server.http.get(server.url(&format!("/v1/watch?{query}"))).header("last-event-id", token);
    let resp = req.send().await.expect("send the watch request");
    assert_ne!(resp.status(), 200, "a watch opened for the token {token:?}");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("read the error body");
    Resp { status, content_type: String::new(), text, server_log: String::new() }
}

async fn delete_ledger(server: &Server, ledger: &str) {
    let r = server.send(server.http.delete(server.url(&format!("/v1/ledgers/{ledger}")))).await;
    assert_eq!(r.status, 204, "DELETE {ledger}: {}", r.text);
}

async fn incarnation(server: &Server, ledger: &str) -> u64 {
    let r = server.get(&format!("/v1/ledgers/{ledger}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["incarnation"].as_u64().expect("incarnation")
}

/// Issue #13 item 6: with one append to each of N ledgers named with 61
/// characters, the old token (every ledger's position in every event's
/// `id:`) made the stream O(N²): 128 MB at N = 2,000. Each event's size
/// must depend on its own entry only.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_event_id_is_bounded_and_the_stream_grows_linearly_with_the_ledgers() {
    const N: usize = 2_000;
    let env = Env::new();
    let server = env.serve().await;
    let names: Vec<String> = (0..N).map(|i| format!("traffic-{i:05}-{}", "x".repeat(61 - 14))).collect();
    assert!(names.iter().all(|n| n.len() == 61));
    let resp = server.http.get(server.url("/v1/watch?prefix=traffic-")).send().await.expect("open the watch");
    assert_eq!(resp.status(), 200);
    let wire_bytes = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = wire_bytes.clone();
    let counted = resp.bytes_stream().inspect(move |chunk| {
        if let Ok(c) = chunk {
            counter.fetch_add(c.len(), std::sync::atomic::Ordering::Relaxed);
        }
    });
    let mut w = Box::pin(counted.eventsource().map(|e| e.expect("a well-formed event")));

    let mut handles = Vec::new();
    for t in 0..16 {
        let (http, base) = (server.http.clone(), server.base.clone());
        let mine: Vec<String> = names.iter().skip(t).step_by(16).cloned().collect();
        handles.push(tokio::spawn(async move {
            for l in mine {
                let r = http.post(format!("{base}/v1/ledgers/{l}/entries")).body(r#"{"payload":1}"#).send().await;
                assert_eq!(r.expect("append").status(), 201);
            }
        }));
    }
    for h in handles {
        h.await.expect("append task");
    }
    let (mut ids, mut data_bytes, mut longest) = (0, 0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ids < N {
        let e = tokio::time::timeout_at(deadline, w.next())
            .await
            .unwrap_or_else(|_| panic!("only {ids} of {N} entries arrived"))
            .expect("stream ended early");
        let total = wire_bytes.load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(e.event, "entry", "after {ids} entries ({total} SSE bytes so far, longest id {longest} bytes)");
        longest = longest.max(e.id.len());
        data_bytes += e.data.len();
        ids += 1;
    }
    let total = wire_bytes.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!("{N} entries: {total} SSE bytes ({data_bytes} of entry data), longest id {longest} bytes");
    assert!(longest <= 512, "an event's id: is {longest} bytes with {N} ledgers");
    // `event: entry\nid: {id}\ndata: {entry}\n\n` per entry, and nothing else.
    let per_event_frame = "event: entry\nid: \ndata: \n\n".len() + 512;
    assert!(total <= data_bytes + N * per_event_frame, "{total} SSE bytes for {N} entries of {data_bytes} bytes");
    server.stop();
}

/// Issue #13 item 7: a watcher that saw ids 1–5 of `ta` got, after
/// `DELETE ta` and 8 new appends, the new ids 6–8 only, with no notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_sees_a_deletion_and_then_the_new_incarnation_from_id_1() {
    let env = Env::new();
    let server = env.serve().await;
    let mut w = watch(&server, "prefix=ta", None).await;
    append_many(&server, &["ta"], 5, 1).await;
    let first = take_entries(&mut w, 5).await;
    assert_eq!(ids_by_ledger(&first)["ta"], (1..=5).collect::<Vec<_>>());
    let old = incarnation(&server, "ta").await;
    delete_ledger(&server, "ta").await;
    append_many(&server, &["ta"], 8, 1).await;
    assert!(incarnation(&server, "ta").await > old, "a re-created ledger is a new incarnation");

    let got = summary(&events_until(&mut w, 8, Duration::from_secs(5)).await);
    let mut want = vec![format!(r#"ledger.deleted {{"ledger":"ta","incarnation":{old}}}"#)];
    want.extend(entries_summary("ta", 1..=8));
    assert_eq!(got, want, "the deletion, then the new incarnation from id 1");
    server.stop();
}

/// Issue #13 item 7, resumed: a token naming `ta` at 6 resumed into the
/// re-created ledger's id 6.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resumed_watch_sees_a_deletion_that_happened_while_it_was_away() {
    let env = Env::new();
    let server = env.serve().await;
    let mut w = watch(&server, "prefix=tb", None).await;
    append_many(&server, &["tb"], 5, 1).await;
    let first = take_entries(&mut w, 5).await;
    drop(w);
    let old = incarnation(&server, "tb").await;
    delete_ledger(&server, "tb").await;
    append_many(&server, &["tb"], 8, 1).await;

    let token = first.last().unwrap().0.clone();
    let mut again = watch(&server, "prefix=tb", Some(&token)).await;
    let got = events_until(&mut again, 8, Duration::from_secs(5)).await;
    let mut want = vec![format!(r#"ledger.deleted {{"ledger":"tb","incarnation":{old}}}"#)];
    want.extend(entries_summary("tb", 1..=8));
    assert_eq!(summary(&got), want);
    // Resuming right after the notice goes on with the new incarnation.
    drop(again);
    let after_notice = got[0].id.clone();
    let mut third = watch(&server, "prefix=tb", Some(&after_notice)).await;
    assert_eq!(summary(&events_until(&mut third, 8, Duration::from_secs(5)).await), entries_summary("tb", 1..=8));
    server.stop();
}

/// A token whose position was flushed survives `kill -9` and a graceful
/// restart alike: no gap, no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watch_resumes_exactly_across_kill_9_and_a_graceful_restart() {
    let env = Env::new();
    let server = env.serve().await;
    let mut w = watch(&server, "prefix=k.", None).await;
    append_many(&server, &["k.a", "k.b"], 20, 4).await;
    let mut seen = take_entries(&mut w, 40).await;
    drop(w);
    // Positions are flushed at most once a second: wait for it, then crash.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    server.kill();
    let server = env.serve().await;
    append_many(&server, &["k.a", "k.b", "k.c"], 10, 4).await;
    let token = seen.last().unwrap().0.clone();
    let mut w = watch(&server, "prefix=k.", Some(&token)).await;
    seen.extend(take_entries(&mut w, 30).await);
    assert!(tokio::time::timeout(Duration::from_millis(300), w.next()).await.is_err(), "no extra event");
    drop(w);
    // A graceful stop flushes every position: the newest token resumes.
    server.stop();
    let server = env.serve().await;
    append_many(&server, &["k.a", "k.c"], 5, 1).await;
    let token = seen.last().unwrap().0.clone();
    let mut w = watch(&server, "prefix=k.", Some(&token)).await;
    seen.extend(take_entries(&mut w, 10).await);
    let by = ids_by_ledger(&seen);
    assert_eq!(by["k.a"], (1..=35).collect::<Vec<_>>(), "no gap, no duplicate");
    assert_eq!(by["k.b"], (1..=30).collect::<Vec<_>>());
    assert_eq!(by["k.c"], (1..=15).collect::<Vec<_>>());
    assert!(tokio::time::timeout(Duration::from_millis(300), w.next()).await.is_err(), "no extra event");
    server.stop();
}

/// A token must name a position the server delivered: an unknown session
/// (made up, or from another data directory) is 410 `token_expired`; a
/// sequence or epoch never reached, or another prefix, is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resume_token_that_names_no_delivered_position_is_refused() {
    let env = Env::new();
    let server = env.serve().await;
    let mut w = watch(&server, "prefix=p.", None).await;
    append_many(&server, &["p.a"], 3, 1).await;
    let token = take_entries(&mut w, 3).await.last().unwrap().0.clone();
    drop(w);
    let (session, epoch, seq) = token_parts(&token);
    watch_refused(&server, "prefix=p.", "0123456789abcdef.0.1").await.assert_error(410, "token_expired");
    let other = Env::new();
    let elsewhere = other.serve().await;
    watch_refused(&elsewhere, "prefix=p.", &token).await.assert_error(410, "token_expired");
    elsewhere.stop();
    let past = format!("{session}.{epoch}.{}", seq + 1000);
    watch_refused(&server, "prefix=p.", &past).await.assert_error(400, "invalid_resume_token");
    let future_epoch = format!("{session}.{}.{seq}", epoch + 5);
    watch_refused(&server, "prefix=p.", &future_epoch).await.assert_error(400, "invalid_resume_token");
    watch_refused(&server, "prefix=q.", &token).await.assert_error(400, "invalid_resume_token");
    for junk in ["", "x", "1/p.a:2", "0123456789abcdef.1", "0123456789ABCDEF.0.1", "0123456789abcdef.0.1.2"] {
        watch_refused(&server, "prefix=p.", junk).await.assert_error(400, "invalid_resume_token");
    }
    // The real token still resumes.
    append_many(&server, &["p.a"], 1, 1).await;
    let mut w = watch(&server, "prefix=p.", Some(&token)).await;
    assert_eq!(ids_by_ledger(&take_entries(&mut w, 1).await)["p.a"], [4]);
    server.stop();
}

/// A slow consumer of many ledgers is cut off with `event: lagged` whose
/// token is as small as any other, and resumes from it exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lagged_consumer_of_many_ledgers_gets_a_bounded_token_and_resumes_exactly() {
    const LEDGERS: usize = 400;
    const PER_LEDGER: usize = 4;
    let env = Env::new();
    let server = env.serve().await;
    let names: Vec<String> = (0..LEDGERS).map(|i| format!("slow-{i:04}-{}", "y".repeat(61 - 10))).collect();
    let slow_resp = server.http.get(server.url("/v1/watch?prefix=slow-")).send().await.expect("open slow watch");
    // 1,600 entries of 32 KiB: far more than loopback socket buffers hold
    // (about 10 MB), so the unread stream must fall behind and lag; with
    // 8 KiB the buffers sometimes took it all and nothing lagged.
    let pad = "z".repeat(32 * 1024);
    let mut handles = Vec::new();
    for t in 0..16 {
        let (http, base, pad) = (server.http.clone(), server.base.clone(), pad.clone());
        let mine: Vec<String> = names.iter().skip(t).step_by(16).cloned().collect();
        handles.push(tokio::spawn(async move {
            for i in 0..PER_LEDGER {
                for l in &mine {
                    let body = format!(r#"{{"payload":{{"i":{i},"pad":"{pad}"}}}}"#);
                    let r = http.post(format!("{base}/v1/ledgers/{l}/entries")).body(body).send().await;
                    assert_eq!(r.expect("append").status(), 201);
                }
            }
        }));
    }
    for h in handles {
        h.await.expect("append task");
    }
    let mut slow = Box::pin(slow_resp.bytes_stream().eventsource());
    let (mut delivered, mut lagged) = (Vec::new(), None);
    while let Some(e) = tokio::time::timeout(Duration::from_secs(30), slow.next()).await.expect("slow stream stalled") {
        let e = e.expect("event");
        match e.event.as_str() {
            "entry" => delivered.push((e.id, serde_json::from_str(&e.data).unwrap())),
            "lagged" => lagged = Some(e),
            other => panic!("unexpected event {other}"),
        }
    }
    let lagged = lagged.expect("the slow consumer got `event: lagged` and the stream closed");
    assert!(lagged.id.len() <= 512, "the lagged token is {} bytes", lagged.id.len());
    let data: serde_json::Value = serde_json::from_str(&lagged.data).unwrap();
    assert_eq!(data["token"], lagged.id.as_str(), "the data names the same token");
    let total = LEDGERS * PER_LEDGER;
    assert!(delivered.len() < total, "it was cut off before the end");
    let mut resumed = watch(&server, "prefix=slow-", Some(&lagged.id)).await;
    delivered.extend(take_entries(&mut resumed, total - delivered.len()).await);
    let by = ids_by_ledger(&delivered);
    assert_eq!(by.len(), LEDGERS);
    assert!(by.values().all(|ids| *ids == [1, 2, 3, 4]), "no gap, no duplicate");
    assert!(tokio::time::timeout(Duration::from_millis(300), resumed.next()).await.is_err(), "no extra event");
    server.stop();
}

/// A token minted after its session's last flush is lost by `kill -9` (the
/// fail point stops the periodic flushes, so every token here is): the
/// server says so with 410 `token_expired` and names, in `resume_from`, the
/// newest position it kept, from which a client that drops what it already
/// has goes on with no gap.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_lost_in_a_crash_is_410_token_expired_naming_where_to_resume() {
    let env = Env::new();
    let server = Server::start_env(&env.data_dir(), None, &[("FAILPOINTS", "watch::flush=return")]).await;
    let mut w = watch(&server, "prefix=l.", None).await;
    append_many(&server, &["l.a"], 10, 1).await;
    let seen = take_entries(&mut w, 10).await;
    drop(w);
    tokio::time::sleep(Duration::from_millis(1_500)).await; // a flush would have run by now
    server.kill();
    let server = env.serve().await;
    append_many(&server, &["l.a", "l.b"], 5, 1).await;
    let r = watch_refused(&server, "prefix=l.", &seen.last().unwrap().0).await;
    r.assert_error(410, "token_expired");
    let from = r.json()["error"]["resume_from"].as_str().expect("410 names resume_from").to_owned();
    assert!(from.len() <= 512);
    let mut w = watch(&server, "prefix=l.", Some(&from)).await;
    let again = take_entries(&mut w, 20).await;
    let by = ids_by_ledger(&again);
    assert_eq!(by["l.a"], (1..=15).collect::<Vec<_>>(), "everything after the kept position, in order");
    assert_eq!(by["l.b"], (1..=5).collect::<Vec<_>>());
    assert!(tokio::time::timeout(Duration::from_millis(300), w.next()).await.is_err(), "no extra event");
    server.stop();
}

/// Lines of `ferry tail`'s output once there are `n` (or after 30 s).
async fn tail_lines(path: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `ferry tail` whose last token the crash lost resumes from the position
/// the server kept and prints nothing twice.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ferry_tail_has_no_gap_and_no_duplicate_when_a_crash_lost_its_position() {
    let env = Env::new();
    let server = Server::start_env(&env.data_dir(), None, &[("FAILPOINTS", "watch::flush=return")]).await;
    let port = server.addr.port();
    let out_path = env.dir.path().join("tail.out");
    let mut tail = std::process::Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["tail", "t.", "--server", &server.base])
        .stdout(std::fs::File::create(&out_path).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn ferry tail");
    tokio::time::sleep(Duration::from_millis(500)).await;
    append_many(&server, &["t.a"], 30, 2).await;
    assert_eq!(tail_lines(&out_path, 30).await.len(), 30);
    server.kill();
    let server = Server::start_on(&env.data_dir(), None, port).await;
    append_many(&server, &["t.a", "t.b"], 10, 2).await;
    tail_lines(&out_path, 50).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // anything printed twice would show by now
    let lines = tail_lines(&out_path, 0).await;
    let _ = tail.kill();
    let _ = tail.wait();
    let events: Vec<(String, serde_json::Value)> = lines.into_iter().map(|v| (String::new(), v)).collect();
    let by = ids_by_ledger(&events);
    assert_eq!(by["t.a"], (1..=40).collect::<Vec<_>>(), "no gap, no duplicate across the crash");
    assert_eq!(by["t.b"], (1..=10).collect::<Vec<_>>());
    server.stop();
}
