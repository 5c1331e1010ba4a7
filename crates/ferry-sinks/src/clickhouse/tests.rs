use ferry_core::{LedgerName, Payload};
use serde_json::json;

use super::*;

fn validate(v: serde_json::Value) -> Result<ClickHouseConfig, String> {
    ClickHouseConfig::validate(v).map_err(|e| e.to_string())
}

#[test]
fn defaults_fill_everything_but_the_table() {
    let c = validate(json!({"table": "t"})).unwrap();
    assert_eq!(c.url.as_str(), "http://127.0.0.1:8123/");
    assert_eq!((c.database.as_str(), c.table.as_str(), c.user.as_str()), ("default", "t", "default"));
    assert_eq!((c.password.as_deref(), c.create_table, c.tls), (None, false, false));
    assert_eq!(c.timeout, Duration::from_secs(30));
    assert!(validate(json!({})).unwrap_err().starts_with("config.table: required"));
}

#[test]
fn identifiers_are_strict() {
    for bad in ["", "1t", "t-1", "t.x", "t;DROP", "ta ble", "t`", "é"] {
        let e = validate(json!({"table": bad})).unwrap_err();
        assert!(e.starts_with("config.table: "), "{bad:?}: {e}");
        let e = validate(json!({"table": "t", "database": bad})).unwrap_err();
        assert!(e.starts_with("config.database: "), "{bad:?}: {e}");
    }
    for good in ["t", "_t", "T_1", "ferry_entries"] {
        assert!(validate(json!({"table": good})).is_ok(), "{good}");
    }
}

#[test]
fn unknown_keys_and_bad_values_are_refused_naming_the_field() {
    let e = validate(json!({"table": "t", "tabel": "x"})).unwrap_err();
    assert!(e.starts_with("config.tabel: unknown field"), "{e}");
    let cases = [
        (json!({"table": "t", "url": "tcp://x:9000"}), "config.url"),
        (json!({"table": "t", "url": "not a url"}), "config.url"),
        (json!({"table": "t", "url": "http://u:pw@x:8123"}), "config.url"),
        (json!({"table": "t", "url": "http://x:8123/?database=a"}), "config.url"),
        (json!({"table": "t", "tls": true}), "config.tls"),
        (json!({"table": "t", "url": "https://x:8443", "tls": false}), "config.tls"),
        (json!({"table": "t", "ca_file": "/ca.pem"}), "config.ca_file"),
        (json!({"table": "t", "timeout": "0s"}), "config.timeout"),
        (json!({"table": "t", "timeout": "soon"}), "config.timeout"),
        (json!({"table": "t", "create_table": "yes"}), "config.create_table"),
        (json!({"table": "t", "user": ""}), "config.user"),
        (json!({"table": "t", "password": "a\nb"}), "config.password"),
    ];
    for (value, field) in cases {
        let e = validate(value.clone()).unwrap_err();
        assert!(e.starts_with(&format!("{field}: ")), "{value}: {e}");
    }
    let c = validate(json!({"table": "t", "url": "https://ch:8443", "ca_file": "/ca.pem"})).unwrap();
    assert!(c.tls);
}

#[test]
fn the_password_is_a_secret_and_never_in_debug() {
    let c = validate(json!({"table": "t", "password": "hunter2-secret"})).unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
    assert_eq!(c.secrets().redact("Wrong password hunter2-secret"), "Wrong password ***");
}

