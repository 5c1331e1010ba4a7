use ferry_core::{Entry, Payload};
use serde_json::json;

use super::config::{subject_for, subject_prefix};
use super::*;

fn validate(value: serde_json::Value) -> Result<NatsConfig, ConfigError> {
    NatsConfig::validate(value)
}

fn error(value: serde_json::Value) -> String {
    validate(value).expect_err("refused").to_string()
}

#[test]
fn defaults_and_required_stream() {
    let c = validate(json!({"stream": "FERRY"})).unwrap();
    assert_eq!(c.url, "nats://127.0.0.1:4222");
    assert_eq!(c.prefix, "ferry");
    assert_eq!(c.stream_subject(), "ferry.>");
    assert_eq!(c.duplicate_window, Duration::from_secs(120));
    assert_eq!(c.max_in_flight, 256);
    assert!(!c.create_stream && !c.tls);
    assert!(error(json!({})).starts_with("config.stream: required"));
}

#[test]
fn bad_values_name_their_field() {
    let cases = [
        (json!({"stream": "S", "nope": 1}), "config"),
        (json!({"stream": "a.b"}), "config.stream:"),
        (json!({"stream": "a b"}), "config.stream:"),
        (json!({"stream": "S", "url": "http://x:4222"}), "config.url:"),
        (json!({"stream": "S", "url": "nats://"}), "config.url:"),
        (json!({"stream": "S", "subject": "ferry"}), "config.subject:"),
        (json!({"stream": "S", "subject": "{ledger}"}), "config.subject:"),
        (json!({"stream": "S", "subject": "{ledger}.x"}), "config.subject:"),
        (json!({"stream": "S", "subject": "a.*.{ledger}"}), "config.subject:"),
        (json!({"stream": "S", "subject": "a..{ledger}"}), "config.subject:"),
        (json!({"stream": "S", "subject": "a b.{ledger}"}), "config.subject:"),
        (json!({"stream": "S", "duplicate_window": "0s"}), "config.duplicate_window:"),
        (json!({"stream": "S", "duplicate_window": "soon"}), "config.duplicate_window"),
        (json!({"stream": "S", "max_in_flight": 0}), "config.max_in_flight:"),
        (json!({"stream": "S", "token": "t", "user": "u", "password": "p"}), "config.token:"),
        (json!({"stream": "S", "user": "u"}), "config.password:"),
        (json!({"stream": "S", "ca_file": "/x.pem"}), "config.ca_file:"),
        (json!({"stream": "S", "tls": "yes"}), "config.tls"),
    ];
    for (value, field) in cases {
        let e = error(value.clone());
        assert!(e.starts_with(field), "{value}: {e}");
    }
    assert!(error(json!({"stream": "S", "nope": 1})).contains("unknown field"));
}

#[test]
fn subjects_put_ledger_dots_into_tokens_and_refuse_empty_tokens() {
    assert_eq!(subject_prefix("ferry.{ledger}").unwrap(), "ferry");
    assert_eq!(subject_prefix("a.b-c.{ledger}").unwrap(), "a.b-c");
    assert_eq!(subject_for("ferry", "audit").unwrap(), "ferry.audit");
    assert_eq!(subject_for("ferry", "pay.eu").unwrap(), "ferry.pay.eu");
    for bad in ["a.", "a..b", "a.b."] {
        let e = subject_for("ferry", bad).expect_err(bad);
        assert!(e.contains("cannot be a NATS subject") && e.contains("empty subject token"), "{e}");
        assert!(LedgerName::parse(bad).is_ok(), "{bad} is a ledger name ferry allows");
    }
}

#[test]
fn stream_subjects_cover_the_template_only_when_they_capture_every_ledger() {
    for (pattern, ok) in [
        ("ferry.>", true),
        (">", true),
        ("*.>", true),
        ("ferry.*", false),
        ("ferry.audit", false),
        ("other.>", false),
        ("ferry.x.>", false),
    ] {
        assert_eq!(covers(pattern, "ferry.>"), ok, "{pattern}");
    }
    assert!(covers("a.>", "a.b.>"));
    assert!(!covers("a.b.c.>", "a.b.>"));
}

