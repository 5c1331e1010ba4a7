//! Every watch session of the server: starting one, taking one over on a
//! reconnect (from memory, or from the catalog after a restart), writing
//! positions once a second in one commit, and the caps: sessions idle for
//! a day are forgotten, the idle one idle longest makes room when
//! `WATCH_SESSIONS_MAX` are kept, and idle ones leave memory for the
//! catalog after a minute.
//!
//! **Invariant:** an epoch is in the catalog before any token of it is
//! sent (a new session's header and every reconnect are committed before
//! the stream starts), so after a crash a token of an unknown epoch was
//! never sent, and one past the written position was lost (410).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::http::StatusCode;
use ferry_core::limits::{
    WATCH_FLUSH_INTERVAL_MS, WATCH_FLUSH_POSITIONS_MAX, WATCH_FORGETS_PER_FLUSH, WATCH_IDLE_IN_MEMORY_MS,
    WATCH_IDLE_SESSIONS_IN_MEMORY, WATCH_SESSION_IDLE_MS, WATCH_SESSIONS_MAX,
};
use ferry_core::{EntryId, LedgerName, now_ms};
use ferry_store::{Store, StoreError, WatchFrom, WatchSessionRecord, WatchWrite};
use tokio::sync::Notify;

use super::session::{Flush, Refusal, Session, locate_stored};
use super::token::Token;
use crate::error::ApiError;

/// One session, in memory or only in the catalog.
pub(crate) struct Slot {
    pub id: u64,
    pub state: Mutex<SlotState>,
    /// Bumped when a stream takes the session over: an older one stops.
    owner: AtomicU64,
    /// Wakes the stream that was sending when another takes over.
    pub taken: Notify,
}

pub(crate) enum SlotState {
    /// Only the header is in memory; the positions are in the catalog.
    Stored(WatchSessionRecord),
    Loaded(Session),
}

impl SlotState {
    fn prefix(&self) -> &str {
        match self {
            SlotState::Stored(h) => &h.prefix,
            SlotState::Loaded(s) => &s.prefix,
        }
    }

    /// `Some(active_at)` when no stream sends from the session.
    fn idle_since(&self) -> Option<u64> {
        match self {
            SlotState::Stored(h) => Some(h.active_at),
            SlotState::Loaded(s) => (!s.live).then_some(s.active_at),
        }
    }
}

impl Slot {
    fn new(id: u64, state: SlotState) -> Arc<Self> {
        Arc::new(Self { id, state: Mutex::new(state), owner: AtomicU64::new(0), taken: Notify::new() })
    }

    /// The stream number that may send from the session now.
    pub fn owner(&self) -> u64 {
        self.owner.load(Ordering::SeqCst)
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().expect("watch session lock")
    }

    /// A stream that took the session over as `owner` has ended.
    pub fn release(&self, owner: u64) {
        let mut state = self.lock();
        if let SlotState::Loaded(s) = &mut *state
            && self.owner() == owner
        {
            s.live = false;
            s.active_at = now_ms();
        }
    }

    /// Makes the caller the session's only stream; returns its number.
    fn take_over(&self) -> u64 {
        let owner = self.owner.fetch_add(1, Ordering::SeqCst) + 1;
        self.taken.notify_waiters();
        owner
    }
}

/// The watch sessions of one server. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Sessions {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    slots: Mutex<HashMap<u64, Arc<Slot>>>,
    /// Held from preparing a commit of session writes until it is done,
    /// so a flush and a reconnect never interleave theirs.
    commit: tokio::sync::Mutex<()>,
    /// The session id the next flush starts from: one that had to wait
    /// for room in a commit goes first next time.
    next_flush_from: AtomicU64,
    /// The last flush failed (logged once per failing streak).
    failing: std::sync::atomic::AtomicBool,
}

