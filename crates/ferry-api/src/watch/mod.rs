//! `GET /v1/watch` and `GET /v1/events`: Server-Sent Events.
//!
//! A watch is a *session* (`sessions.rs`): where it stands in each ledger
//! (`session.rs`), kept in memory and written to the catalog at most once a
//! second, so each event's `id:` is a bounded token, `{session}.{epoch}.
//! {seq}` (`token.rs`), whatever the number of ledgers. A stream
//! (`stream.rs`) subscribes to appends and deletions before it looks at
//! storage, then reads entries from the session's own position per ledger.
//! So notifications only wake it: nothing is lost between catching up and
//! going live, and a reconnect replays from storage exactly what the token
//! says was not yet delivered. The design and its limits:
//! `docs/decisions/2026-12-04-bounded-watch-tokens.md`.

mod session;
mod sessions;
mod stream;
mod token;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::extract::ApiQuery;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ferry_core::bus::Received;
use ferry_core::events::SystemEvent;
use ferry_core::{EntryId, LedgerName};
use ferry_store::StoreError;
use serde::Deserialize;

pub(crate) use sessions::Sessions;
use sessions::SlotState;
use stream::{Stream, Subscriptions};
use token::Token;

use crate::auth::{Caller, Scope};
use crate::error::ErrorBody;
use crate::{AppState, error::ApiError};

/// Append notifications (and deletions) a watcher may have waiting before
/// it is lagged.
const WATCH_BUFFER: usize = 1024;
/// System events a listener may have waiting before it is lagged.
const EVENTS_BUFFER: usize = 1024;
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Counts open watchers; one guard per stream.
#[derive(Clone, Default)]
pub(crate) struct Watchers(Arc<AtomicUsize>);

pub(crate) struct WatcherGuard(Arc<AtomicUsize>);

