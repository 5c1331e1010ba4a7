//! Backup and restore over the API (issue #18) against real servers: a
//! pinned read streams a ledger exactly as the pin cut it, as backup lines
//! with their idempotency keys; an import writes those lines into another
//! server, where they read back byte for byte, merges what is already
//! there, and refuses a conflicting, malformed or misaddressed line, or an
//! oversize body, changing nothing. Both routes are admin's.

use std::time::Duration;

use axum::body::Bytes;
use ferry_client::{Append, Client, Error, NewEntry};
use reqwest::Method;
use serde_json::Value;

use crate::support::{Env, Server, http};

/// `audit` has a hash chain, `plain` none; bodies up to 1 MiB.
const CONFIG: &str = "[server]\nmax_body_bytes = \"1MiB\"\n[storage]\nhash_chain = [\"audit*\"]\n";
const LEDGERS: [&str; 2] = ["audit", "plain"];
/// Entries before the pin.
const PINNED: u64 = 2_500;

/// Appends entries `from..from + n` to `ledger`, each with a key and the
/// idempotency key `idem-{ledger}-{i}`.
async fn fill(server: &Server, ledger: &str, from: u64, n: u64) {
    let entries: Vec<String> = (from..from + n)
        .map(|i| {
            format!(
                r#"{{"payload":{{"n":{i},"pad":"x{i}"}},"key":"user-{}","idempotency_key":"idem-{ledger}-{i}"}}"#,
                i % 7
            )
        })
        .collect();
    let r = server.append(ledger, format!(r#"{{"entries":[{}]}}"#, entries.join(","))).await;
    assert!(r.status == 201 || r.status == 200, "append to {ledger}: {}", r.text);
    assert_eq!(r.ids(), (from..from + n).collect::<Vec<_>>());
}

/// Every line of a pinned read, and the pinned head it announced.
async fn pinned_lines(client: &Client, pin: &str, ledger: &str, from: Option<u64>) -> (Option<u64>, Vec<String>) {
    let mut read = client.read_pinned_lines(pin, ledger, from).await.expect("a pinned read");
    let mut lines = Vec::new();
    while let Some(line) = read.next_line().await.expect("the stream goes on to its end") {
        lines.push(String::from_utf8(line.to_vec()).expect("a UTF-8 line"));
    }
    (read.pinned_head(), lines)
}

fn ndjson(lines: &[String]) -> Bytes {
    Bytes::from(lines.iter().map(|l| format!("{l}\n")).collect::<String>())
}

/// The ledger's `first_prev_hash` (the chain hash before its First), on
/// a chained ledger.
async fn first_prev_hash(server: &Server, ledger: &str) -> Option<String> {
    let r = server.get(&format!("/v1/ledgers/{ledger}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["first_prev_hash"].as_str().map(str::to_owned)
}

/// The server's error, asserting status and code.
#[track_caller]
fn api_error<T: std::fmt::Debug>(result: Result<T, Error>, status: u16, code: &str) -> ferry_client::ApiError {
    let e = result.expect_err("the server refuses it");
    let api = e.api().unwrap_or_else(|| panic!("expected {status} {code}, got {e:?}")).clone();
    assert_eq!((api.status.as_u16(), api.code.as_str()), (status, code), "{api}");
    api
}

#[tokio::test]
async fn a_pinned_read_is_the_ledger_as_the_pin_cut_it_with_idempotency_keys() {
    let env = Env::new();
    let server = env.serve_with(CONFIG).await;
    for ledger in LEDGERS {
        fill(&server, ledger, 1, PINNED).await;
    }
    let client = server.client();
    let pin = client.create_pin(Duration::from_secs(120)).await.expect("a pin");
    assert_eq!(pin.heads.get("audit"), Some(&PINNED), "{pin:?}");
    assert!(client.pins().await.expect("the pins").iter().any(|p| p.pin == pin.pin));
    for ledger in LEDGERS {
        fill(&server, ledger, PINNED + 1, 100).await;
    }

    for ledger in LEDGERS {
        let (head, lines) = pinned_lines(&client, &pin.pin, ledger, None).await;
        assert_eq!(head, Some(PINNED), "Ferry-Pinned-Head of {ledger}");
        assert_eq!(lines.len() as u64, PINNED, "{ledger}: First..=pinned head, nothing appended since");
        // The same entries a plain read gives, plus their idempotency keys.
        let plain = server.read_all(ledger).await;
        for (i, line) in lines.iter().enumerate() {
            let id = i as u64 + 1;
            let mut v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{ledger} line {id}: {e}: {line}"));
            assert_eq!((v["ledger"].as_str(), v["id"].as_u64()), (Some(ledger), Some(id)), "{line}");
            let key = v.as_object_mut().unwrap().remove("idempotency_key");
            assert_eq!(key, Some(Value::from(format!("idem-{ledger}-{id}"))), "{line}");
            assert_eq!(v, serde_json::from_str::<Value>(&plain[i]).unwrap(), "{ledger} {id}");
        }
        assert_eq!(lines[0].contains(r#""hash":""#), ledger == "audit", "{}", lines[0]);
    }

    // `from` and `limit`; the header as sent.
    let (_, tail) = pinned_lines(&client, &pin.pin, "audit", Some(2_001)).await;
    assert_eq!(tail.len(), 500);
    assert!(tail[0].starts_with(r#"{"ledger":"audit","id":2001,"#), "{}", tail[0]);
    let url = server.url(&format!("/v1/pins/{}/ledgers/plain/entries?from=10&limit=25", pin.pin));
    let resp = server.http.get(url).send().await.expect("GET");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    assert_eq!(resp.headers()["ferry-pinned-head"], "2500");
    let text = resp.text().await.unwrap();
    assert_eq!(text.lines().count(), 25);
    assert!(text.starts_with(r#"{"ledger":"plain","id":10,"#) && text.ends_with('\n'), "{text}");
    let limit0 = format!("/v1/pins/{}/ledgers/plain/entries?limit=0", pin.pin);
    server.get(&limit0).await.assert_error(400, "invalid_limit");
    let unknown = format!("/v1/pins/{}/ledgers/plain/entries?limit=1&colour=red", pin.pin);
    server.get(&unknown).await.assert_error(400, "invalid_query");

    // What the pin does not hold.
    api_error(client.read_pinned_lines("12345", "audit", None).await, 404, "pin_not_found");
    api_error(client.read_pinned_lines("not-a-pin", "audit", None).await, 404, "pin_not_found");
    assert_eq!(server.put("/v1/ledgers/later").await.status, 201);
    api_error(client.read_pinned_lines(&pin.pin, "later", None).await, 404, "ledger_not_in_pin");
    api_error(client.read_pinned_lines(&pin.pin, "never", None).await, 404, "ledger_not_in_pin");
    let bad_name = format!("/v1/pins/{}/ledgers/Bad!/entries", pin.pin);
    server.get(&bad_name).await.assert_error(400, "invalid_ledger_name");
    client.delete_ledger("plain").await.expect("delete plain");
    api_error(client.read_pinned_lines(&pin.pin, "plain", None).await, 409, "pinned_ledger_gone");
    // Created again: still not what the pin cut.
    fill(&server, "plain", 1, 3).await;
    api_error(client.read_pinned_lines(&pin.pin, "plain", None).await, 409, "pinned_ledger_gone");

    let renewed = client.renew_pin(&pin.pin, Duration::from_secs(300)).await.expect("renew");
    assert!(renewed.expires_at > pin.expires_at);
    client.delete_pin(&pin.pin).await.expect("delete the pin");
    api_error(client.read_pinned_lines(&pin.pin, "audit", None).await, 404, "pin_not_found");
    api_error(client.delete_pin(&pin.pin).await, 404, "pin_not_found");
    server.stop();
}

#[tokio::test]
async fn a_pinned_read_whose_pin_goes_mid_stream_ends_in_an_error_not_short() {
    let env = Env::new();
    let server = env.serve().await;
    // 20 MB: more than socket buffers hold, so most pages are read after
    // the pin is gone.
    let pad = "p".repeat(2_000);
    for batch in 0..8u64 {
        let entries: Vec<String> =
            (0..1_250).map(|i| format!(r#"{{"payload":{{"n":{},"pad":"{pad}"}}}}"#, batch * 1_250 + i)).collect();
        let r = server.append("big", format!(r#"{{"entries":[{}]}}"#, entries.join(","))).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let client = server.client();
    let pin = client.create_pin(Duration::from_secs(60)).await.expect("a pin");
    let mut read = client.read_pinned_lines(&pin.pin, "big", None).await.expect("a pinned read");
    assert_eq!(read.pinned_head(), Some(10_000));
    assert!(read.next_line().await.expect("the first line").is_some());
    client.delete_pin(&pin.pin).await.expect("delete the pin");
    let mut lines = 1;
    let end = loop {
        match read.next_line().await {
            Ok(Some(_)) => lines += 1,
            other => break other,
        }
    };
    assert!(end.is_err(), "a stream whose pin went ended without an error after {lines} lines: {end:?}");
    assert!(lines < 10_000, "{lines}");
    assert!(server.stderr().contains("pinned NDJSON stream cut short"), "{}", server.stderr());
    server.stop();
}

#[tokio::test]
async fn an_import_restores_a_pinned_read_byte_for_byte_and_merges_what_is_there() {
    let (env_a, env_b) = (Env::new(), Env::new());
    let (a, b) = (env_a.serve_with(CONFIG).await, env_b.serve_with(CONFIG).await);
    for ledger in LEDGERS {
        fill(&a, ledger, 1, PINNED).await;
    }
    let (ca, cb) = (a.client(), b.client());
    let pin = ca.create_pin(Duration::from_secs(120)).await.expect("a pin");
    for ledger in LEDGERS {
        fill(&a, ledger, PINNED + 1, 100).await;
    }

    for ledger in LEDGERS {
        let (_, lines) = pinned_lines(&ca, &pin.pin, ledger, None).await;
        let prev = first_prev_hash(&a, ledger).await;
        assert_eq!(prev.is_some(), ledger == "audit");
        let done = cb.import(ledger, ndjson(&lines), prev.as_deref()).await.expect("the import");
        assert_eq!((done.ledger.as_str(), done.imported, done.present), (ledger, PINNED, 0), "{done:?}");
        assert_eq!((done.head, done.created), (PINNED, true), "{done:?}");
        // Read back from B: the very lines A serves, hashes included.
        let from_a = a.read_all(ledger).await;
        assert_eq!(b.read_all(ledger).await, from_a[..PINNED as usize], "{ledger} restored byte for byte");
        assert_eq!(first_prev_hash(&b, ledger).await, prev, "{ledger}: the chain starts where A's did");

        // Sent again: everything present, nothing changes.
        let again = cb.import(ledger, ndjson(&lines), prev.as_deref()).await.expect("the same import again");
        assert_eq!((again.imported, again.present, again.head, again.created), (0, PINNED, PINNED, false));

        // A later cut overlapping it: the new tail is imported, the rest merged.
        let later = ca.create_pin(Duration::from_secs(60)).await.expect("a later pin");
        let (_, tail) = pinned_lines(&ca, &later.pin, ledger, Some(2_001)).await;
        let joins = parse_hash(&lines[1_999]);
        let merged = cb.import(ledger, ndjson(&tail), joins.as_deref()).await.expect("the merge");
        assert_eq!((merged.imported, merged.present, merged.head), (100, 500, PINNED + 100), "{merged:?}");
        assert_eq!(b.read_all(ledger).await, from_a, "{ledger} after the merge");
        ca.delete_pin(&later.pin).await.expect("delete the later pin");
    }

    // The restored idempotency keys still answer a retry with the original id.
    let retry = b.append("audit", r#"{"payload":{"n":"again"},"idempotency_key":"idem-audit-42"}"#).await;
    assert_eq!((retry.status, retry.ids()), (200, vec![42]), "{}", retry.text);
    a.stop();
    b.stop();
}

/// The `hash` field of a backup line.
fn parse_hash(line: &str) -> Option<String> {
    serde_json::from_str::<Value>(line).expect("a backup line")["hash"].as_str().map(str::to_owned)
}

#[tokio::test]
async fn a_bad_import_is_refused_whole_and_changes_nothing() {
    let env = Env::new();
    let server = env.serve_with(CONFIG).await;
    fill(&server, "plain", 1, 20).await;
    let client = server.client();
    let pin = client.create_pin(Duration::from_secs(60)).await.expect("a pin");
    let (_, lines) = pinned_lines(&client, &pin.pin, "plain", None).await;
    // New lines 21..=30 to import, made from 1..=10, stamped as the head.
    let head_ts = serde_json::from_str::<Value>(&lines[19]).unwrap()["ts"].clone();
    let fresh: Vec<String> = lines[..10]
        .iter()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            let id = v["id"].as_u64().unwrap() + 20;
            v["id"] = id.into();
            v["ts"] = head_ts.clone();
            v["idempotency_key"] = format!("fresh-{id}").into();
            serde_json::to_string(&v).unwrap()
        })
        .collect();
    let before = server.snapshot().await;

    // A line that differs from what is stored: 409 naming the id.
    let mut conflicting = lines[5..12].to_vec();
    conflicting[3] = conflicting[3].replace(r#""pad":"x9""#, r#""pad":"changed""#);
    let api = api_error(client.import("plain", ndjson(&conflicting), None).await, 409, "import_conflict");
    assert_eq!(api.extra.get("id"), Some(&Value::from(9)), "{api}");

    // A malformed line: 422 naming the line (1-based, blank lines counted).
    let mut body = fresh.clone();
    body[4] = body[4].replace(r#""payload":"#, r#""payload":{"#);
    body.insert(1, String::new());
    let api = api_error(client.import("plain", ndjson(&body), None).await, 422, "invalid_entry");
    assert!(api.message.starts_with("line 6: "), "{api}");

    // A line of another ledger.
    let api = api_error(client.import("audit", ndjson(&fresh), None).await, 422, "invalid_entry");
    assert!(api.message.starts_with(r#"line 1: ledger "plain" is not "audit""#), "{api}");

    // Gaps, unknown fields, a bad prev_hash, an empty body.
    let gap = [fresh[0].clone(), fresh[2].clone()];
    let api = api_error(client.import("plain", ndjson(&gap), None).await, 422, "invalid_entry");
    assert!(api.message.starts_with("line 2: id 23 does not follow id 21"), "{api}");
    let extra = [fresh[0].replacen('{', r#"{"colour":"red","#, 1)];
    let api = api_error(client.import("plain", ndjson(&extra), None).await, 422, "invalid_entry");
    assert!(api.message.starts_with("line 1: unknown field `colour`"), "{api}");
    api_error(client.import("plain", ndjson(&fresh), Some("ABC")).await, 400, "invalid_query");
    api_error(client.import("plain", Bytes::new(), None).await, 422, "empty_batch");

    // Over max_body_bytes (1 MiB here), as sent and once inflated.
    let big: Vec<String> = std::iter::repeat_n(fresh[0].clone(), 1_048_576 / fresh[0].len() + 1).collect();
    let api = api_error(client.import("plain", ndjson(&big), None).await, 413, "body_too_large");
    assert!(!api.message.is_empty());
    assert_eq!(server.snapshot().await, before, "a refused import changed something");

    // The same lines, well formed: imported.
    let done = client.import("plain", ndjson(&fresh), None).await.expect("the import");
    assert_eq!((done.imported, done.present, done.head, done.created), (10, 0, 30, false), "{done:?}");
    server.stop();
}

/// Every ledger and its entries, as `token` reads them: equal snapshots
/// mean nothing changed.
async fn snapshot_as(server: &Server, token: &str) -> String {
    let client = server.client().with_token(token);
    let mut out = String::new();
    for ledger in client.ledgers().await.expect("the ledgers") {
        out.push_str(&format!("{ledger:?}\n"));
        let query = ferry_client::ReadQuery { limit: Some(10_000), ..Default::default() };
        for e in client.read(&ledger.name, &query).await.expect("a read").entries {
            out.push_str(&format!("{} {} {:?} {}\n", e.id, e.ts, e.key, e.payload.get()));
        }
    }
    out
}

/// `[server] tokens` with a reader and an admin token.
const TOKENS: &str = "[server]\ntokens = [\"root-secret\"]\n\
    [[server.scoped_tokens]]\nname = \"reader\"\nsecret = \"reader-secret\"\nledgers = [\"*\"]\ncan = [\"read\", \"append\"]\n\
    [[server.scoped_tokens]]\nname = \"ops\"\nsecret = \"ops-secret\"\nledgers = [\"*\"]\ncan = [\"admin\"]\n";

#[tokio::test]
async fn pinned_reads_and_imports_are_admins() {
    let env = Env::new();
    let server = env.serve_with(TOKENS).await;
    let ops = server.client().with_token("ops-secret");
    let reader = server.client().with_token("reader-secret");
    let two = Append::batch(vec![NewEntry::new(&1).unwrap(), NewEntry::new(&2).unwrap()]);
    assert_eq!(reader.append("plain", &two).await.expect("the reader appends").ids, [1, 2]);
    let pin = ops.create_pin(Duration::from_secs(60)).await.expect("a pin");
    let (_, lines) = pinned_lines(&ops, &pin.pin, "plain", None).await;
    assert_eq!(lines.len(), 2);
    let before = snapshot_as(&server, "root-secret").await;

    api_error(reader.read_pinned_lines(&pin.pin, "plain", None).await, 403, "forbidden");
    api_error(reader.import("copy", ndjson(&lines), None).await, 403, "forbidden");
    api_error(reader.create_pin(Duration::from_secs(60)).await, 403, "forbidden");
    let nobody = server.client();
    api_error(nobody.read_pinned_lines(&pin.pin, "plain", None).await, 401, "unauthorized");
    api_error(nobody.import("plain", ndjson(&lines), None).await, 401, "unauthorized");
    let stranger = server.client().with_token("not-a-token");
    api_error(stranger.import("plain", ndjson(&lines), None).await, 401, "unauthorized");
    assert_eq!(snapshot_as(&server, "root-secret").await, before, "a refused import changed something");

    // The admin's import is logged with its actor.
    let body = ndjson(&lines).to_vec();
    let copy = String::from_utf8(body).unwrap().replace(r#""ledger":"plain""#, r#""ledger":"copy""#);
    let done = ops.import("copy", Bytes::from(copy), None).await.expect("the admin imports");
    assert_eq!((done.imported, done.created), (2, true));
    let log = server.stderr();
    assert!(log.contains("entries imported") && log.contains("ops"), "{log}");
    let delete = http().request(Method::DELETE, server.url(&format!("/v1/pins/{}", pin.pin))).bearer_auth("ops-secret");
    assert_eq!(server.send(delete).await.status, 204);
    server.stop();
}
