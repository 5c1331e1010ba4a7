//! Issue #13 items 9 and 10, from outside: request bodies may come gzipped,
//! capped at `max_body_bytes` before and after inflating (a zip bomb is 413
//! without being inflated), other encodings are 415, a broken gzip stream
//! is 400; and an entry is refused (422 `invalid_entry`, naming where)
//! when strict JSON parsers could not read it back as sent: a lone
//! surrogate, a number beyond a double, a duplicate object key.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;

use crate::support::{Env, Resp, Server, assert_exit, ferry, parse_line, run_to_exit};

const MIB: usize = 1024 * 1024;
/// The default `max_body_bytes`.
const BODY_MAX_DEFAULT: usize = 16 * MIB;

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("finish the gzip stream")
}

/// A gzip body that inflates to `mib` MiB of zeros: one member of 1 MiB
/// (about 1 KiB compressed) repeated, as RFC 1952 allows, so a GiB costs
/// the test a megabyte.
fn gzip_bomb(mib: usize) -> Vec<u8> {
    gzip(&vec![0; MIB]).repeat(mib)
}

/// POSTs `body` with `Content-Encoding: encoding`.
async fn post_encoded(s: &Server, path: &str, encoding: &str, body: Vec<u8>) -> Resp {
    let req = s
        .http
        .post(s.url(path))
        .header("content-type", "application/json")
        .header("content-encoding", encoding)
        .body(body);
    s.send(req).await
}

