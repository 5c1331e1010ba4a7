//! The one error type: what the server refused (its JSON error body, with
//! status and code), what never reached it, and answers that make no sense.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Map, Value};

/// Everything a call of this crate can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The server answered with its JSON error body
    /// `{"error":{"code","message",…}}`.
    #[error("{0}")]
    Api(ApiError),
    /// An error status without ferry's JSON error body (a proxy in between,
    /// or a server that is not ferry).
    #[error("{status}: {body}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The body as text, as it came.
        body: String,
    },
    /// The request did not get an answer: connecting, sending, a timeout,
    /// or the connection dropped while the body was read.
    #[error("reach the ferry server")]
    Transport(#[source] reqwest::Error),
    /// A success answer that is not what the API documents.
    #[error("the server's answer is not {what}")]
    Decode {
        /// What was expected (for the message).
        what: &'static str,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The server broke the protocol (e.g. a malformed event stream).
    #[error("the server broke the protocol: {0}")]
    Protocol(String),
    /// Input refused before anything was sent: a base URL that is not
    /// `http://` or `https://`, a payload that is not JSON.
    #[error("{0}")]
    InvalidInput(String),
}

/// The server's error body, with the status it came with.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    /// The HTTP status (`404 Not Found`, …).
    pub status: StatusCode,
    /// The stable machine-readable code (`ledger_not_found`, `below_first`,
    /// …); README's error table lists them.
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The error object's other fields, e.g. `first` of `below_first`,
    /// `head` of `head_mismatch`, `resume_from` of `token_expired`.
    pub extra: Map<String, Value>,
    /// The `Retry-After` header in seconds (sent with 503 `busy`).
    pub retry_after: Option<Duration>,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.status, self.code, self.message)
    }
}

impl ApiError {
    /// The ledger's First, named by 410 `below_first`.
    pub fn first(&self) -> Option<u64> {
        self.extra.get("first").and_then(Value::as_u64)
    }

    /// The ledger's head at commit, named by 412 `head_mismatch`.
    pub fn head(&self) -> Option<u64> {
        self.extra.get("head").and_then(Value::as_u64)
    }

    /// The earlier watch token a 410 `token_expired` offers, if the server
    /// kept one.
    pub fn resume_from(&self) -> Option<&str> {
        self.extra.get("resume_from").and_then(Value::as_str)
    }
}

impl Error {
    /// Reads an error answer: ferry's JSON error body when it is one, else
    /// the status and the text.
    pub(crate) async fn from_response(resp: reqwest::Response) -> Error {
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Error::Transport(e),
        };
        #[derive(serde::Deserialize)]
        struct Body {
            error: Inner,
        }
        #[derive(serde::Deserialize)]
        struct Inner {
            code: String,
            message: String,
            #[serde(flatten)]
            extra: Map<String, Value>,
        }
        match serde_json::from_slice::<Body>(&body) {
            Ok(Body { error: Inner { code, message, extra } }) => {
                Error::Api(ApiError { status, code, message, extra, retry_after })
            }
            Err(_) => Error::Status { status, body: String::from_utf8_lossy(&body).into_owned() },
        }
    }

    /// The server's error body, when this is one.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            Error::Api(e) => Some(e),
            _ => None,
        }
    }

    /// The HTTP status of an error answer (`None` when there was none).
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Api(e) => Some(e.status),
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code of ferry's error body (`ledger_not_found`, …).
    pub fn code(&self) -> Option<&str> {
        self.api().map(|e| e.code.as_str())
    }

    /// The wait the server asked for with `Retry-After`.
    pub fn retry_after(&self) -> Option<Duration> {
        self.api().and_then(|e| e.retry_after)
    }

    /// True when the same request may succeed if sent again after a wait:
    /// no answer came (the request may or may not have been applied, which
    /// is why only idempotent requests are retried), or the server said it
    /// is busy, shutting down or unavailable (503), or a gateway in front of
    /// it did (502, 504), or too many watchers (429).
    ///
    /// 507 (`insufficient_storage`, `quota_exceeded`) is not: room comes back
    /// when an operator or retention frees it, not within a backoff; the
    /// caller decides. Every other 4xx and 5xx is an answer that the same
    /// request will get again.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Transport(e) => !(e.is_builder() || e.is_redirect() || e.is_decode()),
            Error::Api(_) | Error::Status { .. } => self.status().is_some_and(|s| {
                matches!(
                    s,
                    StatusCode::SERVICE_UNAVAILABLE
                        | StatusCode::BAD_GATEWAY
                        | StatusCode::GATEWAY_TIMEOUT
                        | StatusCode::TOO_MANY_REQUESTS
                )
            }),
            Error::Decode { .. } | Error::Protocol(_) | Error::InvalidInput(_) => false,
        }
    }
}

impl From<reqwest::Error> for Error {
    fn from(e: reqwest::Error) -> Self {
        Error::Transport(e)
    }
}
