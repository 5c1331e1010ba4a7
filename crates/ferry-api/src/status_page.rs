//! `GET /`: the status page, served from assets embedded in the binary. The
//! page is an open static shell; every number on it comes from `/v1` with
//! the token the operator enters once (kept in the tab's session storage),
//! so it works with auth and scoped tokens on.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

use crate::AppState;

const INDEX_HTML: &str = include_str!("../assets/index.html");

pub(crate) fn routes() -> Router<AppState> {
    Router::new().route("/", get(index))
}

async fn index() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], INDEX_HTML)
}
