//! `POST` and `GET /v1/ledgers/{ledger}/entries`: append and read.

use crate::body::RequestBody;
use crate::error::ErrorBody;
use crate::extract::{ApiQuery, LedgerParam, LedgerSegment};
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use ferry_core::bus::Received;
use ferry_core::limits::{LONG_POLL_WAIT_MAX, READ_LIMIT_DEFAULT, READ_LIMIT_MAX};
use ferry_core::{Entry, EntryId, InvalidPayload, LedgerName, NewEntry, Payload, check_portable};
use ferry_store::{ReadBatch, Store, StoreError};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::auth::{Caller, Scope};
use crate::{AppState, error::ApiError};

pub(crate) const NDJSON: &str = "application/x-ndjson";
/// Entries per storage read while streaming NDJSON.
pub(crate) const STREAM_PAGE_ENTRIES: usize = 1_000;
/// Append notifications a long-poll read may have waiting (past it, it
/// looks at the head again: nothing is lost but a wake-up).
const LONG_POLL_BUFFER: usize = 64;

/// An append body, one entry or a batch, told apart in a single parse:
/// `{"payload", "key"?, "idempotency_key"?}` or `{"entries":[…]}`, either
/// with `expected_head`. A batch carries key and idempotency key in each
/// entry, never beside `entries`.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = AppendBody)]
#[serde(
    deny_unknown_fields,
    expecting = r#"an entry {"payload":…} or a batch {"entries":[…]}, either with "expected_head"?"#
)]
struct AppendIn<'a> {
    /// One entry's JSON value (`null` included).
    #[serde(borrow, default)]
    #[schema(value_type = serde_json::Value, required = false)]
    payload: Given<'a>,
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    key: Option<&'a RawValue>,
    /// A repeat within 24 h returns the original id with 200 and appends nothing.
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    idempotency_key: Option<&'a RawValue>,
    /// A batch: all appended or none, with contiguous ids.
    #[serde(borrow)]
    #[schema(value_type = Option<Vec<EntryIn>>)]
    entries: Option<Vec<EntryIn<'a>>>,
    /// Apply only at this head (`Store::append_expecting`); 0 is an empty or absent ledger.
    #[schema(value_type = Option<u64>)]
    expected_head: Option<EntryId>,
}

/// One entry of an append body. Its fields stay JSON text here, checked
/// against the rule for what ferry takes in by `into_new_entry` (an
/// import's backup lines too: `import.rs`).
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = NewEntry)]
#[serde(deny_unknown_fields, expecting = r#"an entry {"payload":…, "key"?, "idempotency_key"?}"#)]
pub(crate) struct EntryIn<'a> {
    #[serde(borrow)]
    #[schema(value_type = serde_json::Value)]
    pub payload: &'a RawValue,
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    pub key: Option<&'a RawValue>,
    #[serde(borrow)]
    #[schema(value_type = Option<String>)]
    pub idempotency_key: Option<&'a RawValue>,
}

/// A field that may be absent, in which `null` is a value (a payload may
/// be `null`; an `Option` would take it for absent).
#[derive(Default)]
enum Given<'a> {
    #[default]
    Absent,
    Value(&'a RawValue),
}

impl<'de: 'a, 'a> Deserialize<'de> for Given<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'a RawValue>::deserialize(d).map(Given::Value)
    }
}

impl EntryIn<'_> {
    /// Payload, key and idempotency key under the same rule: JSON that
    /// strict parsers read back as sent. `index` names a batch's entry in
    /// messages (`entries[3].payload.a: …`).
    pub(crate) fn into_new_entry(self, index: Option<usize>) -> Result<NewEntry, ApiError> {
        let at = |field: &str| match index {
            Some(i) => format!("entries[{i}].{field}"),
            None => field.to_owned(),
        };
        let payload = Payload::from_raw_json(self.payload.get()).map_err(|e| match e {
            InvalidPayload::Unportable(u) => ApiError::unprocessable("invalid_entry", u.at(&at("payload"))),
            e => e.into(),
        })?;
        let key = text_field(self.key, || at("key"))?;
        let idempotency_key = text_field(self.idempotency_key, || at("idempotency_key"))?;
        Ok(NewEntry { key, idempotency_key, payload })
    }
}

/// A JSON string field (`key`, `idempotency_key`), decoded.
fn text_field(raw: Option<&RawValue>, at: impl Fn() -> String) -> Result<Option<String>, ApiError> {
    let Some(raw) = raw else { return Ok(None) };
    check_portable(raw.get()).map_err(|u| ApiError::unprocessable("invalid_entry", u.at(&at())))?;
    let text = serde_json::from_str(raw.get())
        .map_err(|e| ApiError::unprocessable("invalid_entry", format!("{}: {e}", at())))?;
    Ok(Some(text))
}