fn refusal(e: Refusal) -> ApiError {
    match e {
        Refusal::Invalid(why) => ApiError::bad_request(
            "invalid_resume_token",
            format!("Last-Event-ID names no position of this watch: {why}"),
        ),
        Refusal::Expired { why, resume_from } => {
            let mut err =
                ApiError::new(StatusCode::GONE, "token_expired", format!("Last-Event-ID cannot resume: {why}"));
            err.extra = resume_from.map(|t| ("resume_from", t.to_string().into()));
            err
        }
    }
}

impl Inner {
    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Slot>>> {
        self.slots.lock().expect("watch sessions lock")
    }
}

impl Sessions {
    /// The sessions kept in the catalog; keeps every new timestamp at or
    /// above their cuts, and starts the periodic flush, which stops when
    /// `closing` turns true (then `close` writes the last positions).
    pub async fn load(store: Store, closing: tokio::sync::watch::Receiver<bool>) -> Result<Self, StoreError> {
        let mut slots = HashMap::new();
        for (id, header) in store.watch_sessions().await? {
            store.raise_ts_floor(header.cut_ts);
            slots.insert(id, Slot::new(id, SlotState::Stored(header)));
        }
        if !slots.is_empty() {
            tracing::info!(sessions = slots.len(), "watch sessions loaded");
        }
        metrics::gauge!(ferry_core::metric_names::WATCH_SESSIONS).set(slots.len() as f64);
        let inner = Arc::new(Inner {
            store,
            slots: Mutex::new(slots),
            commit: tokio::sync::Mutex::new(()),
            next_flush_from: AtomicU64::new(0),
            failing: Default::default(),
        });
        tokio::spawn(run_flushes(Arc::downgrade(&inner), closing));
        Ok(Self { inner })
    }

    /// A new session starting now (after the caller subscribed to the
    /// appends), or at `from_ts`, its header written before it is returned.
    pub async fn create(
        &self,
        prefix: String,
        from: Option<(LedgerName, EntryId)>,
        from_ts: Option<u64>,
    ) -> Result<(Arc<Slot>, u64), ApiError> {
        let store = &self.inner.store;
        let mut cut = store.watch_cut().await?;
        // An earlier cut is a later start of nothing but the ledgers
        // existing at the cut: they start at their first entry stamped at
        // or after it (`Stream::start_of`). A later one would raise the
        // timestamp floor into the future after a restart: refused.
        if let Some(ts) = from_ts {
            if ts > cut.ts {
                return Err(ApiError::bad_request(
                    "invalid_from_ts",
                    format!("from_ts {ts} is after now ({}): a watch starts at the latest now", cut.ts),
                ));
            }
            cut.ts = ts;
        }
        let from = from.map(|(ledger, id)| {
            let incarnation = store.ledger_head(&ledger).map(|h| h.incarnation);
            WatchFrom { ledger, id, incarnation }
        });
        let _commit = self.inner.commit.lock().await;
        let now = now_ms();
        let (id, evicted) = {
            let slots = self.inner.slots();
            let id = std::iter::repeat_with(rand::random::<u64>).find(|id| !slots.contains_key(id)).expect("an id");
            let evicted = (slots.len() >= WATCH_SESSIONS_MAX).then(|| idle_longest(&slots)).flatten();
            (id, evicted)
        };
        let mut session = Session::new(id, prefix, cut, from, now);
        let mut flush = session.prepare_flush(now).expect("a new session writes its header");
        let mut writes = std::mem::take(&mut flush.writes);
        writes.extend(evicted.map(WatchWrite::Forget));
        store.commit_watch_sessions(writes).await?;
        session.flushed(flush, true);
        let slot = Slot::new(id, SlotState::Loaded(session));
        let owner = slot.take_over();
        let mut slots = self.inner.slots();
        if let Some(old) = evicted {
            slots.remove(&old);
            tracing::info!(session = format!("{old:016x}"), "evicted the watch session idle longest");
        }
        slots.insert(id, slot.clone());
        metrics::gauge!(ferry_core::metric_names::WATCH_SESSIONS).set(slots.len() as f64);
        Ok((slot, owner))
    }

