//! `GET /v1/ledgers`, `GET /v1/ledgers/{ledger}`, `PUT /v1/ledgers/{ledger}`,
//! `GET /v1/ledgers/{ledger}/head`.

use crate::error::ErrorBody;
use crate::extract::{ApiQuery, LedgerParam, LedgerSegment, PageQuery};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ferry_core::LedgerName;
use ferry_store::{ChainHead, LedgerInfo, StoreError};

use crate::auth::{Caller, Scope};
use crate::{AppState, error::ApiError};

/// One page of `GET /v1/ledgers`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct LedgerPage {
    /// In name order.
    pub ledgers: Vec<LedgerInfo>,
    /// The last name of this page when more follow: ask again with
    /// `after` = this.
    pub next: Option<LedgerName>,
}

/// The ledgers the caller may read, a page at a time (403 without the
/// `read` scope).
#[utoipa::path(
    get,
    path = "/ledgers",
    operation_id = "list_ledgers",
    tag = "ledgers",
    params(PageQuery),
    responses(
        (status = 200, description = "One page of ledgers, in name order.", body = LedgerPage),
        (status = 400, description = "`invalid_query`: `after` is not a ledger name, or `limit` is out of range.", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<LedgerPage>, ApiError> {
    caller.require(Scope::Read, None)?;
    let (after, limit) = query.page()?;
    let (ledgers, next) =
        state.store.list_ledgers_page(after.as_ref(), limit, |name| caller.may(Scope::Read, name.as_str()));
    Ok(Json(LedgerPage { ledgers, next }))
}

/// One ledger: its First, head, entries, bytes and creation time.
#[utoipa::path(
    get,
    path = "/ledgers/{ledger}",
    operation_id = "get_ledger",
    tag = "ledgers",
    params(LedgerParam),
    responses(
        (status = 200, description = "The ledger.", body = LedgerInfo),
        (status = 400, description = "`invalid_ledger_name`.", body = ErrorBody),
        (status = 404, description = "`ledger_not_found`.", body = ErrorBody),
    )
)]
pub(crate) async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    LedgerSegment(name): LedgerSegment,
) -> Result<Json<LedgerInfo>, ApiError> {
    let name = LedgerName::parse(&name)?;
    caller.require(Scope::Read, Some(&name))?;
    let info = state.store.ledger_info(&name).ok_or(StoreError::LedgerNotFound(name))?;
    Ok(Json(info))
}

/// The head id and its chain hash, read together, for anchoring a ledger
/// outside ferry: `{"id": 42, "hash": "…"}` (`hash` null for a ledger
/// created without a chain). Takes the `read` scope on the ledger.
#[utoipa::path(
    get,
    path = "/ledgers/{ledger}/head",
    operation_id = "get_ledger_head",
    tag = "ledgers",
    params(LedgerParam),
    responses(
        (status = 200, description = "The head id and its chain hash.", body = ChainHead),
        (status = 400, description = "`invalid_ledger_name`.", body = ErrorBody),
        (status = 404, description = "`ledger_not_found`.", body = ErrorBody),
    )
)]
pub(crate) async fn head(
    State(state): State<AppState>,
    caller: Caller,
    LedgerSegment(name): LedgerSegment,
) -> Result<Json<ChainHead>, ApiError> {
    let name = LedgerName::parse(&name)?;
    caller.require(Scope::Read, Some(&name))?;
    let head = state.store.chain_head(&name).ok_or(StoreError::LedgerNotFound(name))?;
    Ok(Json(head))
}

/// Deletes a ledger with its packs, cursors and metadata: 204.
#[utoipa::path(
    delete,
    path = "/ledgers/{ledger}",
    operation_id = "delete_ledger",
    tag = "ledgers",
    params(LedgerParam),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, description = "`invalid_ledger_name`.", body = ErrorBody),
        (status = 404, description = "`ledger_not_found`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable` or `shutting_down`.", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    LedgerSegment(name): LedgerSegment,
) -> Result<StatusCode, ApiError> {
    let name = LedgerName::parse(&name)?;
    caller.require(Scope::Admin, Some(&name))?;
    state.store.delete_ledger_by(&name, caller.name()).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Creates a ledger: 201 when new, 200 when it already existed.
/// Creating a ledger takes the `append` scope on it, as an append that
/// creates it would.
#[utoipa::path(
    put,
    path = "/ledgers/{ledger}",
    operation_id = "create_ledger",
    tag = "ledgers",
    params(LedgerParam),
    responses(
        (status = 201, description = "Created.", body = LedgerInfo),
        (status = 200, description = "It already existed.", body = LedgerInfo),
        (status = 400, description = "`invalid_ledger_name`.", body = ErrorBody),
        (status = 503, description = "`store_unavailable` or `shutting_down`.", body = ErrorBody),
        (status = 507, description = "`insufficient_storage`.", body = ErrorBody),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    caller: Caller,
    LedgerSegment(name): LedgerSegment,
) -> Result<(StatusCode, Json<LedgerInfo>), ApiError> {
    let name = LedgerName::parse(&name)?;
    caller.require(Scope::Append, Some(&name))?;
    let created = state.store.create_ledger(&name).await?;
    let info = state.store.ledger_info(&name).ok_or(StoreError::LedgerNotFound(name))?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(info)))
}
