//! `/v1/sources`: the outbox sources' status (SPEC §4, §6). Read-only:
//! a source is steered through its database (clearing `exported_at`
//! re-queues a row), never through the API.
//!
//! Admin scope, as `/v1/exporters`: a source's status names tables and
//! carries its last error, which concerns every ledger it feeds.

use axum::Json;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use ferry_outbox::SourceStatus;

use crate::auth::{Caller, Scope};
use crate::error::ErrorBody;
use crate::{ApiError, AppState};

/// The `{name}` segment of a source path. Not UTF-8: 400 `invalid_request`.
pub(crate) struct SourceSegment(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SourceSegment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(s)) => Ok(Self(s)),
            Err(e) => {
                Err(ApiError::bad_request("invalid_request", format!("the path is not valid: {}", e.body_text())))
            }
        }
    }
}

fn not_found(name: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "source_not_found", format!("no source is called {name:?}"))
}

/// Every source's status, in configuration order; `[]` when none are
/// configured.
#[utoipa::path(
    get,
    path = "/sources",
    operation_id = "list_sources",
    tag = "sources",
    responses((status = 200, description = "Every source, `[]` when none are configured.", body = Vec<SourceStatus>))
)]
pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Json<Vec<SourceStatus>>, ApiError> {
    caller.require(Scope::Admin, None)?;
    Ok(Json(state.config.sources.as_ref().map(|s| s.status()).unwrap_or_default()))
}

/// One source's status; 404 `source_not_found` for a name no source has.
#[utoipa::path(
    get,
    path = "/sources/{name}",
    operation_id = "get_source",
    tag = "sources",
    params(("name" = String, Path, description = "The source's name.")),
    responses(
        (status = 200, description = "The source.", body = SourceStatus),
        (status = 404, description = "`source_not_found`.", body = ErrorBody),
    )
)]
pub async fn get_one(
    State(state): State<AppState>,
    caller: Caller,
    SourceSegment(name): SourceSegment,
) -> Result<Json<SourceStatus>, ApiError> {
    caller.require(Scope::Admin, None)?;
    let status = state.config.sources.as_ref().and_then(|s| s.status_of(&name));
    status.map(Json).ok_or_else(|| not_found(&name))
}
