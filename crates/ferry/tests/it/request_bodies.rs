//! Issue #13 item 10, from outside: an entry is refused (422
//! `invalid_entry`, naming where) when strict JSON parsers could not read
//! it back as sent: a lone surrogate, a number beyond a double, a duplicate
//! object key.

use crate::support::{Env, Resp, assert_exit, ferry, parse_line, run_to_exit};

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