#[test]
fn exception_codes_and_texts_are_read_from_old_and_new_servers() {
    let old = "Code: 60, e.displayText() = DB::Exception: Table default.x doesn't exist., e.what() = DB::Exception\n";
    assert_eq!(exception_code(None, old), Some(60));
    assert_eq!(exception_text(old), "Table default.x doesn't exist.");
    let new = "Code: 60. DB::Exception: Table default.x does not exist. (UNKNOWN_TABLE) (version 24.3.1.1)\n";
    assert_eq!(exception_code(None, new), Some(60));
    assert_eq!(exception_text(new), "Table default.x does not exist. (UNKNOWN_TABLE)");
    assert_eq!(exception_code(Some("252"), "whatever"), Some(252));
    assert_eq!(exception_code(None, "<html>Bad Gateway</html>"), None);
    let long = format!("Code: 1, e.displayText() = DB::Exception: {}", "x".repeat(1000));
    assert!(exception_text(&long).chars().count() <= EXCEPTION_CHARS_MAX + 1);
}

#[test]
fn errors_are_classified_permanent_or_retryable() {
    // Permanent: unknown table/column/database, type mismatch, parse and
    // syntax errors, authentication and access, whatever the status.
    for code in [16, 53, 60, 62, 81, 117, 192, 193, 194, 497, 516] {
        assert!(permanent(500, Some(code)), "{code}");
        assert!(permanent(404, Some(code)), "{code}");
    }
    // Transient: too many parts, memory, timeouts, network, unknown codes.
    for code in [252, 241, 159, 209, 210, 202, 3, 999] {
        assert!(!permanent(500, Some(code)), "{code}");
    }
    // Without a code (a proxy's answer): by status.
    for (status, perm) in
        [(500, false), (502, false), (503, false), (408, false), (429, false), (400, true), (404, true)]
    {
        assert_eq!(permanent(status, None), perm, "{status}");
    }
    assert_eq!(auth_field(Some(192)), Some("config.user"));
    assert_eq!(auth_field(Some(193)), Some("config.password"));
    assert_eq!(auth_field(Some(516)), Some("config.password"));
    assert_eq!(auth_field(Some(60)), None);
    let secrets = validate(json!({"table": "t", "password": "hunter2-secret"})).unwrap().secrets();
    let refused = Failure::Refused { field: "config.password", message: "wrong hunter2-secret".into() };
    let e = refused.into_sink_error(&secrets);
    assert!(e.is_permanent() && e.to_string() == "config.password: wrong ***", "{e}");
    let down = Failure::Unreachable("INSERT at http://x failed: connection refused".into()).into_sink_error(&secrets);
    assert!(!down.is_permanent());
    let parts = Failure::Answered { status: 500, code: Some(252), text: "Too many parts".into() };
    assert!(!parts.into_sink_error(&secrets).is_permanent());
}

#[test]
fn rows_are_json_each_row_with_the_payload_as_a_string() {
    let ledger = LedgerName::parse("pay.eu").unwrap();
    let entry = |id, key: Option<&str>, hash| Entry {
        ledger: ledger.clone(),
        id,
        ts: 1_700_000_000_123,
        key: key.map(str::to_owned),
        hash,
        payload: Payload::from_json(r#"{"a":"é\"\\","n":[1,2]}"#).unwrap(),
    };
    let batch = Batch {
        exporter: LedgerName::parse("ch").unwrap(),
        ledger: ledger.clone(),
        incarnation: 3,
        entries: vec![entry(7, None, None), entry(8, Some("k\"1"), Some([0xab; 32]))],
    };
    let text = String::from_utf8(rows(&batch)).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["ledger"], "pay.eu");
    assert_eq!((lines[0]["incarnation"].as_u64(), lines[0]["id"].as_u64()), (Some(3), Some(7)));
    assert_eq!(lines[0]["ts"].as_u64(), Some(1_700_000_000_123));
    assert!(lines[0]["key"].is_null() && lines[0]["hash"].is_null());
    assert_eq!(lines[0]["payload"], r#"{"a":"é\"\\","n":[1,2]}"#);
    assert_eq!(lines[1]["key"], "k\"1");
    assert_eq!(lines[1]["hash"], "ab".repeat(32));
    assert!(text.ends_with("}\n") && text.lines().count() == 2);
    assert_eq!(quote(r"a'b\c"), r"'a\'b\\c'");
}