/// An append body, parsed.
#[derive(Debug)]
struct Append {
    entries: Vec<NewEntry>,
    expected_head: Option<EntryId>,
}

/// Parses `{"payload":…}` or `{"entries":[…]}`, either with `expected_head`.
fn parse_append(body: &[u8]) -> Result<Append, ApiError> {
    let append: AppendIn = serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e, "the request body"))?;
    let expected_head = append.expected_head;
    let entries = parse_entries(append)?;
    Ok(Append { entries, expected_head })
}

/// The entries of an append body: its one entry or its batch.
fn parse_entries(append: AppendIn<'_>) -> Result<Vec<NewEntry>, ApiError> {
    let single = append.key.is_some() || append.idempotency_key.is_some();
    match (append.payload, append.entries) {
        (Given::Absent, Some(entries)) if !single => {
            entries.into_iter().enumerate().map(|(i, e)| e.into_new_entry(Some(i))).collect()
        }
        (Given::Value(payload), None) => {
            let one = EntryIn { payload, key: append.key, idempotency_key: append.idempotency_key };
            Ok(vec![one.into_new_entry(None)?])
        }
        (_, Some(_)) => Err(ApiError::unprocessable(
            "invalid_entry",
            "a batch {\"entries\":[…]} carries payload, key and idempotency_key in each entry, not beside `entries`",
        )),
        (Given::Absent, None) => Err(ApiError::unprocessable(
            "invalid_entry",
            "the request body has neither `payload` (one entry) nor `entries` (a batch)",
        )),
    }
}

/// The ids an append gave (or, for a repeated idempotency key, had given).
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Appended {
    #[schema(value_type = Vec<u64>)]
    ids: Vec<EntryId>,
}

/// Appends one entry or a batch, durably: the answer comes after the sync.
#[utoipa::path(
    post,
    path = "/ledgers/{ledger}/entries",
    operation_id = "append_entries",
    tag = "entries",
    params(LedgerParam),
    request_body(content = AppendIn, description = "One entry or a batch; `Content-Encoding: gzip` is accepted."),
    responses(
        (status = 201, description = "Appended (and the ledger created when `auto_create_ledgers`).", body = Appended),
        (status = 200, description = "Every entry repeated an earlier idempotency key: their original ids, nothing appended.", body = Appended),
        (status = 400, description = "`invalid_ledger_name` or `invalid_json`.", body = ErrorBody),
        (status = 404, description = "`ledger_not_found` (without `auto_create_ledgers`).", body = ErrorBody),
        (status = 412, description = "`head_mismatch`: the head is not `expected_head`; `head` says what it is.", body = ErrorBody),
        (status = 413, description = "`body_too_large`, `entry_too_large` or `batch_too_large`.", body = ErrorBody),
        (status = 415, description = "`unsupported_media_type`: a `Content-Encoding` other than gzip.", body = ErrorBody),
        (status = 422, description = "`invalid_entry`, `empty_batch`, `field_too_long` or `duplicate_idempotency_key`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable`, `shutting_down`, or the server's buffered-body budget is spent.", body = ErrorBody),
        (status = 507, description = "`insufficient_storage` or `quota_exceeded`.", body = ErrorBody),
    )
)]
pub(crate) async fn append(
    State(state): State<AppState>,
    caller: Caller,
    LedgerSegment(name): LedgerSegment,
    RequestBody(body): RequestBody,
) -> Result<Response, ApiError> {
    let name = LedgerName::parse(&name)?;
    caller.require(Scope::Append, Some(&name))?;
    let Append { entries, expected_head } = parse_append(&body)?;
    let outcome = match expected_head {
        None => state.store.append(&name, entries).await?,
        Some(head) => state.store.append_expecting(&name, entries, head).await?,
    };
    let status = if outcome.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, axum::Json(Appended { ids: outcome.ids })).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadParams {
    /// The first id (default: First). Below First: 410 `below_first`.
    #[param(value_type = Option<u64>)]
    from: Option<EntryId>,
    /// Unix ms: start at the first entry stamped at or after it (not with `from`).
    from_ts: Option<u64>,
    /// Entries at most: 1 to 10000, default 1000.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
    /// A long poll: `30s`, `500ms`, at most `LONG_POLL_WAIT_MAX`.
    #[param(example = "30s")]
    wait: Option<String>,
}

/// A page of a read: `next` is the id to ask `from` for the entries after it.
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "describes the JSON `read` writes by hand; never built")]
struct ReadPage {
    entries: Vec<Entry>,
    #[schema(value_type = u64)]
    next: EntryId,
}

/// Where a read starts.
#[derive(Clone, Copy)]
enum Start {
    /// First, or `from`.
    Id(Option<EntryId>),
    /// The first entry stamped at or after this (unix ms).
    Ts(u64),
}

