//! SPEC §4 and §2.8 over real HTTP: every bad request gets a precise error
//! (status and code) and changes nothing a client can observe; the happy
//! paths of append, read, ledgers, idempotency, auth and auto-create.

use serde_json::Value;

use crate::support::{Env, Server, parse_line, raw_request};

/// Small limits so that the edges are cheap to reach.
const SMALL_LIMITS: &str = "[server]\nmax_body_bytes = \"64KiB\"\n[storage]\nmax_entry_bytes = \"1KiB\"\n";
const ENTRY_MAX: usize = 1024;
const BODY_MAX: usize = 64 * 1024;

/// A ledger `audit` with three entries, so there is something to protect.
async fn seeded(server: &Server) {
    let r = server
        .append("audit", r#"{"entries":[{"payload":{"a":1}},{"payload":"two","key":"k"},{"payload":[3]}]}"#)
        .await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.ids(), [1, 2, 3]);
}

/// A JSON string payload whose compact text is exactly `len` bytes.
fn string_payload(len: usize) -> String {
    format!("\"{}\"", "x".repeat(len - 2))
}

#[tokio::test]
async fn invalid_ledger_names_are_400_invalid_ledger_name_and_change_nothing() {
    let env = Env::new();
    let s = env.serve().await;
    seeded(&s).await;
    let before = s.snapshot().await;
    let long = "a".repeat(64);
    // Percent-encoded forms are sent as written and decoded by the server.
    for name in ["Audit", "a%2Fb", "a%2F..%2Fb", long.as_str(), "-a", "_a", ".a", "a%20b", "%C3%A9t%C3%A9", "a%00"] {
        let entries = format!("/v1/ledgers/{name}/entries");
        let ledger = format!("/v1/ledgers/{name}");
        for (what, r) in [
            ("append", s.append(name, r#"{"payload":1}"#).await),
            ("read", s.get(&entries).await),
            ("read ndjson", s.ndjson(name, "from=1").await),
            ("create", s.put(&ledger).await),
            ("describe", s.get(&ledger).await),
        ] {
            assert_eq!(r.status, 400, "{what} of {name:?}: {}", r.text);
            r.assert_error(400, "invalid_ledger_name");
        }
    }
    // `.` and `..` go over a raw socket: an URL library would resolve them.
    for name in [".", "..", "%2e%2e", ".%2E"] {
        for (method, path, body) in [
            ("POST", format!("/v1/ledgers/{name}/entries"), r#"{"payload":1}"#),
            ("GET", format!("/v1/ledgers/{name}/entries"), ""),
            ("PUT", format!("/v1/ledgers/{name}"), ""),
            ("GET", format!("/v1/ledgers/{name}"), ""),
        ] {
            let (status, text) = raw_request(s.addr, method, &path, body);
            assert_eq!(status, 400, "{method} {path}: {text}");
            let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text:?}"));
            assert_eq!(v["error"]["code"], "invalid_ledger_name", "{method} {path}: {text}");
        }
    }
    assert_eq!(s.snapshot().await, before, "a rejected name changed stored data");
    assert!(!env.data_dir().join("ledgers").join("..").join("entries").exists());
    // The longest valid name is 63 characters.
    let longest = "a".repeat(63);
    assert_eq!(s.put(&format!("/v1/ledgers/{longest}")).await.status, 201);
}

#[tokio::test]
async fn malformed_json_is_400_invalid_json_and_appends_nothing() {
    let env = Env::new();
    let s = env.serve().await;
    seeded(&s).await;
    let before = s.snapshot().await;
    for body in [
        "",
        "not json",
        r#"{"payload":"#,
        r#"{"payload":1}}"#,
        r#"{"payload":[1,2}"#,
        r#"{"payload":tru}"#,
        r#"{"payload":"unterminated}"#,
        r#"{"payload":1,}"#,
        r#"{"entries":[{"payload":1},]}"#,
        r#"{"entries":[{"payload":1},{"payload":}]}"#,
        "{\"payload\":\"bad escape \\x\"}",
        r#"{"payload":01}"#,
    ] {
        for ledger in ["audit", "fresh"] {
            let r = s.append(ledger, body).await;
            assert_eq!(r.status, 400, "body {body:?} to {ledger}: {}", r.text);
            r.assert_error(400, "invalid_json");
        }
    }
    assert_eq!(s.snapshot().await, before, "a malformed body changed stored data (or created a ledger)");
}

#[tokio::test]
async fn a_body_of_the_wrong_shape_is_422_and_appends_nothing() {
    let env = Env::new();
    let s = env.serve().await;
    seeded(&s).await;
    let before = s.snapshot().await;
    let long_key = "k".repeat(257);
    let long_idem = "i".repeat(257);
    let cases = [
        ("{}".to_owned(), "invalid_entry"),
        ("[1]".to_owned(), "invalid_entry"),
        (r#""just a string""#.to_owned(), "invalid_entry"),
        ("null".to_owned(), "invalid_entry"),
        (r#"{"payload":1,"extra":2}"#.to_owned(), "invalid_entry"),
        (r#"{"payload":1,"key":5}"#.to_owned(), "invalid_entry"),
        (r#"{"payload":1,"idempotency_key":["x"]}"#.to_owned(), "invalid_entry"),
        (r#"{"key":"k"}"#.to_owned(), "invalid_entry"),
        (r#"{"entries":{}}"#.to_owned(), "invalid_entry"),
        (r#"{"entries":[1,2]}"#.to_owned(), "invalid_entry"),
        (r#"{"entries":[{"payload":1}],"payload":2}"#.to_owned(), "invalid_entry"),
        (r#"{"entries":[{"payload":1},{"key":"no payload"}]}"#.to_owned(), "invalid_entry"),
        (r#"{"entries":[{"payload":1,"bogus":true}]}"#.to_owned(), "invalid_entry"),
        (r#"{"entries":[]}"#.to_owned(), "empty_batch"),
        (format!(r#"{{"payload":1,"key":"{long_key}"}}"#), "field_too_long"),
        (format!(r#"{{"payload":1,"idempotency_key":"{long_idem}"}}"#), "field_too_long"),
    ];
    for (body, code) in &cases {
        for ledger in ["audit", "fresh"] {
            let r = s.append(ledger, body.clone()).await;
            assert_eq!(r.status, 422, "body {body:?} to {ledger}: {}", r.text);
            r.assert_error(422, code);
        }
    }
    assert_eq!(s.snapshot().await, before, "a wrongly shaped body changed stored data (or created a ledger)");
    // The key limit is 256 bytes, inclusive.
    let r = s.append("audit", format!(r#"{{"payload":1,"key":"{}"}}"#, "k".repeat(256))).await;
    assert_eq!(r.status, 201, "{}", r.text);
}

#[tokio::test]
async fn an_entry_over_max_entry_bytes_is_413_entry_too_large_and_appends_nothing() {
    let env = Env::new();
    let s = env.serve_with(SMALL_LIMITS).await;
    seeded(&s).await;
    let before = s.snapshot().await;
    let over = string_payload(ENTRY_MAX + 1);
    // Multi-byte characters count in bytes: 513 × "é" is 1026 bytes.
    let unicode_over = format!("\"{}\"", "é".repeat(512));
    for payload in [&over, &unicode_over, &format!(r#"{{"nested":[{over}]}}"#)] {
        for ledger in ["audit", "fresh"] {
            let r = s.append(ledger, format!(r#"{{"payload":{payload}}}"#)).await;
            r.assert_error(413, "entry_too_large");
            assert!(r.json()["error"]["message"].as_str().unwrap().contains(&ENTRY_MAX.to_string()), "{}", r.text);
        }
    }
    assert_eq!(s.snapshot().await, before, "an oversize entry changed stored data (or created a ledger)");
    // Exactly max_entry_bytes is accepted.
    let at_limit = string_payload(ENTRY_MAX);
    let r = s.append("audit", format!(r#"{{"payload":{at_limit}}}"#)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.ids(), [4]);
    let stored = s.read_all("audit").await;
    assert_eq!(parse_line(&stored[3]).payload.get(), at_limit);
}

#[tokio::test]
async fn a_body_over_max_body_bytes_is_413_body_too_large_and_appends_nothing() {
    let env = Env::new();
    let s = env.serve_with(SMALL_LIMITS).await;
    seeded(&s).await;
    let before = s.snapshot().await;
    // Every entry fits max_entry_bytes; only the whole body is too large.
    let batch = |n: usize| {
        let entry = format!(r#"{{"payload":{}}}"#, string_payload(900));
        format!(r#"{{"entries":[{}]}}"#, vec![entry; n].join(","))
    };
    let too_big = batch(80);
    assert!(too_big.len() > BODY_MAX);
    let single = format!(r#"{{"payload":{{"pad":"{}"}}}}"#, "z".repeat(BODY_MAX));
    for body in [&too_big, &single] {
        for ledger in ["audit", "fresh"] {
            let r = s.append(ledger, body.clone()).await;
            r.assert_error(413, "body_too_large");
        }
    }
    // Without a content-length (chunked), the limit holds all the same.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        too_big.as_bytes().chunks(8 * 1024).map(|c| Ok(c.to_vec())).collect();
    let req = s
        .http
        .post(s.url("/v1/ledgers/audit/entries"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)));
    s.send(req).await.assert_error(413, "body_too_large");
    assert_eq!(s.snapshot().await, before, "an oversize body changed stored data (or created a ledger)");
    // A body under the limit with the same entries is accepted.
    let fits = batch(60);
    assert!(fits.len() < BODY_MAX);
    let r = s.append("audit", fits).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.ids(), (4..64).collect::<Vec<u64>>());
}

#[tokio::test]
async fn a_batch_with_one_bad_entry_appends_nothing() {
    let env = Env::new();
    let s = env.serve_with(SMALL_LIMITS).await;
    seeded(&s).await;
    let before = s.snapshot().await;
    let over = string_payload(ENTRY_MAX + 1);
    let long_key = "k".repeat(257);
    for (body, status, code) in [
        (format!(r#"{{"entries":[{{"payload":1}},{{"payload":{over}}},{{"payload":3}}]}}"#), 413, "entry_too_large"),
        (format!(r#"{{"entries":[{{"payload":1}},{{"payload":2}},{{"payload":{over}}}]}}"#), 413, "entry_too_large"),
        (format!(r#"{{"entries":[{{"payload":1}},{{"payload":2,"key":"{long_key}"}}]}}"#), 422, "field_too_long"),
        (r#"{"entries":[{"payload":1},{"payload":2},{"key":"x"}]}"#.to_owned(), 422, "invalid_entry"),
        (
            r#"{"entries":[{"payload":1,"idempotency_key":"d"},{"payload":2,"idempotency_key":"d"}]}"#.to_owned(),
            422,
            "duplicate_idempotency_key",
        ),
    ] {
        for ledger in ["audit", "fresh"] {
            let r = s.append(ledger, body.clone()).await;
            r.assert_error(status, code);
        }
    }
    assert_eq!(s.snapshot().await, before, "a rejected batch appended part of itself");
    // The same batch without the bad entry gets contiguous ids.
    let r = s.append("audit", r#"{"entries":[{"payload":1},{"payload":2},{"payload":3}]}"#).await;
    assert_eq!(r.status, 201, "{}", r.text);
    assert_eq!(r.ids(), [4, 5, 6]);
}

#[tokio::test]
async fn a_repeated_idempotency_key_returns_200_with_the_original_ids_and_appends_nothing() {
    let env = Env::new();
    let s = env.serve().await;
    let r = s.append("audit", r#"{"payload":{"order":1},"idempotency_key":"order-1"}"#).await;
    assert_eq!((r.status, r.ids()), (201, vec![1]), "{}", r.text);
    assert_eq!(s.append("audit", r#"{"payload":"other"}"#).await.ids(), [2]);
    let before = s.snapshot().await;
    // Same key again (even with a different payload): the original id, 200.
    for body in [
        r#"{"payload":{"order":1},"idempotency_key":"order-1"}"#,
        r#"{"payload":{"order":"changed"},"key":"x","idempotency_key":"order-1"}"#,
    ] {
        let r = s.append("audit", body).await;
        assert_eq!((r.status, r.ids()), (200, vec![1]), "{body}: {}", r.text);
    }
    assert_eq!(s.snapshot().await, before, "a repeated idempotency key appended");

    // A batch of keyed entries: repeated whole, it returns the same ids.
    let batch = r#"{"entries":[{"payload":"b1","idempotency_key":"b-1"},{"payload":"b2","idempotency_key":"b-2"}]}"#;
    let r = s.append("audit", batch).await;
    assert_eq!((r.status, r.ids()), (201, vec![3, 4]), "{}", r.text);
    let before = s.snapshot().await;
    let r = s.append("audit", batch).await;
    assert_eq!((r.status, r.ids()), (200, vec![3, 4]), "{}", r.text);
    assert_eq!(s.snapshot().await, before, "a repeated batch appended");

    // A batch mixing a used key and a new one appends only the new entry.
    let mixed =
        r#"{"entries":[{"payload":"b2 again","idempotency_key":"b-2"},{"payload":"b3","idempotency_key":"b-3"}]}"#;
    let r = s.append("audit", mixed).await;
    assert_eq!(r.ids(), [4, 5], "{}", r.text);
    assert_eq!(s.head("audit").await, Some(5));
    let lines = s.read_all("audit").await;
    assert_eq!(parse_line(&lines[3]).payload.get(), r#""b2""#);
    assert_eq!(parse_line(&lines[4]).payload.get(), r#""b3""#);

    // Keys are per ledger.
    let r = s.append("other", r#"{"payload":1,"idempotency_key":"order-1"}"#).await;
    assert_eq!((r.status, r.ids()), (201, vec![1]), "{}", r.text);
}

#[tokio::test]
async fn reads_honour_from_and_limit_and_reject_a_limit_over_10000() {
    let env = Env::new();
    let s = env.serve().await;
    let batch: Vec<String> = (1..=25).map(|i| format!(r#"{{"payload":{{"i":{i}}}}}"#)).collect();
    let r = s.append("audit", format!(r#"{{"entries":[{}]}}"#, batch.join(","))).await;
    assert_eq!(r.ids(), (1..=25).collect::<Vec<u64>>());

    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Page<'a> {
        #[serde(borrow)]
        entries: Vec<&'a serde_json::value::RawValue>,
        next: u64,
    }
    let check = |query: &str, r: &crate::support::Resp, ids: Vec<u64>, next: u64| {
        assert_eq!(r.status, 200, "?{query}: {}", r.text);
        assert!(r.content_type.starts_with("application/json"), "?{query}: {}", r.content_type);
        let page: Page = serde_json::from_str(&r.text).unwrap_or_else(|e| panic!("?{query}: {e}: {}", r.text));
        let got: Vec<u64> = page.entries.iter().map(|e| parse_line(e.get()).id).collect();
        assert_eq!(got, ids, "?{query}");
        assert_eq!(page.next, next, "?{query}: next");
        for e in &page.entries {
            let line = parse_line(e.get());
            assert_eq!(line.ledger, "audit");
            assert_eq!(line.payload.get(), format!(r#"{{"i":{}}}"#, line.id));
        }
    };
    for (query, ids, next) in [
        ("", 1..=25, 26),
        ("from=5&limit=3", 5..=7, 8),
        ("from=1&limit=1", 1..=1, 2),
        ("from=20&limit=100", 20..=25, 26),
        ("from=25", 25..=25, 26),
        ("limit=10000", 1..=25, 26),
    ] {
        let r = s.get(&format!("/v1/ledgers/audit/entries?{query}")).await;
        check(query, &r, ids.collect(), next);
    }
    // From past the head: nothing yet, and where to continue.
    let r = s.get("/v1/ledgers/audit/entries?from=26").await;
    check("from=26", &r, vec![], 26);

    for (query, status, code) in [
        ("limit=10001", 400, "invalid_limit"),
        ("limit=0", 400, "invalid_limit"),
        ("limit=-1", 400, "invalid_query"),
        ("from=abc", 400, "invalid_query"),
        ("from=0", 410, "below_first"),
    ] {
        s.get(&format!("/v1/ledgers/audit/entries?{query}")).await.assert_error(status, code);
        s.ndjson("audit", query).await.assert_error(status, code);
    }
    // 410 carries First.
    let r = s.get("/v1/ledgers/audit/entries?from=0").await;
    assert_eq!(r.json()["error"]["first"], 1, "{}", r.text);
    s.get("/v1/ledgers/missing/entries").await.assert_error(404, "ledger_not_found");
    s.ndjson("missing", "from=1").await.assert_error(404, "ledger_not_found");
}

#[tokio::test]
async fn an_ndjson_read_returns_one_json_line_per_entry() {
    let env = Env::new();
    let s = env.serve().await;
    for b in 0..5 {
        let batch: Vec<String> = (0..500)
            .map(|i| format!(r#"{{"payload":{{"n":{},"s":"ü\n🚀"}},"key":"k{i}"}}"#, b * 500 + i + 1))
            .collect();
        let r = s.append("stream", format!(r#"{{"entries":[{}]}}"#, batch.join(","))).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    let r = s.ndjson("stream", "from=1&limit=10000").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.content_type.starts_with("application/x-ndjson"), "{}", r.content_type);
    assert!(r.text.ends_with('\n'), "NDJSON ends with a newline");
    let lines: Vec<&str> = r.text.lines().collect();
    assert_eq!(lines.len(), 2500);
    for (i, line) in lines.iter().enumerate() {
        let e = parse_line(line);
        assert_eq!((e.ledger.as_str(), e.id), ("stream", i as u64 + 1));
        assert_eq!(e.payload.get(), format!(r#"{{"n":{},"s":"ü\n🚀"}}"#, i + 1));
        assert_eq!(e.key, Some(format!("k{}", i % 500)));
    }
    // A range across the server's internal pages, and the same entries
    // byte for byte as the JSON read gives them.
    let r = s.ndjson("stream", "from=100&limit=2200").await;
    let part: Vec<&str> = r.text.lines().collect();
    assert_eq!(part.len(), 2200);
    assert_eq!(part[..], lines[99..2299]);
    let json = s.get("/v1/ledgers/stream/entries?from=100&limit=2200").await.json();
    let from_json: Vec<String> = json["entries"].as_array().unwrap().iter().map(Value::to_string).collect();
    let from_ndjson: Vec<String> = part.iter().map(|l| serde_json::from_str::<Value>(l).unwrap().to_string()).collect();
    assert_eq!(from_json, from_ndjson);
    // An empty range is an empty body.
    let r = s.ndjson("stream", "from=2501").await;
    assert_eq!((r.status, r.text.as_str()), (200, ""));
}

#[tokio::test]
async fn put_creates_a_ledger_with_201_then_200_and_get_describes_it() {
    let env = Env::new();
    let s = env.serve().await;
    let r = s.put("/v1/ledgers/orders").await;
    assert_eq!(r.status, 201, "{}", r.text);
    let created = r.json();
    assert_eq!(created["name"], "orders");
    assert_eq!((created["first"].as_u64(), created["head"].as_u64()), (Some(1), Some(0)));
    assert_eq!(created["entries"], 0);
    assert!(created["created_at"].as_u64().is_some_and(|t| t > 1_600_000_000_000), "{created}");
    let r = s.put("/v1/ledgers/orders").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json(), created, "a second PUT changed the ledger");

    let r = s.append("orders", r#"{"entries":[{"payload":1},{"payload":2}]}"#).await;
    assert_eq!(r.ids(), [1, 2]);
    let again = s.put("/v1/ledgers/orders").await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["head"], 2, "PUT of an existing ledger keeps its entries");
    let info = s.get("/v1/ledgers/orders").await.json();
    assert_eq!(info["head"], 2);
    assert_eq!(info["entries"], 2);
    assert!(info["bytes"].as_u64().is_some_and(|b| b > 0), "{info}");
    assert_eq!(info["created_at"], created["created_at"]);

    s.append("audit", r#"{"payload":null}"#).await;
    let list = s.get("/v1/ledgers").await.json();
    let names: Vec<&str> = list["ledgers"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["audit", "orders"], "in name order");
    assert_eq!(list["next"], Value::Null);
    s.get("/v1/ledgers/nope").await.assert_error(404, "ledger_not_found");

    // A deleted and re-created ledger is a new incarnation, never an old one.
    let first = created["incarnation"].as_u64().filter(|n| *n > 0).expect("incarnation");
    assert_eq!(info["incarnation"], first);
    let r = s.send(s.http.delete(s.url("/v1/ledgers/orders"))).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let again = s.put("/v1/ledgers/orders").await.json();
    let second = again["incarnation"].as_u64().expect("incarnation");
    assert!(second > first, "{second} after {first}");
    assert_eq!((again["head"].as_u64(), again["entries"].as_u64()), (Some(0), Some(0)));
}

#[tokio::test]
async fn with_tokens_configured_v1_needs_the_bearer_token_and_healthz_stays_open() {
    let env = Env::new();
    let s = env.serve_with("[server]\ntokens = [\"secret\", \"second-token\"]\n").await;
    let healthz = s.get("/healthz").await;
    assert_eq!(healthz.status, 200, "{}", healthz.text);
    let metrics = s.get("/metrics").await;
    assert_eq!(metrics.status, 200, "/metrics is open unless metrics_auth = true: {}", metrics.text);

    let calls = |auth: Option<&str>| {
        let with = |req: reqwest::RequestBuilder| match auth {
            Some(a) => req.header("authorization", a),
            None => req,
        };
        [
            with(s.http.get(s.url("/v1/ledgers"))),
            with(s.http.get(s.url("/v1/ledgers/audit"))),
            with(s.http.put(s.url("/v1/ledgers/audit"))),
            with(s.http.get(s.url("/v1/ledgers/audit/entries"))),
            with(s.http.post(s.url("/v1/ledgers/audit/entries")).body(r#"{"payload":1}"#)),
        ]
    };
    for auth in
        [None, Some("Bearer wrong"), Some("Bearer "), Some("Basic secret"), Some("secret"), Some("Bearer secret2")]
    {
        for req in calls(auth) {
            s.send(req).await.assert_error(401, "unauthorized");
        }
    }
    // Nothing was created by the refused calls.
    let list = s.send(s.http.get(s.url("/v1/ledgers")).bearer_auth("secret")).await;
    assert_eq!((list.status, list.text.as_str()), (200, r#"{"ledgers":[],"next":null}"#));

    let r =
        s.send(s.http.post(s.url("/v1/ledgers/audit/entries")).bearer_auth("secret").body(r#"{"payload":1}"#)).await;
    assert_eq!((r.status, r.ids()), (201, vec![1]), "{}", r.text);
    let r = s
        .send(s.http.post(s.url("/v1/ledgers/audit/entries")).bearer_auth("second-token").body(r#"{"payload":2}"#))
        .await;
    assert_eq!((r.status, r.ids()), (201, vec![2]), "{}", r.text);
    let r = s.send(s.http.get(s.url("/v1/ledgers/audit/entries")).bearer_auth("secret")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["entries"].as_array().map(Vec::len), Some(2));
}

#[tokio::test]
async fn a_token_file_supplies_bearer_tokens() {
    let env = Env::new();
    let tokens = env.config("tokens.txt", "from-file\n\n  other  \n");
    let s = env.serve_with(&format!("[server]\ntoken_file = {:?}\n", tokens.display().to_string())).await;
    s.get("/v1/ledgers").await.assert_error(401, "unauthorized");
    for token in ["from-file", "other"] {
        let r = s.send(s.http.get(s.url("/v1/ledgers")).bearer_auth(token)).await;
        assert_eq!(r.status, 200, "{token}: {}", r.text);
    }
}

#[tokio::test]
async fn with_auto_create_disabled_an_append_to_an_unknown_ledger_is_404() {
    let env = Env::new();
    let s = env.serve_with("[storage]\nauto_create_ledgers = false\n").await;
    s.append("audit", r#"{"payload":1}"#).await.assert_error(404, "ledger_not_found");
    s.append("audit", r#"{"entries":[{"payload":1},{"payload":2}]}"#).await.assert_error(404, "ledger_not_found");
    let list = s.get("/v1/ledgers").await;
    assert_eq!(list.text, r#"{"ledgers":[],"next":null}"#, "a refused append created a ledger");
    assert_eq!(s.put("/v1/ledgers/audit").await.status, 201);
    let r = s.append("audit", r#"{"payload":1}"#).await;
    assert_eq!((r.status, r.ids()), (201, vec![1]), "{}", r.text);
}

#[tokio::test]
async fn with_metrics_auth_metrics_needs_the_bearer_token_too() {
    let env = Env::new();
    let s = env.serve_with("[server]\ntokens = [\"secret\"]\nmetrics_auth = true\n").await;
    assert_eq!(s.get("/healthz").await.status, 200);
    s.get("/metrics").await.assert_error(401, "unauthorized");
    let r =
        s.send(s.http.post(s.url("/v1/ledgers/audit/entries")).bearer_auth("secret").body(r#"{"payload":1}"#)).await;
    assert_eq!(r.status, 201, "{}", r.text);
    let r = s.send(s.http.get(s.url("/metrics")).bearer_auth("secret")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.text.contains("ferry_"), "Prometheus text with ferry_ metrics after an append:\n{}", r.text);
}

/// Issue #13 item 9: every error is the documented JSON shape
/// `{"error":{"code","message"}}` — a method a route lacks (405), a path
/// segment that is not UTF-8 and a repeated query parameter (400) included.
#[tokio::test]
async fn every_error_is_the_json_shape_also_405_bad_utf8_paths_and_repeated_query_parameters() {
    let env = Env::new();
    let s = env.serve().await;
    seeded(&s).await;
    let json_error = |what: &str, status: u16, text: &str, want_status: u16, code: &str| {
        assert_eq!(status, want_status, "{what}: {text}");
        let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {text:?}"));
        assert_eq!(v["error"]["code"], code, "{what}: {text}");
        assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{what}: {text}");
    };
    for (method, path) in [
        ("PATCH", "/v1/ledgers/audit"),
        ("DELETE", "/v1/ledgers/audit/entries"),
        ("POST", "/v1/ledgers"),
        ("PUT", "/healthz"),
        ("POST", "/readyz"),
    ] {
        let (status, text) = raw_request(s.addr, method, path, "");
        json_error(&format!("{method} {path}"), status, &text, 405, "method_not_allowed");
    }
    for path in ["/v1/ledgers/%FF%FE", "/v1/ledgers/%C3%28/entries", "/v1/exporters/%FF"] {
        let (status, text) = raw_request(s.addr, "GET", path, "");
        let code = if path.starts_with("/v1/exporters") { "invalid_request" } else { "invalid_ledger_name" };
        json_error(path, status, &text, 400, code);
    }
    for path in [
        "/v1/ledgers/audit/entries?from=1&from=2",
        "/v1/watch?from=audit:1&from=audit:2",
        "/v1/events?prefix=a&prefix=b",
    ] {
        let (status, text) = raw_request(s.addr, "GET", path, "");
        json_error(path, status, &text, 400, "invalid_query");
    }
}