    /// Takes over the session of `token`, rolled back to just after the
    /// event it names, in a new epoch written before this returns.
    pub async fn resume(&self, token: Token, prefix: &str) -> Result<(Arc<Slot>, u64), ApiError> {
        let _commit = self.inner.commit.lock().await;
        let slot = self.inner.slots().get(&token.session).cloned().ok_or_else(|| {
            refusal(Refusal::Expired {
                why: format!(
                    "watch session {:016x} is not known here: it was idle for a day, was evicted, was never \
                     written before a crash, or belongs to another server",
                    token.session
                ),
                resume_from: None,
            })
        })?;
        let stored = {
            let state = slot.lock();
            if state.prefix() != prefix {
                return Err(refusal(Refusal::Invalid(format!(
                    "the token belongs to a watch of prefix {:?}, not {prefix:?}",
                    state.prefix()
                ))));
            }
            match &*state {
                SlotState::Stored(header) => {
                    Some((locate_stored(slot.id, header, token).map_err(refusal)?, header.clone()))
                }
                SlotState::Loaded(_) => None,
            }
        };
        if let Some((seq, header)) = stored {
            let rows = self.inner.store.watch_positions(slot.id).await?;
            *slot.lock() = SlotState::Loaded(Session::restore(slot.id, header, rows, seq));
        }
        let (owner, mut flush) = {
            let mut state = slot.lock();
            let SlotState::Loaded(session) = &mut *state else { unreachable!("loaded above") };
            let seq = session.locate(token).map_err(refusal)?;
            let owner = slot.take_over();
            session.rollback_to(seq);
            session.begin_epoch(seq);
            session.live = true;
            (owner, session.prepare_flush(now_ms()).expect("a new epoch is written"))
        };
        let writes = std::mem::take(&mut flush.writes);
        let committed = self.inner.store.commit_watch_sessions(writes).await;
        let mut state = slot.lock();
        if let SlotState::Loaded(session) = &mut *state {
            session.flushed(flush, committed.is_ok());
            if committed.is_err() {
                session.live = false;
            }
        }
        committed?;
        Ok((slot.clone(), owner))
    }

    /// Writes every session's positions, the idle ones as complete (call
    /// it once the streams ended).
    pub async fn close(&self) {
        flush(&self.inner, true).await;
    }
}

/// The idle session idle the longest, if any.
fn idle_longest(slots: &HashMap<u64, Arc<Slot>>) -> Option<u64> {
    slots.values().filter_map(|s| s.lock().idle_since().map(|at| (at, s.id))).min().map(|(_, id)| id)
}

async fn run_flushes(inner: Weak<Inner>, mut closing: tokio::sync::watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(WATCH_FLUSH_INTERVAL_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // A dropped sender means nobody will close: flush on.
            Ok(_) = closing.wait_for(|c| *c) => return,
        }
        let Some(inner) = inner.upgrade() else { return };
        periodic_flush(&inner).await;
    }
}

async fn periodic_flush(inner: &Inner) {
    // Tests stop the periodic flush to lose every token after a start.
    fail::fail_point!("watch::flush", |_| ());
    flush(inner, false).await;
}

