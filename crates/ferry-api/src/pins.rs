//! `/v1/pins` (SPEC §4): snapshot pins for backups. `POST` takes one (a
//! consistent cut of every ledger's First, head and incarnation, and a
//! retention hold until `expires_at`), `POST …/{id}/renew` moves its
//! deadline, `DELETE …/{id}` drops it, `GET` lists them with their age.
//! Admin scope: a pin holds every ledger. Pin ids are decimal strings (they
//! do not fit a JavaScript number).
//!
//! `GET …/{id}/ledgers/{ledger}/entries` is a backup's read: the ledger as
//! the pin cut it, First (or `from`) through the pinned head, as NDJSON
//! backup lines (an entry's JSON form with its idempotency key, what
//! `import.rs` takes back). The pinned head rides in `Ferry-Pinned-Head`,
//! so a client knows how many lines make the whole ledger and tells a
//! stream cut short by a failed page from a complete one.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use ferry_core::{EntryId, LedgerName, now_ms};
use ferry_store::{Pin, PinnedEntry, PinnedRead, Store, StoreError};
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, Scope};
use crate::body::RequestBody;
use crate::entries::{NDJSON, STREAM_PAGE_ENTRIES};
use crate::error::ErrorBody;
use crate::extract::{ApiQuery, LedgerParam};
use crate::{ApiError, AppState};

/// The header of a pinned read that names the pinned head.
const PINNED_HEAD_HEADER: &str = "ferry-pinned-head";

/// A pin lives this long unless the request says otherwise.
const PIN_TTL_MS_DEFAULT: u64 = 60_000;
/// Bounds of `ttl_ms`: a pin outliving a day would hold retention for a
/// backup nobody runs any more.
const PIN_TTL_MS_MIN: u64 = 1_000;
const PIN_TTL_MS_MAX: u64 = 86_400_000;
/// How often expired pins are deleted (and `pin.expired` published).
const PIN_EXPIRY_EVERY: Duration = Duration::from_secs(1);

/// How long the pin lives.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    /// Milliseconds, one second to one day; default one minute.
    #[schema(minimum = 1000, maximum = 86400000)]
    ttl_ms: Option<u64>,
}

/// A pin as the API shows it: each ledger's head, First and incarnation
/// when it was taken, keyed by ledger name.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PinView {
    pub pin: String,
    #[schema(value_type = BTreeMap<String, u64>)]
    pub heads: BTreeMap<String, EntryId>,
    #[schema(value_type = BTreeMap<String, u64>)]
    pub firsts: BTreeMap<String, EntryId>,
    pub incarnations: BTreeMap<String, u64>,
    pub created_at: u64,
    pub expires_at: u64,
    pub age_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl PinView {
    fn of(id: u64, pin: &Pin) -> Self {
        let map = |f: fn(&ferry_store::PinnedLedger) -> u64| {
            pin.ledgers.iter().map(|(l, p)| (l.to_string(), f(p))).collect::<BTreeMap<_, _>>()
        };
        Self {
            pin: id.to_string(),
            heads: map(|p| p.head),
            firsts: map(|p| p.first),
            incarnations: map(|p| p.incarnation),
            created_at: pin.created_at,
            expires_at: pin.expires_at,
            age_ms: now_ms().saturating_sub(pin.created_at),
            by: pin.by.clone(),
        }
    }
}

fn ttl(body: &[u8]) -> Result<u64, ApiError> {
    let request: PinRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PinRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| ApiError::from_json(&e, "the pin request"))?
    };
    let ttl = request.ttl_ms.unwrap_or(PIN_TTL_MS_DEFAULT);
    if !(PIN_TTL_MS_MIN..=PIN_TTL_MS_MAX).contains(&ttl) {
        let message = format!("ttl_ms must be {PIN_TTL_MS_MIN}..={PIN_TTL_MS_MAX} (one second to one day), not {ttl}");
        return Err(ApiError::unprocessable("invalid_ttl", message));
    }
    Ok(ttl)
}

fn pin_id(id: &str) -> Result<u64, ApiError> {
    id.parse().map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "pin_not_found", format!("no snapshot pin {id:?}")))
}