impl Watchers {
    /// A slot among `max`, or `None` when every one is taken. Long-poll
    /// reads (`entries.rs`) take one too while they wait.
    pub(crate) fn enter(&self, max: usize) -> Option<WatcherGuard> {
        let mut n = self.0.load(Ordering::SeqCst);
        loop {
            if n >= max {
                return None;
            }
            match self.0.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    metrics::gauge!(ferry_core::metric_names::WATCHERS).set((n + 1) as f64);
                    return Some(WatcherGuard(self.0.clone()));
                }
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for WatcherGuard {
    fn drop(&mut self) {
        let n = self.0.fetch_sub(1, Ordering::SeqCst) - 1;
        metrics::gauge!(ferry_core::metric_names::WATCHERS).set(n as f64);
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct WatchParams {
    /// Follow the ledgers whose name starts with this (default: every one).
    #[serde(default)]
    #[param(required = false)]
    prefix: String,
    /// `LEDGER:ID`: start that ledger at that id.
    #[param(pattern = "^[a-z0-9][a-z0-9._-]{0,62}:[0-9]+$")]
    from: Option<String>,
    /// Unix ms: every ledger starts at its first entry stamped at or after
    /// it (a ledger `from` names starts there instead).
    from_ts: Option<u64>,
}

fn bad_token(e: String) -> ApiError {
    ApiError::bad_request("invalid_resume_token", format!("Last-Event-ID is not a ferry resume token: {e}"))
}

/// Server-Sent Events of every new entry of the ledgers `prefix` matches.
#[utoipa::path(
    get,
    path = "/watch",
    operation_id = "watch_entries",
    tag = "watch",
    params(
        WatchParams,
        ("Last-Event-ID" = Option<String>, Header, description = "The `id:` of the last event received: resumes with no gap and no duplicate."),
    ),
    responses(
        (
            status = 200,
            description = "`event: entry` with an `Entry` as data and a resume token as `id:`; `event: ledger.deleted`; \
                           `event: lagged` (with a token to resume from) before the stream closes on a consumer that fell behind.",
            content_type = "text/event-stream",
            body = String,
        ),
        (status = 400, description = "`invalid_from`, `invalid_ledger_name`, `invalid_query` or `invalid_resume_token`.", body = ErrorBody),
        (status = 410, description = "`below_first`: `from` is below the ledger's First.", body = ErrorBody),
        (status = 429, description = "`too_many_watchers`.", body = ErrorBody),
    )
)]
pub(crate) async fn watch(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<WatchParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require(Scope::Watch, None)?;
    let from = match params.from.as_deref() {
        None => None,
        Some(f) => {
            let (l, id) =
                f.split_once(':').ok_or_else(|| ApiError::bad_request("invalid_from", "from must be LEDGER:ID"))?;
            let id: EntryId =
                id.parse().map_err(|_| ApiError::bad_request("invalid_from", "from must be LEDGER:ID"))?;
            Some((LedgerName::parse(l)?, id))
        }
    };
    if let Some((l, _)) = &from {
        caller.require(Scope::Watch, Some(l))?;
    }
    // Say what cannot be delivered instead of starting later in silence.
    if let Some((l, id)) = &from
        && let Some(info) = state.store.ledger_info(l)
        && *id < info.first
    {
        return Err(StoreError::BelowFirst { ledger: l.clone(), from: *id, first: info.first }.into());
    }
    let token = match headers.get("last-event-id").map(|v| v.to_str().map(str::to_owned)) {
        None => None,
        Some(Ok(t)) => Some(Token::parse(&t).map_err(bad_token)?),
        Some(Err(_)) => return Err(bad_token("not text".into())),
    };
    let guard = state.watchers.enter(state.config.max_watchers).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_watchers",
            format!("{} watchers are open (max_watchers)", state.config.max_watchers),
        )
    })?;
    // Subscribe first: anything appended or deleted from now on wakes us.
    let subs = Subscriptions::new(&state.store, &params.prefix, WATCH_BUFFER);
    let (slot, owner, dirty) = match token {
        None => {
            let mut dirty: BTreeSet<LedgerName> = from.iter().map(|(l, _)| l.clone()).collect();
            // Started in the past, every matching ledger may have entries to send.
            if params.from_ts.is_some() {
                dirty.extend(matching_ledgers(&state.store, &params.prefix));
            }
            let (slot, owner) = state.sessions.create(params.prefix.clone(), from, params.from_ts).await?;
            (slot, owner, dirty)
        }
        Some(token) => {
            // `from` only starts a session; a token resumes one.
            let (slot, owner) = state.sessions.resume(token, &params.prefix).await?;
            // Every matching ledger may have news, and every ledger the
            // session follows may have been deleted meanwhile.
            let mut dirty: BTreeSet<LedgerName> = matching_ledgers(&state.store, &params.prefix).collect();
            if let SlotState::Loaded(session) = &*slot.lock() {
                dirty.extend(session.ledgers().cloned());
            }
            (slot, owner, dirty)
        }
    };
    let watcher = Stream::new(state.store.clone(), slot, owner, subs, dirty, guard, caller.clone());
    let closing = state.config.closing.clone();
    let stream = futures_util::stream::unfold((watcher, closing, caller), |(mut w, mut closing, caller)| async move {
        let event = tokio::select! {
            event = w.next_event() => event?,
            _ = closing.wait_for(|c| *c) => return None,
            // A token revoked by a reload ends its streams.
            () = caller.revoked() => return None,
        };
        Some((Ok::<_, Infallible>(event), (w, closing, caller)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response())
}

/// The names of the ledgers a watch of `prefix` follows, as they are now.
fn matching_ledgers(store: &ferry_store::Store, prefix: &str) -> impl Iterator<Item = LedgerName> {
    let prefix = prefix.to_owned();
    store.list_ledgers().into_iter().map(|i| i.name).filter(move |l| l.as_str().starts_with(&prefix))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsParams {
    /// Events whose key starts with this (`ledger.created/audit`, …; default: every one).
    #[serde(default)]
    #[param(required = false)]
    prefix: String,
}

/// Server-Sent Events of system events (ledger.created, ledger.deleted,
/// chunk.frozen, chunk.pruned, exporter.failed, exporter.recovered,
/// exporter.reset, pin.created, pin.expired), those the token may see.
#[utoipa::path(
    get,
    path = "/events",
    operation_id = "watch_events",
    tag = "watch",
    params(EventsParams),
    responses(
        (
            status = 200,
            description = "One SSE event per system event, named by its kind, its JSON as data; `event: lagged` before the stream closes on a consumer that fell behind.",
            content_type = "text/event-stream",
            body = String,
        ),
        (status = 400, description = "`invalid_query`.", body = ErrorBody),
        (status = 429, description = "`too_many_watchers`.", body = ErrorBody),
    )
)]
pub(crate) async fn events(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(params): ApiQuery<EventsParams>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Watch, None)?;
    let guard = state.watchers.enter(state.config.max_watchers).ok_or_else(|| {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_watchers", "max_watchers streams are open")
    })?;
    let sub = state.store.events().subscribe(&params.prefix, EVENTS_BUFFER);
    let closing = state.config.closing.clone();
    let stream = futures_util::stream::unfold(
        (sub, guard, closing, caller, false),
        |(mut sub, guard, mut closing, caller, done)| async move {
            if done {
                return None;
            }
            let received = loop {
                let received = tokio::select! {
                    r = sub.recv() => r?,
                    _ = closing.wait_for(|c| *c) => return None,
                    () = caller.revoked() => return None,
                };
                match &received {
                    Received::Message(e) if !may_see(&caller, e) => continue,
                    _ => break received,
                }
            };
            let event = match received {
                Received::Message(e) => system_event(&e),
                Received::Lagged => {
                    metrics::counter!(ferry_core::metric_names::WATCHERS_LAGGED_TOTAL).increment(1);
                    let lagged = Event::default().event("lagged").data("{}");
                    return Some((Ok::<_, Infallible>(lagged), (sub, guard, closing, caller, true)));
                }
            };
            Some((Ok(event), (sub, guard, closing, caller, false)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response())
}

/// Whether `caller` may see `e`: an event about a ledger (`{kind}/{ledger}
/// /…`) when its scope covers that ledger; exporter, pin and source events
/// only with `admin`.
fn may_see(caller: &Caller, e: &SystemEvent) -> bool {
    if caller.can(Scope::Admin) {
        return true;
    }
    let ledger_event = e.kind.starts_with("ledger.") || e.kind.starts_with("chunk.");
    let ledger = e.key.split('/').nth(1).unwrap_or_default();
    ledger_event && caller.may(Scope::Watch, ledger)
}

fn system_event(e: &SystemEvent) -> Event {
    Event::default().event(e.kind).data(e.to_json())
}
