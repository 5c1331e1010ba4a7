//! SPEC §2.1 and §2.2 under `kill -9`: concurrent clients append to a real
//! `ferry serve`, the process is SIGKILLed at a random moment, restarted on
//! the same data dir, and everything ever acknowledged must be there,
//! unchanged, in dense ids with non-decreasing timestamps; every batch is
//! all-or-nothing; idempotency keys keep working across the crash.
//!
//! Every entry carries a unique tag (in its payload, or in its key when the
//! payload is a scalar), so an entry that was written but never
//! acknowledged (in flight at the kill) can be attributed to its request.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::support::{Env, Server, now_ms, parse_line};

const LEDGERS: [&str; 4] = ["audit", "payments.eu", "t-3_x", "bulk"];
/// The ledger of the bulk client: batches of large entries, sent just
/// before the kill, so that some kills land inside a multi-page group write
/// and recovery meets a torn batch.
const BULK: usize = 3;
/// How long before the kill the bulk client starts.
const BULK_LEAD: Duration = Duration::from_millis(40);
/// Concurrent clients.
const TASKS: usize = 8;
/// Kill -9 / restart cycles.
const CYCLES: usize = 50;
/// Random time from the start of the appends to the kill.
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 30..=400;
/// Acknowledged idempotent requests re-sent after each restart.
const RESENDS_PER_CYCLE: usize = 4;

/// Scalar payloads (always sent with a `k:{tag}` key), as exact text.
const SCALARS: [&str; 8] = [
    "null",
    "42",
    "-0.5e-3",
    "true",
    "1.50e3",
    r#""plain ünïcödé 🎉""#,
    r#""\ud83d\ude00 \"quoted\" \\ back\/slash""#,
    "18446744073709551615",
];
/// Routing keys for some object payloads.
const KEYS: [&str; 4] = ["user-7", "tenant/ü/42", "ключ ✓ 🔑", "with \"quotes\" and \\ backslash"];

#[derive(Debug, Clone)]
struct SentEntry {
    tag: String,
    key: Option<String>,
    idempotency_key: Option<String>,
    /// The payload text as sent.
    payload: String,
    /// The payload was sent as compact JSON, so it must come back byte for byte.
    compact: bool,
}

#[derive(Debug, Clone)]
struct Request {
    ledger: usize,
    entries: Vec<SentEntry>,
    body: String,
}

impl Request {
    /// Every entry carries an idempotency key: a retry appends nothing.
    fn keyed(&self) -> bool {
        self.entries.iter().all(|e| e.idempotency_key.is_some())
    }

    fn tag(&self) -> &str {
        &self.entries[0].tag
    }
}

/// What the test knows must be stored at one id.
#[derive(Debug)]
struct Expected {
    entry: SentEntry,
    /// The line and ts the server returned the first time it was read;
    /// every later read must return the same bytes.
    seen: Option<(String, u64)>,
}

struct Model {
    /// Per ledger: id → what must be stored there.
    ledgers: Vec<BTreeMap<u64, Expected>>,
    /// Acknowledged requests that carry idempotency keys, with their ids.
    keyed: Vec<(Request, Vec<u64>)>,
    acked_entries: usize,
    /// Entries written but not acknowledged before a kill, found later.
    landed_unacked: usize,
    /// Requests in flight at a kill.
    in_flight: usize,
    /// Restarts whose recovery reported a torn tail it cut off.
    torn_tails: usize,
    /// The bulk ledger's ids up to here were read and checked.
    verified_bulk: u64,
}

impl Model {
    fn new() -> Self {
        Self {
            ledgers: LEDGERS.iter().map(|_| BTreeMap::new()).collect(),
            keyed: Vec::new(),
            acked_entries: 0,
            landed_unacked: 0,
            in_flight: 0,
            torn_tails: 0,
            verified_bulk: 0,
        }
    }

    fn head(&self, ledger: usize) -> u64 {
        self.ledgers[ledger].last_key_value().map_or(0, |(id, _)| *id)
    }

