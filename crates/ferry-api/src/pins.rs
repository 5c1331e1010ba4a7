//! `/v1/pins` (SPEC §4): snapshot pins for backups. `POST` takes one (a
//! consistent cut of every ledger's First, head and incarnation, and a
//! retention hold until `expires_at`), `POST …/{id}/renew` moves its
//! deadline, `DELETE …/{id}` drops it, `GET` lists them with their age.
//! Admin scope: a pin holds every ledger. Pin ids are decimal strings (they
//! do not fit a JavaScript number).

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use ferry_core::{EntryId, now_ms};
use ferry_store::{Pin, StoreError};
use serde::{Deserialize, Serialize};

use crate::auth::{Caller, Scope};
use crate::body::RequestBody;
use crate::{ApiError, AppState};

/// A pin lives this long unless the request says otherwise.
const PIN_TTL_MS_DEFAULT: u64 = 60_000;
/// Bounds of `ttl_ms`: a pin outliving a day would hold retention for a
/// backup nobody runs any more.
const PIN_TTL_MS_MIN: u64 = 1_000;
const PIN_TTL_MS_MAX: u64 = 86_400_000;
/// How often expired pins are deleted (and `pin.expired` published).
const PIN_EXPIRY_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PinRequest {
    ttl_ms: Option<u64>,
}

/// A pin as the API shows it.
#[derive(Debug, Serialize)]
pub struct PinView {
    pub pin: String,
    pub heads: BTreeMap<String, EntryId>,
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
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<PinView>>, ApiError> {
    caller.require(Scope::Admin, None)?;
    Ok(Json(state.store.pins().iter().map(|(id, pin)| PinView::of(*id, pin)).collect()))
}

/// `POST /v1/pins/{id}/renew`: the deadline moves to `ttl_ms` from now;
/// 404 `pin_not_found` for an expired, deleted or unknown pin.
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
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin, None)?;
    state.store.delete_pin(pin_id(&id)?).await?;
    Ok(StatusCode::NO_CONTENT)
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
