//! `GET /v1/watch` and `GET /v1/events`: Server-Sent Events.
//!
//! A watcher subscribes to append notifications for its prefix *before* it
//! looks at storage, then reads entries from storage from its own position
//! per ledger. So notifications only wake it: nothing is lost between
//! catching up and going live, and a reconnect replays from storage exactly
//! what the resume token says was not yet delivered.
//!
//! Resume token (the SSE `id:`): `{start_ts}/{ledger}:{next_id},…` — when
//! the watch began, and for each ledger that had entries delivered, the
//! next id to deliver. On resume, a matching ledger not in the token is read
//! from its first entry with `ts >= start_ts` (it had nothing delivered, so
//! everything since the watch began is due).

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::extract::ApiQuery;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use ferry_core::bus::{Received, Subscription};
use ferry_core::events::{Appended, SystemEvent};
use ferry_core::{Entry, EntryId, LedgerName, now_ms};
use ferry_store::{Store, StoreError};
use serde::Deserialize;

use crate::{AppState, error::ApiError};

/// Append notifications a watcher may have waiting before it is lagged.
const WATCH_BUFFER: usize = 1024;
/// System events a listener may have waiting before it is lagged.
const EVENTS_BUFFER: usize = 1024;
/// Entries read from storage per ledger per step.
const READ_PAGE: usize = 1000;
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Counts open watchers; one guard per stream.
#[derive(Clone, Default)]
pub(crate) struct Watchers(Arc<AtomicUsize>);

pub(crate) struct WatcherGuard(Arc<AtomicUsize>);