    /// Records an acknowledged (201) request.
    fn acknowledged(&mut self, req: Request, ids: Vec<u64>) -> Result<(), String> {
        let ledger = &mut self.ledgers[req.ledger];
        for (e, id) in req.entries.iter().zip(&ids) {
            if let Some(prev) = ledger.insert(*id, Expected { entry: e.clone(), seen: None }) {
                return Err(format!(
                    "{}/{id} was acknowledged twice: for {} and for {}",
                    LEDGERS[req.ledger], prev.entry.tag, e.tag
                ));
            }
        }
        self.acked_entries += ids.len();
        if req.keyed() {
            self.keyed.push((req, ids));
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_entries_survive_kill_9_at_random_moments() {
    kill_loop(None).await;
}

/// The same loop with 4-entry chunks and a 3 s retention: chunks freeze and
/// are pruned constantly, so kills land inside the freeze and sweep
/// protocols. Entries below a ledger's First were pruned on purpose and
/// are not asked for; everything from First on must be there.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_entries_survive_kill_9_while_chunks_freeze_and_prune() {
    kill_loop(Some("[storage]\nchunk_entries = 4\n[retention]\nmax_age = \"3s\"\n")).await;
}

async fn kill_loop(config: Option<&str>) {
    let seed = std::env::var("FERRY_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    eprintln!("crash test seed {seed} (FERRY_CRASH_SEED={seed} replays the same requests and delays)");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = Env::new();
    let t0 = now_ms();
    let started = Instant::now();
    let mut model = Model::new();
    let mut pending: Vec<Request> = Vec::new();

    let serve = || async {
        match config {
            Some(text) => env.serve_with(text).await,
            None => env.serve().await,
        }
    };
    for cycle in 0..CYCLES {
        let mut server = serve().await;
        if let Err(e) = verify_after_restart(&server, &mut model, &mut pending, &mut rng, t0, false).await {
            panic!("cycle {cycle} (seed {seed}): {e}\n--- server stderr ---\n{}", server.stderr());
        }
        model.torn_tails += server.stderr().contains("torn") as usize;

        let killed = Arc::new(AtomicBool::new(false));
        let kill_after = Duration::from_millis(rng.random_range(KILL_AFTER_MS));
        let bulk_from = tokio::time::Instant::now() + kill_after.saturating_sub(BULK_LEAD);
        let tasks: Vec<_> = (0..=TASKS)
            .map(|task| {
                let client = Client {
                    http: server.http.clone(),
                    base: server.base.clone(),
                    killed: killed.clone(),
                    bulk_from: (task == TASKS).then_some(bulk_from),
                };
                tokio::spawn(client.run(cycle, task, rng.random()))
            })
            .collect();
        tokio::time::sleep(kill_after).await;
        assert!(server.is_running(), "cycle {cycle}: ferry serve died on its own:\n{}", server.stderr());
        killed.store(true, Ordering::SeqCst);
        let log = server.stderr();
        server.kill();

        let mut failures = Vec::new();
        for task in tasks {
            let out = task.await.expect("client task panicked");
            for (req, ids) in out.acked {
                if let Err(e) = model.acknowledged(req, ids) {
                    failures.push(e);
                }
            }
            model.in_flight += out.pending.is_some() as usize;
            pending.extend(out.pending);
            failures.extend(out.failures);
        }
        assert!(
            failures.is_empty(),
            "cycle {cycle} (seed {seed}): appends failed while the server ran:\n{}\n--- server stderr ---\n{log}",
            failures.join("\n")
        );
    }

    let server = serve().await;
    if let Err(e) = verify_after_restart(&server, &mut model, &mut pending, &mut rng, t0, true).await {
        panic!("final check (seed {seed}): {e}\n--- server stderr ---\n{}", server.stderr());
    }
    let mut pruned = 0;
    for name in LEDGERS {
        pruned += server.first_and_head(name).await.map_or(0, |(first, _)| first - 1);
    }
    server.stop();
    if config.is_some() {
        assert!(pruned > 0, "retention never pruned anything: the loop did not exercise the sweep");
    }
    eprintln!(
        "{CYCLES} kill -9 cycles in {:?}: {} entries acknowledged, {} requests in flight at kills, \
         {} unacknowledged entries found durable, {} idempotent requests, {} torn tails recovered",
        started.elapsed(),
        model.acked_entries,
        model.in_flight,
        model.landed_unacked,
        model.keyed.len(),
        model.torn_tails
    );
    assert!(model.acked_entries >= CYCLES * 10, "too few appends to mean anything: {}", model.acked_entries);
    assert!(model.in_flight > 0, "no kill landed while a request was in flight");
}

/// Checks every ledger against the model after a restart, attributes
/// unacknowledged entries to requests that were in flight, then re-sends
/// idempotent requests (in-flight ones and a sample of acknowledged ones).
///
/// Every ledger is read whole, except the bulk ledger (too large to re-read
/// after every kill in a debug build): its new entries are read, and it is
/// read whole when `full`.
async fn verify_after_restart(
    server: &Server,
    model: &mut Model,
    pending: &mut Vec<Request>,
    rng: &mut StdRng,
    t0: u64,
    full: bool,
) -> Result<(), String> {
    // First tag of an in-flight request → the ids it landed at.
    let mut landed: HashMap<String, Vec<u64>> = HashMap::new();
    for (li, name) in LEDGERS.iter().enumerate() {
        let (first, head) = server.first_and_head(name).await.unzip();
        // The first id to read; everything before it was verified earlier,
        // or pruned by retention (below First).
        let from = if li == BULK && !full { model.verified_bulk + 1 } else { 1 };
        let from = from.max(first.unwrap_or(1));
        // Retention keeps running while we read: First may move meanwhile.
        let (from, lines) = match head {
            Some(_) => server.read_retained_from(name, from).await,
            None => (from, Vec::new()),
        };
        let head = head.unwrap_or(0);
        if head + 1 < from || lines.len() as u64 != head + 1 - from {
            return Err(format!("{name}: head is {head} but reading it from {from} returns {} entries", lines.len()));
        }
        let now = now_ms();
        let ledger = &mut model.ledgers[li];
        let mut last_ts = match from {
            1 => 0,
            _ => ledger.get(&(from - 1)).and_then(|e| e.seen.as_ref()).map_or(0, |(_, ts)| *ts),
        };
        for (i, line) in lines.iter().enumerate() {
            let id = from + i as u64;
            if !ledger.contains_key(&id) {
                let req = attribute(name, id, line, head, li, pending)?;
                let n = req.entries.len() as u64;
                for (k, e) in req.entries.iter().enumerate() {
                    let at = id + k as u64;
                    if ledger.insert(at, Expected { entry: e.clone(), seen: None }).is_some() {
                        return Err(format!(
                            "{name}/{at} is both acknowledged and part of the unacknowledged request {}",
                            req.tag()
                        ));
                    }
                }
                model.landed_unacked += n as usize;
                landed.insert(req.tag().to_owned(), (id..id + n).collect());
            }
            let exp = ledger.get_mut(&id).expect("present");
            match &exp.seen {
                Some((before, ts)) => {
                    if before != line {
                        return Err(format!(
                            "{name}/{id} changed across a restart:\n before: {before}\n after:  {line}"
                        ));
                    }
                    last_ts = *ts;
                }
                None => {
                    let ts = check_entry(name, id, line, &exp.entry)?;
                    if ts < last_ts {
                        return Err(format!("{name}/{id}: ts {ts} is before the previous entry's {last_ts}"));
                    }
                    if ts + 2_000 < t0 || ts > now + 2_000 {
                        return Err(format!("{name}/{id}: ts {ts} is outside the test's run ({t0}..{now})"));
                    }
                    last_ts = ts;
                    exp.seen = Some((line.clone(), ts));
                }
            }
        }
        if li == BULK {
            model.verified_bulk = head;
        }
        let lost: Vec<String> = ledger.range(head + 1..).map(|(id, e)| format!("{id} ({})", e.entry.tag)).collect();
        if !lost.is_empty() {
            return Err(format!(
                "{name}: head is {head}; acknowledged entries are missing: {}",
                lost.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }

    // A client retrying its in-flight idempotent requests: 200 with the ids
    // they landed at, or 201 when they never landed.
    for req in std::mem::take(pending) {
        if !req.keyed() {
            continue;
        }
        let r = server.append(LEDGERS[req.ledger], req.body.clone()).await;
        match landed.get(req.tag()) {
            Some(ids) => {
                if r.status != 200 || r.ids() != *ids {
                    return Err(format!(
                        "retry of in-flight idempotent request {} (stored at {ids:?}) answered {} {}",
                        req.tag(),
                        r.status,
                        r.text
                    ));
                }
                model.keyed.push((req, ids.clone()));
            }
            None => {
                let next = model.head(req.ledger) + 1;
                let want: Vec<u64> = (next..next + req.entries.len() as u64).collect();
                if r.status != 201 || r.ids() != want {
                    return Err(format!(
                        "retry of idempotent request {} that never landed: expected 201 {want:?}, got {} {}",
                        req.tag(),
                        r.status,
                        r.text
                    ));
                }
                model.acknowledged(req, want)?;
            }
        }
    }
    // Acknowledged idempotent requests from any earlier cycle.
    for _ in 0..RESENDS_PER_CYCLE.min(model.keyed.len()) {
        let (req, ids) = &model.keyed[rng.random_range(0..model.keyed.len())];
        let r = server.append(LEDGERS[req.ledger], req.body.clone()).await;
        if r.status != 200 || r.ids() != *ids {
            return Err(format!(
                "re-sent acknowledged idempotent request {} (ids {ids:?}) after a restart: got {} {}",
                req.tag(),
                r.status,
                r.text
            ));
        }
    }
    for (li, name) in LEDGERS.iter().enumerate() {
        let head = server.head(name).await.unwrap_or(0);
        if head != model.head(li) {
            return Err(format!("{name}: head {head} after the retries, expected {}", model.head(li)));
        }
    }
    Ok(())
}

/// An entry the test never got an acknowledgement for must begin a request
/// that was in flight at the kill, and the whole request must be there.
fn attribute(
    name: &str,
    id: u64,
    line: &str,
    head: u64,
    li: usize,
    pending: &mut Vec<Request>,
) -> Result<Request, String> {
    let e = parse_line(line);
    let payload: Value = serde_json::from_str(e.payload.get()).map_err(|err| format!("{name}/{id}: {err}"))?;
    let tag = tag_of(e.key.as_deref(), &payload)
        .ok_or_else(|| format!("{name}/{id}: an entry the test never sent: {line}"))?;
    let Some(pos) = pending.iter().position(|r| r.ledger == li && r.tag() == tag) else {
        return Err(format!(
            "{name}/{id} ({tag}) was never acknowledged and does not begin a request in flight at the kill \
             (a duplicate, a partial batch or a phantom): {line}"
        ));
    };
    let req = pending.remove(pos);
    let last = id + req.entries.len() as u64 - 1;
    if last > head {
        return Err(format!("{name}: the batch {tag} is cut: it needs ids {id}..={last} but the head is {head}"));
    }
    Ok(req)
}

/// Checks a stored entry against what was sent; returns its ts.
fn check_entry(name: &str, id: u64, line: &str, sent: &SentEntry) -> Result<u64, String> {
    let e = parse_line(line);
    let fail =
        |what: &str| Err(format!("{name}/{id} ({}): {what}\n sent:   {:?}\n stored: {line}", sent.tag, sent.payload));
    if e.ledger != name || e.id != id {
        return fail("wrong ledger or id in the entry");
    }
    if e.key != sent.key {
        return fail(&format!("key {:?}, sent {:?}", e.key, sent.key));
    }
    if sent.compact && e.payload.get() != sent.payload {
        return fail("payload text differs from the compact JSON sent");
    }
    let stored: Value = serde_json::from_str(e.payload.get()).map_err(|err| format!("{name}/{id}: {err}"))?;
    let expected: Value = serde_json::from_str(&sent.payload).expect("the test sends valid JSON");
    if stored != expected {
        return fail("payload differs");
    }
    Ok(e.ts)
}

fn tag_of(key: Option<&str>, payload: &Value) -> Option<String> {
    match payload {
        Value::Object(m) => m.get("tag").and_then(Value::as_str).map(str::to_owned),
        Value::Array(a) => a.first().and_then(Value::as_str).map(str::to_owned),
        _ => key.and_then(|k| k.strip_prefix("k:")).map(str::to_owned),
    }
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("a string serialises")
}

fn gen_entry(rng: &mut StdRng, tag: String, keyed: bool) -> SentEntry {
    let n: u32 = rng.random();
    let mut key = None;
    let (payload, compact) = match rng.random_range(0..9) {
        0 => (format!(r#"{{"tag":"{tag}","n":{n},"ok":true}}"#), true),
        1 => (
            format!(
                r#"{{"tag":"{tag}","text":"héllo wörld ✓ 日本語 🚀","esc":"q\"b\\s\n\t\u00e9\ud83d\ude00","empty":""}}"#
            ),
            true,
        ),
        2 => (
            format!(
                r#"{{"tag":"{tag}","user":{{"id":{n},"roles":["admin","dev"],"meta":{{"deep":{{"deeper":[1,[2,[3,{{"x":null}}]]]}}}}}},"amount":1.50e3,"neg":-0.0625}}"#
            ),
            true,
        ),
        3 => (format!(r#"["{tag}",1,-2.5,"three",{{"four":4}},[],{{}},null,false]"#), true),
        4 => (
            format!(
                "{{\n  \"tag\" : \"{tag}\",\n\t\"spaced\" : [ 1 , 2 , {{ \"x\" : [ ] }} ],\n  \"str\" : \"keeps  inner  spaces\"\n}}"
            ),
            false,
        ),
        5 => (format!(r#"{{"tag":"{tag}","blob":"{}"}}"#, "x".repeat(rng.random_range(200..3000))), true),
        6 | 7 => {
            key = Some(format!("k:{tag}"));
            (SCALARS[rng.random_range(0..SCALARS.len())].to_owned(), true)
        }
        _ => {
            key = Some(format!("{} {n}", KEYS[rng.random_range(0..KEYS.len())]));
            (format!(r#"{{"tag":"{tag}","keyed":true}}"#), true)
        }
    };
    let idempotency_key = keyed.then(|| format!("idem-{tag}"));
    SentEntry { tag, key, idempotency_key, payload, compact }
}

/// 2–5 entries of 48–128 KiB each: one group write of many pages.
fn gen_bulk_request(rng: &mut StdRng, tag: &str) -> Request {
    let entries: Vec<SentEntry> = (0..rng.random_range(2..=5))
        .map(|i| {
            let tag = format!("{tag}.e{i}");
            let blob = "b".repeat(rng.random_range(48 * 1024..128 * 1024));
            let payload = format!(r#"{{"tag":"{tag}","blob":"{blob}"}}"#);
            SentEntry { tag, key: None, idempotency_key: None, payload, compact: true }
        })
        .collect();
    let parts: Vec<String> = entries.iter().map(|e| format!(r#"{{"payload":{}}}"#, e.payload)).collect();
    Request { ledger: BULK, body: format!(r#"{{"entries":[{}]}}"#, parts.join(",")), entries }
}

fn gen_request(rng: &mut StdRng, ledger: usize, tag: &str) -> Request {
    let n = if rng.random_bool(0.4) { 1 } else { rng.random_range(2..=6) };
    let keyed = rng.random_bool(0.25);
    let spaced = rng.random_bool(0.2);
    let entries: Vec<SentEntry> = (0..n).map(|i| gen_entry(rng, format!("{tag}.e{i}"), keyed)).collect();
    let (colon, comma) = if spaced { (" : ", " ,\n ") } else { (":", ",") };
    let parts: Vec<String> = entries
        .iter()
        .map(|e| {
            let mut s = format!("{{\"payload\"{colon}{}", e.payload);
            if let Some(k) = &e.key {
                s.push_str(&format!("{comma}\"key\"{colon}{}", json_string(k)));
            }
            if let Some(k) = &e.idempotency_key {
                s.push_str(&format!("{comma}\"idempotency_key\"{colon}{}", json_string(k)));
            }
            s.push('}');
            s
        })
        .collect();
    let body = if n == 1 && rng.random_bool(0.8) {
        parts[0].clone()
    } else {
        format!("{{\"entries\"{colon}[{}]}}", parts.join(comma))
    };
    Request { ledger, entries, body }
}

#[derive(Default)]
struct ClientOutcome {
    acked: Vec<(Request, Vec<u64>)>,
    /// The request whose answer the kill cut off.
    pending: Option<Request>,
    failures: Vec<String>,
}

struct Client {
    http: reqwest::Client,
    base: String,
    killed: Arc<AtomicBool>,
    /// A bulk client waits until then and appends only large batches.
    bulk_from: Option<tokio::time::Instant>,
}

impl Client {
    /// Appends one request after another until the server goes away.
    async fn run(self, cycle: usize, task: usize, seed: u64) -> ClientOutcome {
        let mut rng = StdRng::seed_from_u64(seed);
        let mut out = ClientOutcome::default();
        if let Some(at) = self.bulk_from {
            tokio::time::sleep_until(at).await;
        }
        for r in 0u64.. {
            let tag = format!("c{cycle}.t{task}.r{r}");
            let req = match self.bulk_from {
                Some(_) => gen_bulk_request(&mut rng, &tag),
                None => {
                    let ledger = rng.random_range(0..BULK);
                    gen_request(&mut rng, ledger, &tag)
                }
            };
            let ledger = req.ledger;
            let url = format!("{}/v1/ledgers/{}/entries", self.base, LEDGERS[ledger]);
            let answer = match self
                .http
                .post(url)
                .header("content-type", "application/json")
                .body(req.body.clone())
                .send()
                .await
            {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    resp.text().await.map(|text| (status, text))
                }
                Err(e) => Err(e),
            };
            match answer {
                Ok((201, text)) => match ack_ids(&text, req.entries.len()) {
                    Ok(ids) => out.acked.push((req, ids)),
                    Err(e) => {
                        out.failures.push(format!("{}: {e}", req.tag()));
                        break;
                    }
                },
                Ok((status, text)) => {
                    out.failures.push(format!("{}: {status} {text}\n body: {}", req.tag(), req.body));
                    out.pending = Some(req);
                    break;
                }
                Err(e) => {
                    if !self.killed.load(Ordering::SeqCst) {
                        out.failures.push(format!("{}: failed while the server was running: {e}", req.tag()));
                    }
                    out.pending = Some(req);
                    break;
                }
            }
        }
        out
    }
}

/// The ids of a 201 answer: one per entry, contiguous.
fn ack_ids(text: &str, n: usize) -> Result<Vec<u64>, String> {
    let v: Value = serde_json::from_str(text).map_err(|e| format!("answer {text:?}: {e}"))?;
    let ids: Vec<u64> = v["ids"]
        .as_array()
        .ok_or_else(|| format!("no ids in {text:?}"))?
        .iter()
        .map(|i| i.as_u64().ok_or_else(|| format!("bad id in {text:?}")))
        .collect::<Result<_, _>>()?;
    let contiguous = ids.iter().enumerate().all(|(i, id)| *id == ids[0] + i as u64);
    if ids.len() != n || !contiguous || ids[0] == 0 {
        return Err(format!("a new batch of {n} entries got ids {ids:?}: expected {n} contiguous ids"));
    }
    Ok(ids)
}
