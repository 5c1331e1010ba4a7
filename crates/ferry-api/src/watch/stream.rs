//! One `/v1/watch` stream: wakes on appends and deletions, reads each
//! ledger from the session's position in storage, and sends entries (and
//! the deletion of a ledger it followed) as SSE events, recording each in
//! the session as it leaves.
//!
//! **Architecture Invariant:** a stream subscribes to appends and deletions
//! before its session's start is cut and before it reads storage, and
//! reads from the session's position per ledger, so notifications only
//! wake it and no entry falls between catching up and going live.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;

use axum::response::sse::Event;
use ferry_core::bus::{Received, Subscription};
use ferry_core::events::{Appended, SystemEvent};
use ferry_core::{Entry, EntryId, LedgerName};
use ferry_store::{LedgerHead, Store, StoreError, WatchPosition};

use crate::auth::{Caller, Scope};

use super::WatcherGuard;
use super::session::{Session, Start};
use super::sessions::{Slot, SlotState};

/// Entries read from storage per ledger per step.
const READ_PAGE: usize = 1000;

/// What a stream read and has yet to send.
enum Pending {
    Entry {
        incarnation: u64,
        entry: Entry,
    },
    /// The ledger's incarnation the session followed is gone.
    Deleted(LedgerName),
}

/// What a stream listens to; taken before the session starts.
pub(crate) struct Subscriptions {
    pub appends: Subscription<Appended>,
    pub deletions: Subscription<SystemEvent>,
}

impl Subscriptions {
    pub fn new(store: &Store, prefix: &str, buffer: usize) -> Self {
        Self {
            appends: store.appends().subscribe(prefix, buffer),
            deletions: store.events().subscribe(&format!("ledger.deleted/{prefix}"), buffer),
        }
    }
}

pub(crate) struct Stream {
    store: Store,
    slot: Arc<Slot>,
    /// This stream's number: it sends only while the session's owner.
    owner: u64,
    prefix: String,
    subs: Subscriptions,
    /// Ledgers that may have something to send.
    dirty: BTreeSet<LedgerName>,
    pending: VecDeque<Pending>,
    done: bool,
    _guard: WatcherGuard,
    /// Whose stream it is: ledgers outside its scope are never looked at,
    /// so a prefix wider than the scope sends only what the scope covers.
    caller: Caller,
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.slot.release(self.owner);
    }
}

impl Stream {
    /// A stream of the session `slot` (taken over as `owner`); `dirty`
    /// names the ledgers to look at first.
    pub fn new(
        store: Store,
        slot: Arc<Slot>,
        owner: u64,
        subs: Subscriptions,
        dirty: BTreeSet<LedgerName>,
        guard: WatcherGuard,
        caller: Caller,
    ) -> Self {
        let prefix = match &*slot.lock() {
            SlotState::Loaded(s) => s.prefix.clone(),
            SlotState::Stored(h) => h.prefix.clone(),
        };
        Self { store, slot, owner, prefix, subs, dirty, pending: VecDeque::new(), done: false, _guard: guard, caller }
    }

    /// Runs `f` on the session while this stream owns it.
    fn with_session<T>(&self, f: impl FnOnce(&mut Session) -> T) -> Option<T> {
        let mut state = self.slot.lock();
        match &mut *state {
            SlotState::Loaded(s) if self.slot.owner() == self.owner => Some(f(s)),
            _ => None,
        }
    }

    /// The next event, or `None` when the stream ends (lagged, taken over
    /// by a reconnect, or the bus is gone).
    pub async fn next_event(&mut self) -> Option<Event> {
        loop {
            if let Some(p) = self.pending.pop_front() {
                return self.send(p);
            }
            if self.done {
                return None;
            }
            if let Some(ledger) = self.dirty.pop_first() {
                if !self.caller.may(Scope::Watch, ledger.as_str()) {
                    continue;
                }
                if let Err(e) = self.fill(&ledger).await {
                    tracing::warn!(%ledger, error = %e, "watch: skipping a ledger it cannot read");
                }
                continue;
            }
            let slot = self.slot.clone();
            let taken = slot.taken.notified();
            tokio::pin!(taken);
            taken.as_mut().enable();
            if slot.owner() != self.owner {
                return None;
            }
            let lagged = tokio::select! {
                r = self.subs.appends.recv() => match r? {
                    Received::Message(a) => {
                        self.dirty.insert(a.ledger);
                        while let Some(Received::Message(a)) = self.subs.appends.try_recv() {
                            self.dirty.insert(a.ledger);
                        }
                        false
                    }
                    Received::Lagged => true,
                },
                r = self.subs.deletions.recv() => match r? {
                    Received::Message(e) => {
                        if let Some(l) = e.key.split_once('/').and_then(|(_, l)| LedgerName::parse(l).ok()) {
                            self.dirty.insert(l);
                        }
                        false
                    }
                    Received::Lagged => true,
                },
                () = &mut taken => return None,
            };
            if lagged {
                return self.lagged();
            }
        }
    }

