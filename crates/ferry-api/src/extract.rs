//! Extractors whose rejections are the API's JSON errors, not axum's
//! plain-text ones: every error body is `{"error":{"code","message"}}`
//! (issue #13 item 9), a path segment that is not UTF-8 and a repeated or
//! malformed query parameter included.

use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// The `{ledger}` segment of a path, as text (parsed into a `LedgerName`
/// by the handler). Not UTF-8: 400 `invalid_ledger_name`.
pub(crate) struct LedgerSegment(pub String);

/// The `{name}` segment of an exporter path. Not UTF-8: 400
/// `invalid_request`.
pub(crate) struct ExporterSegment(pub String);

/// Query parameters; a repeated, unknown-shaped or malformed one is 400
/// `invalid_query`.
pub(crate) struct ApiQuery<T>(pub T);

async fn segment<S: Send + Sync>(parts: &mut Parts, state: &S, code: &'static str) -> Result<String, ApiError> {
    match Path::<String>::from_request_parts(parts, state).await {
        Ok(Path(s)) => Ok(s),
        Err(e) => Err(ApiError::bad_request(code, format!("the path is not valid: {}", e.body_text()))),
    }
}

impl<S: Send + Sync> FromRequestParts<S> for LedgerSegment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        segment(parts, state, "invalid_ledger_name").await.map(Self)
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ExporterSegment {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        segment(parts, state, "invalid_request").await.map(Self)
    }
}

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(t)) => Ok(Self(t)),
            Err(e) => Err(ApiError::bad_request("invalid_query", e.body_text())),
        }
    }
}

/// `?after=NAME&limit=N` of a listing: the items named after `after`, at
/// most `limit` (default `PAGE_LIMIT_DEFAULT`, at most `PAGE_LIMIT_MAX`).
#[derive(Debug, Default, serde::Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Start after this name: the `next` of the page before.
    #[param(value_type = Option<String>, pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", max_length = 63)]
    pub after: Option<String>,
    /// Items per page: 1 to 10000, default 1000.
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
}

/// The `{ledger}` path parameter, for the OpenAPI document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "describes the `{ledger}` segment `LedgerSegment` takes; never built")]
pub(crate) struct LedgerParam {
    /// The ledger's name.
    #[param(pattern = "^[a-z0-9][a-z0-9._-]{0,62}$", min_length = 1, max_length = 63)]
    ledger: String,
}

/// The `{name}` path parameter of an exporter, for the OpenAPI document.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code, reason = "describes the `{name}` segment `ExporterSegment` takes; never built")]
pub(crate) struct ExporterParam {
    /// The exporter's name.
    name: String,
}

impl PageQuery {
    /// The validated page: `after` a valid name, `limit` in 1..=max.
    pub fn page(&self) -> Result<(Option<ferry_core::LedgerName>, usize), ApiError> {
        use ferry_core::limits::{PAGE_LIMIT_DEFAULT, PAGE_LIMIT_MAX};
        let after = match self.after.as_deref() {
            None => None,
            Some(a) => Some(
                ferry_core::LedgerName::parse(a)
                    .map_err(|e| ApiError::bad_request("invalid_query", format!("after: {e}")))?,
            ),
        };
        let limit = self.limit.unwrap_or(PAGE_LIMIT_DEFAULT);
        if !(1..=PAGE_LIMIT_MAX).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("limit: {limit} is outside 1..={PAGE_LIMIT_MAX}: ask for fewer and follow `next`"),
            ));
        }
        Ok((after, limit))
    }
}