impl Start {
    fn of(params: &ReadParams) -> Result<Self, ApiError> {
        match (params.from, params.from_ts) {
            (Some(_), Some(_)) => {
                Err(ApiError::bad_request("invalid_query", "from and from_ts cannot be given together: choose one"))
            }
            (from, None) => Ok(Start::Id(from)),
            (None, Some(ts)) => Ok(Start::Ts(ts)),
        }
    }

    /// The id this start names now (for `Ts`, a search: `Store::first_at_or_after`).
    async fn resolve(self, store: &Store, name: &LedgerName) -> Result<Option<EntryId>, ApiError> {
        match self {
            Start::Id(from) => Ok(from),
            Start::Ts(ts) => Ok(Some(store.first_at_or_after(name, ts).await?)),
        }
    }
}

/// `wait=DURATION`, checked against `LONG_POLL_WAIT_MAX`.
fn parse_wait(wait: Option<&str>) -> Result<Option<Duration>, ApiError> {
    let Some(text) = wait else { return Ok(None) };
    let max = LONG_POLL_WAIT_MAX;
    let invalid = |why: String| {
        ApiError::bad_request(
            "invalid_wait",
            format!("wait={text:?}: {why}; give a duration such as 30s, at most {}s", max.as_secs()),
        )
    };
    let wait = humantime::parse_duration(text).map_err(|e| invalid(e.to_string()))?;
    if wait > max {
        return Err(invalid("longer than a long poll may wait".into()));
    }
    Ok(Some(wait))
}

/// Reads entries in id order, as one JSON page or (with `Accept:
/// application/x-ndjson`) streamed as lines.
#[utoipa::path(
    get,
    path = "/ledgers/{ledger}/entries",
    operation_id = "read_entries",
    tag = "entries",
    params(LedgerParam, ReadParams),
    responses(
        (
            status = 200,
            description = "A page of entries; with `Accept: application/x-ndjson`, one `Entry` per line.",
            content(
                (ReadPage = "application/json"),
                (Entry = "application/x-ndjson"),
            ),
        ),
        (status = 400, description = "`invalid_ledger_name`, `invalid_query`, `invalid_limit` or `invalid_wait`.", body = ErrorBody),
        (status = 404, description = "`ledger_not_found`.", body = ErrorBody),
        (status = 410, description = "`below_first`: `from` is below First; `first` says where the ledger starts.", body = ErrorBody),
        (status = 429, description = "`too_many_watchers`: a `wait` found `max_watchers` taken.", body = ErrorBody),
    )
)]
pub(crate) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    LedgerSegment(name): LedgerSegment,
    ApiQuery(params): ApiQuery<ReadParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let name = LedgerName::parse(&name)?;
    caller.require(Scope::Read, Some(&name))?;
    let limit = params.limit.unwrap_or(READ_LIMIT_DEFAULT);
    if limit == 0 || limit > READ_LIMIT_MAX {
        return Err(ApiError::bad_request("invalid_limit", format!("limit must be 1..={READ_LIMIT_MAX}, got {limit}")));
    }
    let start = Start::of(&params)?;
    if let Some(wait) = parse_wait(params.wait.as_deref())? {
        long_poll(&state, &name, start, wait).await?;
    }
    let wants_ndjson = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains(NDJSON));
    if wants_ndjson {
        // The first page is read before answering, so errors (unknown
        // ledger, below First) get their status instead of a cut stream.
        let page = limit.min(STREAM_PAGE_ENTRIES);
        let first_page = read_start(&state.store, &name, start, page).await?;
        return Ok(ndjson_response(state.store.clone(), name, first_page, limit));
    }
    let batch = read_start(&state.store, &name, start, limit).await?;
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

/// The first page of a read. A start by time is searched again when
/// retention pruned its entry in between (it then starts at First).
async fn read_start(store: &Store, name: &LedgerName, start: Start, limit: usize) -> Result<ReadBatch, ApiError> {
    let mut pruned = 0;
    loop {
        let from = start.resolve(store, name).await?;
        match store.read(name, from, limit).await {
            Err(StoreError::BelowFirst { .. }) if matches!(start, Start::Ts(_)) && pruned < 8 => pruned += 1,
            read => return Ok(read?),
        }
    }
}