/// One commit: the positions of every session that moved (at most
/// `WATCH_FLUSH_POSITIONS_MAX` of them unless `all`), and the expired
/// sessions forgotten. Then idle sessions leave memory.
async fn flush(inner: &Inner, all: bool) {
    let _commit = inner.commit.lock().await;
    let now = now_ms();
    let mut slots: Vec<Arc<Slot>> = inner.slots().values().cloned().collect();
    let from = inner.next_flush_from.swap(0, Ordering::SeqCst);
    slots.sort_by_key(|s| (s.id < from, s.id));
    let (mut writes, mut prepared, mut forgotten) = (Vec::new(), Vec::<(Arc<Slot>, Flush)>::new(), Vec::new());
    for slot in &slots {
        let mut state = slot.lock();
        if let Some(idle) = state.idle_since()
            && idle.saturating_add(WATCH_SESSION_IDLE_MS) < now
        {
            if forgotten.len() < WATCH_FORGETS_PER_FLUSH {
                forgotten.push(slot.id);
            }
            continue;
        }
        let SlotState::Loaded(session) = &mut *state else { continue };
        if !all && writes.len() >= WATCH_FLUSH_POSITIONS_MAX {
            // The next flush takes it, first.
            let _ = inner.next_flush_from.compare_exchange(0, slot.id.max(1), Ordering::SeqCst, Ordering::SeqCst);
            continue;
        }
        if let Some(mut f) = session.prepare_flush(now) {
            writes.append(&mut f.writes);
            prepared.push((slot.clone(), f));
        }
    }
    writes.extend(forgotten.iter().copied().map(WatchWrite::Forget));
    if writes.is_empty() {
        return;
    }
    let committed = match inner.store.commit_watch_sessions(writes).await {
        Ok(()) => {
            if inner.failing.swap(false, Ordering::SeqCst) {
                tracing::info!("watch positions are written again");
            }
            true
        }
        Err(e) => {
            if !inner.failing.swap(true, Ordering::SeqCst) {
                tracing::warn!(error = %e, "writing watch positions failed; every flush tries again");
            }
            false
        }
    };
    for (slot, f) in prepared {
        if let SlotState::Loaded(session) = &mut *slot.lock() {
            session.flushed(f, committed);
        }
    }
    if committed {
        let mut slots = inner.slots();
        for id in &forgotten {
            slots.remove(id);
        }
        metrics::gauge!(ferry_core::metric_names::WATCH_SESSIONS).set(slots.len() as f64);
        unload_idle(&slots, now);
    }
}

