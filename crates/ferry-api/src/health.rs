//! `GET /v1/health`: liveness says the process answers, `/readyz` that the
//! store takes writes; this says whether data moves. An exporter is stuck
//! on a ledger whose oldest unexported entry is older than its `max_lag`,
//! a source when its oldest pending row is older than its own. Everything
//! comes from memory (the exporters' timestamps, the sources' last look),
//! so probing it often costs nothing.
//!
//! Admin scope, as `/v1/exporters` and `/v1/sources`: it names ledgers,
//! tables and last errors.

use axum::Json;
use axum::extract::State;
use ferry_export::ExporterHealth;
use serde::Serialize;

use crate::auth::{Caller, Scope};
use crate::{ApiError, AppState};

/// The answer: 200 whatever it says (`ferry health` exits 1 unless
/// `status` is `ok`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Health {
    /// `ok`, `stuck` (an exporter or source is), or `not_ready` (the store
    /// refuses writes; `reason` says why).
    #[schema(schema_with = status_schema)]
    pub status: &'static str,
    pub reason: Option<String>,
    pub exporters: Vec<ExporterHealth>,
    pub sources: Vec<SourceHealth>,
}

/// The values of `Health::status`.
fn status_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(["ok", "stuck", "not_ready"]))
        .build()
}

/// A source as health sees it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct SourceHealth {
    pub name: String,
    pub stuck: bool,
    /// Age in milliseconds of the oldest pending row at the last look.
    pub oldest_pending_age_ms: Option<u64>,
    pub backlog: Option<u64>,
    pub state: ferry_outbox::SourceState,
    pub last_error: Option<String>,
}

/// Whether data moves: every exporter and source, stuck or not.
#[utoipa::path(
    get,
    path = "/health",
    operation_id = "pipeline_health",
    tag = "health",
    responses(
        (status = 200, description = "Whatever it says; `status` is `ok` when nothing is stuck and the store takes writes.", body = Health),
    )
)]
pub(crate) async fn health(State(state): State<AppState>, caller: Caller) -> Result<Json<Health>, ApiError> {
    caller.require(Scope::Admin, None)?;
    let exporters = match &state.config.exporters {
        Some(e) => e.health().await,
        None => Vec::new(),
    };
    let sources: Vec<SourceHealth> = state
        .config
        .sources
        .as_ref()
        .map(|s| s.status())
        .unwrap_or_default()
        .into_iter()
        .map(|s| SourceHealth {
            name: s.name,
            stuck: s.stuck,
            oldest_pending_age_ms: s.oldest_pending_age_ms,
            backlog: s.backlog,
            state: s.state,
            last_error: s.last_error,
        })
        .collect();
    let reason = state.store.ready().err().map(|e| e.to_string());
    let stuck = exporters.iter().any(|e| e.stuck_ledgers > 0) || sources.iter().any(|s| s.stuck);
    let status = match (&reason, stuck) {
        (Some(_), _) => "not_ready",
        (None, true) => "stuck",
        (None, false) => "ok",
    };
    Ok(Json(Health { status, reason, exporters, sources }))
}
