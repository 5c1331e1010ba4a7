//! SPEC §2.4, §2.5 and §5 for the `http` sink, against a receiver that runs
//! inside the test (axum on a loopback port) and a real `ferry serve`: every
//! entry arrives, signed and named by its idempotency key, exactly once in
//! effect through 500s, 429s and timeouts; a failing ledger never blocks the
//! others and is never skipped; permanent failures stop a ledger, or move
//! its batch to the dead-letter ledger when one is configured.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::Value;

use crate::support::{Env, Server, assert_exit, ferry, now_ms, run_to_exit};

/// The secret every exporter here signs with.
const SECRET: &str = "test-secret-\u{e9}t\u{e9}";
/// The sink's request timeout, and how long a stalled answer takes.
const SINK_TIMEOUT: &str = "300ms";
const STALL: Duration = Duration::from_millis(600);
/// How long a held answer takes (within the timeout of exporters that
/// hold requests).
const HOLD: Duration = Duration::from_secs(3);
/// What a 429 asks for (`Retry-After: 1`).
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Bound on waits that are not exporter status polls.
const WAIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Ndjson,
}

impl Format {
    fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Ndjson => "ndjson",
        }
    }

    fn content_type(self) -> &'static str {
        match self {
            Format::Json => "application/json",
            Format::Ndjson => "application/x-ndjson",
        }
    }
}

/// What the receiver answers one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// 200; the batch is stored.
    Ok,
    /// 500; with `partial`, the first half of the batch is stored first (it
    /// "arrived", the answer did not say so).
    ServerError { partial: bool },
    /// The whole batch is stored (applied and its key recorded), then the
    /// answer is a 500: a receiver that fails after its commit.
    StoredButFailed,
    /// 429 with `Retry-After: 1`; nothing stored, and the next request for
    /// the ledger must wait that long.
    TooMany,
    /// The batch is stored, and the 200 comes only after the sink gave up.
    Stall,
    /// The batch is stored, and the 200 comes after `HOLD`.
    Hold,
    /// 400; nothing stored.
    BadRequest,
}

impl Reply {
    fn kind(self) -> &'static str {
        match self {
            Reply::Ok => "ok",
            Reply::ServerError { .. } | Reply::StoredButFailed => "500",
            Reply::TooMany => "429",
            Reply::Stall => "stall",
            Reply::Hold => "hold",
            Reply::BadRequest => "400",
        }
    }
}

/// One well-formed request, as the policy sees it.
struct Call<'a> {
    ledger: &'a str,
    /// The batch's first id.
    first: u64,
    /// 1 for the first request the receiver got, from any exporter.
    n: u64,
}