fn entry(id: EntryId, hash: Option<[u8; 32]>) -> Entry {
    Entry {
        ledger: LedgerName::parse("pay.eu").unwrap(),
        id,
        ts: 1_700_000_000_123,
        key: Some("k".into()),
        hash,
        payload: Payload::from_json(r#"{"a":1}"#).unwrap(),
    }
}

#[test]
fn a_message_carries_the_json_line_and_the_ferry_headers() {
    let batch = Batch {
        exporter: LedgerName::parse("x").unwrap(),
        ledger: LedgerName::parse("pay.eu").unwrap(),
        incarnation: 3,
        entries: vec![entry(7, Some([0xab; 32])), entry(8, None)],
    };
    let (headers, body) = message(&batch, &batch.entries[0]);
    assert_eq!(body, batch.entries[0].to_json().as_bytes());
    let h = |n: &str| headers.get(n).map(|v| v.as_str().to_owned());
    assert_eq!(h("Nats-Msg-Id").as_deref(), Some("pay.eu:3:7"));
    assert_eq!(h("Ferry-Ledger").as_deref(), Some("pay.eu"));
    assert_eq!(h("Ferry-Incarnation").as_deref(), Some("3"));
    assert_eq!(h("Ferry-Id").as_deref(), Some("7"));
    assert_eq!(h("Ferry-Ts").as_deref(), Some("1700000000123"));
    assert_eq!(h("Ferry-Hash"), Some("ab".repeat(32)));
    let (headers, _) = message(&batch, &batch.entries[1]);
    assert!(headers.get("Ferry-Hash").is_none());
    assert_eq!(parse_stamp(&headers), Some(Stamp { incarnation: 3, id: 8 }));
    assert!(headers_len(&headers) > 60);
}

#[test]
fn stamps_come_from_ferry_headers_or_the_msg_id() {
    let mut only_msg_id = HeaderMap::new();
    only_msg_id.insert("Nats-Msg-Id", "a.b:12:345");
    assert_eq!(parse_stamp(&only_msg_id), Some(Stamp { incarnation: 12, id: 345 }));
    let mut foreign = HeaderMap::new();
    foreign.insert("Nats-Msg-Id", "some-uuid");
    assert_eq!(parse_stamp(&foreign), None);
    assert_eq!(parse_stamp(&HeaderMap::new()), None);
    let mut bad = HeaderMap::new();
    bad.insert("Ferry-Incarnation", "x");
    bad.insert("Ferry-Id", "1");
    assert_eq!(parse_stamp(&bad), None);
}

#[test]
fn the_last_message_gives_this_incarnations_position() {
    let s = |incarnation, id| Some(Stamp { incarnation, id });
    assert_eq!(position(s(4, 17), 4, "f.a"), Ok(17));
    assert_eq!(position(s(3, 90), 4, "f.a"), Ok(0), "an older incarnation: nothing of this one yet");
    assert!(position(s(5, 1), 4, "f.a").unwrap_err().contains("newer"));
    assert!(position(None, 4, "f.a").unwrap_err().contains("no Ferry-Incarnation"));
}

#[test]
fn check_counts_repeats_and_steps_back_without_remembering_ids() {
    let mut h = Holding::default();
    let mut greatest = 0;
    for id in [1, 2, 3, 4, 3, 5, 9, 10] {
        count(&mut h, &mut greatest, id, 2, 9);
    }
    assert_eq!(
        h,
        Holding { in_range: 6, distinct: 5, below_first: 1, above_cursor: 1, min: Some(1), max: Some(10), chain: None }
    );
}

#[test]
fn secrets_hold_the_token_password_and_url_password() {
    let c = validate(json!({"stream": "S", "url": "nats://u:pass-1@h:4222"})).unwrap();
    assert_eq!(c.secrets().redact("said pass-1"), "said ***");
    assert!(!format!("{c:?}").contains("pass-1"));
    assert_eq!(c.shown_url(), "nats://***@h:4222");
    let c = validate(json!({"stream": "S", "token": "tok-2", "user": null})).unwrap();
    assert_eq!(c.secrets().redact("said tok-2"), "said ***");
    assert!(!format!("{c:?}").contains("tok-2") && !format!("{:?}", c.credentials()).contains("tok-2"));
    let c = validate(json!({"stream": "S", "user": "u", "password": "pass-3"})).unwrap();
    assert_eq!(c.secrets().redact("said pass-3"), "said ***");
    let c = validate(json!({"stream": "S", "url": "nats://token-3@h:4222"})).unwrap();
    assert_eq!(c.secrets().redact("x token-3"), "x ***");
}

#[test]
fn url_userinfo_becomes_credentials_and_leaves_the_addresses() {
    let c = validate(json!({"stream": "S", "url": "nats://us%40r:p%3Ass@h1:4222, nats://h2:4222"})).unwrap();
    assert_eq!(c.credentials(), Some(Credentials::UserPassword("us@r".into(), "p:ss".into())));
    assert_eq!(c.addresses(), ["nats://h1:4222", "nats://h2:4222"]);
    assert_eq!(c.secrets().redact("said p:ss"), "said ***");
    let c = validate(json!({"stream": "S", "url": "tls://tok-en@h:4222"})).unwrap();
    assert_eq!(c.credentials(), Some(Credentials::Token("tok-en".into())));
    assert!(c.tls);
    let c = validate(json!({"stream": "S", "user": "u", "password": "pw"})).unwrap();
    assert_eq!(c.credentials(), Some(Credentials::UserPassword("u".into(), "pw".into())));
    assert_eq!(validate(json!({"stream": "S"})).unwrap().credentials(), None);
    let e = error(json!({"stream": "S", "url": "nats://a:b@h:1", "token": "tok-1"}));
    assert!(e.starts_with("config.url:"), "{e}");
}