impl Watchers {
    fn enter(&self, max: usize) -> Option<WatcherGuard> {
        let mut n = self.0.load(Ordering::SeqCst);
        loop {
            if n >= max {
                return None;
            }
            match self.0.compare_exchange(n, n + 1, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    metrics::gauge!("ferry_watchers").set((n + 1) as f64);
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
        metrics::gauge!("ferry_watchers").set(n as f64);
    }
}

/// Where a watch stands: when it began and the next id per ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ResumeToken {
    pub start_ts: u64,
    pub next: BTreeMap<LedgerName, EntryId>,
}

impl ResumeToken {
    pub fn encode(&self) -> String {
        let parts: Vec<String> = self.next.iter().map(|(l, id)| format!("{l}:{id}")).collect();
        format!("{}/{}", self.start_ts, parts.join(","))
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let (ts, rest) = text.split_once('/').ok_or("no '/'")?;
        let start_ts = ts.parse().map_err(|_| "bad start time")?;
        let mut next = BTreeMap::new();
        for part in rest.split(',').filter(|p| !p.is_empty()) {
            let (l, id) = part.split_once(':').ok_or("a ledger without ':'")?;
            let ledger = LedgerName::parse(l).map_err(|e| e.to_string())?;
            if next.insert(ledger, id.parse().map_err(|_| "bad id")?).is_some() {
                return Err(format!("ledger {l} is named twice"));
            }
        }
        Ok(Self { start_ts, next })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchParams {
    #[serde(default)]
    prefix: String,
    from: Option<String>,
}

fn bad_token(e: String) -> ApiError {
    ApiError::bad_request("invalid_resume_token", format!("Last-Event-ID is not a ferry resume token: {e}"))
}

pub(crate) async fn watch(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<WatchParams>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
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
    // Say what cannot be delivered instead of starting later in silence.
    if let Some((l, id)) = &from
        && let Some(info) = state.store.ledger_info(l)
        && *id < info.first
    {
        return Err(StoreError::BelowFirst { ledger: l.clone(), from: *id, first: info.first }.into());
    }
    let token = match headers.get("last-event-id").map(|v| v.to_str().map(str::to_owned)) {
        None => None,
        Some(Ok(t)) => Some(ResumeToken::parse(&t).map_err(bad_token)?),
        Some(Err(_)) => return Err(bad_token("not text".into())),
    };
    if let Some(token) = &token {
        for (l, next) in &token.next {
            if let Some(info) = state.store.ledger_info(l)
                && *next > info.head + 1
            {
                return Err(bad_token(format!("{l}:{next} is past the head {} of {l}", info.head)));
            }
        }
    }
    let guard = state.watchers.enter(state.config.max_watchers).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_watchers",
            format!("{} watchers are open (max_watchers)", state.config.max_watchers),
        )
    })?;
    let watcher = Watcher::start(state.store.clone(), params.prefix, token, from, guard);
    let closing = state.config.closing.clone();
    let stream = futures_util::stream::unfold((watcher, closing), |(mut w, mut closing)| async move {
        let event = tokio::select! {
            event = w.next_event() => event?,
            _ = closing.wait_for(|c| *c) => return None,
        };
        Some((Ok::<_, Infallible>(event), (w, closing)))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response())
}

struct Watcher {
    store: Store,
    prefix: String,
    sub: Subscription<Appended>,
    token: ResumeToken,
    resuming: bool,
    /// Heads of the ledgers that existed when a fresh watch began.
    start_heads: HashMap<LedgerName, EntryId>,
    from: Option<(LedgerName, EntryId)>,
    /// Ledgers that may have entries not yet read.
    dirty: BTreeSet<LedgerName>,
    pending: VecDeque<Entry>,
    done: bool,
    _guard: WatcherGuard,
}

impl Watcher {
    fn start(
        store: Store,
        prefix: String,
        token: Option<ResumeToken>,
        from: Option<(LedgerName, EntryId)>,
        guard: WatcherGuard,
    ) -> Self {
        // Subscribe first: anything appended from now on wakes us.
        let sub = store.appends().subscribe(&prefix, WATCH_BUFFER);
        let resuming = token.is_some();
        let token = token.unwrap_or_else(|| ResumeToken { start_ts: now_ms(), next: BTreeMap::new() });
        let mut start_heads = HashMap::new();
        let mut dirty = BTreeSet::new();
        for info in store.list_ledgers().into_iter().filter(|i| i.name.as_str().starts_with(&prefix)) {
            if resuming {
                dirty.insert(info.name);
            } else {
                start_heads.insert(info.name, info.head);
            }
        }
        if let Some((l, _)) = &from {
            dirty.insert(l.clone());
        }
        Self {
            store,
            prefix,
            sub,
            token,
            resuming,
            start_heads,
            from,
            dirty,
            pending: VecDeque::new(),
            done: false,
            _guard: guard,
        }
    }

