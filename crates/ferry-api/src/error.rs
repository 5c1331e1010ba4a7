//! The one place errors become HTTP statuses and codes. Every error body is
//! `{"error":{"code":"…","message":"…"}}`, plus fields such as `first`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ferry_core::{InvalidLedgerName, InvalidPayload};
use ferry_store::StoreError;

/// The body of every error answer, as the OpenAPI document shows it
/// (`IntoResponse` below writes it).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "describes the JSON written by `IntoResponse`; never built")]
pub(crate) struct ErrorBody {
    error: ErrorDetail,
}

/// `code` is stable and machine-readable (`ledger_not_found`,
/// `invalid_query`, …), `message` a sentence for people. Some errors carry
/// more: `first` (410 `below_first`), `head` (412 `head_mismatch`), `id`
/// (409 `import_conflict`), `max_ledger_bytes` (507 `quota_exceeded`).
#[derive(utoipa::ToSchema)]
#[allow(dead_code, reason = "describes the JSON written by `IntoResponse`; never built")]
struct ErrorDetail {
    code: String,
    message: String,
}

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Extra fields merged into the `error` object.
    pub extra: Option<(&'static str, serde_json::Value)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), extra: None }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    /// A JSON body that does not parse (400) or does not have the expected
    /// shape (422).
    pub fn from_json(e: &serde_json::Error, what: &str) -> Self {
        use serde_json::error::Category;
        match e.classify() {
            Category::Syntax | Category::Eof | Category::Io => {
                Self::bad_request("invalid_json", format!("{what} is not valid JSON: {e}"))
            }
            Category::Data => Self::unprocessable("invalid_entry", format!("{what}: {e}")),
        }
    }
}

impl From<InvalidLedgerName> for ApiError {
    fn from(e: InvalidLedgerName) -> Self {
        Self::bad_request("invalid_ledger_name", e.to_string())
    }
}

impl From<InvalidPayload> for ApiError {
    fn from(e: InvalidPayload) -> Self {
        match e {
            InvalidPayload::Syntax(_) => Self::bad_request("invalid_json", e.to_string()),
            // Valid JSON that strict parsers cannot read back as sent.
            _ => Self::unprocessable("invalid_entry", e.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        use StatusCode as S;
        let (status, code) = match &e {
            StoreError::LedgerNotFound(_) => (S::NOT_FOUND, "ledger_not_found"),
            StoreError::EntryTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, "entry_too_large"),
            StoreError::BatchTooLarge { .. } | StoreError::AppendTooLarge { .. } => {
                (S::PAYLOAD_TOO_LARGE, "batch_too_large")
            }
            StoreError::FieldTooLong { .. } => (S::UNPROCESSABLE_ENTITY, "field_too_long"),
            StoreError::EmptyBatch => (S::UNPROCESSABLE_ENTITY, "empty_batch"),
            StoreError::DuplicateIdempotencyKey(_) => (S::UNPROCESSABLE_ENTITY, "duplicate_idempotency_key"),
            StoreError::BelowFirst { .. } => (S::GONE, "below_first"),
            StoreError::HeadMismatch { .. } => (S::PRECONDITION_FAILED, "head_mismatch"),
            StoreError::Poisoned(_) => (S::SERVICE_UNAVAILABLE, "store_unavailable"),
            StoreError::ShuttingDown => (S::SERVICE_UNAVAILABLE, "shutting_down"),
            StoreError::NoSpace(_) => (S::INSUFFICIENT_STORAGE, "insufficient_storage"),
            StoreError::QuotaExceeded { .. } => (S::INSUFFICIENT_STORAGE, "quota_exceeded"),
            StoreError::TooManyPins { .. } => (S::TOO_MANY_REQUESTS, "too_many_pins"),
            StoreError::PinNotFound(_) => (S::NOT_FOUND, "pin_not_found"),
            StoreError::NotInPin { .. } => (S::NOT_FOUND, "ledger_not_in_pin"),
            StoreError::PinnedLedgerGone { .. } => (S::CONFLICT, "pinned_ledger_gone"),
            StoreError::ImportConflict { .. } => (S::CONFLICT, "import_conflict"),
            StoreError::Corrupted { .. } | StoreError::CorruptedPack { .. } | StoreError::CatalogCorrupted(_) => {
                (S::INTERNAL_SERVER_ERROR, "corrupted")
            }
            _ => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        // A ledger at its quota is the client's limit, not a server fault
        // (counted in `ferry_quota_refused_appends_total`, never logged:
        // one tenant must not flood the log).
        if status.is_server_error() && code != "quota_exceeded" {
            tracing::error!(error = %e, "request failed");
        }
        let mut err = Self::new(status, code, e.to_string());
        match e {
            StoreError::BelowFirst { first, .. } => err.extra = Some(("first", first.into())),
            StoreError::QuotaExceeded { max, .. } => err.extra = Some(("max_ledger_bytes", max.into())),
            StoreError::HeadMismatch { head, .. } => err.extra = Some(("head", head.into())),
            StoreError::ImportConflict { id, .. } => err.extra = Some(("id", id.into())),
            _ => {}
        }
        err
    }
}

impl From<ferry_export::ExportError> for ApiError {
    fn from(e: ferry_export::ExportError) -> Self {
        use StatusCode as S;
        use ferry_export::ExportError as E;
        let (status, code) = match &e {
            E::NotFound(_) => (S::NOT_FOUND, "exporter_not_found"),
            E::NotExported { .. } => (S::NOT_FOUND, "ledger_not_exported"),
            E::InvalidRequest(_) => (S::UNPROCESSABLE_ENTITY, "invalid_request"),
            E::Configured(_) => (S::CONFLICT, "exporter_configured"),
            E::Stopping(_) => (S::SERVICE_UNAVAILABLE, "shutting_down"),
            E::ResetFailed { .. } => (S::INTERNAL_SERVER_ERROR, "reset_failed"),
            E::Store(_) => {
                let E::Store(store) = e else { unreachable!() };
                return store.into();
            }
            _ => (S::INTERNAL_SERVER_ERROR, "internal"),
        };
        if status.is_server_error() {
            tracing::error!(error = %e, "exporter request failed");
        }
        Self::new(status, code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({"code": self.code, "message": self.message});
        if let Some((k, v)) = self.extra {
            body[k] = v;
        }
        (self.status, axum::Json(serde_json::json!({ "error": body }))).into_response()
    }
}
