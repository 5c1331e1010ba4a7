//! `GET /`: the status page, served from assets embedded in the binary. The
//! page is an open static shell; every number on it comes from `/v1` with
//! the token the operator enters once (kept in the tab's session storage),
//! so it works with auth and scoped tokens on. What each view shows is in
//! `docs/status-page.md`.

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::AppState;

const INDEX_HTML: &str = include_str!("../assets/index.html");
const APP_JS: &str = include_str!("../assets/app.js");
const STYLE_CSS: &str = include_str!("../assets/style.css");

/// Scripts and styles from this origin only (so nothing injected into the
/// page could run), calls to this origin only, no framing, no forms posted
/// anywhere: the page's own code needs nothing more.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                   img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

pub(crate) fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/assets/app.js", get(|| asset("text/javascript; charset=utf-8", APP_JS)))
        .route("/assets/style.css", get(|| asset("text/css; charset=utf-8", STYLE_CSS)))
}

/// Headers every asset carries. `no-cache`: the browser revalidates, so a
/// new binary's page never runs an old script.
fn common(content_type: &'static str) -> [(HeaderName, HeaderValue); 4] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
    ]
}

async fn index() -> impl IntoResponse {
    let csp = [(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP))];
    (common("text/html; charset=utf-8"), csp, INDEX_HTML)
}

async fn asset(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (common(content_type), body)
}