    /// Records `p` in the session and makes its event.
    fn send(&mut self, p: Pending) -> Option<Event> {
        match p {
            Pending::Entry { incarnation, entry } => {
                let token = self.with_session(|s| s.send_entry(&entry.ledger, incarnation, entry.id))?;
                Some(Event::default().event("entry").id(token.to_string()).data(entry.to_json()))
            }
            Pending::Deleted(ledger) => {
                let (token, incarnation) = self.with_session(|s| {
                    let incarnation = s.position(&ledger).map(|p| p.incarnation);
                    (s.send_deleted(&ledger), incarnation)
                })?;
                // Names are `[a-z0-9._-]`: nothing to escape.
                let data = format!(r#"{{"ledger":"{ledger}","incarnation":{}}}"#, incarnation.unwrap_or_default());
                Some(Event::default().event("ledger.deleted").id(token.to_string()).data(data))
            }
        }
    }

    /// The stream fell a bus buffer behind: it ends with a token that
    /// resumes from storage.
    fn lagged(&mut self) -> Option<Event> {
        self.done = true;
        metrics::counter!(ferry_core::metric_names::WATCHERS_LAGGED_TOTAL).increment(1);
        let token = self.with_session(|s| s.token())?.to_string();
        let data = serde_json::json!({ "token": token, "prefix": self.prefix }).to_string();
        Some(Event::default().event("lagged").id(token).data(data))
    }

    /// Reads the next page of `ledger` into `pending`: entries from the
    /// session's position, or the notice that the incarnation it followed
    /// is gone (the new one, if any, is read next).
    async fn fill(&mut self, ledger: &LedgerName) -> Result<(), StoreError> {
        let Some((position, start)) = self.with_session(|s| (s.position(ledger), s.start().clone())) else {
            return Ok(());
        };
        let head = self.store.ledger_head(ledger);
        let position = match position {
            Some(p) if head.as_ref().is_some_and(|h| h.incarnation == p.incarnation) => p,
            Some(_) => {
                self.deleted(ledger, head.is_some());
                return Ok(());
            }
            None => {
                let Some(head) = head.as_ref() else { return Ok(()) };
                let Some(p) = self.start_of(ledger, head, &start).await? else { return Ok(()) };
                self.with_session(|s| s.set_start(ledger, p));
                p
            }
        };
        if head.is_some_and(|h| position.next > h.head) {
            return Ok(());
        }
        match self.store.read(ledger, Some(position.next), READ_PAGE).await {
            Ok(batch) if batch.incarnation != position.incarnation => self.deleted(ledger, true),
            Ok(batch) => {
                if batch.entries.len() == READ_PAGE {
                    self.dirty.insert(ledger.clone());
                }
                let incarnation = batch.incarnation;
                self.pending.extend(batch.entries.into_iter().map(|entry| Pending::Entry { incarnation, entry }));
            }
            Err(StoreError::BelowFirst { first, .. }) => {
                // Pruned before it could be sent: go on from First.
                let skipped = WatchPosition { incarnation: position.incarnation, next: first };
                self.with_session(|s| s.skip_to(ledger, skipped));
                self.dirty.insert(ledger.clone());
            }
            Err(StoreError::LedgerNotFound(_)) => self.deleted(ledger, false),
            Err(e) => return Err(e),
        }
        Ok(())
    }

    /// Queues the deletion notice; a ledger now under the name is read
    /// after it.
    fn deleted(&mut self, ledger: &LedgerName, recreated: bool) {
        self.pending.push_back(Pending::Deleted(ledger.clone()));
        if recreated {
            self.dirty.insert(ledger.clone());
        }
    }

    /// Where a ledger the session has no position of starts (`Start`):
    /// `from`'s id for the incarnation it names, First for a ledger created
    /// after the cut, else its first entry stamped at or after the cut
    /// (`None`: nothing yet).
    async fn start_of(
        &self,
        ledger: &LedgerName,
        head: &LedgerHead,
        start: &Start,
    ) -> Result<Option<WatchPosition>, StoreError> {
        let at = |next| Some(WatchPosition { incarnation: head.incarnation, next });
        if let Some(from) = &start.from
            && from.ledger == *ledger
            && from.incarnation.is_none_or(|i| i == head.incarnation)
        {
            return Ok(at(from.id));
        }
        if head.incarnation > start.start_incarnation {
            return Ok(at(head.first));
        }
        if head.last_ts < start.cut_ts || head.head < head.first {
            return Ok(None);
        }
        Ok(at(self.first_at_or_after(ledger, head, start.cut_ts).await?))
    }

    /// The first id of `ledger` stamped at or after `ts`, given that its
    /// head is: gallops back from the head (entries after a cut are at the
    /// end), then bisects. Timestamps never decrease within a ledger.
    async fn first_at_or_after(&self, ledger: &LedgerName, head: &LedgerHead, ts: u64) -> Result<EntryId, StoreError> {
        let mut first = head.first;
        let (mut lo, mut hi) = (first, head.head);
        let mut step = 1;
        while hi > lo {
            let probe = hi.saturating_sub(step).max(lo);
            match self.stamp(ledger, probe).await? {
                Stamp::Pruned(f) => {
                    first = first.max(f);
                    lo = lo.max(f).min(hi);
                }
                Stamp::At(t) if t >= ts => {
                    hi = probe;
                    step *= 2;
                }
                Stamp::At(_) => {
                    lo = probe + 1;
                    break;
                }
            }
        }
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.stamp(ledger, mid).await? {
                Stamp::At(t) if t >= ts => hi = mid,
                Stamp::At(_) => lo = mid + 1,
                Stamp::Pruned(f) => lo = lo.max(f).min(hi),
            }
        }
        Ok(hi.max(first))
    }

    async fn stamp(&self, ledger: &LedgerName, id: EntryId) -> Result<Stamp, StoreError> {
        match self.store.read(ledger, Some(id), 1).await {
            Ok(batch) => Ok(Stamp::At(batch.entries.first().map_or(u64::MAX, |e| e.ts))),
            Err(StoreError::BelowFirst { first, .. }) => Ok(Stamp::Pruned(first)),
            Err(e) => Err(e),
        }
    }
}

enum Stamp {
    At(u64),
    Pruned(EntryId),
}