/// `POST /v1/pins`: 201 with the pin; 429 `too_many_pins` at `max_pins`.
#[utoipa::path(
    post,
    path = "/pins",
    operation_id = "create_pin",
    tag = "pins",
    request_body(content = Option<PinRequest>, description = "Optional: an empty body takes the default TTL."),
    responses(
        (status = 201, description = "The pin taken.", body = PinView),
        (status = 400, description = "`invalid_json`.", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 422, description = "`invalid_ttl`, or `invalid_entry` for a wrong shape.", body = ErrorBody),
        (status = 429, description = "`too_many_pins`: `max_pins` are live.", body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    RequestBody(body): RequestBody,
) -> Result<(StatusCode, Json<PinView>), ApiError> {
    caller.require(Scope::Admin, None)?;
    let ttl = ttl(&body)?;
    let (id, pin) = state.store.create_pin(ttl, state.config.max_pins, caller.name()).await?;
    tracing::info!(pin = id, ledgers = pin.ledgers.len(), ttl_ms = ttl, actor = caller.name(), "snapshot pin taken");
    Ok((StatusCode::CREATED, Json(PinView::of(id, &pin))))
}

/// `GET /v1/pins`: every pin, with its age (expired ones until the next
/// expiry pass, within a second).
#[utoipa::path(
    get,
    path = "/pins",
    operation_id = "list_pins",
    tag = "pins",
    responses((status = 200, description = "Every pin.", body = Vec<PinView>))
)]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<PinView>>, ApiError> {
    caller.require(Scope::Admin, None)?;
    Ok(Json(state.store.pins().iter().map(|(id, pin)| PinView::of(*id, pin)).collect()))
}

/// `POST /v1/pins/{id}/renew`: the deadline moves to `ttl_ms` from now;
/// 404 `pin_not_found` for an expired, deleted or unknown pin.
#[utoipa::path(
    post,
    path = "/pins/{id}/renew",
    operation_id = "renew_pin",
    tag = "pins",
    params(("id" = String, Path, description = "The pin id, a decimal string.")),
    request_body(content = Option<PinRequest>, description = "Optional: an empty body takes the default TTL."),
    responses(
        (status = 200, description = "The pin, with its new deadline.", body = PinView),
        (status = 400, description = "`invalid_json`.", body = ErrorBody),
        (status = 404, description = "`pin_not_found`.", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 422, description = "`invalid_ttl`, or `invalid_entry` for a wrong shape.", body = ErrorBody),
    )
)]
pub async fn renew(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    RequestBody(body): RequestBody,
) -> Result<Json<PinView>, ApiError> {
    caller.require(Scope::Admin, None)?;
    let ttl = ttl(&body)?;
    let id = pin_id(&id)?;
    let pin = state.store.renew_pin(id, ttl).await?;
    Ok(Json(PinView::of(id, &pin)))
}

