//! The listener speaks what lean clients use: HTTP/1.1 with pipelined
//! requests (answered in order on one connection) and HTTP/2 without TLS
//! (h2c, prior knowledge) on the same port, with the same auth, limits and
//! answers as any other request.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::{Env, Server};

/// `n` appends to `ledger` written to one connection in a single write,
/// then the answers read back: the statuses and bodies, in order.
fn pipelined(s: &Server, ledger: &str, n: usize) -> Vec<(u16, String)> {
    let mut tcp = TcpStream::connect(s.addr).expect("connect");
    tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut all = Vec::new();
    for i in 0..n {
        let body = format!(r#"{{"payload":{{"n":{i}}}}}"#);
        let close = if i + 1 == n { "connection: close\r\n" } else { "" };
        all.extend_from_slice(
            format!(
                "POST /v1/ledgers/{ledger}/entries HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\n{close}\r\n{body}",
                body.len()
            )
            .as_bytes(),
        );
    }
    tcp.write_all(&all).expect("send every request at once");
    let mut out = String::new();
    tcp.read_to_string(&mut out).expect("read the answers");
    // Each answer: a status line, headers, and a body of content-length.
    let mut answers = Vec::new();
    let mut rest = out.as_str();
    while let Some((head, after)) = rest.split_once("\r\n\r\n") {
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
        let len: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length: ").map(|v| v.trim().parse().unwrap()))
            .expect("content-length");
        answers.push((status, after[..len].to_owned()));
        rest = &after[len..];
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_http1_requests_are_answered_in_order_on_one_connection() {
    let env = Env::new();
    let s = env.serve().await;
    let server = &s;
    let answers = tokio::task::block_in_place(|| pipelined(server, "audit", 50));
    assert_eq!(answers.len(), 50);
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!((*status, body.as_str()), (201, format!(r#"{{"ids":[{}]}}"#, i + 1).as_str()));
    }
    let lines = s.read_all("audit").await;
    assert_eq!(lines.len(), 50);
    assert!(lines[49].contains(r#""payload":{"n":49}"#), "{}", lines[49]);
}

/// An HTTP/2 connection without TLS (prior knowledge) to the server.
async fn h2c(s: &Server) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tcp = tokio::net::TcpStream::connect(s.addr).await.expect("connect");
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await.expect("h2 handshake");
    tokio::spawn(conn);
    send
}

async fn call(
    send: &mut hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (u16, String) {
    send.ready().await.expect("the connection takes a request");
    let answer = send.send_request(req).await.expect("an answer");
    let status = answer.status().as_u16();
    let body = answer.into_body().collect().await.expect("the body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn post(path: &str, token: Option<&str>, body: &str) -> Request<Full<Bytes>> {
    let mut req = Request::post(format!("http://x{path}")).header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.body(Full::new(Bytes::from(body.to_owned()))).expect("request")
}

#[tokio::test]
async fn http2_without_tls_appends_concurrently_on_one_connection_with_the_same_auth_and_limits() {
    let env = Env::new();
    let s = env
        .serve_with(
            "[server]\ntokens = [\"secret\"]\nmax_body_bytes = \"1KiB\"\n[storage]\nmax_entry_bytes = \"512B\"\n",
        )
        .await;
    let mut send = h2c(&s).await;

    // Without a token: 401, as over HTTP/1.1.
    let (status, body) = call(&mut send, post("/v1/ledgers/audit/entries", None, r#"{"payload":1}"#)).await;
    assert_eq!(status, 401, "{body}");
    // 64 appends in flight at once on the one connection, every one durable.
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..64 {
        let mut send = send.clone();
        calls.spawn(async move {
            call(&mut send, post("/v1/ledgers/audit/entries", Some("secret"), &format!(r#"{{"payload":{i}}}"#))).await
        });
    }
    let mut ids = Vec::new();
    while let Some(done) = calls.join_next().await {
        let (status, body) = done.expect("task");
        assert_eq!(status, 201, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        ids.push(v["ids"][0].as_u64().expect("an id"));
    }
    ids.sort_unstable();
    assert_eq!(ids, (1..=64).collect::<Vec<u64>>(), "dense ids, none lost or doubled");
    // The body limit holds: 413, nothing appended.
    let big = format!(r#"{{"payload":"{}"}}"#, "x".repeat(2048));
    let (status, body) = call(&mut send, post("/v1/ledgers/audit/entries", Some("secret"), &big)).await;
    assert_eq!(status, 413, "{body}");
    let mut get = Request::get("http://x/v1/ledgers/audit").header("authorization", "Bearer secret");
    get = get.header("accept", "application/json");
    let (status, body) = call(&mut send, get.body(Full::new(Bytes::new())).expect("request")).await;
    assert_eq!(status, 200, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(info["head"], 64);
}