type Policy = Box<dyn Fn(&Call<'_>) -> Reply + Send + Sync>;

/// An HTTP endpoint per exporter (`/in/{exporter}`) that checks every
/// request against SPEC §5 and keeps, per (exporter, ledger), each entry by
/// id as first received: the receiver's half of "exactly once in effect".
struct Receiver {
    formats: BTreeMap<String, Format>,
    policy: Policy,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    requests: u64,
    /// Requests per (exporter, ledger).
    calls: BTreeMap<Key, u64>,
    /// Replies per (exporter, kind).
    replies: BTreeMap<(String, &'static str), u64>,
    /// Per (exporter, ledger, incarnation), each entry's JSON by id, as
    /// first received.
    entries: BTreeMap<Stream, BTreeMap<u64, String>>,
    /// Per (exporter, ledger, incarnation), the highest id answered 200: a
    /// batch never starts past it + 1 (no gap), unless a dead-letter ledger
    /// took the batch in between (the dead-letter test appends nothing
    /// after that).
    acked: BTreeMap<Stream, u64>,
    /// Entries received again (and identical).
    repeats: u64,
    /// Per (exporter, ledger), no request before this (a 429's Retry-After).
    not_before: BTreeMap<Key, Instant>,
    /// Per (exporter, ledger), every well-formed request in arrival order.
    sent: BTreeMap<Key, Vec<Sent>>,
    /// Contract violations; any one fails the test.
    problems: Vec<String>,
}

type Key = (String, String);

/// (exporter, ledger, incarnation): what one cursor exports.
type Stream = (String, String, u64);

/// One request as sent: its `Idempotency-Key`, the ledger's incarnation and
/// the id range the key names, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Sent {
    key: String,
    incarnation: u64,
    first: u64,
    last: u64,
    body: Vec<u8>,
}

fn key(exporter: &str, ledger: &str) -> Key {
    (exporter.to_owned(), ledger.to_owned())
}

fn stream(exporter: &str, ledger: &str, incarnation: u64) -> Stream {
    (exporter.to_owned(), ledger.to_owned(), incarnation)
}

/// A request that passed `Receiver::check`.
struct Checked {
    ledger: String,
    incarnation: u64,
    /// (id, JSON text as received)
    entries: Vec<(u64, String)>,
}

impl Receiver {
    /// Serves on a free loopback port for the rest of the test.
    async fn start(formats: &[(&str, Format)], policy: Policy) -> (Arc<Receiver>, SocketAddr) {
        let receiver = Arc::new(Receiver {
            formats: formats.iter().map(|(n, f)| ((*n).to_owned(), *f)).collect(),
            policy,
            seen: Mutex::new(Seen::default()),
        });
        let app = Router::new().route("/in/{exporter}", post(ingest)).with_state(receiver.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("the receiver stopped") });
        (receiver, addr)
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("receiver lock")
    }

    /// Panics with every violation the receiver recorded so far.
    #[track_caller]
    fn assert_no_problems(&self) {
        let seen = self.seen();
        assert!(seen.problems.is_empty(), "the receiver saw contract violations:\n{}", seen.problems.join("\n"));
    }

    fn calls(&self, exporter: &str, ledger: &str) -> u64 {
        self.seen().calls.get(&key(exporter, ledger)).copied().unwrap_or(0)
    }

    fn replies(&self, exporter: &str, kind: &str) -> u64 {
        self.seen().replies.iter().filter(|((e, k), _)| e == exporter && *k == kind).map(|(_, n)| n).sum()
    }

    /// Non-2xx answers (and stalls) this exporter got.
    fn failures(&self, exporter: &str) -> u64 {
        ["500", "429", "stall", "400"].iter().map(|k| self.replies(exporter, k)).sum()
    }

    /// The entries received of the latest incarnation of the ledger.
    fn entries(&self, exporter: &str, ledger: &str) -> BTreeMap<u64, String> {
        let seen = self.seen();
        let mut streams = seen.entries.iter().filter(|((e, l, _), _)| e == exporter && l == ledger);
        streams.next_back().map(|(_, entries)| entries.clone()).unwrap_or_default()
    }

    /// The incarnations the keys of (exporter, ledger) named.
    fn incarnations(&self, exporter: &str, ledger: &str) -> BTreeSet<u64> {
        self.sent(exporter, ledger).iter().map(|s| s.incarnation).collect()
    }

    /// Every well-formed request of (exporter, ledger) so far.
    fn sent(&self, exporter: &str, ledger: &str) -> Vec<Sent> {
        self.seen().sent.get(&key(exporter, ledger)).cloned().unwrap_or_default()
    }

    /// Logs a request and checks it against the earlier ones of its ledger:
    /// a key names one body, and two batches of one incarnation are the
    /// same batch or share no id. Otherwise a receiver that deduplicates by
    /// `Idempotency-Key` (as the header invites) applies the shared ids
    /// twice.
    fn log_request(seen: &mut Seen, exporter: &str, ledger: &str, sent: Sent) {
        let earlier = seen.sent.entry(key(exporter, ledger)).or_default();
        let mut problems = Vec::new();
        for e in earlier.iter() {
            if e.key == sent.key && e.body != sent.body {
                problems.push(format!("{exporter}/{ledger}: key {} came with two different bodies", sent.key));
            }
            let overlap = e.incarnation == sent.incarnation && e.first <= sent.last && sent.first <= e.last;
            if e.key != sent.key && overlap {
                problems.push(format!(
                    "{exporter}/{ledger}: batches {} and {} overlap under different keys",
                    e.key, sent.key
                ));
            }
        }
        earlier.push(sent);
        seen.problems.extend(problems);
    }

    /// Checks one request: content type, `Ferry-Signature`, and an
    /// `Idempotency-Key` (`{exporter}/{ledger}/{incarnation}/{first}-{last}`)
    /// that names this exporter, the ledger of every entry, an incarnation,
    /// and the batch's first and last ids, which are consecutive.
    fn check(&self, exporter: &str, headers: &HeaderMap, body: &[u8]) -> Result<Checked, String> {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let format = *self.formats.get(exporter).ok_or_else(|| format!("a request for unknown exporter {exporter}"))?;
        let content_type = get(header::CONTENT_TYPE.as_str());
        if content_type != format.content_type() {
            return Err(format!("{exporter}: content-type {content_type:?}, expected {}", format.content_type()));
        }
        verify_signature(&get("ferry-signature"), body).map_err(|e| format!("{exporter}: {e}"))?;

        let idempotency_key = get("idempotency-key");
        let parts: Vec<&str> = idempotency_key.split('/').collect();
        let (incarnation, first, last) = match parts.as_slice() {
            [e, _, incarnation, range] if *e == exporter => {
                let incarnation = incarnation
                    .parse::<u64>()
                    .map_err(|_| format!("{exporter}: Idempotency-Key {idempotency_key:?} has no incarnation"))?;
                let (first, last) = range
                    .split_once('-')
                    .and_then(|(a, b)| Some((a.parse::<u64>().ok()?, b.parse::<u64>().ok()?)))
                    .ok_or_else(|| format!("{exporter}: Idempotency-Key {idempotency_key:?} has no id range"))?;
                (incarnation, first, last)
            }
            _ => {
                return Err(format!(
                    "{exporter}: Idempotency-Key {idempotency_key:?} is not {exporter}/LEDGER/INCARNATION/A-B"
                ));
            }
        };
        let ledger = parts[1].to_owned();

        let text = std::str::from_utf8(body).map_err(|e| format!("{exporter}: body is not UTF-8: {e}"))?;
        let raw: Vec<String> = match format {
            Format::Json => serde_json::from_str::<Vec<&serde_json::value::RawValue>>(text)
                .map_err(|e| format!("{exporter}: body is not a JSON array: {e}"))?
                .into_iter()
                .map(|r| r.get().to_owned())
                .collect(),
            Format::Ndjson => {
                let lines = text
                    .strip_suffix('\n')
                    .ok_or_else(|| format!("{exporter}: NDJSON body does not end with a newline"))?;
                lines.split('\n').map(str::to_owned).collect()
            }
        };
        let mut out = Vec::with_capacity(raw.len());
        for (i, line) in raw.into_iter().enumerate() {
            let v: Value = serde_json::from_str(&line).map_err(|e| format!("{exporter}: entry {line:?}: {e}"))?;
            let id = v["id"].as_u64().ok_or_else(|| format!("{exporter}: entry without an id: {line}"))?;
            if v["ledger"] != ledger.as_str() {
                return Err(format!("{exporter}: entry of another ledger under key {idempotency_key}: {line}"));
            }
            if id != first + i as u64 {
                return Err(format!("{exporter}: id {id} at position {i} under key {idempotency_key}"));
            }
            out.push((id, line));
        }
        match out.last() {
            Some((id, _)) if *id == last => Ok(Checked { ledger, incarnation, entries: out }),
            _ => Err(format!(
                "{exporter}: key {idempotency_key} but the body holds ids {first}..{}",
                first + out.len() as u64
            )),
        }
    }

    /// Keeps each entry once; a repeat must be byte for byte what came first.
    fn store(&self, seen: &mut Seen, exporter: &str, batch: &Checked, entries: &[(u64, String)]) {
        let ledger = &batch.ledger;
        let kept = seen.entries.entry(stream(exporter, ledger, batch.incarnation)).or_default();
        let (mut problems, mut repeats) = (Vec::new(), 0);
        for (id, line) in entries {
            match kept.get(id) {
                None => {
                    kept.insert(*id, line.clone());
                }
                Some(before) if before == line => repeats += 1,
                Some(before) => problems.push(format!("{exporter}/{ledger} id {id} changed: {before} then {line}")),
            }
        }
        seen.repeats += repeats;
        seen.problems.extend(problems);
    }
}

