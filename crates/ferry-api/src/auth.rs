//! Bearer-token auth for `/v1` (SPEC §4): when tokens are configured, every
//! call needs `Authorization: Bearer <token>`, and so does every path under
//! `/v1` that matches no route (401 before 404), so the route table cannot
//! be probed without a token.

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;

use crate::{AppState, error::ApiError};

pub(crate) async fn require_token(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if state.config.tokens.is_empty() {
        return Ok(next.run(req).await);
    }
    let presented = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    match presented {
        Some(token) if state.config.tokens.iter().any(|t| constant_time_eq(t.as_bytes(), token.as_bytes())) => {
            Ok(next.run(req).await)
        }
        Some(_) => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the bearer token is not valid")),
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this server requires 'Authorization: Bearer <token>'",
        )),
    }
}

/// The token of `Bearer <token>`, the scheme matched case-insensitively
/// (RFC 7235 §2.1: `bearer` and `BEARER` are the same scheme); the token
/// itself is compared exactly.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim_start_matches(' '))
}

/// Compares without an early exit, so response timing does not reveal how
/// much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_bearer_scheme_is_case_insensitive_and_the_token_is_not() {
        use super::bearer_token as token;
        for value in ["Bearer abc", "bearer abc", "BEARER abc", "Bearer  abc"] {
            assert_eq!(token(value), Some("abc"), "{value:?}");
        }
        assert_eq!(token("Bearer ABC"), Some("ABC"));
        for value in ["Bearerabc", "Basic abc", "Bearers abc", "abc", "Bearer"] {
            assert_eq!(token(value), None, "{value:?}");
        }
        assert_eq!(token("Bearer "), Some(""));
    }

    #[test]
    fn constant_time_eq_compares_whole_values() {
        use super::constant_time_eq as eq;
        assert!(eq(b"secret", b"secret"));
        assert!(!eq(b"secret", b"secreT"));
        assert!(!eq(b"secret", b"secret2"));
        assert!(!eq(b"", b"x"));
    }
}
