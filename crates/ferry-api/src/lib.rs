//! ferry's HTTP API (SPEC §4): routes, bearer-token auth, and the one
//! mapping from errors to statuses and codes (`error.rs`).

mod auth;
mod body;
mod body_budget;
mod entries;
mod error;
mod exporters;
mod extract;
mod health;
mod import;
mod ledgers;
pub mod metrics;
mod openapi;
mod pins;
mod server;
mod sources;
mod status_page;
mod tls;
mod watch;

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::routing::get;
use axum::{Json, Router, middleware};
use ferry_core::limits::{BODY_BYTES_MAX_DEFAULT, BUFFERED_BODY_BYTES_MAX_DEFAULT, WATCHERS_MAX_DEFAULT};
use ferry_store::{Store, StoreError};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::{AccessToken, Scope, Secret, Tokens, parse_digest, secret_digest};
pub use error::ApiError;
pub use server::{ConnectionLimits, serve};
pub use tls::{ServerTls, TlsError};

/// Settings of the API layer (the `[server]` section, validated).
#[derive(Clone)]
pub struct ApiConfig {
    /// Bearer tokens and their scopes; none means no auth. Shared with
    /// `ferry serve`, which swaps the set on SIGHUP.
    pub tokens: Arc<Tokens>,
    pub metrics_auth: bool,
    pub max_body_bytes: usize,
    /// Bytes of request bodies buffered at once, over all requests
    /// (`body_budget.rs`).
    pub max_buffered_body_bytes: u64,
    /// Open `/v1/watch` and `/v1/events` streams at most.
    pub max_watchers: usize,
    /// The server's idle timeout (`[server] idle_timeout`): a long-poll
    /// read answers before it, so its connection is never cut while it waits.
    pub idle_timeout: std::time::Duration,
    /// Turns true when the server shuts down: open SSE streams end, so a
    /// graceful shutdown does not wait on them forever.
    pub closing: tokio::sync::watch::Receiver<bool>,
    /// Renders `/metrics`; `None` serves an empty page.
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
    /// The running exporters; `None` when none are configured.
    pub exporters: Option<ferry_export::Exporters>,
    /// The running outbox sources; `None` when none are configured.
    pub sources: Option<ferry_outbox::Sources>,
    /// Live snapshot pins at most (`[server] max_pins`).
    pub max_pins: usize,
    /// `[server] metrics_ledgers`: the ledgers with their own series on
    /// `/metrics` (at most `METRICS_LEDGERS_MAX`); none by default.
    pub metrics_ledgers: Vec<glob::Pattern>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            tokens: Arc::new(Tokens::default()),
            metrics_auth: false,
            max_body_bytes: BODY_BYTES_MAX_DEFAULT as usize,
            max_buffered_body_bytes: BUFFERED_BODY_BYTES_MAX_DEFAULT,
            max_watchers: WATCHERS_MAX_DEFAULT,
            idle_timeout: ferry_core::limits::IDLE_TIMEOUT_DEFAULT,
            closing: tokio::sync::watch::channel(false).1,
            metrics: None,
            exporters: None,
            sources: None,
            max_pins: ferry_core::limits::PINS_MAX_DEFAULT,
            metrics_ledgers: Vec::new(),
        }
    }
}

/// What every handler reads, behind one `Arc`: axum clones the state for
/// each extractor of each request, and one reference count is cheaper than
/// the five a clone of the fields would touch.
#[derive(Clone)]
pub(crate) struct AppState(Arc<AppInner>);

impl std::ops::Deref for AppState {
    type Target = AppInner;

    fn deref(&self) -> &AppInner {
        &self.0
    }
}

pub(crate) struct AppInner {
    pub store: Store,
    pub config: Arc<ApiConfig>,
    pub watchers: watch::Watchers,
    pub sessions: watch::Sessions,
    pub body_budget: body_budget::BodyBudget,
}

/// ferry's API over a store: its routes, and the watch sessions they keep.
pub struct Api {
    router: Router,
    sessions: watch::Sessions,
}

