//! `/metrics` of a real `ferry serve` (SPEC §9): the whole text parses
//! strictly as the Prometheus exposition format, every metric of
//! `ferry_core::metric_names` is there with its TYPE and HELP, the state
//! gauges follow what happens (a watch, a pin, a sink that answers 503),
//! and per-ledger series exist only for the ledgers `metrics_ledgers`
//! selects.

use eventsource_stream::Eventsource as _;
use ferry_core::metric_names as names;
use futures_util::StreamExt as _;
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};

use crate::support::{Env, Server, Webhook, eventually, now_ms};

type Exposition = MetricsExposition<PrometheusType, PrometheusValue>;

/// Scrapes `/metrics` and parses the whole text; any line the grammar
/// refuses fails the test with the text.
async fn scrape(server: &Server) -> Exposition {
    let r = server.get("/metrics").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert!(r.content_type.starts_with("text/plain"), "{}", r.content_type);
    parse_prometheus(&r.text).unwrap_or_else(|e| panic!("/metrics does not parse: {e:?}\n{}", r.text))
}

/// The value of `name`'s series whose labels are exactly `labels`.
fn value(m: &Exposition, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let family = m.families.get(name)?;
    family.iter_samples().find_map(|s| {
        let set = s.get_labelset().ok()?;
        let got: Vec<(&str, &str)> = set.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let same = got.len() == labels.len() && labels.iter().all(|l| got.contains(l));
        same.then(|| match &s.value {
            PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
            PrometheusValue::Counter(c) => c.value.as_f64(),
            PrometheusValue::Histogram(h) => h.count.unwrap_or(0) as f64,
            PrometheusValue::Summary(s) => s.count.unwrap_or(0) as f64,
        })
    })
}

