//! `POST` and `GET /v1/ledgers/{ledger}/entries`: append and read.

use std::collections::HashMap;

use crate::extract::{ApiQuery, LedgerSegment};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ferry_core::limits::{READ_LIMIT_DEFAULT, READ_LIMIT_MAX};
use ferry_core::{Entry, EntryId, LedgerName, NewEntry, Payload};
use ferry_store::{ReadBatch, Store};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::{AppState, error::ApiError};

const NDJSON: &str = "application/x-ndjson";
/// Entries per storage read while streaming NDJSON.
const STREAM_PAGE_ENTRIES: usize = 1_000;

/// One entry of an append body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EntryIn<'a> {
    #[serde(borrow)]
    payload: &'a RawValue,
    key: Option<String>,
    idempotency_key: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchIn<'a> {
    #[serde(borrow)]
    entries: Vec<EntryIn<'a>>,
}

impl From<EntryIn<'_>> for NewEntry {
    fn from(e: EntryIn<'_>) -> Self {
        NewEntry { key: e.key, idempotency_key: e.idempotency_key, payload: Payload::from_valid_json(e.payload.get()) }
    }
}

/// Parses `{"payload":…}` or `{"entries":[…]}`.
fn parse_append(body: &[u8]) -> Result<Vec<NewEntry>, ApiError> {
    let top: HashMap<&str, &RawValue> =
        serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e, "the request body"))?;
    if top.contains_key("entries") {
        let batch: BatchIn = serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e, "the batch"))?;
        Ok(batch.entries.into_iter().map(NewEntry::from).collect())
    } else {
        let one: EntryIn = serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e, "the entry"))?;
        Ok(vec![one.into()])
    }
}

pub(crate) async fn append(
    State(state): State<AppState>,
    LedgerSegment(name): LedgerSegment,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let name = LedgerName::parse(&name)?;
    let body = body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("the request body exceeds max_body_bytes ({} bytes)", state.config.max_body_bytes),
        ),
        status => ApiError::new(status, "invalid_body", e.body_text()),
    })?;
    let entries = parse_append(&body)?;
    let outcome = state.store.append(&name, entries).await?;
    let status = if outcome.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(serde_json::json!({ "ids": outcome.ids }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReadParams {
    from: Option<EntryId>,
    limit: Option<usize>,
}

pub(crate) async fn read(
    State(state): State<AppState>,
    LedgerSegment(name): LedgerSegment,
    ApiQuery(params): ApiQuery<ReadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = LedgerName::parse(&name)?;
    let limit = params.limit.unwrap_or(READ_LIMIT_DEFAULT);
    if limit == 0 || limit > READ_LIMIT_MAX {
        return Err(ApiError::bad_request("invalid_limit", format!("limit must be 1..={READ_LIMIT_MAX}, got {limit}")));
    }
    let wants_ndjson = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains(NDJSON));
    if wants_ndjson {
        // The first page is read before answering, so errors (unknown
        // ledger, below First) get their status instead of a cut stream.
        let page = limit.min(STREAM_PAGE_ENTRIES);
        let first_page = read_page(state.store.clone(), name.clone(), params.from, page).await?;
        return Ok(ndjson_response(state.store, name, first_page, limit));
    }
    let batch = read_page(state.store, name, params.from, limit).await?;
    let mut out = Vec::with_capacity(batch.entries.iter().map(|e| e.payload.len() + 96).sum::<usize>() + 32);
    out.extend_from_slice(b"{\"entries\":[");
    for (i, e) in batch.entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        e.write_json(&mut out);
    }
    out.extend_from_slice(format!("],\"next\":{}}}", batch.next).as_bytes());
    Ok(([(header::CONTENT_TYPE, "application/json")], out).into_response())
}

async fn read_page(store: Store, name: LedgerName, from: Option<EntryId>, limit: usize) -> Result<ReadBatch, ApiError> {
    Ok(store.read(&name, from, limit).await?)
}

/// Streams up to `limit` entries as JSON lines, page by page.
fn ndjson_response(store: Store, name: LedgerName, first: ReadBatch, limit: usize) -> Response {
    let state = (store, name, Some(first), limit);
    let stream = futures_util::stream::unfold(state, |(store, name, page, left)| async move {
        let page = page.filter(|p| !p.entries.is_empty())?;
        let taken = page.entries.len().min(left);
        let left = left - taken;
        let bytes = lines(&page.entries[..taken]);
        let next = if left > 0 && taken == page.entries.len() {
            match read_page(store.clone(), name.clone(), Some(page.next), left.min(STREAM_PAGE_ENTRIES)).await {
                Ok(next) => Some(next),
                Err(e) => {
                    tracing::error!(ledger = %name, error = e.message, "NDJSON stream cut short");
                    return Some((Err(std::io::Error::other(e.message)), (store, name, None, 0)));
                }
            }
        } else {
            None
        };
        Some((Ok::<_, std::io::Error>(Bytes::from(bytes)), (store, name, next, left)))
    });
    ([(header::CONTENT_TYPE, NDJSON)], Body::from_stream(stream)).into_response()
}

fn lines(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.payload.len() + 96).sum());
    for e in entries {
        e.write_json(&mut out);
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_and_batch_bodies_parse() {
        let one = parse_append(br#"{"payload": {"a": 1}, "key": "k"}"#).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].payload.as_str(), r#"{"a":1}"#);
        assert_eq!(one[0].key.as_deref(), Some("k"));
        let batch = parse_append(br#"{"entries":[{"payload":1},{"payload":null,"idempotency_key":"x"}]}"#).unwrap();
        assert_eq!(batch.len(), 2);
        assert_eq!(batch[1].payload.as_str(), "null");
    }

    #[test]
    fn malformed_json_is_400_and_wrong_shape_is_422() {
        for (body, status) in [
            (&b"{"[..], StatusCode::BAD_REQUEST),
            (b"not json", StatusCode::BAD_REQUEST),
            (b"[1]", StatusCode::UNPROCESSABLE_ENTITY),
            (b"{}", StatusCode::UNPROCESSABLE_ENTITY),
            (br#"{"payload":1,"extra":2}"#, StatusCode::UNPROCESSABLE_ENTITY),
            (br#"{"entries":{}}"#, StatusCode::UNPROCESSABLE_ENTITY),
            (br#"{"payload":1,"key":5}"#, StatusCode::UNPROCESSABLE_ENTITY),
        ] {
            let err = parse_append(body).expect_err("must fail");
            assert_eq!(err.status, status, "{}", String::from_utf8_lossy(body));
        }
    }
}