/// Idle sessions whose every position is written leave memory after
/// `WATCH_IDLE_IN_MEMORY_MS`, and beyond `WATCH_IDLE_SESSIONS_IN_MEMORY`
/// the ones idle longest first.
fn unload_idle(slots: &HashMap<u64, Arc<Slot>>, now: u64) {
    let mut idle: Vec<(u64, &Arc<Slot>)> = slots
        .values()
        .filter_map(|slot| match &*slot.lock() {
            SlotState::Loaded(s) if s.is_written() => Some((s.active_at, slot)),
            _ => None,
        })
        .collect();
    idle.sort_by_key(|(at, _)| std::cmp::Reverse(*at));
    for (i, (at, slot)) in idle.into_iter().enumerate() {
        if i >= WATCH_IDLE_SESSIONS_IN_MEMORY || at.saturating_add(WATCH_IDLE_IN_MEMORY_MS) < now {
            let mut state = slot.lock();
            if let SlotState::Loaded(s) = &*state
                && s.is_written()
            {
                *state = SlotState::Stored(s.written_record());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_store::StoreConfig;

    async fn open(dir: &std::path::Path) -> (Store, Sessions, tokio::sync::watch::Sender<bool>) {
        let store = tokio::task::spawn_blocking({
            let dir = dir.to_owned();
            move || Store::open(StoreConfig::new(dir)).unwrap()
        })
        .await
        .unwrap();
        let (closing_tx, closing) = tokio::sync::watch::channel(false);
        let sessions = Sessions::load(store.clone(), closing).await.unwrap();
        (store, sessions, closing_tx)
    }

    fn ln(s: &str) -> LedgerName {
        LedgerName::parse(s).unwrap()
    }

    /// Sends `n` entries of `ledger` from the session and ends its stream
    /// `idle_ms` ago.
    fn send_and_leave(slot: &Slot, owner: u64, ledger: &LedgerName, n: u64, idle_ms: u64) -> Token {
        slot.release(owner);
        let SlotState::Loaded(s) = &mut *slot.lock() else { panic!("loaded") };
        let mut token = s.token();
        for id in 1..=n {
            token = s.send_entry(ledger, 1, id);
        }
        s.active_at = now_ms() - idle_ms;
        token
    }

    async fn session_keys(store: &Store) -> (usize, usize) {
        let headers = store.watch_sessions().await.unwrap();
        let mut positions = 0;
        for (id, _) in &headers {
            positions += store.watch_positions(*id).await.unwrap().len();
        }
        (headers.len(), positions)
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_session_idle_for_a_day_is_forgotten_with_its_positions() {
        let dir = tempfile::tempdir().unwrap();
        let (store, sessions, _closing) = open(dir.path()).await;
        let (slot, owner) = sessions.create("w.".into(), None, None).await.unwrap();
        let (kept, kept_owner) = sessions.create("w.".into(), None, None).await.unwrap();
        send_and_leave(&slot, owner, &ln("w.a"), 3, 0);
        flush(&sessions.inner, false).await;
        assert_eq!(session_keys(&store).await, (2, 1));
        send_and_leave(&slot, owner, &ln("w.b"), 0, WATCH_SESSION_IDLE_MS + 1);
        flush(&sessions.inner, false).await;
        assert_eq!(session_keys(&store).await, (1, 0), "the idle one is gone, positions and all");
        assert!(!sessions.inner.slots().contains_key(&slot.id));
        let token = Token { session: slot.id, epoch: 0, seq: 3 };
        let Err(e) = sessions.resume(token, "w.").await else { panic!("resumed a forgotten session") };
        assert_eq!((e.status, e.code), (StatusCode::GONE, "token_expired"));
        kept.release(kept_owner);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_session_idle_for_a_minute_leaves_memory_and_resumes_from_the_catalog() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, sessions, _closing) = open(dir.path()).await;
        let (slot, owner) = sessions.create("w.".into(), None, None).await.unwrap();
        let token = send_and_leave(&slot, owner, &ln("w.a"), 5, WATCH_IDLE_IN_MEMORY_MS + 1);
        flush(&sessions.inner, false).await; // writes it complete
        flush(&sessions.inner, false).await; // then it leaves memory
        assert!(matches!(&*slot.lock(), SlotState::Stored(h) if h.at == 5 && h.complete));
        let past = Token { seq: 6, ..token };
        let Err(e) = sessions.resume(past, "w.").await else { panic!("resumed past the last event") };
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_resume_token"));
        let (again, _) = sessions.resume(token, "w.").await.unwrap();
        let SlotState::Loaded(s) = &*again.lock() else { panic!("loaded again") };
        assert_eq!(s.position(&ln("w.a")), Some(ferry_store::WatchPosition { incarnation: 1, next: 6 }));
        assert_eq!(s.token(), Token { session: slot.id, epoch: 1, seq: 5 });
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_new_session_evicts_the_one_idle_longest_once_the_cap_is_reached() {
        let dir = tempfile::tempdir().unwrap();
        let (_store, sessions, _closing) = open(dir.path()).await;
        let (first, owner) = sessions.create("w.".into(), None, None).await.unwrap();
        send_and_leave(&first, owner, &ln("w.a"), 1, 0);
        let header = match &*first.lock() {
            SlotState::Loaded(s) => s.written_record(),
            SlotState::Stored(_) => unreachable!(),
        };
        {
            // Stand-ins for sessions kept from before, idle for an hour.
            let mut slots = sessions.inner.slots();
            for id in 1..WATCH_SESSIONS_MAX as u64 {
                let record = WatchSessionRecord { active_at: now_ms() - 3_600_000 + id, ..header.clone() };
                slots.insert(id, Slot::new(id, SlotState::Stored(record)));
            }
            assert_eq!(slots.len(), WATCH_SESSIONS_MAX);
        }
        let (new, _) = sessions.create("w.".into(), None, None).await.unwrap();
        let slots = sessions.inner.slots();
        assert_eq!(slots.len(), WATCH_SESSIONS_MAX);
        assert!(!slots.contains_key(&1), "the one idle longest made room");
        assert!(slots.contains_key(&new.id) && slots.contains_key(&first.id));
    }
}
