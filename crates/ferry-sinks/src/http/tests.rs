use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use ferry_core::{Entry, Payload};

use super::*;

fn batch(ids: std::ops::RangeInclusive<EntryId>) -> Batch {
    let ledger = LedgerName::parse("audit").unwrap();
    let entries = ids
        .map(|id| Entry {
            ledger: ledger.clone(),
            id,
            ts: 7,
            key: None,
            hash: None,
            payload: Payload::from_json("{}").unwrap(),
        })
        .collect();
    Batch { exporter: LedgerName::parse("hook").unwrap(), ledger, incarnation: 7, entries }
}

#[test]
fn the_signature_is_hmac_sha256_of_t_dot_body_in_hex() {
    // python3: hmac.new(b'whsec', b'1700000000.[]', hashlib.sha256).hexdigest()
    assert_eq!(
        signature("whsec", 1_700_000_000, b"[]"),
        "t=1700000000,v1=ab976ebd8648dad322b167e6ad6d1217338a7300f243afc224592c75e7742e51"
    );
}

#[test]
fn statuses_and_retry_after_are_classified_as_the_spec_says() {
    for (code, retry) in [(500, true), (503, true), (429, true), (408, true), (400, false), (404, false), (301, false)]
    {
        assert_eq!(retryable(StatusCode::from_u16(code).unwrap()), retry, "{code}");
    }
    assert_eq!(parse_retry_after(&HeaderValue::from_static("7")), Some(Duration::from_secs(7)));
    let later = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
    let wait = parse_retry_after(&HeaderValue::from_str(&later).unwrap()).unwrap();
    assert!(wait > Duration::from_secs(100) && wait <= Duration::from_secs(120), "{wait:?}");
    assert_eq!(parse_retry_after(&HeaderValue::from_static("soon")), None);
    assert_eq!(
        parse_retry_after(&HeaderValue::from_static("99999999")),
        Some(Duration::from_millis(RETRY_WAIT_MS_MAX))
    );
}

#[test]
fn config_is_validated_without_io() {
    let v = |j: serde_json::Value| HttpConfig::validate(j).map_err(|e| e.to_string());
    assert!(v(serde_json::json!({})).unwrap_err().starts_with("config.url"));
    assert!(v(serde_json::json!({"url": "ftp://x"})).unwrap_err().starts_with("config.url"));
    assert!(v(serde_json::json!({"url": "http://x", "format": "xml"})).unwrap_err().contains("xml"));
    assert!(
        v(serde_json::json!({"url": "http://x", "headers": {"Idempotency-Key": "a"}}))
            .unwrap_err()
            .starts_with("config.headers")
    );
    assert!(
        v(serde_json::json!({"url": "http://x", "headers": {"bad header": "a"}}))
            .unwrap_err()
            .starts_with("config.headers")
    );
    assert!(v(serde_json::json!({"url": "http://x", "timeout": "0s"})).unwrap_err().starts_with("config.timeout"));
    let c = v(serde_json::json!({"url": "http://x/y", "format": "ndjson", "secret": "s", "timeout": "2s"})).unwrap();
    assert_eq!((c.format, c.secret.as_deref(), c.timeout), (BodyFormat::Ndjson, Some("s"), Duration::from_secs(2)));
}

/// A receiver that answers with the queued statuses (then 200) and keeps
/// what it was sent.
/// A status to answer with, and its Retry-After.
type Answer = (u16, Option<&'static str>);
/// A request's headers and body.
type Seen = (HeaderMap, Vec<u8>);

#[derive(Clone, Default)]
struct Receiver {
    answers: Arc<Mutex<Vec<Answer>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: axum::body::Bytes) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    r.seen.lock().unwrap().push((headers, body.to_vec()));
    let answer = { r.answers.lock().unwrap().pop() };
    match answer {
        Some((code, retry_after)) => {
            let mut resp = (StatusCode::from_u16(code).unwrap(), "nope").into_response();
            if let Some(ra) = retry_after {
                resp.headers_mut().insert("retry-after", HeaderValue::from_static(ra));
            }
            resp
        }
        None => StatusCode::NO_CONTENT.into_response(),
    }
}