/// `t=…,v1=hex(HMAC-SHA256(secret, "{t}." + body))`, computed here, with a
/// `t` close to now.
fn verify_signature(header: &str, body: &[u8]) -> Result<(), String> {
    let mut t = None;
    let mut v1 = None;
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", value)) => t = value.parse::<u64>().ok(),
            Some(("v1", value)) => v1 = Some(value),
            _ => return Err(format!("Ferry-Signature {header:?}: unexpected part {part:?}")),
        }
    }
    let (Some(t), Some(v1)) = (t, v1) else { return Err(format!("Ferry-Signature {header:?}: needs t and v1")) };
    let now = now_ms() / 1000;
    if t.abs_diff(now) > 300 {
        return Err(format!("Ferry-Signature t={t} is far from now ({now})"));
    }
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let expected = hex::encode(mac.finalize().into_bytes());
    if v1 != expected {
        return Err(format!("Ferry-Signature v1={v1} but HMAC-SHA256 of the body is {expected}"));
    }
    Ok(())
}

async fn ingest(
    State(rx): State<Arc<Receiver>>,
    Path(exporter): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let batch = match rx.check(&exporter, &headers, &body) {
        Ok(checked) => checked,
        Err(problem) => {
            rx.seen().problems.push(problem.clone());
            return (StatusCode::UNPROCESSABLE_ENTITY, problem).into_response();
        }
    };
    let reply = {
        let mut seen = rx.seen();
        let (ledger, entries) = (&batch.ledger, &batch.entries);
        let (first, last) = (entries[0].0, entries[entries.len() - 1].0);
        let acked = seen.acked.get(&stream(&exporter, ledger, batch.incarnation)).copied().unwrap_or(0);
        if first > acked + 1 {
            seen.problems
                .push(format!("{exporter}/{ledger}: a batch from {first} but only ..={acked} was acknowledged"));
        }
        if let Some(early) =
            seen.not_before.remove(&key(&exporter, ledger)).and_then(|t| t.checked_duration_since(Instant::now()))
        {
            seen.problems.push(format!("{exporter}/{ledger}: a retry {early:?} before Retry-After allowed it"));
        }
        let idempotency_key = headers.get("idempotency-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let sent =
            Sent { key: idempotency_key.to_owned(), incarnation: batch.incarnation, first, last, body: body.to_vec() };
        Receiver::log_request(&mut seen, &exporter, ledger, sent);
        seen.requests += 1;
        *seen.calls.entry(key(&exporter, ledger)).or_default() += 1;
        let reply = (rx.policy)(&Call { ledger, first, n: seen.requests });
        *seen.replies.entry((exporter.clone(), reply.kind())).or_default() += 1;
        match reply {
            Reply::Ok => {
                rx.store(&mut seen, &exporter, &batch, entries);
                let acked = seen.acked.entry(stream(&exporter, ledger, batch.incarnation)).or_default();
                *acked = (*acked).max(last);
            }
            Reply::Stall | Reply::Hold | Reply::StoredButFailed => rx.store(&mut seen, &exporter, &batch, entries),
            Reply::TooMany => {
                // Minus a little for timer granularity on either side.
                let until = Instant::now() + RETRY_AFTER - Duration::from_millis(10);
                seen.not_before.insert(key(&exporter, ledger), until);
            }
            Reply::ServerError { partial: true } => {
                rx.store(&mut seen, &exporter, &batch, &entries[..entries.len() / 2]);
            }
            Reply::ServerError { partial: false } | Reply::BadRequest => {}
        }
        reply
    };
    match reply {
        Reply::Ok => StatusCode::OK.into_response(),
        Reply::ServerError { .. } | Reply::StoredButFailed => {
            (StatusCode::INTERNAL_SERVER_ERROR, "injected failure").into_response()
        }
        Reply::TooMany => {
            let secs = RETRY_AFTER.as_secs().to_string();
            (StatusCode::TOO_MANY_REQUESTS, [(header::RETRY_AFTER, secs)], "slow down").into_response()
        }
        Reply::Stall => {
            tokio::time::sleep(STALL).await;
            StatusCode::OK.into_response()
        }
        Reply::Hold => {
            tokio::time::sleep(HOLD).await;
            StatusCode::OK.into_response()
        }
        Reply::BadRequest => (StatusCode::BAD_REQUEST, "this receiver rejects the batch").into_response(),
    }
}

/// One `[[exporters]]` table of `sink = "http"` pointing at the receiver;
/// `settings` are extra exporter-level lines (retry, ledgers, …).
fn http_exporter(name: &str, receiver: SocketAddr, format: Format, settings: &str) -> String {
    http_exporter_batched(name, receiver, format, r#"{ max_entries = 50, linger = "5ms" }"#, settings, SINK_TIMEOUT)
}

/// `http_exporter` with its own `batch` table and sink timeout.
fn http_exporter_batched(
    name: &str,
    receiver: SocketAddr,
    format: Format,
    batch: &str,
    settings: &str,
    timeout: &str,
) -> String {
    format!(
        r#"
[[exporters]]
name = "{name}"
sink = "http"
batch = {batch}
{settings}
[exporters.config]
url = "http://{receiver}/in/{name}"
secret = "{SECRET}"
timeout = "{timeout}"
format = "{format}"
"#,
        format = format.name()
    )
}

/// `Server::wait_exporter`, failing at once when the receiver saw a
/// contract violation.
async fn wait_for(server: &Server, rx: &Receiver, exporter: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    server
        .wait_exporter(exporter, what, |s| {
            rx.assert_no_problems();
            done(s)
        })
        .await
}

/// A ledger's line in an exporter's status.
fn ledger_status<'a>(status: &'a Value, ledger: &str) -> Option<&'a Value> {
    status["ledgers"].as_array()?.iter().find(|l| l["ledger"] == ledger)
}

fn ledger_names(status: &Value) -> Vec<String> {
    status["ledgers"].as_array().expect("ledgers").iter().map(|l| l["ledger"].as_str().unwrap().to_owned()).collect()
}

/// The ledger's cursor is `head` (and its head is too).
fn caught_up(status: &Value, ledger: &str, head: u64) -> bool {
    ledger_status(status, ledger).is_some_and(|l| l["cursor"] == head && l["head"] == head)
}

