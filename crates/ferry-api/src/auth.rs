//! Bearer tokens and their scopes (SPEC §4, `docs/security.md`).
//!
//! When tokens are configured, every `/v1` call needs `Authorization:
//! Bearer <secret>`, and so does every path under `/v1` that matches no
//! route (401 before 404), so the route table cannot be probed without a
//! token. A known token becomes the request's [`Caller`]: its name, the
//! ledgers it may touch (globs) and what it may do there. Handlers ask the
//! caller before they look anything up, so a refusal (403 `forbidden`)
//! says nothing about whether a ledger exists.
//!
//! The set of tokens is swapped whole on reload (SIGHUP). A token that is
//! not in the new set, or is there with other rights, is revoked: streams
//! it holds end, and later requests with it get 401.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::Response;
use ferry_core::LedgerName;
use sha2::{Digest as _, Sha256};

use crate::{AppState, error::ApiError};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    /// Read entries and ledger metadata (`GET …/entries`, `GET /v1/ledgers…`).
    Read,
    /// Append, and create a ledger (`POST …/entries`, `PUT /v1/ledgers/…`).
    Append,
    /// Follow ledgers and system events (`/v1/watch`, `/v1/events`).
    Watch,
    /// `GET /metrics` when `metrics_auth` is on.
    Metrics,
    /// Everything, on every ledger: deletions, exporter control.
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 5] = [Scope::Read, Scope::Append, Scope::Watch, Scope::Metrics, Scope::Admin];

    pub fn name(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Append => "append",
            Scope::Watch => "watch",
            Scope::Metrics => "metrics",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        Self::ALL.into_iter().find(|c| c.name() == s)
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// How a token's secret is kept: as written, or only its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Plain(String),
    Sha256([u8; 32]),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Secret::Plain(_) => "Plain(***)",
            Secret::Sha256(_) => "Sha256(***)",
        })
    }
}

/// The SHA-256 of a secret, in hex: the `secret_sha256` / `sha256:` form.
pub fn secret_digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// A `secret_sha256` value: 64 hex digits.
pub fn parse_digest(hex_digest: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_digest).ok()?;
    bytes.try_into().ok()
}

/// One configured token.
#[derive(Debug)]
pub struct AccessToken {
    /// Shown in logs and in the `actor` of system events; never the secret.
    pub name: String,
    secret: Secret,
    ledgers: Vec<glob::Pattern>,
    scopes: u8,
    revoked: AtomicBool,
    revocation: tokio::sync::Notify,
}