/// The values of label `label` over `name`'s series.
fn label_values(m: &Exposition, name: &str, label: &str) -> Vec<String> {
    let Some(family) = m.families.get(name) else { return Vec::new() };
    let mut out: Vec<String> = family
        .iter_samples()
        .filter_map(|s| s.get_labelset().ok()?.iter().find(|(k, _)| k.as_str() == label).map(|(_, v)| v.clone()))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The type each name must be exposed with.
fn expected_type(name: &str) -> PrometheusType {
    if [names::APPEND_SECONDS, names::FSYNC_SECONDS, names::GROUP_COMMIT_ENTRIES].contains(&name) {
        PrometheusType::Histogram
    } else if name.ends_with("_total") {
        PrometheusType::Counter
    } else {
        PrometheusType::Gauge
    }
}

#[tokio::test]
async fn metrics_parse_whole_carry_every_name_and_follow_state() {
    let webhook = Webhook::start(true).await;
    let addr = webhook.addr;
    let env = Env::new();
    let server = env
        .serve_with(&format!(
            r#"
[server]
metrics_ledgers = ["audit*"]

[[exporters]]
name = "hook"
sink = "http"
retry = {{ initial = "20ms", max = "200ms" }}
[exporters.config]
url = "http://{addr}/in"
format = "json"
"#
        ))
        .await;

    // A watch stays open for the whole test; it sees the first append.
    let resp = server.http.get(server.url("/v1/watch?prefix=audit")).send().await.expect("open the watch");
    assert_eq!(resp.status(), 200);
    let mut watch = Box::pin(resp.bytes_stream().eventsource());
    for (ledger, n) in [("audit.eu", 3), ("audit.us", 2), ("orders", 4)] {
        for i in 0..n {
            let r = server.append(ledger, format!(r#"{{"payload":{{"i":{i}}}}}"#)).await;
            assert_eq!(r.status, 201, "{}", r.text);
        }
    }
    let first = tokio::time::timeout(std::time::Duration::from_secs(20), watch.next()).await;
    assert!(matches!(first, Ok(Some(Ok(_)))), "the watch delivers: {first:?}");
    let pin = server.post("/v1/pins", r#"{"ttl_ms":600000}"#).await;
    assert_eq!(pin.status, 201, "{}", pin.text);

    // The sink is down: the oldest unexported entry's age becomes known,
    // then grows.
    let mut known = None;
    eventually("the lag age is known while the sink is down", async || {
        let m = scrape(&server).await;
        known = value(&m, names::EXPORTER_LAG_SECONDS, &[("exporter", "hook")]).filter(|s| *s > 0.0);
        known.is_some()
    })
    .await;
    let known = known.expect("known");
    let lag = |m: &Exposition| value(m, names::EXPORTER_LAG_ENTRIES, &[("exporter", "hook")]);
    let hook = [("exporter", "hook")];
    eventually("the lag age grows, and deliveries fail, while the sink is down", async || {
        let m = scrape(&server).await;
        value(&m, names::EXPORTER_LAG_SECONDS, &hook).is_some_and(|s| s > known)
            && lag(&m) == Some(9.0)
            && value(&m, names::EXPORTER_RETRIES_TOTAL, &hook).is_some_and(|n| n >= 1.0)
    })
    .await;

    let m = scrape(&server).await;
    // Every name, with its TYPE and HELP (the outbox's need a source).
    for name in names::ALL.iter().filter(|n| !names::WITH_SOURCES.contains(n)) {
        let family = m.families.get(*name).unwrap_or_else(|| panic!("{name} missing from /metrics"));
        assert_eq!(family.family_type, expected_type(name), "{name}: TYPE");
        assert!(!family.help.trim().is_empty(), "{name}: no HELP");
        assert!(family.iter_samples().next().is_some(), "{name}: no sample");
    }
    for name in m.families.keys() {
        assert!(names::ALL.contains(&name.as_str()), "{name} is exposed but not in metric_names");
    }
    assert_eq!(lag(&m), Some(9.0), "nothing exported yet");
    assert!(value(&m, names::EXPORTER_ERRORS_TOTAL, &hook).is_some_and(|n| n >= 1.0));
    assert_eq!(value(&m, names::EXPORTER_BATCHES_TOTAL, &hook), Some(0.0), "at zero before any");
    assert_eq!(value(&m, names::APPENDED_ENTRIES_TOTAL, &[]), Some(9.0));
    assert_eq!(value(&m, names::LEDGERS, &[]), Some(3.0));
    assert_eq!(value(&m, names::PINS, &[]), Some(1.0));
    assert!(value(&m, names::WATCHERS, &[]).is_some_and(|n| n >= 1.0), "the open watch");
    assert_eq!(value(&m, names::CHUNKS, &[("state", "hot")]), Some(3.0), "one partial chunk per ledger");
    assert_eq!(value(&m, names::CHUNKS, &[("state", "frozen")]), Some(0.0));
    assert!(value(&m, names::APPEND_SECONDS, &[]).is_some_and(|n| n >= 9.0), "each append observed");
    assert!(value(&m, names::PROCESS_OPEN_FDS, &[]).is_some_and(|n| n > 0.0));
    assert!(value(&m, names::PROCESS_RESIDENT_MEMORY_BYTES, &[]).is_some_and(|n| n > 0.0));
    let started = value(&m, names::PROCESS_START_TIME_SECONDS, &[]).expect("start time");
    assert!(started <= (now_ms() / 1000 + 1) as f64 && started > (now_ms() / 1000 - 3600) as f64, "{started}");

    // Per-ledger series only for `audit*`.
    for name in [names::LEDGER_HEAD, names::LEDGER_BYTES, names::EXPORTER_LEDGER_LAG_ENTRIES] {
        assert_eq!(label_values(&m, name, "ledger"), ["audit.eu", "audit.us"], "{name}");
    }
    assert_eq!(value(&m, names::LEDGER_HEAD, &[("ledger", "audit.eu")]), Some(3.0));
    assert!(value(&m, names::LEDGER_BYTES, &[("ledger", "audit.us")]).is_some_and(|b| b > 0.0));
    let ledger_lag = [("exporter", "hook"), ("ledger", "audit.us")];
    assert_eq!(value(&m, names::EXPORTER_LEDGER_LAG_ENTRIES, &ledger_lag), Some(2.0));
    assert!(value(&m, names::EXPORTER_LEDGER_LAG_SECONDS, &ledger_lag).is_some_and(|s| s > 0.0));

    // The sink recovers: lag and its age go back to 0.
    webhook.set_down(false);
    eventually("the exporter catches up", async || {
        let m = scrape(&server).await;
        lag(&m) == Some(0.0) && value(&m, names::EXPORTER_LAG_SECONDS, &hook) == Some(0.0)
    })
    .await;
    let m = scrape(&server).await;
    assert_eq!(value(&m, names::EXPORTER_LEDGER_LAG_SECONDS, &ledger_lag), Some(0.0));
    assert_eq!(value(&m, names::EXPORTER_ENTRIES_TOTAL, &hook), Some(9.0));
}

#[tokio::test]
async fn chunks_are_counted_by_state_and_without_metrics_ledgers_no_series_names_a_ledger() {
    let env = Env::new();
    let server = env.serve_with("[storage]\nchunk_entries = 4\n").await;
    // 10 entries in chunks of 4: two full chunks freeze, the third stays hot.
    for ledger in ["audit.eu", "orders"] {
        let n = if ledger == "orders" { 10 } else { 1 };
        for i in 0..n {
            assert_eq!(server.append(ledger, format!(r#"{{"payload":{i}}}"#)).await.status, 201);
        }
    }
    let mut m = scrape(&server).await;
    eventually("the two full chunks freeze", async || {
        m = scrape(&server).await;
        value(&m, names::CHUNKS, &[("state", "frozen")]) == Some(2.0)
    })
    .await;
    assert_eq!(value(&m, names::CHUNKS, &[("state", "hot")]), Some(2.0), "orders' third chunk, audit.eu's first");
    assert_eq!(value(&m, names::CHUNKS_FROZEN_TOTAL, &[]), Some(2.0));
    for (name, family) in &m.families {
        for s in family.iter_samples() {
            let labels = s.get_labelset().expect("labels");
            assert!(labels.iter().all(|(k, _)| k != "ledger"), "{name} names a ledger though metrics_ledgers is empty");
        }
    }
    assert_eq!(value(&m, names::LEDGERS, &[]), Some(2.0));
    assert_eq!(value(&m, names::PINS, &[]), Some(0.0));
}

/// The parser these tests rely on refuses what a lenient one would skip, so
/// "the whole output parses" means something.
#[test]
fn the_parser_refuses_malformed_text() {
    let good = "# HELP a_total A\n# TYPE a_total counter\na_total 1\n";
    assert!(parse_prometheus(good).is_ok());
    for bad in [
        "# HELP a_total A\n# TYPE a_total counter\na_total one\n",
        "# TYPE a_total counter\na_total{x=\"1} 1\n",
        "# TYPE a_total countr\na_total 1\n",
        "a_total 1\nthis is not a sample\n",
    ] {
        assert!(parse_prometheus(bad).is_err(), "accepted: {bad:?}");
    }
}

#[tokio::test]
async fn per_ledger_series_stop_at_the_cap_in_name_order_and_say_so_once() {
    let env = Env::new();
    let server = env.serve_with("[server]\nmetrics_ledgers = [\"t.*\"]\n").await;
    let cap = ferry_core::limits::METRICS_LEDGERS_MAX;
    let names: Vec<String> = (0..cap + 2).map(|i| format!("t.{i:05}")).collect();
    let paths: Vec<String> = names.iter().map(|n| format!("/v1/ledgers/{n}")).collect();
    let created =
        futures_util::stream::iter(paths.iter().map(|p| server.put(p))).buffer_unordered(32).collect::<Vec<_>>().await;
    assert!(created.iter().all(|r| r.status == 201), "every ledger created");
    for _ in 0..2 {
        let m = scrape(&server).await;
        assert_eq!(label_values(&m, names::LEDGER_HEAD, "ledger"), names[..cap], "the first {cap} by name");
    }
    let warned = server.stderr().matches("matches more ledgers than /metrics shows").count();
    assert_eq!(warned, 1, "logged once:\n{}", server.stderr());
}
