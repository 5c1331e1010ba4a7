//! The bytes of request bodies buffered at once, bounded
//! (`server.max_buffered_body_bytes`). A request that carries a body
//! reserves what it may buffer before its handler reads a byte: its
//! `Content-Length` (at most `max_body_bytes`), or `max_body_bytes` when
//! the length is not declared or the body is compressed. The reservation is held until the answer is
//! produced. A request that cannot reserve within `WAIT` is answered 503
//! `busy` and its body is never read.
//!
//! Reserving up front, not byte by byte as they arrive, is what keeps this
//! free of deadlock: uploads that each hold part of the budget while
//! waiting for more could otherwise stall one another forever.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use tokio::sync::Semaphore;

use crate::{ApiError, AppState};

/// How long a request waits for buffer space before it is refused.
const WAIT: Duration = Duration::from_secs(5);
/// The budget is counted in KiB so a `u32` of permits covers terabytes.
const UNIT: u64 = 1024;

/// The shared budget.
#[derive(Clone)]
pub(crate) struct BodyBudget {
    permits: Arc<Semaphore>,
    total_units: u32,
}

impl BodyBudget {
    pub(crate) fn new(total_bytes: u64) -> Self {
        let total_units = units(total_bytes).min(Semaphore::MAX_PERMITS as u32);
        Self { permits: Arc::new(Semaphore::new(total_units as usize)), total_units }
    }
}

fn units(bytes: u64) -> u32 {
    u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX)
}

/// What a request may buffer: 0 without a body.
fn body_bytes(req: &Request, max_body_bytes: u64) -> u64 {
    let headers = req.headers();
    // A compressed body may inflate to `max_body_bytes` however short it is
    // as sent (`body.rs` caps both).
    let compressed = headers
        .get_all(header::CONTENT_ENCODING)
        .iter()
        .any(|v| !v.to_str().is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity")));
    if compressed {
        return max_body_bytes;
    }
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) => n.min(max_body_bytes),
        None if headers.contains_key(header::TRANSFER_ENCODING) => max_body_bytes,
        // HTTP/1.1 without either header has no body.
        None => 0,
    }
}

/// Middleware: reserves a request's body bytes from the budget, or answers
/// 503 `busy`.
pub(crate) async fn reserve(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let budget = &state.body_budget;
    let want = units(body_bytes(&req, state.config.max_body_bytes as u64)).min(budget.total_units);
    if want == 0 {
        return next.run(req).await;
    }
    match tokio::time::timeout(WAIT, budget.permits.clone().acquire_many_owned(want)).await {
        Ok(Ok(reserved)) => {
            let answer = next.run(req).await;
            drop(reserved);
            answer
        }
        _ => {
            metrics::counter!(ferry_core::metric_names::HTTP_BUSY_TOTAL).increment(1);
            let mut answer = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many request bodies are being received at once (server.max_buffered_body_bytes); retry shortly",
            )
            .into_response();
            answer.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            answer
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request {
        let mut b = axum::http::Request::builder().method("POST").uri("/v1/ledgers/a/entries");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(axum::body::Body::empty()).expect("request")
    }

    #[test]
    fn a_body_reserves_its_declared_length_capped_or_the_cap_when_undeclared() {
        assert_eq!(body_bytes(&request(&[("content-length", "100")]), 1000), 100);
        assert_eq!(body_bytes(&request(&[("content-length", "5000")]), 1000), 1000);
        assert_eq!(body_bytes(&request(&[("transfer-encoding", "chunked")]), 1000), 1000);
        assert_eq!(body_bytes(&request(&[]), 1000), 0);
        let gzip = [("content-length", "10"), ("content-encoding", "gzip")];
        assert_eq!(body_bytes(&request(&gzip), 1000), 1000, "a compressed body may inflate to the cap");
        let identity = [("content-length", "10"), ("content-encoding", "identity")];
        assert_eq!(body_bytes(&request(&identity), 1000), 10);
        assert_eq!(units(1), 1);
        assert_eq!(units(1024), 1);
        assert_eq!(units(1025), 2);
        assert_eq!(units(u64::MAX), u32::MAX);
    }
}
