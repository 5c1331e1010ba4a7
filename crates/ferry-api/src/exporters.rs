//! `/v1/exporters`: status, pause, resume, reset (SPEC §4, §5), the range
//! check, and the deletion of an orphaned exporter's cursors.

use crate::body::RequestBody;
use crate::extract::{ApiQuery, ExporterSegment, PageQuery};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use ferry_core::{EntryId, LedgerName};
use ferry_export::{CheckReport, ExportError, ExporterStatus, Exporters, Page};
use serde::Deserialize;

use crate::auth::{Caller, Scope};
use crate::{ApiError, AppState};

fn exporters(state: &AppState) -> Result<&Exporters, ApiError> {
    state.config.exporters.as_ref().ok_or_else(|| ApiError::from(ExportError::NotFound("(none configured)".into())))
}

/// `?limit=N` bounds the ledgers shown per exporter (`next` continues
/// each through `GET /v1/exporters/{name}?after=`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<usize>,
}

/// Every exporter with the first page of its ledgers and its totals.
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Json<Vec<ExporterStatus>>, ApiError> {
    caller.require(Scope::Admin, None)?;
    let (_, limit) = PageQuery { after: None, limit: query.limit }.page()?;
    Ok(match &state.config.exporters {
        Some(e) => Json(e.list(&Page { after: None, limit }).await),
        None => Json(Vec::new()),
    })
}

/// One exporter with a page of its ledgers (`?after=LEDGER&limit=N`).
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    ExporterSegment(name): ExporterSegment,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ExporterStatus>, ApiError> {
    caller.require(Scope::Admin, None)?;
    let (after, limit) = query.page()?;
    Ok(Json(exporters(&state)?.status(&name, Page { after, limit }).await?))
}

pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    ExporterSegment(name): ExporterSegment,
) -> Result<Json<ExporterStatus>, ApiError> {
    caller.require(Scope::Admin, None)?;
    tracing::info!(exporter = %name, actor = caller.name(), "exporter paused");
    Ok(Json(exporters(&state)?.pause(&name).await?))
}

pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    ExporterSegment(name): ExporterSegment,
) -> Result<Json<ExporterStatus>, ApiError> {
    caller.require(Scope::Admin, None)?;
    tracing::info!(exporter = %name, actor = caller.name(), "exporter resumed");
    Ok(Json(exporters(&state)?.resume(&name).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    ledger: Option<String>,
    from_id: Option<EntryId>,
}

/// `{"ledger"?: L, "from_id"?: N}`; an empty body resets every ledger to 1.
pub async fn reset(
    State(state): State<AppState>,
    caller: Caller,
    ExporterSegment(name): ExporterSegment,
    RequestBody(body): RequestBody,
) -> Result<Json<ExporterStatus>, ApiError> {
    caller.require(Scope::Admin, None)?;
    let request: ResetRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ResetRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| ApiError::from_json(&e, "the reset request"))?
    };
    let ledger = request.ledger.as_deref().map(LedgerName::parse).transpose()?;
    Ok(Json(exporters(&state)?.reset(&name, ledger, request.from_id, caller.name()).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckParams {
    ledger: Option<String>,
}

/// The range check: does the destination hold exactly First..=cursor of
/// each ledger (or `?ledger=L`)? 200 with the report, faults or not.
pub async fn check(
    State(state): State<AppState>,
    caller: Caller,
    ExporterSegment(name): ExporterSegment,
    ApiQuery(params): ApiQuery<CheckParams>,
) -> Result<Json<CheckReport>, ApiError> {
    caller.require(Scope::Admin, None)?;
    let ledger = params.ledger.as_deref().map(LedgerName::parse).transpose()?;
    Ok(Json(exporters(&state)?.check(&name, ledger).await?))
}

/// Deletes an orphaned exporter's cursors (a configured one: 409).
pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    ExporterSegment(name): ExporterSegment,
) -> Result<StatusCode, ApiError> {
    caller.require(Scope::Admin, None)?;
    exporters(&state)?.delete_orphan(&name).await?;
    tracing::info!(exporter = %name, actor = caller.name(), "orphaned exporter's cursors deleted");
    Ok(StatusCode::NO_CONTENT)
}