async fn start(receiver: Receiver) -> String {
    let app = axum::Router::new()
        .route("/in", post(receive))
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                StatusCode::OK
            }),
        )
        .with_state(receiver);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

fn sink(url: &str, extra: serde_json::Value) -> HttpSink {
    let mut config =
        serde_json::json!({ "url": url, "secret": "whsec", "timeout": "500ms", "headers": {"x-team": "audit"} });
    config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    HttpSink::new(HttpConfig::validate(config).unwrap()).unwrap()
}

#[tokio::test]
async fn a_batch_is_posted_signed_with_its_idempotency_key() {
    let receiver = Receiver::default();
    let base = start(receiver.clone()).await;
    let s = sink(&format!("{base}/in"), serde_json::json!({}));
    assert_eq!(s.deliver(&batch(3..=5)).await.unwrap(), Ack { through: 5 });
    let (headers, body) = receiver.seen.lock().unwrap().pop().unwrap();
    assert_eq!(headers["idempotency-key"], "hook/audit/7/3-5");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(headers["x-team"], "audit");
    let sig = headers["ferry-signature"].to_str().unwrap();
    let t: u64 = sig.strip_prefix("t=").unwrap().split(',').next().unwrap().parse().unwrap();
    assert_eq!(sig, signature("whsec", t, &body));
    let parsed: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed.iter().map(|e| e["id"].as_u64().unwrap()).collect::<Vec<_>>(), vec![3, 4, 5]);

    let s = sink(&format!("{base}/in"), serde_json::json!({"format": "ndjson"}));
    s.deliver(&batch(6..=7)).await.unwrap();
    let (headers, body) = receiver.seen.lock().unwrap().pop().unwrap();
    assert_eq!(headers["content-type"], "application/x-ndjson");
    assert_eq!(String::from_utf8(body).unwrap().lines().count(), 2);
}

#[tokio::test]
async fn failures_are_retryable_or_permanent_by_status_and_timeout() {
    let receiver = Receiver::default();
    let base = start(receiver.clone()).await;
    let s = sink(&format!("{base}/in"), serde_json::json!({}));
    receiver.answers.lock().unwrap().extend([(400, None), (429, Some("3")), (503, None)]);
    let e = s.deliver(&batch(1..=1)).await.unwrap_err();
    assert!(matches!(e, SinkError::Retryable { retry_after: None, .. }), "503: {e:?}");
    let e = s.deliver(&batch(1..=1)).await.unwrap_err();
    assert!(
        matches!(e, SinkError::Retryable { retry_after: Some(d), .. } if d == Duration::from_secs(3)),
        "429: {e:?}"
    );
    let e = s.deliver(&batch(1..=1)).await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("400"), "400: {e:?}");

    let slow = sink(&format!("{base}/slow"), serde_json::json!({}));
    let e = slow.deliver(&batch(1..=1)).await.unwrap_err();
    assert!(!e.is_permanent() && e.to_string().contains("timed out"), "{e}");
    let closed = sink("http://127.0.0.1:9/in", serde_json::json!({}));
    assert!(!closed.deliver(&batch(1..=1)).await.unwrap_err().is_permanent());
}

#[test]
fn errors_show_the_url_without_userinfo_or_query_values_and_know_every_secret() {
    let config = HttpConfig::validate(serde_json::json!({
        "url": "https://al:pa%24s-word@example.com:8443/in?token=qs-token&v=2",
        "secret": "signing-secret",
        "headers": {"authorization": "Bearer hdr-token", "x-tenant": "acme-corp"},
    }))
    .unwrap();
    assert_eq!(config.shown_url(), "https://example.com:8443/in?token=***&v=***");
    let shown = format!("{config:?}");
    for secret in ["pa%24s-word", "qs-token", "signing-secret", "hdr-token", "acme-corp"] {
        assert!(!shown.contains(secret), "Debug shows {secret}: {shown}");
    }
    let text = "echo: pa%24s-word qs-token signing-secret Bearer hdr-token acme-corp http://al:x@h/";
    assert_eq!(config.secrets().redact(text), "echo: *** *** *** *** *** http://***@h/");
}
