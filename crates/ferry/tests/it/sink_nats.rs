//! The `nats` sink (SPEC §5) against real nats-servers: the shared one on
//! 127.0.0.1:4222 (a stream and subject prefix of its own per test) and
//! private ones this file starts (`/usr/sbin/nats-server`, temp store dir,
//! free port) for TLS, credentials, a server that appears late and one
//! restarted mid-export. Every subject is read back with async-nats and
//! compared with the ledger: each entry once, in order, headers right.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::support::{
    Env, Server, assert_exit, durable_cursors_of, ferry, free_port, parse_line, run_to_exit, serve_command,
};

const SHARED: &str = "nats://127.0.0.1:4222";
const NATS_SERVER: &str = "/usr/sbin/nats-server";

/// A stream name and subject prefix no other test (or run) uses.
fn unique(tag: &str) -> (String, String) {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let r: u32 = rand::random();
    (format!("FERRY_T_{}_{tag}_{n}_{r:08x}", std::process::id()), format!("ft{}x{n}x{r:08x}", std::process::id()))
}

/// A JetStream context on `url` (TLS trusting `ca` when given).
async fn js(url: &str, ca: Option<&Path>) -> jetstream::Context {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut options = async_nats::ConnectOptions::new();
    if let Some(ca) = ca {
        options = options.require_tls(true).add_root_certificates(ca.to_owned());
    }
    let client = options.connect(url).await.unwrap_or_else(|e| panic!("connect to nats-server at {url}: {e}"));
    jetstream::new(client)
}

/// One stored message: its headers and body.
struct Stored {
    headers: HeaderMap,
    body: String,
}

impl Stored {
    fn header(&self, name: &str) -> Option<String> {
        self.headers.get(name).map(|v| v.as_str().to_owned())
    }
}

/// The stream sequence of the last message on `subject`, if it holds any.
async fn last_sequence(stream: &stream::Stream, subject: &str) -> Option<u64> {
    match stream.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Some(m.sequence),
        Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => None,
        Err(e) => panic!("last message on {subject}: {e}"),
    }
}

/// Whether the stream holds any message on `subject`.
async fn has_messages(js: &jetstream::Context, stream_name: &str, subject: &str) -> bool {
    let stream = js.get_stream(stream_name).await.unwrap_or_else(|e| panic!("stream {stream_name}: {e}"));
    last_sequence(&stream, subject).await.is_some()
}

/// Every message on `subject`, in stream order (an ordered consumer).
async fn messages(js: &jetstream::Context, stream_name: &str, subject: &str) -> Vec<Stored> {
    let stream = js.get_stream(stream_name).await.unwrap_or_else(|e| panic!("stream {stream_name}: {e}"));
    let Some(last) = last_sequence(&stream, subject).await else { return Vec::new() };
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig { filter_subject: subject.to_owned(), ..Default::default() })
        .await
        .expect("an ordered consumer");
    let mut feed = consumer.messages().await.expect("consume");
    let mut out = Vec::new();
    loop {
        let m = tokio::time::timeout(Duration::from_secs(10), feed.next())
            .await
            .expect("the next message within 10 s")
            .expect("the feed ended")
            .expect("a message");
        let seq = m.info().expect("message info").stream_sequence;
        out.push(Stored {
            headers: m.headers.clone().unwrap_or_default(),
            body: String::from_utf8(m.payload.to_vec()).expect("UTF-8 body"),
        });
        if seq >= last {
            return out;
        }
    }
}

/// Asserts the subject holds exactly the ledger's lines, in order, each
/// with its headers.
async fn assert_subject_is_ledger(server: &Server, js: &jetstream::Context, stream: &str, prefix: &str, ledger: &str) {
    let stored = messages(js, stream, &format!("{prefix}.{ledger}")).await;
    let lines = server.read_all(ledger).await;
    let incarnation = incarnation(server, ledger).await;
    let bodies: Vec<&str> = stored.iter().map(|m| m.body.as_str()).collect();
    if bodies != lines {
        let ids: Vec<u64> = stored.iter().map(|m| parse_line(&m.body).id).collect();
        panic!("{ledger}: the subject holds ids {ids:?}, the ledger 1..={}", lines.len());
    }
    for m in &stored {
        let e = parse_line(&m.body);
        assert_eq!(m.header("Nats-Msg-Id"), Some(format!("{ledger}:{incarnation}:{}", e.id)));
        assert_eq!(m.header("Ferry-Ledger").as_deref(), Some(ledger));
        assert_eq!(m.header("Ferry-Incarnation"), Some(incarnation.to_string()));
        assert_eq!(m.header("Ferry-Id"), Some(e.id.to_string()));
        assert_eq!(m.header("Ferry-Ts"), Some(e.ts.to_string()));
        assert_eq!(m.header("Ferry-Hash"), e.hash.clone(), "{ledger}/{}", e.id);
    }
}