    async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                self.token.next.insert(e.ledger.clone(), e.id + 1);
                return Some(Event::default().event("entry").id(self.token.encode()).data(e.to_json()));
            }
            if self.done {
                return None;
            }
            if let Some(ledger) = self.dirty.pop_first() {
                match self.read(&ledger).await {
                    Ok(full) if full => {
                        self.dirty.insert(ledger);
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(%ledger, error = %e, "watch: skipping a ledger it cannot read"),
                }
                continue;
            }
            match self.sub.recv().await? {
                Received::Message(a) => {
                    self.dirty.insert(a.ledger);
                    while let Some(Received::Message(a)) = self.sub.try_recv() {
                        self.dirty.insert(a.ledger);
                    }
                }
                Received::Lagged => {
                    self.done = true;
                    metrics::counter!("ferry_watchers_lagged_total").increment(1);
                    return Some(
                        Event::default().event("lagged").id(self.token.encode()).data(
                            serde_json::json!({ "token": self.token.encode(), "prefix": self.prefix }).to_string(),
                        ),
                    );
                }
            }
        }
    }

    /// Reads the next page of `ledger` into `pending`; true when there may
    /// be more.
    async fn read(&mut self, ledger: &LedgerName) -> Result<bool, StoreError> {
        let Some(from) = self.cursor(ledger).await? else { return Ok(false) };
        let batch = match self.store.read(ledger, Some(from), READ_PAGE).await {
            Err(StoreError::BelowFirst { first, .. }) => {
                // Pruned before it could be delivered: go on from First.
                self.token.next.insert(ledger.clone(), first);
                return Ok(true);
            }
            other => other?,
        };
        let full = batch.entries.len() == READ_PAGE;
        self.pending.extend(batch.entries);
        Ok(full)
    }

    /// The next id to deliver of `ledger`, deciding it the first time.
    async fn cursor(&mut self, ledger: &LedgerName) -> Result<Option<EntryId>, StoreError> {
        if let Some(next) = self.token.next.get(ledger) {
            return Ok(Some(*next));
        }
        let next = match &self.from {
            Some((l, id)) if l == ledger => *id,
            _ if self.resuming => match self.first_at_or_after(ledger, self.token.start_ts).await? {
                Some(id) => id,
                None => return Ok(None),
            },
            // Existed when the watch began: only what came after.
            _ => self.start_heads.get(ledger).map_or(1, |h| h + 1),
        };
        self.token.next.insert(ledger.clone(), next);
        Ok(Some(next))
    }

    /// The first id whose ts is at least `ts` (timestamps never decrease
    /// within a ledger, so a binary search over reads finds it).
    async fn first_at_or_after(&self, ledger: &LedgerName, ts: u64) -> Result<Option<EntryId>, StoreError> {
        let Some(info) = self.store.ledger_info(ledger) else { return Ok(None) };
        let (mut lo, mut hi) = (info.first, info.head + 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let batch = match self.store.read(ledger, Some(mid), 1).await {
                Err(StoreError::BelowFirst { first, .. }) => {
                    lo = first;
                    continue;
                }
                other => other?,
            };
            match batch.entries.first() {
                Some(e) if e.ts >= ts => hi = mid,
                Some(_) => lo = mid + 1,
                None => hi = mid,
            }
        }
        Ok(Some(lo))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EventsParams {
    #[serde(default)]
    prefix: String,
}

pub(crate) async fn events(
    State(state): State<AppState>,
    ApiQuery(params): ApiQuery<EventsParams>,
) -> Result<Response, ApiError> {
    let guard = state.watchers.enter(state.config.max_watchers).ok_or_else(|| {
        ApiError::new(StatusCode::TOO_MANY_REQUESTS, "too_many_watchers", "max_watchers streams are open")
    })?;
    let sub = state.store.events().subscribe(&params.prefix, EVENTS_BUFFER);
    let closing = state.config.closing.clone();
    let stream =
        futures_util::stream::unfold((sub, guard, closing, false), |(mut sub, guard, mut closing, done)| async move {
            if done {
                return None;
            }
            let received = tokio::select! {
                r = sub.recv() => r?,
                _ = closing.wait_for(|c| *c) => return None,
            };
            let event = match received {
                Received::Message(e) => system_event(&e),
                Received::Lagged => {
                    metrics::counter!("ferry_watchers_lagged_total").increment(1);
                    let lagged = Event::default().event("lagged").data("{}");
                    return Some((Ok::<_, Infallible>(lagged), (sub, guard, closing, true)));
                }
            };
            Some((Ok(event), (sub, guard, closing, false)))
        });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE)).into_response())
}

fn system_event(e: &SystemEvent) -> Event {
    Event::default().event(e.kind).data(e.to_json())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_junk() {
        let mut next = BTreeMap::new();
        next.insert(LedgerName::parse("audit").unwrap(), 43);
        next.insert(LedgerName::parse("payments.eu").unwrap(), 8);
        let t = ResumeToken { start_ts: 1763769600123, next };
        assert_eq!(t.encode(), "1763769600123/audit:43,payments.eu:8");
        assert_eq!(ResumeToken::parse(&t.encode()).unwrap(), t);
        assert_eq!(ResumeToken::parse("5/").unwrap().next.len(), 0);
        for bad in ["", "x/", "5", "5/Audit:1", "5/a:x", "5/a"] {
            assert!(ResumeToken::parse(bad).is_err(), "{bad}");
        }
    }
}