impl Api {
    /// Loads the watch sessions kept in the catalog (see `watch/`) and
    /// builds the routes. Call it before the server takes appends: it keeps
    /// new timestamps above the kept sessions' starts.
    pub async fn open(store: Store, config: ApiConfig) -> Result<Self, StoreError> {
        let sessions = watch::Sessions::load(store.clone(), config.closing.clone()).await?;
        let body_budget = body_budget::BodyBudget::new(config.max_buffered_body_bytes);
        tokio::spawn(pins::expire(store.clone(), config.closing.clone()));
        let state = AppState(Arc::new(AppInner {
            store,
            config: Arc::new(config),
            watchers: watch::Watchers::default(),
            sessions: sessions.clone(),
            body_budget,
        }));
        Ok(Self { router: router(state), sessions })
    }

    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// Writes every watch session's last position, so that every token
    /// sent resumes after a restart: call it once `serve` returned (the
    /// streams have ended) and before the store shuts down.
    pub async fn close(&self) {
        self.sessions.close().await;
    }
}

/// Every `/v1` route. `routes!` takes only handlers that carry a
/// `#[utoipa::path]`, and routes each at the path and methods that
/// annotation names: the OpenAPI document (`openapi.rs`) is collected from
/// this one list, so it lists exactly what is served. Never add a route
/// here any other way.
fn v1_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::default()
        .routes(routes!(ledgers::list))
        .routes(routes!(ledgers::get_one, ledgers::create, ledgers::delete))
        .routes(routes!(entries::read, entries::append))
        .routes(routes!(ledgers::head))
        .routes(routes!(import::import))
        .routes(routes!(watch::watch))
        .routes(routes!(watch::events))
        .routes(routes!(exporters::list))
        .routes(routes!(exporters::get_one, exporters::delete))
        .routes(routes!(exporters::reset))
        .routes(routes!(exporters::pause))
        .routes(routes!(exporters::resume))
        .routes(routes!(exporters::check))
        .routes(routes!(health::health))
        .routes(routes!(sources::list))
        .routes(routes!(sources::get_one))
        .routes(routes!(pins::list, pins::create))
        .routes(routes!(pins::delete))
        .routes(routes!(pins::renew))
        .routes(routes!(pins::read))
}

/// The OpenAPI 3.1 document of `/v1`, as `GET /openapi.json` serves it.
pub fn openapi() -> utoipa::openapi::OpenApi {
    openapi::document(v1_routes().split_for_parts().1)
}

/// The whole API as one router.
fn router(state: AppState) -> Router {
    let (v1, v1_doc) = v1_routes().split_for_parts();
    let v1 = v1
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Inside the token check: a request without a token reserves
        // nothing and its body is never read.
        .layer(middleware::from_fn_with_state(state.clone(), body_budget::reserve))
        // `layer`, not `route_layer`: the fallback (and a method a route
        // lacks) is behind the token too, so without one every `/v1` path
        // answers 401 and the route table cannot be probed.
        .layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    let document = openapi::Rendered::of(&openapi::document(v1_doc));
    // Behind any valid token, as `/v1`: the document is the route table.
    let document = Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move { document.response() }
            }),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_token));
    let mut metrics = Router::new().route("/metrics", get(metrics::render));
    if state.config.metrics_auth {
        metrics = metrics.route_layer(middleware::from_fn_with_state(state.clone(), auth::require_metrics));
    }
    Router::new()
        .nest("/v1", v1)
        .merge(document)
        .merge(metrics)
        .merge(status_page::routes())
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // A backstop for axum's own body extractors; the routes that take a
        // body use `body::RequestBody`, which caps it as sent and inflated.
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    state.store.ready()?;
    Ok(Json(serde_json::json!({"status": "ready"})))
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "the route does not take this method",
    )
}

async fn not_found() -> ApiError {
    ApiError::new(axum::http::StatusCode::NOT_FOUND, "not_found", "no such route")
}