/// Every entry of a ledger as `GET /v1/ledgers/{l}/entries` returns it.
async fn api_entries(server: &Server, ledger: &str) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    loop {
        let from = out.len() + 1;
        let r = server.get(&format!("/v1/ledgers/{ledger}/entries?from={from}&limit=10000")).await;
        assert_eq!(r.status, 200, "read {ledger} from {from}: {}", r.text);
        let page = r.json()["entries"].as_array().expect("entries").clone();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

/// The ledger's incarnation, from `GET /v1/ledgers/{ledger}`.
async fn incarnation(server: &Server, ledger: &str) -> u64 {
    let r = server.get(&format!("/v1/ledgers/{ledger}")).await;
    assert_eq!(r.status, 200, "GET /v1/ledgers/{ledger}: {}", r.text);
    r.json()["incarnation"].as_u64().expect("incarnation is a number")
}

/// The receiver holds ids 1..=head of the ledger for the exporter, each
/// exactly as ferry serves it (same JSON; same bytes as the NDJSON read),
/// under keys that name the ledger's incarnation.
async fn assert_received_exactly(server: &Server, rx: &Receiver, exporter: &str, ledger: &str) {
    let stored = api_entries(server, ledger).await;
    let lines = server.read_all(ledger).await;
    let current = incarnation(server, ledger).await;
    assert_eq!(rx.incarnations(exporter, ledger).last(), Some(&current), "{exporter}: the keys of {ledger}");
    let got = rx.entries(exporter, ledger);
    let head = stored.len() as u64;
    assert!(head > 0, "{ledger} is empty");
    assert_eq!(
        got.keys().copied().collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>(),
        "{exporter}: the receiver's ids of {ledger}"
    );
    for ((id, text), (want, line)) in got.iter().zip(stored.iter().zip(&lines)) {
        let v: Value = serde_json::from_str(text).expect("received entry JSON");
        assert_eq!(&v, want, "{exporter}: {ledger} id {id} differs from what the API returns");
        assert_eq!(text, line, "{exporter}: {ledger} id {id} is not the entry's JSON form byte for byte");
    }
}

/// Appends `batches` requests of `per_batch` entries and `singles` single
/// entries to each ledger, all at once.
async fn append_concurrently(server: &Server, ledgers: &[&str], batches: usize, per_batch: usize, singles: usize) {
    let mut tasks = Vec::new();
    for ledger in ledgers {
        for worker in 0..2 {
            let (http, url) = (server.http.clone(), server.url(&format!("/v1/ledgers/{ledger}/entries")));
            let ledger = ledger.to_string();
            tasks.push(tokio::spawn(async move {
                for b in (worker..batches).step_by(2) {
                    let entries: Vec<String> = (0..per_batch)
                        .map(|i| {
                            let key = if i % 3 == 0 { format!(r#""key":"user-{}","#, (b + i) % 7) } else { String::new() };
                            format!(
                                r#"{{{key}"payload":{{"ledger":"{ledger}","batch":{b},"i":{i},"text":"h\u00e9llo \"q\" \ud83d\ude00","n":[1,2.5,null,true]}}}}"#
                            )
                        })
                        .collect();
                    let body = format!(r#"{{"entries":[{}]}}"#, entries.join(","));
                    let r = http.post(&url).header("content-type", "application/json").body(body).send().await;
                    let r = r.expect("append a batch");
                    assert_eq!(r.status(), 201, "append a batch to {ledger}");
                }
            }));
        }
        let (http, url) = (server.http.clone(), server.url(&format!("/v1/ledgers/{ledger}/entries")));
        tasks.push(tokio::spawn(async move {
            for i in 0..singles {
                let body = if i % 2 == 0 {
                    format!(r#"{{"payload":{{"single":{i}}},"key":"k{i}"}}"#)
                } else {
                    format!(r#"{{"payload":[{i},"x",{{"deep":{{"er":null}}}}]}}"#)
                };
                let r = http.post(&url).header("content-type", "application/json").body(body).send().await;
                assert_eq!(r.expect("append one entry").status(), 201);
            }
        }));
    }
    for t in tasks {
        t.await.expect("append task");
    }
}

/// Collects the system events under `prefix` from now on.
async fn events(server: &Server, prefix: &str) -> Arc<Mutex<Vec<Value>>> {
    let resp = server.http.get(server.url(&format!("/v1/events?prefix={prefix}"))).send().await.expect("events");
    assert_eq!(resp.status(), 200, "GET /v1/events");
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    tokio::spawn(async move {
        let mut stream = resp.bytes_stream().eventsource();
        while let Some(Ok(e)) = stream.next().await {
            let mut v: Value = serde_json::from_str(&e.data).expect("event JSON");
            v["event"] = e.event.into();
            sink.lock().expect("events lock").push(v);
        }
    });
    out
}

/// The events of one (exporter, ledger), in order.
fn events_of(events: &Mutex<Vec<Value>>, exporter: &str, ledger: &str) -> Vec<Value> {
    let events = events.lock().expect("events lock");
    events.iter().filter(|e| e["data"]["exporter"] == exporter && e["data"]["ledger"] == ledger).cloned().collect()
}

/// Polls `done` until it holds, panicking with `what` after `WAIT`.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what} did not happen within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A counter's value for one exporter in the Prometheus text.
fn metric(metrics: &str, name: &str, exporter: &str) -> Option<f64> {
    let label = format!("exporter=\"{exporter}\"");
    metrics
        .lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_exporter_delivers_every_entry_through_random_failures_with_valid_signatures() {
    let seed: u64 = std::env::var("FERRY_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_f00d);
    eprintln!("receiver seed {seed} (FERRY_TEST_SEED)");
    let rng = Mutex::new(StdRng::seed_from_u64(seed));
    // The first three requests fail each way for sure; then ~30% fail.
    let policy: Policy = Box::new(move |call| match call.n {
        1 => Reply::ServerError { partial: true },
        2 => Reply::TooMany,
        3 => Reply::Stall,
        _ => match rng.lock().expect("rng").random_range(0..100) {
            r @ 0..15 => Reply::ServerError { partial: r % 2 == 0 },
            15..23 => Reply::Stall,
            23..30 => Reply::TooMany,
            _ => Reply::Ok,
        },
    });
    let (rx, addr) = Receiver::start(&[("hooks", Format::Json), ("hooks-nd", Format::Ndjson)], policy).await;
    let retry = r#"retry = { initial = "20ms", max = "200ms" }"#;
    let config =
        http_exporter("hooks", addr, Format::Json, retry) + &http_exporter("hooks-nd", addr, Format::Ndjson, retry);
    let env = Env::new();
    let server = env.serve_with(&config).await;
    let started_ms = now_ms();

    let ledgers = ["orders", "users", "audit.eu"];
    // Per ledger: 30 batches of 20 and 60 single appends, all at once.
    append_concurrently(&server, &ledgers, 30, 20, 60).await;
    let head = 30 * 20 + 60;
    for l in ledgers {
        assert_eq!(server.head(l).await, Some(head), "{l}");
    }

    for exporter in ["hooks", "hooks-nd"] {
        let status = wait_for(&server, &rx, exporter, "every ledger exported", |s| {
            ledgers.iter().all(|l| caught_up(s, l, head))
        })
        .await;
        assert_eq!(status["sink"], "http");
        assert_eq!(status["state"], "running");
        let mut names = ledger_names(&status);
        names.sort();
        assert_eq!(names, ["audit.eu", "orders", "users"]);
        for l in ledgers {
            let s = ledger_status(&status, l).unwrap();
            assert_eq!(s["lag"], 0, "{exporter}/{l}: {s}");
            assert_eq!(s["state"], "running", "{exporter}/{l}: {s}");
            assert_eq!(s["attempts"], 0, "{exporter}/{l}: a success resets attempts: {s}");
            assert!(s["last_error"].is_null(), "{exporter}/{l}: {s}");
            let at = s["last_success_at"].as_u64().unwrap_or_else(|| panic!("{exporter}/{l}: no last_success_at: {s}"));
            assert!((started_ms..=now_ms()).contains(&at), "{exporter}/{l}: last_success_at {at}: {s}");
        }
    }
    rx.assert_no_problems();
    for exporter in ["hooks", "hooks-nd"] {
        for l in ledgers {
            assert_received_exactly(&server, &rx, exporter, l).await;
        }
    }

    // Failures happened, were retried (so entries arrived more than once),
    // and show in the metrics.
    let repeats = rx.seen().repeats;
    assert!(repeats > 0, "no entry arrived twice");
    eprintln!("{repeats} entries arrived again, identical");
    for kind in ["500", "429", "stall", "ok"] {
        let n = rx.replies("hooks", kind) + rx.replies("hooks-nd", kind);
        assert!(n > 0, "no {kind} answer was given");
    }
    let metrics = server.get("/metrics").await.text;
    for exporter in ["hooks", "hooks-nd"] {
        let failures = rx.failures(exporter) as f64;
        eprintln!("{exporter}: {failures} failed requests of {}", failures + rx.replies(exporter, "ok") as f64);
        let errors = metric(&metrics, "ferry_exporter_errors_total", exporter);
        let retries = metric(&metrics, "ferry_exporter_retries_total", exporter);
        if failures > 0.0 {
            assert!(errors.is_some_and(|n| n >= failures), "{exporter}: errors {errors:?} < {failures}:\n{metrics}");
            assert!(retries.is_some_and(|n| n >= failures), "{exporter}: retries {retries:?} < {failures}:\n{metrics}");
        }
    }
    assert!(metrics.contains("ferry_exporter_errors_total{"), "{metrics}");
    assert!(metrics.contains("ferry_exporter_retries_total{"), "{metrics}");
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ledger_that_always_fails_never_blocks_the_others_and_is_not_skipped() {
    let accept_bad = Arc::new(AtomicBool::new(false));
    let accept = accept_bad.clone();
    let policy: Policy = Box::new(move |call| {
        if call.ledger == "bad" && !accept.load(Ordering::SeqCst) {
            Reply::ServerError { partial: false }
        } else {
            Reply::Ok
        }
    });
    let (rx, addr) = Receiver::start(&[("hooks", Format::Json)], policy).await;
    // One slot: the failing ledger's retries share it with the others.
    let settings = "retry = { initial = \"20ms\", max = \"200ms\" }\nmax_parallel_ledgers = 1";
    let env = Env::new();
    let server = env.serve_with(&http_exporter("hooks", addr, Format::Json, settings)).await;
    let events = events(&server, "exporter.").await;

    append_concurrently(&server, &["bad", "good1", "good2"], 4, 10, 10).await;
    let failing = |s: &Value| {
        ledger_status(s, "bad").is_some_and(|b| {
            b["cursor"] == 0
                && b["state"] == "backing_off"
                && b["last_error"].as_str().is_some_and(|e| e.contains("500"))
                && b["attempts"].as_u64().is_some_and(|a| a >= 2)
        })
    };
    let status = wait_for(&server, &rx, "hooks", "good ledgers exported while bad fails", |s| {
        caught_up(s, "good1", 50) && caught_up(s, "good2", 50) && failing(s)
    })
    .await;
    assert_eq!(ledger_status(&status, "bad").unwrap()["head"], 50);

    // More for the good ledgers while bad keeps failing: they go on.
    let calls = rx.calls("hooks", "bad");
    append_concurrently(&server, &["good1", "good2"], 2, 15, 5).await;
    wait_for(&server, &rx, "hooks", "more good entries exported while bad fails", |s| {
        caught_up(s, "good1", 85) && caught_up(s, "good2", 85) && failing(s)
    })
    .await;
    eventually("bad is retried again", || rx.calls("hooks", "bad") > calls + 1).await;
    assert!(rx.entries("hooks", "bad").is_empty(), "nothing of bad was accepted");

    accept_bad.store(true, Ordering::SeqCst);
    let status = wait_for(&server, &rx, "hooks", "bad catches up", |s| caught_up(s, "bad", 50)).await;
    let bad = ledger_status(&status, "bad").unwrap();
    assert_eq!(bad["state"], "running", "{bad}");
    assert_eq!(bad["attempts"], 0, "{bad}");
    assert!(bad["last_error"].is_null(), "{bad}");
    assert!(bad["last_success_at"].is_u64(), "{bad}");
    rx.assert_no_problems();
    for l in ["bad", "good1", "good2"] {
        assert_received_exactly(&server, &rx, "hooks", l).await;
    }

    eventually("exporter.recovered for bad", || {
        events_of(&events, "hooks", "bad").iter().any(|e| e["event"] == "exporter.recovered")
    })
    .await;
    let bad_events = events_of(&events, "hooks", "bad");
    let kinds: Vec<&str> = bad_events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["exporter.failed", "exporter.recovered"], "{bad_events:#?}");
    assert_eq!(bad_events[0]["key"], "exporter.failed/hooks/bad");
    assert!(bad_events[0]["data"]["error"].as_str().is_some_and(|e| e.contains("500")), "{bad_events:#?}");
    for l in ["good1", "good2"] {
        assert_eq!(events_of(&events, "hooks", l), Vec::<Value>::new(), "{l} never failed");
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn permanent_failures_fail_the_ledger_and_with_dead_letter_move_the_batch() {
    let policy: Policy = Box::new(|call| match call.ledger {
        "bad" => Reply::BadRequest,
        "flaky" => Reply::ServerError { partial: false },
        _ => Reply::Ok,
    });
    let (rx, addr) = Receiver::start(&[("strict", Format::Json), ("dlx", Format::Ndjson)], policy).await;
    // `strict` has no dead-letter ledger; `dlx` exports every ledger ("*"),
    // gives up after two attempts, and dead-letters into `dlq`.
    let strict = "ledgers = [\"bad\", \"good\"]\nretry = { initial = \"20ms\", max = \"200ms\" }";
    let dlx = "dead_letter = \"dlq\"\nretry = { initial = \"20ms\", max = \"200ms\", max_attempts = 2 }";
    let config = http_exporter("strict", addr, Format::Json, strict) + &http_exporter("dlx", addr, Format::Ndjson, dlx);
    let env = Env::new();
    let server = env.serve_with(&config).await;
    let events = events(&server, "exporter.").await;

    let batch = |n: usize, tag: &str| {
        let entries: Vec<String> = (1..=n)
            .map(|i| {
                let key = if i % 2 == 0 { format!(r#""key":"{tag}-{i}","#) } else { String::new() };
                format!(r#"{{{key}"payload":{{"{tag}":{i},"nested":[{{"a":"\u00fc"}}]}}}}"#)
            })
            .collect();
        format!(r#"{{"entries":[{}]}}"#, entries.join(","))
    };
    assert_eq!(server.append("good", batch(20, "good")).await.status, 201);
    assert_eq!(server.append("bad", batch(7, "bad")).await.status, 201);
    assert_eq!(server.append("flaky", batch(5, "flaky")).await.status, 201);

    // (a) Without a dead-letter ledger: a 400 fails the ledger at once.
    let status = wait_for(&server, &rx, "strict", "bad failed, good exported", |s| {
        caught_up(s, "good", 20) && ledger_status(s, "bad").is_some_and(|b| b["state"] == "failed")
    })
    .await;
    let bad = ledger_status(&status, "bad").unwrap();
    assert_eq!((bad["cursor"].as_u64(), bad["head"].as_u64()), (Some(0), Some(7)), "{bad}");
    assert!(bad["last_error"].as_str().is_some_and(|e| e.contains("400")), "{bad}");
    assert_eq!(rx.calls("strict", "bad"), 1, "a permanent failure is not retried");
    assert_eq!(ledger_names(&status), ["bad", "good"]);
    tokio::time::sleep(Duration::from_millis(400)).await; // many retry periods
    assert_eq!(rx.calls("strict", "bad"), 1, "a failed ledger stays stopped");
    let again = server.exporter("strict").await;
    assert_eq!(ledger_status(&again, "bad").unwrap()["cursor"], 0, "a failed ledger is never skipped");
    assert_eq!(ledger_status(&again, "bad").unwrap()["state"], "failed");

    // (b) With one: the failing batches move to `dlq` and the cursor on.
    let status = wait_for(&server, &rx, "dlx", "bad and flaky dead-lettered, good exported", |s| {
        caught_up(s, "good", 20) && caught_up(s, "bad", 7) && caught_up(s, "flaky", 5)
    })
    .await;
    assert_eq!(ledger_names(&status), ["bad", "flaky", "good"], "dlx never exports its dead-letter ledger");
    for (l, code) in [("bad", "400"), ("flaky", "500")] {
        let s = ledger_status(&status, l).unwrap();
        assert_eq!(s["state"], "dead_lettered", "{l}: {s}");
        assert_eq!(s["lag"], 0, "{l}: {s}");
        assert!(s["last_error"].as_str().is_some_and(|e| e.contains(code)), "{l}: {s}");
    }
    assert_eq!(ledger_status(&status, "good").unwrap()["state"], "running");
    assert_eq!(rx.calls("dlx", "bad"), 1, "a permanent failure is dead-lettered without a retry");
    assert_eq!(rx.calls("dlx", "flaky"), 2, "max_attempts = 2");
    assert!(rx.entries("dlx", "bad").is_empty() && rx.entries("dlx", "flaky").is_empty());
    assert_eq!(rx.calls("dlx", "dlq") + rx.calls("strict", "dlq"), 0, "nobody exports dlq");

    let dlq = api_entries(&server, "dlq").await;
    assert_eq!(dlq.len(), 12, "7 of bad and 5 of flaky: {dlq:#?}");
    let mut by_ledger: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for e in &dlq {
        let p = &e["payload"];
        by_ledger
            .entry(p["ledger"].as_str().expect("dead letter names its ledger").to_owned())
            .or_default()
            .push(p.clone());
    }
    for (l, code) in [("bad", "400"), ("flaky", "500")] {
        let originals = api_entries(&server, l).await;
        let records = &by_ledger[l];
        assert_eq!(records.len(), originals.len(), "{l}: {records:#?}");
        for (record, original) in records.iter().zip(&originals) {
            assert_eq!(record["exporter"], "dlx", "{record}");
            assert_eq!(record["id"], original["id"], "{l}: dead letters in id order: {record}");
            assert_eq!(record["ts"], original["ts"], "{record}");
            assert_eq!(record["payload"], original["payload"], "{record}");
            assert_eq!(record.get("key"), original.get("key"), "{record}");
            assert!(record["error"].as_str().is_some_and(|e| e.contains(code)), "{record}");
        }
    }
    assert_received_exactly(&server, &rx, "dlx", "good").await;
    assert_received_exactly(&server, &rx, "strict", "good").await;

    for (l, to) in [("bad", 7), ("flaky", 5)] {
        eventually("the dead-letter event", || {
            events_of(&events, "dlx", l)
                .iter()
                .any(|e| e["event"] == "exporter.failed" && e["data"]["dead_lettered"].is_object())
        })
        .await;
        let evs = events_of(&events, "dlx", l);
        let moved: Vec<&Value> = evs.iter().filter_map(|e| e["data"].get("dead_lettered")).collect();
        assert_eq!(moved.len(), 1, "{l}: {evs:#?}");
        assert_eq!(*moved[0], serde_json::json!({ "from": 1, "to": to, "dead_letter": "dlq" }), "{l}");
    }
    let metrics = server.get("/metrics").await.text;
    assert_eq!(metric(&metrics, "ferry_exporter_dead_lettered_total", "dlx"), Some(12.0), "{metrics}");

    // (a, continued) A resume tries the failed batch again.
    let r = server.post("/v1/exporters/strict/resume", "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    eventually("strict retries bad after resume", || rx.calls("strict", "bad") == 2).await;
    let status = wait_for(&server, &rx, "strict", "bad failed again", |s| {
        ledger_status(s, "bad").is_some_and(|b| b["state"] == "failed")
    })
    .await;
    assert_eq!(ledger_status(&status, "bad").unwrap()["cursor"], 0);
    eventually("a second exporter.failed for strict/bad", || {
        events_of(&events, "strict", "bad").iter().filter(|e| e["event"] == "exporter.failed").count() == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.calls("strict", "bad"), 2, "one attempt per resume");
    rx.assert_no_problems();
    server.stop();
}

/// An append body of `n` entries, each with a payload of `pad` bytes or a
/// little more.
fn padded_entries(n: usize, tag: &str, pad: usize) -> String {
    let entries: Vec<String> =
        (0..n).map(|i| format!(r#"{{"payload":{{"tag":"{tag}-{i}","pad":"{}"}}}}"#, "p".repeat(pad))).collect();
    format!(r#"{{"entries":[{}]}}"#, entries.join(","))
}

/// Issue #12 item 5: a retried batch is the batch that failed — the same
/// ids, `Idempotency-Key` and body — however many entries were appended
/// while it backed off. Here the receiver applied the batch and then
/// answered 500; a receiver that deduplicates by key must see that key
/// again, not a longer range that holds the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retried_batch_keeps_its_key_and_body_while_appends_continue() {
    let failed = AtomicBool::new(false);
    let policy: Policy =
        Box::new(move |_| if failed.swap(true, Ordering::SeqCst) { Reply::Ok } else { Reply::StoredButFailed });
    let (rx, addr) = Receiver::start(&[("hooks", Format::Json)], policy).await;
    // A backoff of 1 to 2 s: long enough to append during it.
    let settings = r#"retry = { initial = "2s", max = "2s" }"#;
    let env = Env::new();
    let server = env.serve_with(&http_exporter("hooks", addr, Format::Json, settings)).await;

    assert_eq!(server.append("audit", padded_entries(3, "a", 10)).await.status, 201);
    eventually("the first delivery", || rx.calls("hooks", "audit") == 1).await;
    assert_eq!(server.append("audit", padded_entries(10, "b", 10)).await.status, 201);
    assert_eq!(rx.calls("hooks", "audit"), 1, "the retry came before the second append: the test proves nothing");

    wait_for(&server, &rx, "hooks", "audit exported", |s| caught_up(s, "audit", 13)).await;
    let sent = rx.sent("hooks", "audit");
    let ranges: Vec<(u64, u64)> = sent.iter().map(|s| (s.first, s.last)).collect();
    assert_eq!(ranges[..2], [(1, 3), (1, 3)], "the retry is the batch that failed: {sent:#?}");
    assert_eq!(sent[1], sent[0], "same Idempotency-Key and body on the retry");
    rx.assert_no_problems();
    assert_received_exactly(&server, &rx, "hooks", "audit").await;
    server.stop();
}

/// Issue #12 item 5, across `kill -9`: a batch cut by `max_entries` or
/// `max_bytes` is a function of the durable cursor and the entries, so the
/// restarted process sends the batch that failed again with the same key
/// and body, although entries were appended during the backoff. Here the
/// batch that fails follows entries read ahead by the previous delivery
/// (the byte limit left them over), which end before the head did.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_batch_keeps_its_key_and_body_across_kill_9() {
    let failed = AtomicBool::new(false);
    // The first batch from id 5 is applied, then answered 500.
    let policy: Policy = Box::new(move |call| {
        if call.first == 5 && !failed.swap(true, Ordering::SeqCst) { Reply::StoredButFailed } else { Reply::Ok }
    });
    let (rx, addr) = Receiver::start(&[("hooks", Format::Ndjson)], policy).await;
    // Entries of ~10 kB and 25,000 bytes a batch: two entries fit, a third
    // does not. The retry waits 15 to 30 s, so it comes only after the kill.
    let batch = r#"{ max_entries = 5, max_bytes = 25000, linger = "5ms" }"#;
    let settings = r#"retry = { initial = "30s", max = "30s" }"#;
    let config = http_exporter_batched("hooks", addr, Format::Ndjson, batch, settings, SINK_TIMEOUT);
    let env = Env::new();
    let server = env.serve_with(&config).await;

    assert_eq!(server.append("audit", padded_entries(8, "a", 10_000)).await.status, 201);
    wait_for(&server, &rx, "hooks", "the batch from 5 failed", |s| {
        ledger_status(s, "audit").is_some_and(|l| l["cursor"] == 4 && l["attempts"] == 1)
    })
    .await;
    assert_eq!(server.append("audit", padded_entries(4, "b", 10_000)).await.status, 201);
    let before = rx.sent("hooks", "audit");
    assert_eq!(before.len(), 3, "two batches acknowledged, the third failed: {before:#?}");
    server.kill();

    let server = env.serve_with(&config).await;
    wait_for(&server, &rx, "hooks", "audit exported after the restart", |s| caught_up(s, "audit", 12)).await;
    let sent = rx.sent("hooks", "audit");
    let ranges: Vec<(u64, u64)> = sent.iter().map(|s| (s.first, s.last)).collect();
    assert_eq!(ranges[3], (before[2].first, before[2].last), "the restart sent another batch: {ranges:?}");
    assert_eq!(sent[3], before[2], "same Idempotency-Key and body after kill -9");
    assert_eq!(ranges[..4], [(1, 2), (3, 4), (5, 6), (5, 6)], "batches of two entries");
    rx.assert_no_problems();
    assert_received_exactly(&server, &rx, "hooks", "audit").await;
    server.stop();
}

/// Issue #12 item 5, the case the durable cursor alone cannot cover: a
/// batch the head cut short (the linger sent 3 entries of a possible 50)
/// that the receiver applied but did not acknowledge. Entries appended
/// during the backoff would let a restarted process form a longer batch
/// from the same id, under another key; the range written to the catalog
/// before the send (`sent_to`) makes it send exactly that batch again, with
/// the same key and body, until it is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_short_batch_keeps_its_key_and_body_across_kill_9() {
    let failed = AtomicBool::new(false);
    let policy: Policy =
        Box::new(move |_| if failed.swap(true, Ordering::SeqCst) { Reply::Ok } else { Reply::StoredButFailed });
    let (rx, addr) = Receiver::start(&[("hooks", Format::Json)], policy).await;
    // The retry waits 15 to 30 s, so it comes only after the kill.
    let batch = r#"{ max_entries = 50, linger = "5ms" }"#;
    let settings = r#"retry = { initial = "30s", max = "30s" }"#;
    let config = http_exporter_batched("hooks", addr, Format::Json, batch, settings, SINK_TIMEOUT);
    let env = Env::new();
    let server = env.serve_with(&config).await;

    assert_eq!(server.append("audit", padded_entries(3, "a", 10)).await.status, 201);
    wait_for(&server, &rx, "hooks", "the short batch failed", |s| {
        ledger_status(s, "audit").is_some_and(|l| l["cursor"] == 0 && l["attempts"] == 1)
    })
    .await;
    assert_eq!(server.append("audit", padded_entries(10, "b", 10)).await.status, 201);
    let before = rx.sent("hooks", "audit");
    assert_eq!(before.iter().map(|s| (s.first, s.last)).collect::<Vec<_>>(), [(1, 3)], "{before:#?}");
    server.kill();
    let mut inspect = ferry();
    inspect.arg("inspect").arg("--data-dir").arg(env.data_dir());
    let out = run_to_exit(inspect, None);
    assert_exit(&out, 0, "ferry inspect");
    assert!(
        out.stdout.lines().any(|l| l == r#"cursor:hooks:audit {"id":0,"sent_to":3}"#),
        "the cursor record names the batch in flight:\n{}",
        out.stdout
    );

    let server = env.serve_with(&config).await;
    wait_for(&server, &rx, "hooks", "audit exported after the restart", |s| caught_up(s, "audit", 13)).await;
    let sent = rx.sent("hooks", "audit");
    let ranges: Vec<(u64, u64)> = sent.iter().map(|s| (s.first, s.last)).collect();
    assert_eq!(ranges, [(1, 3), (1, 3), (4, 13)], "the restart sends the short batch again, then the rest");
    assert_eq!(sent[1], before[0], "same Idempotency-Key and body after kill -9");
    rx.assert_no_problems();
    assert_received_exactly(&server, &rx, "hooks", "audit").await;
    server.stop();
}

/// SPEC §5: every destination key carries the ledger's incarnation. A
/// ledger deleted and created again starts from id 1 again, and its
/// batches come under keys of their own, so a receiver that deduplicates
/// by key does not drop the new entries as repeats of the old ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_ledger_created_again_is_sent_under_keys_of_its_own_incarnation() {
    let (rx, addr) = Receiver::start(&[("hooks", Format::Json)], Box::new(|_| Reply::Ok)).await;
    let env = Env::new();
    let server = env.serve_with(&http_exporter("hooks", addr, Format::Json, "")).await;

    assert_eq!(server.append("audit", padded_entries(3, "old", 10)).await.status, 201);
    wait_for(&server, &rx, "hooks", "the first ledger exported", |s| caught_up(s, "audit", 3)).await;
    let old = incarnation(&server, "audit").await;
    let deleted = server.send(server.http.delete(server.url("/v1/ledgers/audit"))).await;
    assert!(deleted.status < 300, "DELETE /v1/ledgers/audit: {deleted:?}");
    assert_eq!(server.append("audit", padded_entries(3, "new", 10)).await.status, 201);
    let new = incarnation(&server, "audit").await;
    assert_ne!(new, old, "a ledger created again has a new incarnation");
    wait_for(&server, &rx, "hooks", "the new ledger exported", |s| caught_up(s, "audit", 3)).await;

    let sent = rx.sent("hooks", "audit");
    let keys: Vec<&str> = sent.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, [format!("hooks/audit/{old}/1-3"), format!("hooks/audit/{new}/1-3")], "{sent:#?}");
    rx.assert_no_problems();
    assert_received_exactly(&server, &rx, "hooks", "audit").await;
    server.stop();
}

/// A reset of one ledger cancels the deliveries of the exporter's other
/// ledgers too. A cancelled batch may have arrived, so the ledger that was
/// not reset sends exactly that batch again, not a longer one formed from
/// entries appended meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_cancelled_by_another_ledgers_reset_is_sent_again_as_it_was() {
    let held = AtomicBool::new(false);
    let policy: Policy =
        Box::new(
            move |call| {
                if call.ledger == "a" && !held.swap(true, Ordering::SeqCst) { Reply::Hold } else { Reply::Ok }
            },
        );
    let (rx, addr) = Receiver::start(&[("hooks", Format::Json)], policy).await;
    let batch = r#"{ max_entries = 50, linger = "5ms" }"#;
    let env = Env::new();
    let server = env.serve_with(&http_exporter_batched("hooks", addr, Format::Json, batch, "", "10s")).await;

    assert_eq!(server.append("b", padded_entries(2, "b", 10)).await.status, 201);
    wait_for(&server, &rx, "hooks", "b exported", |s| caught_up(s, "b", 2)).await;
    assert_eq!(server.append("a", padded_entries(3, "a", 10)).await.status, 201);
    eventually("a's first batch is held", || rx.calls("hooks", "a") == 1).await;
    assert_eq!(server.append("a", padded_entries(7, "a2", 10)).await.status, 201);
    let r = server.post("/v1/exporters/hooks/reset", r#"{"ledger":"b"}"#).await;
    assert_eq!(r.status, 200, "{}", r.text);

    wait_for(&server, &rx, "hooks", "a and b exported", |s| caught_up(s, "a", 10) && caught_up(s, "b", 2)).await;
    let ranges: Vec<(u64, u64)> = rx.sent("hooks", "a").iter().map(|s| (s.first, s.last)).collect();
    assert_eq!(ranges, [(1, 3), (1, 3), (4, 10)], "a's batches");
    assert!(rx.calls("hooks", "b") >= 2, "b was exported again after its reset");
    rx.assert_no_problems();
    for l in ["a", "b"] {
        assert_received_exactly(&server, &rx, "hooks", l).await;
    }
    server.stop();
}