/// `DELETE /v1/pins/{id}`: 204.
#[utoipa::path(
    delete,
    path = "/pins/{id}",
    operation_id = "delete_pin",
    tag = "pins",
    params(("id" = String, Path, description = "The pin id, a decimal string.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "`pin_not_found`.", body = ErrorBody),
    )
)]
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin, None)?;
    state.store.delete_pin(pin_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PinnedReadParams {
    /// The first id (default: the pinned First).
    #[param(value_type = Option<u64>)]
    from: Option<EntryId>,
    /// At most this many lines (default: through the pinned head).
    #[param(minimum = 1)]
    limit: Option<usize>,
}

/// `GET /v1/pins/{id}/ledgers/{ledger}/entries?from=ID&limit=N`: NDJSON
/// backup lines from `from` (default: the pinned First) through the pinned
/// head, or `limit` lines. The first page is read before answering, so its
/// errors get their status: 404 `pin_not_found` or `ledger_not_in_pin`,
/// 409 `pinned_ledger_gone`, 410 `below_first`. A later page that fails
/// (the pin expired meanwhile) cuts the stream with an error, and the
/// count of lines falls short of `Ferry-Pinned-Head`.
#[utoipa::path(
    get,
    path = "/pins/{id}/ledgers/{ledger}/entries",
    operation_id = "read_pinned_entries",
    tag = "pins",
    params(("id" = String, Path, description = "The pin id, a decimal string."), LedgerParam, PinnedReadParams),
    responses(
        (
            status = 200,
            description = "NDJSON: one backup line per entry (`Entry` with its `idempotency_key`), through the pinned head.",
            content_type = "application/x-ndjson",
            body = crate::import::LineIn,
            headers(("Ferry-Pinned-Head" = u64, description = "The ledger's head in the pin: the stream is whole when its last line has this id.")),
        ),
        (status = 400, description = "`invalid_ledger_name`, `invalid_limit` or `invalid_query`.", body = ErrorBody),
        (status = 404, description = "`pin_not_found` or `ledger_not_in_pin`.", body = ErrorBody),
        (status = 409, description = "`pinned_ledger_gone`.", body = ErrorBody),
        (status = 410, description = "`below_first`.", body = ErrorBody),
    )
)]
pub async fn read(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
    ApiQuery(params): ApiQuery<PinnedReadParams>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin, None)?;
    let Path((id, ledger)) = path.map_err(|e| {
        ApiError::bad_request("invalid_ledger_name", format!("the path is not valid: {}", e.body_text()))
    })?;
    let id = pin_id(&id)?;
    let name = LedgerName::parse(&ledger)?;
    let limit = params.limit.unwrap_or(usize::MAX);
    if limit == 0 {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be at least 1 (absent: through the pinned head)",
        ));
    }
    let first = state.store.read_pinned(id, &name, params.from, limit.min(STREAM_PAGE_ENTRIES)).await?;
    // Read after the page, so the store's errors decide the status; a pin
    // gone in between is gone for the stream too.
    let head = state
        .store
        .pins()
        .into_iter()
        .find(|(p, _)| *p == id)
        .and_then(|(_, pin)| pin.ledgers.get(&name).map(|l| l.head))
        .ok_or(StoreError::PinNotFound(id))?;
    let page = Page { store: state.store.clone(), pin: id, name, head, read: Some(Ok(first)), left: limit };
    let stream = futures_util::stream::unfold(page, Page::next);
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(NDJSON)),
        (HeaderName::from_static(PINNED_HEAD_HEADER), HeaderValue::from(head)),
    ];
    Ok((headers, Body::from_stream(stream)).into_response())
}

/// Where a pinned read's stream stands: the page read and not yet sent
/// (or the error reading it), and how many lines it may still send.
struct Page {
    store: Store,
    pin: u64,
    name: LedgerName,
    head: EntryId,
    read: Option<Result<PinnedRead, StoreError>>,
    left: usize,
}

impl Page {
    /// Sends the page read and reads the one after it, 1,000 entries per
    /// store read, never past the pinned head. A failed read ends the
    /// stream with an error once what came before it is sent.
    async fn next(mut self) -> Option<(Result<Bytes, std::io::Error>, Self)> {
        let read = match self.read.take()? {
            Ok(read) if read.entries.is_empty() => return None,
            Ok(read) => read,
            Err(e) => {
                tracing::error!(pin = self.pin, ledger = %self.name, error = %e, "pinned NDJSON stream cut short");
                return Some((Err(std::io::Error::other(e.to_string())), self));
            }
        };
        let taken = read.entries.len().min(self.left);
        self.left -= taken;
        if self.left > 0 && taken == read.entries.len() && read.next <= self.head {
            let page = self.left.min(STREAM_PAGE_ENTRIES);
            self.read = Some(self.store.read_pinned(self.pin, &self.name, Some(read.next), page).await);
        }
        Some((Ok(Bytes::from(backup_lines(&read.entries[..taken]))), self))
    }
}

/// Backup lines: each entry's JSON form with its idempotency key, and `\n`.
fn backup_lines(entries: &[PinnedEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        entries
            .iter()
            .map(|e| e.entry.json_len_max() + e.idempotency_key.as_ref().map_or(0, |k| 6 * k.len() + 20))
            .sum(),
    );
    for e in entries {
        e.entry.write_json_with(&mut out, e.idempotency_key.as_deref());
        out.push(b'\n');
    }
    out
}

/// Deletes expired pins every second until the server closes. A failed
/// pass (a full disk) is logged and tried again: an expired pin holds
/// nothing meanwhile.
pub(crate) async fn expire(store: ferry_store::Store, mut closing: tokio::sync::watch::Receiver<bool>) {
    let mut every = tokio::time::interval(PIN_EXPIRY_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = closing.wait_for(|c| *c) => return,
        }
        match store.expire_pins().await {
            Ok(_) => {}
            Err(StoreError::ShuttingDown) => return,
            Err(e) => tracing::warn!(error = %e, "deleting expired snapshot pins failed; trying again"),
        }
    }
}