async fn incarnation(server: &Server, ledger: &str) -> u64 {
    let r = server.get(&format!("/v1/ledgers/{ledger}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["incarnation"].as_u64().expect("incarnation")
}

async fn delete_stream(js: &jetstream::Context, stream: &str) {
    let _ = js.delete_stream(stream).await;
}

/// An exporter `n` into the NATS sink with extra config lines.
fn config(storage: &str, url: &str, stream: &str, prefix: &str, extra: &str) -> String {
    format!(
        r#"
[storage]
{storage}

[[exporters]]
name = "n"
sink = "nats"
batch = {{ max_entries = 50, linger = "1ms" }}
retry = {{ initial = "20ms", max = "300ms" }}
[exporters.config]
url = "{url}"
stream = "{stream}"
subject = "{prefix}.{{ledger}}"
{extra}
"#
    )
}

async fn append_n(server: &Server, ledger: &str, n: usize, tag: &str) {
    let mut left = n;
    let mut i = 0;
    while left > 0 {
        let k = if i % 2 == 0 { 1 } else { left.min(9) };
        let entries: Vec<String> = (0..k)
            .map(|j| {
                let key = if j % 3 == 0 { format!(r#""key":"{tag}-{i}-{j}","#) } else { String::new() };
                format!(r#"{{{key}"payload":{{"{tag}":{},"pad":"{}"}}}}"#, i * 10 + j, "x".repeat(30))
            })
            .collect();
        let r = server.append(ledger, format!(r#"{{"entries":[{}]}}"#, entries.join(","))).await;
        assert_eq!(r.status, 201, "{}", r.text);
        left -= k;
        i += 1;
    }
}

fn ledger_status<'a>(status: &'a Value, ledger: &str) -> Option<&'a Value> {
    status["ledgers"].as_array()?.iter().find(|l| l["ledger"] == ledger)
}

fn all_caught_up(status: &Value, ledgers: &[&str]) -> bool {
    ledgers.iter().all(|l| ledger_status(status, l).is_some_and(|s| s["lag"] == 0 && s["cursor"] == s["head"]))
}

/// `ferry exporters check n` against `server`.
fn check(server: &Server) -> (i32, Value, String) {
    let mut c = ferry();
    c.args(["exporters", "check", "n"]).env("FERRY_SERVER", &server.base);
    let out = run_to_exit(c, None);
    let report = serde_json::from_str(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap_or(-1), report, out.stderr)
}

/// A private nats-server with JetStream, killed on drop.
struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: PathBuf,
    args: Vec<String>,
    log: PathBuf,
}

impl NatsServer {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts on `port` with its store in `dir` (plus `args`) and waits
    /// until it accepts connections.
    async fn start(dir: &Path, port: u16, args: &[String]) -> Self {
        let store = dir.join("nats-store");
        let mut server =
            Self { child: None, port, store, args: args.to_vec(), log: dir.join(format!("nats-{port}.log")) };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("nats log");
        let child = Command::new(NATS_SERVER)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store)
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {NATS_SERVER}: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            assert!(Instant::now() < deadline, "nats-server on {} did not start:\n{log}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn every_entry_is_one_message_with_its_headers_and_the_range_check_sees_a_stray_repeat() {
    let env = Env::new();
    let (stream, prefix) = unique("rt");
    let cfg = config("hash_chain = [\"audit\"]", SHARED, &stream, &prefix, "create_stream = true");
    let server = env.serve_with(&cfg).await;
    let js = js(SHARED, None).await;
    append_n(&server, "audit", 120, "a").await;
    append_n(&server, "pay.eu", 40, "p").await;
    server.wait_exporter("n", "catch up", |s| all_caught_up(s, &["audit", "pay.eu"])).await;
    for ledger in ["audit", "pay.eu"] {
        assert_subject_is_ledger(&server, &js, &stream, &prefix, ledger).await;
    }
    let info = js.get_stream(&stream).await.unwrap().get_info().await.unwrap();
    assert_eq!(info.config.subjects, [format!("{prefix}.>")]);
    assert_eq!(info.config.storage, stream::StorageType::File);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(120));

    let (code, report, stderr) = check(&server);
    assert_eq!(code, 0, "a clean export checks clean: {report:#} {stderr}");
    assert_eq!(report["ledgers"][0]["holding"]["distinct"], 120, "{report:#}");
    assert_eq!(report["ledgers"][0]["holding"]["max"], 120, "{report:#}");

    // A stray copy of audit's id 3 (ferry's headers, no Nats-Msg-Id, so no
    // dedup) published by hand: a repeat the check reports.
    let third = messages(&js, &stream, &format!("{prefix}.audit")).await.into_iter().nth(2).unwrap();
    let mut headers = HeaderMap::new();
    for name in ["Ferry-Ledger", "Ferry-Incarnation", "Ferry-Id", "Ferry-Ts"] {
        headers.insert(name, third.header(name).unwrap().as_str());
    }
    js.publish_with_headers(format!("{prefix}.audit"), headers, third.body.clone().into())
        .await
        .unwrap()
        .await
        .expect("the stray message is stored");
    let (code, report, stderr) = check(&server);
    assert_eq!(code, 1, "{report:#}");
    assert!(stderr.contains("found faults in 1 ledger(s)"), "{stderr}");
    let audit = &report["ledgers"][0];
    assert_eq!(audit["ledger"], "audit");
    assert_eq!(audit["faults"][0], "1 repeated rows among ids 1..=120", "{report:#}");
    assert_eq!(report["ledgers"][1]["faults"].as_array().map(Vec::len), Some(0), "{report:#}");
    server.stop();
    delete_stream(&js, &stream).await;
}

/// `kill -9` of ferry at random moments while clients append, with a
/// duplicate window of 100 ms (a restart takes longer, so dedup by
/// Nats-Msg-Id cannot be what keeps the subjects exact): after every kill
/// the durable cursor is at most the subject's last id and the subject
/// holds ids 1, 2, 3, … once each; at the end, exactly the ledgers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subjects_hold_every_entry_once_across_kill_9_with_a_short_duplicate_window() {
    const CYCLES: usize = 20;
    const LEDGERS: [&str; 3] = ["audit", "pay.eu", "t-1"];
    let seed = std::env::var("FERRY_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    eprintln!("nats kill -9 seed {seed} (FERRY_CRASH_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = Env::new();
    let (stream, prefix) = unique("kill");
    let cfg = config(
        "chunk_entries = 16",
        SHARED,
        &stream,
        &prefix,
        "create_stream = true\nduplicate_window = \"100ms\"\nmax_in_flight = 8",
    )
    .replace("max_entries = 50", "max_entries = 23");
    let js = js(SHARED, None).await;
    let started = Instant::now();
    let mut moved = 0;
    let mut ahead = 0;
    for cycle in 0..CYCLES {
        let mut server = env.serve_with(&cfg).await;
        let killed = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..3)
            .map(|t| {
                let (base, http, killed) = (server.base.clone(), server.http.clone(), killed.clone());
                let seed = rng.random::<u64>();
                tokio::spawn(async move {
                    let mut rng = StdRng::seed_from_u64(seed);
                    let mut i = 0;
                    while !killed.load(Ordering::SeqCst) {
                        let ledger = LEDGERS[(t + i) % LEDGERS.len()];
                        let n = rng.random_range(1..=15);
                        let entries: Vec<String> =
                            (0..n).map(|j| format!(r#"{{"payload":{{"t":{t},"i":{i},"j":{j}}}}}"#)).collect();
                        let url = format!("{base}/v1/ledgers/{ledger}/entries");
                        let body = format!(r#"{{"entries":[{}]}}"#, entries.join(","));
                        let _ = http.post(url).header("content-type", "application/json").body(body).send().await;
                        i += 1;
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(30..=300))).await;
        assert!(server.is_running(), "cycle {cycle}: ferry died on its own:\n{}", server.stderr());
        killed.store(true, Ordering::SeqCst);
        server.kill();
        for t in tasks {
            t.await.expect("append task");
        }
        let durable = durable_cursors_of(&env.data_dir(), "n");
        for ledger in LEDGERS {
            let stored = messages(&js, &stream, &format!("{prefix}.{ledger}")).await;
            for (i, m) in stored.iter().enumerate() {
                let id = parse_line(&m.body).id;
                assert_eq!(id, i as u64 + 1, "cycle {cycle} (seed {seed}): {ledger}: message {i} holds id {id}");
            }
            let cursor = durable.get(ledger).copied().unwrap_or(0);
            let held = stored.len() as u64;
            assert!(cursor <= held, "cycle {cycle} (seed {seed}): {ledger} cursor {cursor} > {held} stored");
            moved += (cursor > 0) as usize;
            // Published, not acknowledged: the next start must skip these.
            ahead += (held > cursor) as usize;
        }
    }
    let server = env.serve_with(&cfg).await;
    server.wait_exporter("n", "catch up after the last restart", |s| all_caught_up(s, &LEDGERS)).await;
    let mut total = 0;
    for ledger in LEDGERS {
        assert_subject_is_ledger(&server, &js, &stream, &prefix, ledger).await;
        total += server.read_all(ledger).await.len();
    }
    let (code, report, stderr) = check(&server);
    assert_eq!(code, 0, "{report:#} {stderr}");
    let info = js.get_stream(&stream).await.unwrap().get_info().await.unwrap();
    assert_eq!(info.config.duplicate_window, Duration::from_millis(100), "the short window is in force");
    server.stop();
    delete_stream(&js, &stream).await;
    eprintln!(
        "{CYCLES} kill -9 cycles in {:?}: {total} entries published exactly once; {ahead} times a subject held \
         messages past the durable cursor at a kill",
        started.elapsed()
    );
    assert!(moved > CYCLES, "cursors rarely moved: the loop exported too little");
    assert!(ahead > 0, "no kill left published messages past a cursor: the position was never needed");
    assert!(total > CYCLES * 20, "too few entries to mean anything: {total}");
}

#[tokio::test]
async fn a_ledger_name_that_makes_an_empty_subject_token_fails_alone() {
    let env = Env::new();
    let (stream, prefix) = unique("name");
    let server = env.serve_with(&config("", SHARED, &stream, &prefix, "create_stream = true")).await;
    let js = js(SHARED, None).await;
    append_n(&server, "fine", 5, "f").await;
    append_n(&server, "bad.", 3, "b").await;
    append_n(&server, "also..bad", 3, "b").await;
    let status = server
        .wait_exporter("n", "fine exported, the others failed", |s| {
            all_caught_up(s, &["fine"])
                && ["bad.", "also..bad"].iter().all(|l| ledger_status(s, l).is_some_and(|b| b["state"] == "failed"))
        })
        .await;
    for l in ["bad.", "also..bad"] {
        let b = ledger_status(&status, l).unwrap();
        assert_eq!(b["cursor"], 0, "{b}");
        let error = b["last_error"].as_str().unwrap_or_default();
        assert!(error.contains("cannot be a NATS subject") && error.contains("empty subject token"), "{b}");
    }
    assert_subject_is_ledger(&server, &js, &stream, &prefix, "fine").await;
    server.stop();
    delete_stream(&js, &stream).await;
}

#[tokio::test]
async fn configs_the_server_refuses_stop_serve_naming_the_field() {
    let env = Env::new();
    let js = js(SHARED, None).await;
    let (stream, prefix) = unique("cfg");
    // A stream that captures another subject only.
    js.create_stream(stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.only.this")],
        ..Default::default()
    })
    .await
    .expect("create the narrow stream");
    let (missing, _) = unique("missing");
    let nats_dir = tempfile::tempdir().unwrap();
    let auth = NatsServer::start(
        nats_dir.path(),
        free_port(),
        &["--user".into(), "ferry".into(), "--pass".into(), "right-pass".into()],
    )
    .await;
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        ("no stream key", config("", SHARED, "x", &prefix, "").replace("stream = \"x\"\n", ""), vec!["config.stream"]),
        ("missing stream", config("", SHARED, &missing, &prefix, ""), vec!["config.stream", "does not exist"]),
        ("narrow stream", config("", SHARED, &stream, &prefix, ""), vec!["config.stream", "captures"]),
        (
            "bad subject",
            config("", SHARED, &stream, &prefix, "").replace(".{ledger}\"", ".{ledger}.x\""),
            vec!["config.subject"],
        ),
        ("unknown key", config("", SHARED, &stream, &prefix, "colour = \"red\""), vec!["config", "colour"]),
        (
            "wrong password",
            config("", &auth.url(), &stream, &prefix, "user = \"ferry\"\npassword = \"wrong-pass\""),
            vec!["config.password", "authorization"],
        ),
        (
            "wrong url password",
            config("", &auth.url().replace("nats://", "nats://ferry:bad-url-pass@"), &stream, &prefix, ""),
            vec!["config.url"],
        ),
    ];
    for (what, text, needles) in cases {
        let path = env.config("ferry.toml", &text);
        let out = run_to_exit(serve_command(&env.data_dir(), Some(&path), free_port()), None);
        assert_exit(&out, 1, what);
        for needle in needles {
            assert!(out.stderr.contains(needle), "{what}: stderr should contain {needle:?}:\n{}", out.stderr);
        }
        for secret in ["wrong-pass", "bad-url-pass"] {
            assert!(!out.stderr.contains(secret), "{what}: the password is shown:\n{}", out.stderr);
        }
        assert!(!env.data_dir().exists(), "{what}: storage was opened");
    }
    // The right password in the URL: ferry starts.
    let right =
        config("", &auth.url().replace("nats://", "nats://ferry:right-pass@"), "AUTH", "auth", "create_stream = true");
    let server = env.serve_with(&right).await;
    assert!(!server.stderr().contains("right-pass"), "{}", server.stderr());
    server.stop();
    delete_stream(&js, &stream).await;
}

/// A server that is down at start: ferry starts (with a warning), the
/// ledgers back off, and drain once the server appears (with the stream
/// created then).
#[tokio::test]
async fn an_unreachable_server_is_waited_for_and_drained_when_it_appears() {
    let env = Env::new();
    let port = free_port();
    let url = format!("nats://127.0.0.1:{port}");
    let cfg = config("", &url, "LATE", "late", "create_stream = true");
    let server = env.serve_with(&cfg).await;
    assert!(server.stderr().contains("cannot be reached"), "{}", server.stderr());
    append_n(&server, "a", 30, "a").await;
    server
        .wait_exporter("n", "a backs off", |s| {
            ledger_status(s, "a").is_some_and(|l| l["state"] == "backing_off" && l["cursor"] == 0)
        })
        .await;
    let nats = NatsServer::start(env.dir.path(), port, &[]).await;
    server.wait_exporter("n", "drained once the server is up", |s| all_caught_up(s, &["a"])).await;
    let js = js(&nats.url(), None).await;
    assert_subject_is_ledger(&server, &js, "LATE", "late", "a").await;
    server.stop();
}

#[tokio::test]
async fn a_stream_deleted_mid_run_fails_the_ledger() {
    let env = Env::new();
    let (stream, prefix) = unique("del");
    let js = js(SHARED, None).await;
    js.create_stream(stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .unwrap();
    let server = env.serve_with(&config("", SHARED, &stream, &prefix, "")).await;
    append_n(&server, "a", 10, "a").await;
    server.wait_exporter("n", "a exported", |s| all_caught_up(s, &["a"])).await;
    js.delete_stream(&stream).await.expect("delete the stream");
    append_n(&server, "a", 5, "a").await;
    let status =
        server.wait_exporter("n", "a failed", |s| ledger_status(s, "a").is_some_and(|l| l["state"] == "failed")).await;
    let a = ledger_status(&status, "a").unwrap();
    assert_eq!(a["cursor"], 10, "{a}");
    let error = a["last_error"].as_str().unwrap_or_default();
    assert!(error.contains(&stream) && (error.contains("not found") || error.contains("no stream")), "{a}");
    server.stop();
}

/// A self-signed certificate for 127.0.0.1, written as (cert, key) PEM files.
fn certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("generate a certificate");
    let (c, k) = (dir.join("nats-cert.pem"), dir.join("nats-key.pem"));
    std::fs::write(&c, cert.pem()).unwrap();
    std::fs::write(&k, signing_key.serialize_pem()).unwrap();
    (c, k)
}

#[tokio::test]
async fn tls_with_a_ca_file_exports_and_a_wrong_ca_is_refused() {
    let env = Env::new();
    let (cert, key) = certificate(env.dir.path());
    let args = ["--tls", "--tlscert", cert.to_str().unwrap(), "--tlskey", key.to_str().unwrap()].map(str::to_owned);
    let nats = NatsServer::start(env.dir.path(), free_port(), &args).await;
    let extra = format!("create_stream = true\ntls = true\nca_file = \"{}\"", cert.display());
    let server = env.serve_with(&config("", &nats.url(), "TLS", "sec", &extra)).await;
    append_n(&server, "a", 25, "a").await;
    server.wait_exporter("n", "exported over TLS", |s| all_caught_up(s, &["a"])).await;
    let js = js(&nats.url(), Some(&cert)).await;
    assert_subject_is_ledger(&server, &js, "TLS", "sec", "a").await;
    server.stop();

    // Another CA: the server's certificate is not trusted, a definite no.
    let other = tempfile::tempdir().unwrap();
    let (wrong, _) = certificate(other.path());
    let extra = format!("tls = true\nca_file = \"{}\"", wrong.display());
    let path = env.config("wrong-ca.toml", &config("", &nats.url(), "TLS", "sec", &extra));
    let out = run_to_exit(serve_command(&env.dir.path().join("other-data"), Some(&path), free_port()), None);
    assert_exit(&out, 1, "a CA that did not sign the server's certificate");
    assert!(out.stderr.contains("config.ca_file"), "{}", out.stderr);
}

/// The destination restarts (SIGKILL, then the same store and port) while
/// clients append: ledgers back off, resume after what is stored, and the
/// subjects end up equal to the ledgers.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_destination_restarting_mid_export_loses_and_repeats_nothing() {
    let env = Env::new();
    let mut nats = NatsServer::start(env.dir.path(), free_port(), &[]).await;
    let cfg =
        config("", &nats.url(), "RS", "rs", "create_stream = true\nduplicate_window = \"1s\"\nmax_in_flight = 16")
            .replace("max_entries = 50", "max_entries = 20");
    let server = env.serve_with(&cfg).await;
    let stop = Arc::new(AtomicBool::new(false));
    let appender = {
        let (base, http, stop) = (server.base.clone(), server.http.clone(), stop.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let ledger = ["a", "b.c"][i % 2];
                let body = format!(r#"{{"entries":[{{"payload":{{"i":{i}}}}},{{"payload":{{"i":{i},"n":2}}}}]}}"#);
                let r = http
                    .post(format!("{base}/v1/ledgers/{ledger}/entries"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("append");
                assert_eq!(r.status(), 201);
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        nats.kill();
        tokio::time::sleep(Duration::from_millis(700)).await;
        nats.spawn().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    appender.await.expect("appender");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !all_caught_up(&server.exporter("n").await, &["a", "b.c"]) {
        let status = server.exporter("n").await;
        assert!(Instant::now() < deadline, "not caught up after the restarts: {status:#}\n{}", server.stderr());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(server.stderr().contains("export failing"), "the restarts were not felt:\n{}", server.stderr());
    let js = js(&nats.url(), None).await;
    for ledger in ["a", "b.c"] {
        assert_subject_is_ledger(&server, &js, "RS", "rs", ledger).await;
    }
    let (code, report, stderr) = check(&server);
    assert_eq!(code, 0, "{report:#} {stderr}");
    server.stop();
}

/// A ledger deleted and created again publishes its new incarnation after
/// the old one's messages on the same subject: `prepare` (at the new
/// ledger's start and after a restart) finds this incarnation's position in
/// the last message, the range check counts only this incarnation, and a
/// reset does not publish again what the subject already holds (the
/// destination's position wins).
#[tokio::test]
async fn a_recreated_ledger_continues_on_its_subject_as_a_new_incarnation() {
    let env = Env::new();
    let (stream, prefix) = unique("inc");
    let cfg = config("", SHARED, &stream, &prefix, "create_stream = true");
    let server = env.serve_with(&cfg).await;
    let js = js(SHARED, None).await;
    append_n(&server, "a", 6, "old").await;
    server.wait_exporter("n", "a exported", |s| all_caught_up(s, &["a"])).await;
    let old = incarnation(&server, "a").await;
    let r = server.send(server.http.delete(server.url("/v1/ledgers/a"))).await;
    assert!(r.status < 300, "delete a: {} {}", r.status, r.text);
    append_n(&server, "a", 4, "new").await;
    let new = incarnation(&server, "a").await;
    assert_ne!(old, new);
    server.wait_exporter("n", "the new a exported", |s| all_caught_up(s, &["a"])).await;
    server.stop();

    let server = env.serve_with(&cfg).await;
    append_n(&server, "a", 3, "later").await;
    server.wait_exporter("n", "a exported after a restart", |s| all_caught_up(s, &["a"])).await;
    let stored = messages(&js, &stream, &format!("{prefix}.a")).await;
    let stamps: Vec<(String, u64)> = stored
        .iter()
        .map(|m| (m.header("Ferry-Incarnation").unwrap(), m.header("Ferry-Id").unwrap().parse().unwrap()))
        .collect();
    let mut expected: Vec<(String, u64)> = (1..=6).map(|id| (old.to_string(), id)).collect();
    expected.extend((1..=7).map(|id| (new.to_string(), id)));
    assert_eq!(stamps, expected);
    let lines = server.read_all("a").await;
    let bodies: Vec<String> = stored[6..].iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, lines, "the new incarnation's messages are the ledger");
    let (code, report, stderr) = check(&server);
    assert_eq!(code, 0, "{report:#} {stderr}");
    assert_eq!(report["ledgers"][0]["holding"]["in_range"], 7, "{report:#}");

    // A reset to id 3: prepare answers the subject's position (7), which
    // becomes the cursor again; nothing is published twice.
    let r = server.post("/v1/exporters/n/reset", r#"{"ledger":"a","from_id":3}"#).await;
    assert_eq!(r.status, 200, "{}", r.text);
    server.wait_exporter("n", "the cursor back at 7", |s| all_caught_up(s, &["a"])).await;
    assert_eq!(messages(&js, &stream, &format!("{prefix}.a")).await.len(), 13);
    server.stop();
    delete_stream(&js, &stream).await;
}

/// The fence: a message that lands on the subject after the sink read its
/// position (here a copy of id 11 published by hand, without Nats-Msg-Id,
/// while the exporter is paused) makes the server refuse the next batch's
/// first message; the retry reads the position again and publishes only
/// what is missing, with no help from deduplication.
#[tokio::test]
async fn a_publish_landing_behind_the_sinks_back_is_caught_by_the_fence() {
    let env = Env::new();
    let (stream, prefix) = unique("fence");
    let server = env.serve_with(&config("", SHARED, &stream, &prefix, "create_stream = true")).await;
    let js = js(SHARED, None).await;
    append_n(&server, "a", 10, "a").await;
    server.wait_exporter("n", "a exported", |s| all_caught_up(s, &["a"])).await;
    let r = server.post("/v1/exporters/n/pause", "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    append_n(&server, "a", 5, "b").await;
    let lines = server.read_all("a").await;
    let eleventh = parse_line(&lines[10]);
    let mut headers = HeaderMap::new();
    headers.insert("Ferry-Ledger", "a");
    headers.insert("Ferry-Incarnation", incarnation(&server, "a").await.to_string().as_str());
    headers.insert("Ferry-Id", "11");
    headers.insert("Ferry-Ts", eleventh.ts.to_string().as_str());
    js.publish_with_headers(format!("{prefix}.a"), headers, lines[10].clone().into())
        .await
        .unwrap()
        .await
        .expect("the copy of id 11 is stored");
    let r = server.post("/v1/exporters/n/resume", "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    server.wait_exporter("n", "a exported after the resume", |s| all_caught_up(s, &["a"])).await;
    let stored = messages(&js, &stream, &format!("{prefix}.a")).await;
    let bodies: Vec<String> = stored.iter().map(|m| m.body.clone()).collect();
    assert_eq!(bodies, lines, "id 11 once, then 12..=15");
    assert!(server.stderr().contains("the subject changed"), "the fence refused a batch:\n{}", server.stderr());
    server.stop();
    delete_stream(&js, &stream).await;
}

/// An entry larger than the stream's `max_msg_size`: the entries before it
/// in its batch are published and acknowledged, then the ledger fails on
/// it, saying what to change; nothing after it is published.
#[tokio::test]
async fn an_entry_too_large_for_the_stream_fails_the_ledger_after_the_ones_before_it() {
    let env = Env::new();
    let (stream, prefix) = unique("big");
    let js = js(SHARED, None).await;
    js.create_stream(stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        max_message_size: 1024,
        ..Default::default()
    })
    .await
    .unwrap();
    let server = env.serve_with(&config("", SHARED, &stream, &prefix, "")).await;
    let big = "y".repeat(2000);
    let body = format!(r#"{{"entries":[{{"payload":1}},{{"payload":2}},{{"payload":"{big}"}},{{"payload":4}}]}}"#);
    assert_eq!(server.append("a", body).await.status, 201);
    let status = server
        .wait_exporter("n", "a failed at id 3", |s| ledger_status(s, "a").is_some_and(|l| l["state"] == "failed"))
        .await;
    let a = ledger_status(&status, "a").unwrap();
    assert_eq!(a["cursor"], 2, "{a}");
    assert!(a["last_error"].as_str().unwrap_or_default().contains("max_msg_size"), "{a}");
    let ids: Vec<u64> =
        messages(&js, &stream, &format!("{prefix}.a")).await.iter().map(|m| parse_line(&m.body).id).collect();
    assert_eq!(ids, [1, 2]);
    server.stop();
    delete_stream(&js, &stream).await;
}

/// `create_stream = true` over an existing stream adds the subjects and the
/// window and keeps its other settings; a token the server does not know
/// stops startup naming `config.token`; the right one (in the URL) exports.
#[tokio::test]
async fn create_stream_updates_an_existing_stream_and_tokens_are_checked() {
    let env = Env::new();
    let dir = tempfile::tempdir().unwrap();
    let nats = NatsServer::start(dir.path(), free_port(), &["--auth".into(), "the-token-1".into()]).await;
    let client = async_nats::ConnectOptions::with_token("the-token-1".into()).connect(nats.url()).await.unwrap();
    let js = jetstream::new(client);
    js.create_stream(stream::Config {
        name: "UPD".into(),
        subjects: vec!["other.x".into()],
        max_messages: 5000,
        ..Default::default()
    })
    .await
    .unwrap();
    let extra = "create_stream = true\nduplicate_window = \"5s\"\ntoken = \"wrong-token-2\"";
    let path = env.config("wrong-token.toml", &config("", &nats.url(), "UPD", "upd", extra));
    let out = run_to_exit(serve_command(&env.data_dir(), Some(&path), free_port()), None);
    assert_exit(&out, 1, "a wrong token");
    assert!(out.stderr.contains("config.token"), "{}", out.stderr);
    assert!(!out.stderr.contains("wrong-token-2"), "the token is shown:\n{}", out.stderr);

    // The token in the URL this time.
    let url = nats.url().replace("nats://", "nats://the-token-1@");
    let extra = "create_stream = true\nduplicate_window = \"5s\"";
    let server = env.serve_with(&config("", &url, "UPD", "upd", extra)).await;
    append_n(&server, "a", 5, "a").await;
    server.wait_exporter("n", "a exported", |s| all_caught_up(s, &["a"])).await;
    assert_subject_is_ledger(&server, &js, "UPD", "upd", "a").await;
    let info = js.get_stream("UPD").await.unwrap().get_info().await.unwrap();
    assert_eq!(info.config.subjects, ["other.x", "upd.>"]);
    assert_eq!(info.config.duplicate_window, Duration::from_secs(5));
    assert_eq!(info.config.max_messages, 5000, "other settings are kept");
    server.stop();
}

/// A stream that would refuse one message and take the next (`max_bytes`
/// with `discard = new`: a large entry does not fit, a small one after it
/// would): the sink publishes one at a time there, so the subject stays a
/// prefix of the ledger; it acknowledges the ids before the refused one
/// and retries that one (never skipping it).
#[tokio::test]
async fn a_stream_that_refuses_messages_that_do_not_fit_gets_no_gap() {
    let env = Env::new();
    let (stream, prefix) = unique("gap");
    let js = js(SHARED, None).await;
    js.create_stream(stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        max_bytes: 2000,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap();
    let server = env.serve_with(&config("", SHARED, &stream, &prefix, "")).await;
    let big = "y".repeat(1500);
    let body = format!(
        r#"{{"entries":[{{"payload":1}},{{"payload":2}},{{"payload":"{big}"}},{{"payload":4}},{{"payload":5}}]}}"#
    );
    assert_eq!(server.append("a", body).await.status, 201);
    let status = server
        .wait_exporter("n", "a acknowledged through 2 and retrying 3", |s| {
            ledger_status(s, "a").is_some_and(|l| l["cursor"] == 2 && l["attempts"].as_u64() > Some(1))
        })
        .await;
    let a = ledger_status(&status, "a").unwrap();
    assert_ne!(a["state"], "failed", "{a}");
    let ids: Vec<u64> =
        messages(&js, &stream, &format!("{prefix}.a")).await.iter().map(|m| parse_line(&m.body).id).collect();
    assert_eq!(ids, [1, 2], "nothing after the refused id 3");
    assert!(a["last_error"].as_str().unwrap_or_default().contains("maximum bytes"), "{a}");
    server.stop();
    delete_stream(&js, &stream).await;
}

/// A stream with `max_age`: once a subject's messages aged out, a restart
/// does not publish the ledger again (the cursor is kept), and new entries
/// follow.
#[tokio::test]
async fn messages_that_aged_out_of_the_stream_are_not_published_again() {
    let env = Env::new();
    let (stream, prefix) = unique("age");
    let js = js(SHARED, None).await;
    js.create_stream(stream::Config {
        name: stream.clone(),
        subjects: vec![format!("{prefix}.>")],
        max_age: Duration::from_secs(1),
        duplicate_window: Duration::from_millis(500),
        ..Default::default()
    })
    .await
    .unwrap();
    let cfg = config("", SHARED, &stream, &prefix, "");
    let server = env.serve_with(&cfg).await;
    append_n(&server, "a", 5, "a").await;
    server.wait_exporter("n", "a exported", |s| all_caught_up(s, &["a"])).await;
    server.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    // Asked of the stream, not read through a consumer: a message can age
    // out between finding the subject's last sequence and consuming up to
    // it, and the consumer would then wait for a message that is gone.
    while has_messages(&js, &stream, &format!("{prefix}.a")).await {
        assert!(Instant::now() < deadline, "the messages did not age out");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let server = env.serve_with(&cfg).await;
    append_n(&server, "a", 1, "b").await;
    server.wait_exporter("n", "a exported after the restart", |s| all_caught_up(s, &["a"])).await;
    let ids: Vec<u64> =
        messages(&js, &stream, &format!("{prefix}.a")).await.iter().map(|m| parse_line(&m.body).id).collect();
    assert!(ids.iter().all(|&id| id == 6), "only the new entry (unless it aged out too): {ids:?}");
    let info = js.get_stream(&stream).await.unwrap().get_info().await.unwrap();
    assert_eq!(info.state.last_sequence, 6, "5 messages, then id 6: the aged-out ones were not published again");
    assert!(server.stderr().contains("keeping ferry's cursor"), "{}", server.stderr());
    server.stop();
    delete_stream(&js, &stream).await;
}

/// A subject purged on a stream without expiring limits is a destination
/// that lost what it held: the next start publishes the ledger again (the
/// destination's position wins, with a warning from the runtime), once
/// the duplicate window is past (within it, JetStream drops the messages
/// again as duplicates of the purged ones).
#[tokio::test]
async fn a_purged_subject_is_published_again_at_the_next_start() {
    let env = Env::new();
    let (stream, prefix) = unique("purge");
    let cfg = config("", SHARED, &stream, &prefix, "create_stream = true\nduplicate_window = \"100ms\"");
    let server = env.serve_with(&cfg).await;
    let js = js(SHARED, None).await;
    append_n(&server, "a", 8, "a").await;
    server.wait_exporter("n", "a exported", |s| all_caught_up(s, &["a"])).await;
    server.stop();
    js.get_stream(&stream).await.unwrap().purge().filter(format!("{prefix}.a")).await.expect("purge the subject");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let server = env.serve_with(&cfg).await;
    server.wait_exporter("n", "a published again", |s| all_caught_up(s, &["a"])).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while messages(&js, &stream, &format!("{prefix}.a")).await.len() < 8 {
        assert!(Instant::now() < deadline, "the ledger was not published again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_subject_is_ledger(&server, &js, &stream, &prefix, "a").await;
    server.stop();
    delete_stream(&js, &stream).await;
}
