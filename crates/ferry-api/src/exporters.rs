//! `/v1/exporters`: status, pause, resume, reset (SPEC §4, §5), the range
//! check, and the deletion of an orphaned exporter's cursors.

use crate::body::RequestBody;
use crate::error::ErrorBody;
use crate::extract::{ApiQuery, ExporterParam, ExporterSegment, PageQuery};
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
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Ledgers shown per exporter: 1 to 10000, default 1000.
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// Every exporter with the first page of its ledgers and its totals.
#[utoipa::path(
    get,
    path = "/exporters",
    operation_id = "list_exporters",
    tag = "exporters",
    params(ListQuery),
    responses(
        (status = 200, description = "Every exporter, `[]` when none are configured.", body = Vec<ExporterStatus>),
        (status = 400, description = "`invalid_query`.", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    get,
    path = "/exporters/{name}",
    operation_id = "get_exporter",
    tag = "exporters",
    params(ExporterParam, PageQuery),
    responses(
        (status = 200, description = "The exporter, one page of its ledgers and totals over all.", body = ExporterStatus),
        (status = 400, description = "`invalid_query`.", body = ErrorBody),
        (status = 404, description = "`exporter_not_found`.", body = ErrorBody),
    )
)]
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

/// Pauses the exporter: nothing more is delivered until it is resumed.
#[utoipa::path(
    post,
    path = "/exporters/{name}/pause",
    operation_id = "pause_exporter",
    tag = "exporters",
    params(ExporterParam),
    responses(
        (status = 200, description = "The exporter, paused.", body = ExporterStatus),
        (status = 404, description = "`exporter_not_found`.", body = ErrorBody),
    )
)]
pub async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    ExporterSegment(name): ExporterSegment,
) -> Result<Json<ExporterStatus>, ApiError> {
    caller.require(Scope::Admin, None)?;
    tracing::info!(exporter = %name, actor = caller.name(), "exporter paused");
    Ok(Json(exporters(&state)?.pause(&name).await?))
}

/// Resumes a paused exporter.
#[utoipa::path(
    post,
    path = "/exporters/{name}/resume",
    operation_id = "resume_exporter",
    tag = "exporters",
    params(ExporterParam),
    responses(
        (status = 200, description = "The exporter, running.", body = ExporterStatus),
        (status = 404, description = "`exporter_not_found`.", body = ErrorBody),
    )
)]
pub async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    ExporterSegment(name): ExporterSegment,
) -> Result<Json<ExporterStatus>, ApiError> {
    caller.require(Scope::Admin, None)?;
    tracing::info!(exporter = %name, actor = caller.name(), "exporter resumed");
    Ok(Json(exporters(&state)?.resume(&name).await?))
}

/// What to re-export: one ledger or every one, from an id (default 1).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ResetRequest {
    #[schema(value_type = Option<LedgerName>)]
    ledger: Option<String>,
    #[schema(value_type = Option<u64>, minimum = 1)]
    from_id: Option<EntryId>,
}

/// `{"ledger"?: L, "from_id"?: N}`; an empty body resets every ledger to 1.
/// A failed reset leaves the exporter stopped, never half-reset.
#[utoipa::path(
    post,
    path = "/exporters/{name}/reset",
    operation_id = "reset_exporter",
    tag = "exporters",
    params(ExporterParam),
    request_body(content = Option<ResetRequest>, description = "Optional: an empty body resets every ledger to id 1."),
    responses(
        (status = 200, description = "The exporter after the reset.", body = ExporterStatus),
        (status = 400, description = "`invalid_json` or `invalid_ledger_name`.", body = ErrorBody),
        (status = 404, description = "`exporter_not_found`.", body = ErrorBody),
        (status = 413, description = "`body_too_large`.", body = ErrorBody),
        (status = 422, description = "`invalid_entry` (a wrong shape) or `invalid_request`.", body = ErrorBody),
        (status = 500, description = "`reset_failed`: the exporter is left stopped.", body = ErrorBody),
    )
)]
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

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct CheckParams {
    /// Check only this ledger.
    #[param(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", max_length = 63)]
    ledger: Option<String>,
}

/// The range check: does the destination hold exactly First..=cursor of
/// each ledger (or `?ledger=L`)? 200 with the report, faults or not.
#[utoipa::path(
    get,
    path = "/exporters/{name}/check",
    operation_id = "check_exporter",
    tag = "exporters",
    params(ExporterParam, CheckParams),
    responses(
        (status = 200, description = "The report; `ok` is false when a ledger has a fault.", body = CheckReport),
        (status = 400, description = "`invalid_query` or `invalid_ledger_name`.", body = ErrorBody),
        (status = 404, description = "`exporter_not_found`.", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    delete,
    path = "/exporters/{name}",
    operation_id = "delete_exporter",
    tag = "exporters",
    params(ExporterParam),
    responses(
        (status = 204, description = "The orphaned exporter's cursors are deleted."),
        (status = 404, description = "`exporter_not_found`.", body = ErrorBody),
        (status = 409, description = "`exporter_configured`: only an orphaned exporter can be deleted.", body = ErrorBody),
    )
)]
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
