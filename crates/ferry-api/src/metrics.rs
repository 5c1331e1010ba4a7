//! `GET /metrics`: Prometheus text rendered from the process-wide `metrics`
//! recorder. The store and the API record with the `metrics` macros; this
//! module installs the recorder and describes every series once.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::AppState;

/// Installs the Prometheus recorder for this process (once; later calls
/// return a handle that renders nothing new).
pub fn install() -> Option<PrometheusHandle> {
    let buckets = [0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0];
    let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()), &buckets)
        .and_then(|b| b.set_buckets_for_metric(metrics_exporter_prometheus::Matcher::Suffix("_entries".into()), &sizes))
        .ok()?
        .install_recorder()
        .ok()?;
    describe();
    Some(handle)
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!("ferry_appended_entries_total", Unit::Count, "Entries appended durably");
    describe_counter!("ferry_appended_bytes_total", Unit::Bytes, "Encoded record bytes appended durably");
    describe_histogram!("ferry_append_seconds", Unit::Seconds, "Append latency, queue to durable ack");
    describe_histogram!("ferry_fsync_seconds", Unit::Seconds, "Time of one group commit's write + fdatasync");
    describe_histogram!("ferry_group_commit_entries", Unit::Count, "Records written by one group commit");
    describe_gauge!("ferry_ledgers", Unit::Count, "Ledgers in the store");
    describe_counter!("ferry_chunks_frozen_total", Unit::Count, "Chunks frozen into packs");
    describe_counter!("ferry_chunks_pruned_total", Unit::Count, "Chunks removed by retention");
    describe_gauge!("ferry_watchers", Unit::Count, "Open /v1/watch and /v1/events streams");
    describe_counter!("ferry_watchers_lagged_total", Unit::Count, "Streams closed because the consumer fell behind");
}

pub(crate) async fn render(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.config.metrics.as_ref().map(PrometheusHandle::render).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