/// Waits, as a watcher (`max_watchers`), until the ledger holds an entry
/// where the read starts, the wait is over, or the server is closing;
/// woken by the store's append notifications, never by polling. The wait
/// is cut to a second below the server's idle timeout, so the connection
/// is not closed under it. An absent ledger is not waited for: the read
/// answers 404.
async fn long_poll(state: &AppState, name: &LedgerName, start: Start, wait: Duration) -> Result<(), ApiError> {
    let wait = wait.min(state.config.idle_timeout.saturating_sub(Duration::from_secs(1)));
    let deadline = tokio::time::Instant::now() + wait;
    let _watcher = state.watchers.enter(state.config.max_watchers).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_watchers",
            format!("{} watchers and waiting reads are open (max_watchers)", state.config.max_watchers),
        )
    })?;
    // Subscribe before looking: an append after the look wakes us.
    let mut appends = state.store.appends().subscribe(name.as_str(), LONG_POLL_BUFFER);
    let mut closing = state.config.closing.clone();
    loop {
        let Some(head) = state.store.ledger_head(name) else { return Ok(()) };
        let from = start.resolve(&state.store, name).await?.unwrap_or(head.first);
        if from <= head.head {
            return Ok(());
        }
        // Another ledger whose name starts with this one wakes nothing; a
        // lag only makes us look again. False: the store is gone.
        let woken = async {
            loop {
                match appends.recv().await {
                    Some(Received::Message(a)) if a.ledger != *name || a.last_id < from => continue,
                    received => return received.is_some(),
                }
            }
        };
        tokio::select! {
            subscribed = woken => if !subscribed { return Ok(()) },
            () = tokio::time::sleep_until(deadline) => return Ok(()),
            _ = closing.wait_for(|c| *c) => return Ok(()),
        }
    }
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
        let one = parse_append(br#"{"payload": {"a": 1}, "key": "k"}"#).unwrap().entries;
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].payload.as_str(), r#"{"a":1}"#);
        assert_eq!(one[0].key.as_deref(), Some("k"));
        let batch =
            parse_append(br#"{"entries":[{"payload":1},{"payload":null,"idempotency_key":"x"}]}"#).unwrap().entries;
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
            (br#"{"payload":1,"payload":2}"#, StatusCode::UNPROCESSABLE_ENTITY),
            (br#"{"entries":[],"key":"k"}"#, StatusCode::UNPROCESSABLE_ENTITY),
            (br#"{"key":"k"}"#, StatusCode::UNPROCESSABLE_ENTITY),
        ] {
            let err = parse_append(body).expect_err("must fail");
            assert_eq!(err.status, status, "{}", String::from_utf8_lossy(body));
        }
    }

    #[test]
    fn expected_head_rides_beside_one_entry_or_a_batch() {
        let one = parse_append(br#"{"payload":1,"expected_head":0}"#).unwrap();
        assert_eq!((one.entries.len(), one.expected_head), (1, Some(0)));
        let batch = parse_append(br#"{"entries":[{"payload":1},{"payload":2}],"expected_head":7}"#).unwrap();
        assert_eq!((batch.entries.len(), batch.expected_head), (2, Some(7)));
        assert_eq!(parse_append(br#"{"payload":1}"#).unwrap().expected_head, None);
        let err = parse_append(br#"{"entries":[{"payload":1,"expected_head":1}]}"#).expect_err("per entry");
        assert_eq!(err.code, "invalid_entry");
    }

    #[test]
    fn wait_is_a_duration_of_at_most_a_minute() {
        assert_eq!(parse_wait(Some("30s")).unwrap(), Some(Duration::from_secs(30)));
        assert_eq!(parse_wait(Some("60s")).unwrap(), Some(LONG_POLL_WAIT_MAX));
        assert_eq!(parse_wait(None).unwrap(), None);
        for bad in ["61s", "30", "soon", "-1s"] {
            assert_eq!(parse_wait(Some(bad)).expect_err(bad).code, "invalid_wait");
        }
    }

    #[test]
    fn a_null_payload_is_a_value_and_a_null_key_is_none() {
        let one = parse_append(br#"{"payload":null,"key":null}"#).unwrap().entries;
        assert_eq!((one[0].payload.as_str(), one[0].key.as_deref()), ("null", None));
    }

    #[test]
    fn payload_key_and_idempotency_key_are_named_where_strict_parsers_would_fail() {
        for (body, message) in [
            (&br#"{"payload":{"a":[1e999]}}"#[..], "payload.a[0]: the number 1e999 "),
            (br#"{"payload":1,"key":"\ud800"}"#, "key: the string holds the lone surrogate \\ud800"),
            (br#"{"payload":1,"idempotency_key":"\udc00"}"#, "idempotency_key: "),
            (br#"{"entries":[{"payload":1},{"payload":{"b":1,"b":2}}]}"#, "entries[1].payload.b: duplicate"),
            (br#"{"entries":[{"payload":1,"key":"\udfff"}]}"#, "entries[0].key: "),
            (br#"{"entries":[{"payload":1,"key":5}]}"#, "entries[0].key: invalid type"),
        ] {
            let err = parse_append(body).expect_err("must fail");
            assert_eq!((err.status, err.code), (StatusCode::UNPROCESSABLE_ENTITY, "invalid_entry"));
            assert!(err.message.starts_with(message), "{}: {}", String::from_utf8_lossy(body), err.message);
        }
    }
}