impl AccessToken {
    /// A token; `ledgers` are globs over ledger names. `admin` implies
    /// every scope and needs `ledgers = ["*"]`.
    pub fn new(name: String, secret: Secret, ledgers: &[String], can: &[Scope]) -> Result<Self, String> {
        if let Secret::Plain(s) = &secret
            && (s.is_empty() || s.chars().any(char::is_whitespace))
        {
            return Err("a secret must be non-empty and contain no whitespace".into());
        }
        if ledgers.is_empty() {
            return Err("ledgers is empty: name at least one glob, e.g. [\"*\"]".into());
        }
        let patterns = ledgers
            .iter()
            .map(|g| glob::Pattern::new(g).map_err(|e| format!("ledgers: {g:?} is not a glob: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if can.is_empty() {
            return Err("can is empty: name at least one of read, append, watch, metrics, admin".into());
        }
        let mut scopes = can.iter().fold(0, |acc, c| acc | c.bit());
        if can.contains(&Scope::Admin) {
            if ledgers != ["*"] {
                return Err("admin is allowed only with ledgers = [\"*\"]".into());
            }
            scopes = Scope::ALL.iter().fold(0, |acc, c| acc | c.bit());
        }
        Ok(Self {
            name,
            secret,
            ledgers: patterns,
            scopes,
            revoked: AtomicBool::new(false),
            revocation: tokio::sync::Notify::new(),
        })
    }

    /// A token with every scope on every ledger (`tokens = [...]`, a bare
    /// `token_file` line).
    pub fn everything(name: String, secret: Secret) -> Result<Self, String> {
        Self::new(name, secret, &["*".to_owned()], &[Scope::Admin])
    }

    fn can(&self, scope: Scope) -> bool {
        self.scopes & scope.bit() != 0
    }

    fn covers(&self, ledger: &str) -> bool {
        self.ledgers.iter().any(|p| p.matches(ledger))
    }

    fn matches(&self, presented: &str, presented_digest: &[u8; 32]) -> bool {
        match &self.secret {
            Secret::Plain(s) => constant_time_eq(s.as_bytes(), presented.as_bytes()),
            Secret::Sha256(d) => constant_time_eq(d, presented_digest),
        }
    }

    /// Whether both accept the same presented secret (a config mistake).
    pub fn same_secret(&self, other: &AccessToken) -> bool {
        let digest = |s: &Secret| match s {
            Secret::Plain(p) => <[u8; 32]>::from(Sha256::digest(p.as_bytes())),
            Secret::Sha256(d) => *d,
        };
        digest(&self.secret) == digest(&other.secret)
    }

    /// The same rights under the same secret (so a reload keeps it).
    fn same_as(&self, other: &AccessToken) -> bool {
        self.name == other.name
            && self.secret == other.secret
            && self.ledgers == other.ledgers
            && self.scopes == other.scopes
    }

    fn revoke(&self) {
        self.revoked.store(true, Ordering::SeqCst);
        self.revocation.notify_waiters();
    }
}

/// The configured tokens; none means no auth.
#[derive(Debug, Default)]
pub struct Tokens {
    current: RwLock<Arc<Vec<Arc<AccessToken>>>>,
}

impl Tokens {
    pub fn new(tokens: Vec<AccessToken>) -> Self {
        Self { current: RwLock::new(Arc::new(tokens.into_iter().map(Arc::new).collect())) }
    }

    fn snapshot(&self) -> Arc<Vec<Arc<AccessToken>>> {
        self.current.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Whether any token is configured (auth is on).
    pub fn enabled(&self) -> bool {
        !self.snapshot().is_empty()
    }

    /// Swaps in a new set at once. Tokens that are in both with the same
    /// secret and rights stay as they are; every other old token is
    /// revoked, which ends its streams. Returns how many were revoked.
    pub fn replace(&self, fresh: Vec<AccessToken>) -> usize {
        let mut guard = self.current.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        let old = guard.clone();
        let next: Vec<Arc<AccessToken>> = fresh
            .into_iter()
            .map(|t| old.iter().find(|o| o.same_as(&t)).cloned().unwrap_or_else(|| Arc::new(t)))
            .collect();
        let mut revoked = 0;
        for o in old.iter() {
            if !next.iter().any(|n| Arc::ptr_eq(n, o)) {
                o.revoke();
                revoked += 1;
            }
        }
        *guard = Arc::new(next);
        revoked
    }

    fn find(&self, presented: &str) -> Option<Arc<AccessToken>> {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Every token is compared, so timing does not tell which matched.
        let mut found = None;
        for t in self.snapshot().iter() {
            if t.matches(presented, &digest) && found.is_none() {
                found = Some(t.clone());
            }
        }
        found
    }
}

/// Who is calling: a token, or anyone when no token is configured.
#[derive(Clone, Debug)]
pub(crate) struct Caller(Option<Arc<AccessToken>>);

impl Caller {
    /// The token's name, for logs and event actors (`None` without auth).
    pub fn name(&self) -> Option<&str> {
        self.0.as_deref().map(|t| t.name.as_str())
    }

    /// Whether the caller may do `scope` at all.
    pub fn can(&self, scope: Scope) -> bool {
        self.0.as_deref().is_none_or(|t| t.can(scope) && !t.revoked.load(Ordering::SeqCst))
    }

    /// Whether the caller may do `scope` on `ledger`.
    pub fn may(&self, scope: Scope, ledger: &str) -> bool {
        self.can(scope) && self.0.as_deref().is_none_or(|t| t.covers(ledger))
    }

    /// 403 unless the caller may do `scope` (on `ledger`, when given).
    pub fn require(&self, scope: Scope, ledger: Option<&LedgerName>) -> Result<(), ApiError> {
        let allowed = match ledger {
            Some(l) => self.may(scope, l.as_str()),
            None => self.can(scope),
        };
        if allowed {
            return Ok(());
        }
        let who = self.name().unwrap_or_default();
        let what = match ledger {
            Some(l) => format!("token {who:?} may not {} ledger {l}", scope.name()),
            None => format!("token {who:?} lacks the {} scope", scope.name()),
        };
        Err(ApiError::new(StatusCode::FORBIDDEN, "forbidden", what))
    }

    /// Resolves when the caller's token is revoked (never without auth).
    pub async fn revoked(&self) {
        match &self.0 {
            None => std::future::pending().await,
            Some(t) => loop {
                let notified = t.revocation.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if t.revoked.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            },
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        match parts.extensions.get::<Caller>() {
            Some(caller) => Ok(caller.clone()),
            // Fail closed: a route that somehow escaped the token layer
            // must not run as "anyone" on a server with tokens.
            None if state.config.tokens.enabled() => Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this server requires 'Authorization: Bearer <token>'",
            )),
            None => Ok(Caller(None)),
        }
    }
}

/// Middleware: 401 without a known token; otherwise the request carries
/// its [`Caller`].
pub(crate) async fn require_token(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = authenticate(&state, req.headers())?;
    req.extensions_mut().insert(caller);
    Ok(next.run(req).await)
}

/// Middleware for `/metrics` when `metrics_auth` is on: a known token
/// with the `metrics` scope.
pub(crate) async fn require_metrics(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authenticate(&state, req.headers())?.require(Scope::Metrics, None)?;
    Ok(next.run(req).await)
}

fn authenticate(state: &AppState, headers: &axum::http::HeaderMap) -> Result<Caller, ApiError> {
    if !state.config.tokens.enabled() {
        return Ok(Caller(None));
    }
    let presented = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(bearer_token);
    match presented {
        Some(secret) => match state.config.tokens.find(secret) {
            Some(token) => Ok(Caller(Some(token))),
            None => Err(ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "the bearer token is not valid")),
        },
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
    use super::*;

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

    fn token(name: &str, secret: Secret, ledgers: &[&str], can: &[Scope]) -> AccessToken {
        let ledgers: Vec<String> = ledgers.iter().map(|s| s.to_string()).collect();
        AccessToken::new(name.into(), secret, &ledgers, can).expect("a valid token")
    }

    #[test]
    fn scopes_and_globs_decide_and_admin_needs_every_ledger() {
        let t =
            Caller(Some(Arc::new(token("t", Secret::Plain("s".into()), &["tenant-42.*", "audit"], &[Scope::Read]))));
        assert!(t.may(Scope::Read, "tenant-42.orders"));
        assert!(t.may(Scope::Read, "audit"));
        assert!(!t.may(Scope::Read, "tenant-43.orders"));
        assert!(!t.may(Scope::Append, "audit"));
        assert!(!t.can(Scope::Admin));
        let err = AccessToken::new("a".into(), Secret::Plain("s".into()), &["x*".into()], &[Scope::Admin]).unwrap_err();
        assert!(err.contains("admin"), "{err}");
        let admin = Caller(Some(Arc::new(token("a", Secret::Plain("s".into()), &["*"], &[Scope::Admin]))));
        assert!(Scope::ALL.iter().all(|s| admin.may(*s, "anything")));
        assert!(Caller(None).may(Scope::Admin, "x"), "no auth: everything");
    }

    #[test]
    fn a_digest_token_matches_its_secret_and_a_reload_revokes_only_what_changed() {
        let digest = parse_digest(&secret_digest("hunter2")).expect("64 hex digits");
        let tokens = Tokens::new(vec![
            token("kept", Secret::Sha256(digest), &["*"], &[Scope::Read]),
            token("dropped", Secret::Plain("old".into()), &["*"], &[Scope::Read]),
            token("narrowed", Secret::Plain("n".into()), &["*"], &[Scope::Read, Scope::Append]),
        ]);
        assert_eq!(tokens.find("hunter2").map(|t| t.name.clone()).as_deref(), Some("kept"));
        assert!(tokens.find("hunter3").is_none());
        let kept = tokens.find("hunter2").expect("kept");
        let narrowed = tokens.find("n").expect("narrowed");
        let revoked = tokens.replace(vec![
            token("kept", Secret::Sha256(digest), &["*"], &[Scope::Read]),
            token("narrowed", Secret::Plain("n".into()), &["*"], &[Scope::Read]),
        ]);
        assert_eq!(revoked, 2, "dropped and narrowed");
        assert!(Arc::ptr_eq(&kept, &tokens.find("hunter2").expect("still there")));
        assert!(!kept.revoked.load(Ordering::SeqCst));
        assert!(narrowed.revoked.load(Ordering::SeqCst));
        assert!(tokens.find("old").is_none());
        assert!(parse_digest("zz").is_none());
    }
}