/// A server with a stdout exporter `o`, so `POST /v1/exporters/o/reset`
/// (the other route that takes a body) can be tried too; ledger `audit`
/// holds three entries.
async fn seeded_server(env: &Env, extra_config: &str) -> Server {
    let s = env
        .serve_with(&format!(
            "{extra_config}\n[[exporters]]\nname = \"o\"\nsink = \"stdout\"\nbatch = {{ max_entries = 7, linger = \"1ms\" }}\n"
        ))
        .await;
    let r = s.append("audit", r#"{"entries":[{"payload":{"a":1}},{"payload":"two","key":"k"},{"payload":[3]}]}"#).await;
    assert_eq!(r.status, 201, "{}", r.text);
    s
}

/// The peak resident memory of a process (`VmHWM`), in bytes.
fn peak_rss_bytes(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/PID/status");
    kib * 1024
}

#[tokio::test]
async fn a_gzip_body_is_taken_as_if_it_had_been_sent_plain() {
    let env = Env::new();
    let s = seeded_server(&env, "").await;
    let entry = r#"{"payload":{"zipped":true,"n":[1,2,3]},"key":"z"}"#;
    for (i, encoding) in ["gzip", "x-gzip", "GZip", "identity"].into_iter().enumerate() {
        let body = if encoding == "identity" { entry.as_bytes().to_vec() } else { gzip(entry.as_bytes()) };
        let r = post_encoded(&s, "/v1/ledgers/audit/entries", encoding, body).await;
        assert_eq!((r.status, r.ids()), (201, vec![4 + i as u64]), "Content-Encoding: {encoding}: {}", r.text);
    }
    for line in &s.read_all("audit").await[3..] {
        let e = parse_line(line);
        assert_eq!((e.payload.get(), e.key.as_deref()), (r#"{"zipped":true,"n":[1,2,3]}"#, Some("z")), "{line}");
    }
    // A batch, and the exporter reset body, gzipped.
    let batch = gzip(br#"{"entries":[{"payload":1},{"payload":2}]}"#);
    let r = post_encoded(&s, "/v1/ledgers/audit/entries", "gzip", batch).await;
    assert_eq!((r.status, r.ids()), (201, vec![8, 9]), "{}", r.text);
    s.wait_exporter("o", "export everything", |v| v["ledgers"][0]["cursor"] == 9).await;
    let r = post_encoded(&s, "/v1/exporters/o/reset", "gzip", gzip(br#"{"ledger":"audit","from_id":5}"#)).await;
    assert_eq!(r.status, 200, "{}", r.text);
    s.wait_exporter("o", "re-export from 5", |v| v["ledgers"][0]["cursor"] == 9).await;
    let deliveries = s.stdout().lines().filter(|l| parse_line(l).id == 5).count();
    assert_eq!(deliveries, 2, "the gzipped reset did not re-deliver id 5:\n{}", s.stdout());
}

#[tokio::test]
async fn a_gzip_bomb_is_413_body_too_large_without_being_inflated() {
    let env = Env::new();
    let s = seeded_server(&env, "").await;
    let before = s.snapshot().await;
    let peak_before = peak_rss_bytes(s.pid());
    // 1 GiB once inflated, about 1 MiB as sent: well under max_body_bytes
    // compressed, 64 times over it inflated.
    let bomb = gzip_bomb(1024);
    assert!(bomb.len() < BODY_MAX_DEFAULT / 8, "the bomb is {} bytes compressed", bomb.len());
    for path in ["/v1/ledgers/audit/entries", "/v1/ledgers/fresh/entries", "/v1/exporters/o/reset"] {
        let r = post_encoded(&s, path, "gzip", bomb.clone()).await;
        r.assert_error(413, "body_too_large");
        assert!(r.json()["error"]["message"].as_str().unwrap().contains(&BODY_MAX_DEFAULT.to_string()), "{}", r.text);
    }
    // Without a content-length (chunked), the same.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = bomb.chunks(64 * 1024).map(|c| Ok(c.to_vec())).collect();
    let req = s
        .http
        .post(s.url("/v1/ledgers/audit/entries"))
        .header("content-encoding", "gzip")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)));
    s.send(req).await.assert_error(413, "body_too_large");
    // Inflating stopped at the cap: the server's peak memory grew by far
    // less than the 1 GiB the bomb holds (at most a body's worth is kept).
    let grown = peak_rss_bytes(s.pid()).saturating_sub(peak_before);
    assert!(grown < 256 * MIB, "the server's peak RSS grew by {} MiB for a 1 GiB gzip bomb", grown / MIB);
    assert_eq!(s.snapshot().await, before, "a gzip bomb changed stored data (or created a ledger)");
    // Inflating to exactly max_body_bytes is still accepted.
    let pad = "x".repeat(BODY_MAX_DEFAULT - r#"{"entries":[{"payload":""}]}"#.len());
    let at_limit = format!(r#"{{"entries":[{{"payload":"{pad}"}}]}}"#);
    assert_eq!(at_limit.len(), BODY_MAX_DEFAULT);
    let r = post_encoded(&s, "/v1/ledgers/big/entries", "gzip", gzip(at_limit.as_bytes())).await;
    // The payload is over max_entry_bytes: the body was read whole (no 413
    // body_too_large) and the entry refused on its own size.
    r.assert_error(413, "entry_too_large");
}

#[tokio::test]
async fn a_gzip_body_over_max_body_bytes_as_sent_is_413_even_if_it_inflates_to_little() {
    let env = Env::new();
    let s = seeded_server(&env, "[server]\nmax_body_bytes = \"64KiB\"\n[storage]\nmax_entry_bytes = \"1KiB\"\n").await;
    let before = s.snapshot().await;
    // Empty gzip members: 20 bytes each that inflate to nothing, so only
    // the bound on the bytes as sent can stop them.
    let empties = gzip(b"").repeat(4_000);
    assert!(empties.len() > 64 * 1024);
    // Incompressible data: larger compressed than the limit.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let noise: Vec<u8> = (0..100 * 1024)
        .map(|_| {
            // xorshift64: bytes no compressor can shrink.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let noisy = gzip(&noise);
    assert!(noisy.len() > 64 * 1024);
    for body in [empties, noisy] {
        for path in ["/v1/ledgers/audit/entries", "/v1/exporters/o/reset"] {
            post_encoded(&s, path, "gzip", body.clone()).await.assert_error(413, "body_too_large");
            // Without a content-length (chunked), counted as it arrives.
            let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(4096).map(|c| Ok(c.to_vec())).collect();
            let req = s
                .http
                .post(s.url(path))
                .header("content-encoding", "gzip")
                .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)));
            s.send(req).await.assert_error(413, "body_too_large");
        }
    }
    assert_eq!(s.snapshot().await, before, "an oversize gzip body changed stored data");
}

#[tokio::test]
async fn a_malformed_gzip_stream_is_400_invalid_body_and_changes_nothing() {
    let env = Env::new();
    let s = seeded_server(&env, "").await;
    let before = s.snapshot().await;
    let good = gzip(br#"{"payload":{"a":1}}"#);
    let truncated = good[..good.len() - 6].to_vec();
    let mut bad_crc = good.clone();
    let crc_at = bad_crc.len() - 8;
    bad_crc[crc_at] ^= 0xff;
    let mut bad_deflate = good.clone();
    bad_deflate[10] = 0xff;
    let trailing_garbage = [good.clone(), b"{}".to_vec()].concat();
    for (what, body) in [
        ("plain JSON", br#"{"payload":1}"#.to_vec()),
        ("a truncated stream", truncated),
        ("a wrong CRC", bad_crc),
        ("a broken deflate block", bad_deflate),
        ("garbage after the member", trailing_garbage),
    ] {
        for path in ["/v1/ledgers/audit/entries", "/v1/ledgers/fresh/entries", "/v1/exporters/o/reset"] {
            let r = post_encoded(&s, path, "gzip", body.clone()).await;
            r.assert_error(400, "invalid_body");
            assert!(r.text.contains("gzip"), "{what} to {path}: the message does not say gzip: {}", r.text);
        }
    }
    assert_eq!(s.snapshot().await, before, "a malformed gzip body changed stored data (or created a ledger)");
}

#[tokio::test]
async fn other_content_encodings_are_415_unsupported_media_type() {
    let env = Env::new();
    let s = seeded_server(&env, "").await;
    let before = s.snapshot().await;
    let plain = br#"{"payload":1}"#.to_vec();
    for encoding in ["br", "deflate", "zstd", "compress", "gzip, gzip", "identity, gzip", "bogus", ""] {
        for path in ["/v1/ledgers/audit/entries", "/v1/ledgers/fresh/entries", "/v1/exporters/o/reset"] {
            let r = post_encoded(&s, path, encoding, plain.clone()).await;
            r.assert_error(415, "unsupported_media_type");
            assert!(r.text.contains("gzip"), "Content-Encoding {encoding:?}: name what is supported: {}", r.text);
        }
    }
    // Two Content-Encoding headers are two codings: refused too.
    let req = s
        .http
        .post(s.url("/v1/ledgers/audit/entries"))
        .header("content-encoding", "gzip")
        .header("content-encoding", "gzip")
        .body(gzip(&gzip(&plain)));
    s.send(req).await.assert_error(415, "unsupported_media_type");
    assert_eq!(s.snapshot().await, before, "a body in an unsupported encoding changed stored data");
}

/// Sends the head of a POST that announces `length` body bytes but sends
/// none, and returns the status line and headers the server answers with
/// (within 10 s: it must not wait for the body).
fn answer_without_sending_the_body(s: &Server, path: &str, headers: &str, length: usize) -> String {
    let mut socket = TcpStream::connect(s.addr).expect("connect");
    socket.set_read_timeout(Some(Duration::from_secs(10))).expect("read timeout");
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n{headers}content-length: {length}\r\n\r\n",
        s.addr
    );
    socket.write_all(head.as_bytes()).expect("send the request head");
    let mut answer = vec![0; 4096];
    let n = socket.read(&mut answer).expect("an answer before the body was sent");
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn without_a_token_an_encoded_body_is_refused_401_before_it_is_read() {
    let env = Env::new();
    let s = env.serve_with("[server]\ntokens = [\"secret\"]\n").await;
    for encoding in ["gzip", "br"] {
        for path in ["/v1/ledgers/audit/entries", "/v1/exporters/o/reset"] {
            let answer =
                answer_without_sending_the_body(&s, path, &format!("content-encoding: {encoding}\r\n"), 10 * MIB);
            assert!(answer.starts_with("HTTP/1.1 401"), "{encoding} to {path}: {answer}");
            assert!(answer.contains("\"unauthorized\""), "{encoding} to {path}: {answer}");
        }
    }
    // With the token the same bomb is 413, as without auth.
    let req = s
        .http
        .post(s.url("/v1/ledgers/audit/entries"))
        .bearer_auth("secret")
        .header("content-encoding", "gzip")
        .body(gzip_bomb(64));
    s.send(req).await.assert_error(413, "body_too_large");
}

/// Appends `body` to `ledger` and asserts 422 `invalid_entry` with a
/// message naming `path` and containing `detail`.
#[track_caller]
fn assert_refused(r: &Resp, body: &str, path: &str, detail: &str) {
    assert_eq!(r.status, 422, "{body} was not refused: {}", r.text);
    r.assert_error(422, "invalid_entry");
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.starts_with(&format!("{path}: ")), "{body}: the message does not start with {path:?}: {message}");
    assert!(message.contains(detail), "{body}: the message does not mention {detail:?}: {message}");
}

#[tokio::test]
async fn what_strict_json_parsers_cannot_read_back_is_422_invalid_entry_naming_where() {
    let env = Env::new();
    let s = env.serve().await;
    let r = s.append("audit", r#"{"payload":{"a":1}}"#).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let before = s.snapshot().await;
    let huge_integer = format!("1{}", "0".repeat(400));
    let many_keys: String = (0..40).map(|i| format!(r#""k{i}":{i},"#)).collect();
    let cases: Vec<(String, &str, &str)> = vec![
        // Lone surrogates, in strings and in object keys, at any depth.
        (r#"{"payload":"\ud800"}"#.into(), "payload", r"\ud800"),
        (r#"{"payload":{"a":{"b":"x\uDC00y"}}}"#.into(), "payload.a.b", r"\uDC00"),
        (r#"{"payload":["ok","\ud800\u0041"]}"#.into(), "payload[1]", r"\ud800"),
        (r#"{"payload":"\ud800\ud800"}"#.into(), "payload", r"\ud800"),
        (r#"{"payload":"\ud83d\ude00\ude00"}"#.into(), "payload", r"\ude00"),
        (r#"{"payload":{"ok":{"\udbff":1}}}"#.into(), "payload.ok", r"\udbff"),
        // Numbers no 64-bit float can hold.
        (r#"{"payload":1e999}"#.into(), "payload", "1e999"),
        (r#"{"payload":{"n":[0,-1e999]}}"#.into(), "payload.n[1]", "-1e999"),
        (r#"{"payload":{"n":1.8E+308}}"#.into(), "payload.n", "1.8E+308"),
        (format!(r#"{{"payload":{{"big":{huge_integer}}}}}"#), "payload.big", "range"),
        // Duplicate object keys, at any depth, escaped or not, in small
        // objects and large ones.
        (r#"{"payload":{"a":1,"a":2}}"#.into(), "payload.a", "duplicate"),
        (r#"{"payload":[{"x":{"b":1,"c":2,"b":3}}]}"#.into(), "payload[0].x.b", "duplicate"),
        (r#"{"payload":{"a":1,"\u0061":2}}"#.into(), "payload.a", "duplicate"),
        (format!(r#"{{"payload":{{{many_keys}"k7":0}}}}"#), "payload.k7", "duplicate"),
        (r#"{"payload":{"odd key":{"n":1,"n":1}}}"#.into(), r#"payload["odd key"].n"#, "duplicate"),
        // The same rule for key and idempotency_key.
        (r#"{"payload":1,"key":"\ud800"}"#.into(), "key", r"\ud800"),
        (r#"{"payload":1,"idempotency_key":"x\udfff"}"#.into(), "idempotency_key", r"\udfff"),
        // In a batch, the entry is named by its index.
        (r#"{"entries":[{"payload":1},{"payload":{"a":1,"a":1}}]}"#.into(), "entries[1].payload.a", "duplicate"),
        (r#"{"entries":[{"payload":1},{"payload":2,"key":"\udc00"}]}"#.into(), "entries[1].key", r"\udc00"),
        (r#"{"entries":[{"payload":1e400}]}"#.into(), "entries[0].payload", "1e400"),
    ];
    for (body, path, detail) in &cases {
        for ledger in ["audit", "fresh"] {
            assert_refused(&s.append(ledger, body.clone()).await, body, path, detail);
        }
    }
    assert_eq!(s.snapshot().await, before, "a refused entry changed stored data (or created a ledger)");
}

#[tokio::test]
async fn what_strict_json_parsers_can_read_back_is_stored_byte_for_byte() {
    let env = Env::new();
    let s = env.serve().await;
    let payloads = [
        r#""\ud83d\ude00 and \uD83D\uDE00 and 😀""#,
        r#"[1e308,-1.7976931348623157e308,17976931348623157e292,0.1e309,1e-999,-0.0]"#,
        r#"18446744073709551616"#,
        r#"{"a":{"a":1},"b":[{"a":1},{"a":2}],"A":3}"#,
        r#"{"nul":"\u0000","slash":"\/","esc":"\"\\\n"}"#,
        r#"{"\ud83d\ude00":1,"😀x":2}"#,
    ];
    for payload in payloads {
        let r = s.append("ok", format!(r#"{{"payload":{payload},"key":"\ud83d\ude00"}}"#)).await;
        assert_eq!(r.status, 201, "{payload}: {}", r.text);
    }
    let stored = s.read_all("ok").await;
    assert_eq!(stored.len(), payloads.len());
    for (line, payload) in stored.iter().zip(payloads) {
        let e = parse_line(line);
        assert_eq!(e.payload.get(), payload, "not stored as sent");
        assert_eq!(e.key.as_deref(), Some("😀"));
    }
}

#[test]
fn the_cli_refuses_the_same_payloads_before_sending_them() {
    // No server listens on the port: the refusal must come first.
    for (payload, path) in [(r#"{"a":1,"a":2}"#, "payload.a"), (r#"[1e999]"#, "payload[0]"), (r#""\ud800""#, "payload")]
    {
        let mut cmd = ferry();
        cmd.args(["append", "audit", payload, "--server", "http://127.0.0.1:9"]);
        let out = run_to_exit(cmd, None);
        assert_exit(&out, 2, payload);
        assert!(out.stderr.contains(&format!("{path}: ")), "{payload}: {}", out.stderr);
    }
}
