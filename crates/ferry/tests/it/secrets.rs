//! SPEC §4: secrets (URL userinfo, secret query values, the http sink's
//! `secret` and header values) are never echoed in exporter status,
//! `exporter.failed` events, logs or startup errors, whether the failure is
//! a refused connection (reqwest's error names the URL) or a receiver
//! whose error answer quotes what it was sent.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::routing::post;
use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;

use crate::support::{Env, Exited, Server, StartError, free_port};

/// Every secret configured below; none may appear anywhere ferry reports.
const SECRETS: [&str; 7] =
    ["hunter2-pw", "hunter3-pw", "qs-secret-1", "qs-secret-2", "hdr-secret-1", "hdr-secret-2", "sign-secret-1"];

/// A receiver that refuses every batch with 400 and, like many real ones,
/// quotes what it was sent (a header and the query) in its error body.
async fn echoing_receiver() -> SocketAddr {
    async fn refuse(headers: HeaderMap, uri: Uri) -> (StatusCode, String) {
        let key = headers.get("x-api-key").and_then(|v| v.to_str().ok()).unwrap_or_default();
        (StatusCode::BAD_REQUEST, format!("rejected: x-api-key={key} query={}", uri.query().unwrap_or_default()))
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
    let addr = listener.local_addr().expect("receiver addr");
    tokio::spawn(async move { axum::serve(listener, Router::new().route("/in", post(refuse))).await });
    addr
}

/// Collects the events under `prefix` from now on, as their raw data text.
async fn events(server: &Server, prefix: &str) -> Arc<Mutex<Vec<String>>> {
    let resp = server.http.get(server.url(&format!("/v1/events?prefix={prefix}"))).send().await.expect("events");
    assert_eq!(resp.status(), 200, "GET /v1/events");
    let out = Arc::new(Mutex::new(Vec::new()));
    let sink = out.clone();
    tokio::spawn(async move {
        let mut stream = resp.bytes_stream().eventsource();
        while let Some(Ok(e)) = stream.next().await {
            sink.lock().expect("events lock").push(e.data);
        }
    });
    out
}

#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} echoes the secret {secret:?}:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_errors_never_echo_url_credentials_secret_query_values_or_header_values() {
    let receiver = echoing_receiver().await;
    let closed = free_port();
    let env = Env::new();
    let config = format!(
        r#"
[[exporters]]
name = "refused"
sink = "http"
retry = {{ initial = "20ms", max = "100ms" }}
[exporters.config]
url = "http://alice:hunter2-pw@{receiver}/in?token=qs-secret-1&format=plain"
secret = "sign-secret-1"
[exporters.config.headers]
x-api-key = "hdr-secret-1"

[[exporters]]
name = "unreachable"
sink = "http"
retry = {{ initial = "20ms", max = "100ms" }}
[exporters.config]
url = "http://bob:hunter3-pw@127.0.0.1:{closed}/in?api_key=qs-secret-2"
[exporters.config.headers]
authorization = "Bearer hdr-secret-2"
"#
    );
    let s = env.serve_with(&config).await;
    let seen = events(&s, "exporter.").await;
    let r = s.append("audit", r#"{"payload":{"n":1}}"#).await;
    assert_eq!(r.status, 201, "{}", r.text);

    for name in ["refused", "unreachable"] {
        let status = s
            .wait_exporter(name, "a failure", |v| v["ledgers"][0]["last_error"].as_str().is_some_and(|e| !e.is_empty()))
            .await;
        let text = status.to_string();
        assert_no_secret(&format!("GET /v1/exporters/{name}"), &text);
        let list = s.get("/v1/exporters").await;
        assert_no_secret("GET /v1/exporters", &list.text);
        // Still useful: the error says where the POST went.
        let error = status["ledgers"][0]["last_error"].as_str().unwrap_or_default().to_owned();
        assert!(error.contains("127.0.0.1"), "{name}: last_error no longer says where: {error}");
    }
    let refused = s.exporter("refused").await;
    let error = refused["ledgers"][0]["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("400"), "the receiver's status is kept: {error}");
    assert!(error.contains("rejected: x-api-key=***"), "the receiver's answer is kept, redacted: {error}");
    let unreachable = s.exporter("unreachable").await;
    let error = unreachable["ledgers"][0]["last_error"].as_str().unwrap_or_default();
    assert!(error.to_lowercase().contains("refused"), "the cause of a failed connection is kept: {error}");

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = seen.lock().expect("events lock").clone();
        let failed: Vec<&String> = got.iter().filter(|e| e.contains("exporter.failed")).collect();
        if failed.iter().any(|e| e.contains("\"refused\"")) && failed.iter().any(|e| e.contains("\"unreachable\"")) {
            for e in failed {
                assert_no_secret("an exporter.failed event", e);
            }
            break;
        }
        assert!(Instant::now() < deadline, "no exporter.failed event for both exporters within 30 s: {got:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = s.stderr();
    assert!(log.contains("export failing"), "the WARN line of a failing export is logged:\n{log}");
    assert_no_secret("the server's log", &log);
    assert_no_secret("the server's stdout", &s.stdout());
}

/// Starts `ferry serve` with `config`, which must stop it with exit code 1;
/// returns what it printed.
async fn refused_start(env: &Env, config: &std::path::Path, what: &str) -> Exited {
    let Err(StartError::Exited(e)) = Server::try_start(&env.data_dir(), Some(config)).await else {
        panic!("{what} started the server");
    };
    assert_eq!(e.status.code(), Some(1), "{}", e.stderr);
    e
}

#[tokio::test]
async fn a_bad_sink_url_is_refused_without_echoing_its_credentials() {
    let env = Env::new();
    let config = env.config(
        "ferry.toml",
        r#"
[[exporters]]
name = "bad"
sink = "http"
[exporters.config]
url = "http://alice:hunter2-pw@[::1/in?token=qs-secret-1"
"#,
    );
    let e = refused_start(&env, &config, "a malformed url").await;
    assert!(e.stderr.contains("config.url"), "{}", e.stderr);
    assert_no_secret("the startup error", &e.stderr);
}

/// A TOML syntax error names the line and column but never quotes the
/// line: the broken line may be the one that holds a secret.
#[tokio::test]
async fn a_config_syntax_error_names_the_line_without_quoting_it() {
    let env = Env::new();
    let config = env.config(
        "ferry.toml",
        r#"
[[exporters]]
name = "bad"
sink = "http"
[exporters.config]
url = "http://alice:hunter2-pw@example.com/in?token=qs-secret-1
secret = 'hmac-secret-1'
"#,
    );
    let e = refused_start(&env, &config, "a config with a syntax error").await;
    assert!(e.stderr.contains("line 6"), "the error names the line:\n{}", e.stderr);
    assert_no_secret("a TOML syntax error", &e.stderr);
    assert!(!e.stderr.contains("hmac-secret-1"), "{}", e.stderr);
}
