//! Durable watch sessions (format 4): what `/v1/watch` keeps in the catalog
//! so that a bounded resume token still means something after a restart.
//! The store writes and reads these records and cuts the watch's start into
//! the timestamps; what they mean is `ferry-api`'s (`watch/` there, and
//! `docs/decisions/2026-12-04-bounded-watch-tokens.md`).
//!
//! A session is one header, `watch:{session:016x}`, and one position per
//! ledger it delivered entries of, `watchpos:{session:016x}:{ledger}`, each
//! written by a numbered flush. A flush rewrites only what moved since the
//! one before, and keeps that earlier value beside the new one, so the
//! catalog holds the session's positions at two points: `at` (this flush)
//! and `before` (the previous one).

use std::sync::atomic::Ordering;

use ferry_core::{EntryId, LedgerName, now_ms};
use ferry_format::keys::CatalogKey;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::catalog::CatalogOp;
use crate::messages::FlusherMsg;
use crate::{Result, Store, StoreError};

/// Where a watch stands in one ledger: the incarnation it follows and the
/// next id to deliver of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchPosition {
    pub incarnation: u64,
    pub next: EntryId,
}

/// `from=LEDGER:ID` of a watch: where that ledger starts, for the one
/// incarnation it applies to (`None` until the ledger exists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchFrom {
    pub ledger: LedgerName,
    pub id: EntryId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<u64>,
}

/// `watch:{session:016x}`: a watch session's header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchSessionRecord {
    /// The ledger-name prefix the session watches.
    pub prefix: String,
    /// The session's start as a timestamp cut (`Store::watch_cut`): a
    /// ledger it has no position of starts at its first entry stamped at or
    /// after this.
    pub cut_ts: u64,
    /// The last incarnation handed out at the cut: a ledger with a higher
    /// one was created after the session began.
    pub start_incarnation: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<WatchFrom>,
    /// Unix milliseconds.
    pub created_at: u64,
    /// When a stream last had the session: it expires a day after.
    pub active_at: u64,
    /// The newest epoch: every reconnect starts one, written before any
    /// token of it is sent.
    pub epoch: u64,
    /// `[epoch, seq]`: the newest epochs and the sequence number each
    /// resumed from (the oldest first).
    pub branches: Vec<(u64, u64)>,
    /// The number of the flush that wrote the positions.
    pub flush: u64,
    /// The sequence number the positions stand at.
    pub at: u64,
    /// The sequence number of the flush before, when it is on the current
    /// branch; a position written by flush `flush` keeps its value there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// True when `at` is the last event the session sent (the stream had
    /// ended and everything was written): a token past it was never sent.
    pub complete: bool,
}

/// `watchpos:{session:016x}:{ledger}`: a session's position in a ledger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchPositionRecord {
    /// The position at the header's `at`; `None` when there is none any
    /// more (the session announced the ledger's deletion) but there was
    /// one at `before`.
    pub at: Option<WatchPosition>,
    /// The flush that wrote the record.
    pub flush: u64,
    /// The position at the header's `before`, when this record was written
    /// by the header's flush (otherwise it is `at`: nothing moved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<WatchPosition>,
}

/// One change in `Store::commit_watch_sessions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchWrite {
    Session(u64, WatchSessionRecord),
    Position(u64, LedgerName, WatchPositionRecord),
    RemovePosition(u64, LedgerName),
    /// The header and every position of the session.
    Forget(u64),
}

/// The start of a watch (`Store::watch_cut`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WatchCut {
    /// Every entry visible now is stamped before this; every later one at
    /// or after it.
    pub ts: u64,
    /// The last incarnation handed out: a ledger with a higher one is
    /// created after the cut.
    pub last_incarnation: u64,
}

fn decode<T: for<'a> Deserialize<'a>>(key: &CatalogKey, value: &[u8]) -> Result<T> {
    serde_json::from_slice(value).map_err(|e| StoreError::CatalogCorrupted(format!("{key}: {e}")))
}

impl WatchSessionRecord {
    pub fn decode(key: &CatalogKey, value: &[u8]) -> Result<Self> {
        decode(key, value)
    }
}

impl WatchPositionRecord {
    pub fn decode(key: &CatalogKey, value: &[u8]) -> Result<Self> {
        decode(key, value)
    }
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("watch records serialise")
}

impl Store {
    /// Cuts the timestamps at the start of a watch: raises the floor every
    /// new entry's timestamp respects above everything stamped so far, then
    /// waits until every entry stamped below it is visible. So the entries
    /// after the watch began are exactly those stamped at or after the cut,
    /// now and after any restart (the caller keeps the floor up there with
    /// `raise_ts_floor`), whatever the clock does.
    pub async fn watch_cut(&self) -> Result<WatchCut> {
        let floor = &self.shared().ts_floor;
        let mut old = floor.load(Ordering::SeqCst);
        let ts = loop {
            let new = (now_ms() + 1).max(old + 1);
            match floor.compare_exchange(old, new, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => break new,
                Err(now) => old = now,
            }
        };
        let (done, flushed) = oneshot::channel();
        self.flusher().send(FlusherMsg::Barrier(done)).await.map_err(|_| StoreError::ShuttingDown)?;
        flushed.await.map_err(|_| StoreError::ShuttingDown)?;
        Ok(WatchCut { ts, last_incarnation: self.last_incarnation() })
    }

    /// Keeps every new timestamp at or above `ts` (the cut of a watch
    /// session kept from before a restart).
    pub fn raise_ts_floor(&self, ts: u64) {
        self.shared().ts_floor.fetch_max(ts, Ordering::SeqCst);
    }

    /// Every watch session header in the catalog. One that does not decode
    /// is left out with a warning (`ferry verify` names it).
    pub async fn watch_sessions(&self) -> Result<Vec<(u64, WatchSessionRecord)>> {
        self.blocking(|store| {
            let mut out = Vec::new();
            for (key, value) in store.shared().catalog.scan(CatalogKey::WATCH_SESSION_PREFIX)? {
                let CatalogKey::WatchSession(id) = key else { continue };
                match WatchSessionRecord::decode(&key, &value) {
                    Ok(record) => out.push((id, record)),
                    Err(e) => tracing::warn!(error = %e, "skipping a watch session that does not decode"),
                }
            }
            Ok(out)
        })
        .await
    }

    /// The positions of one watch session, in ledger order.
    pub async fn watch_positions(&self, session: u64) -> Result<Vec<(LedgerName, WatchPositionRecord)>> {
        self.blocking(move |store| {
            let mut out = Vec::new();
            for (key, value) in store.shared().catalog.scan(&CatalogKey::watch_position_prefix(session))? {
                let record = WatchPositionRecord::decode(&key, &value)?;
                let CatalogKey::WatchPosition(_, ledger) = key else {
                    return Err(StoreError::CatalogCorrupted(format!("{key} under a watch position prefix")));
                };
                out.push((ledger, record));
            }
            Ok(out)
        })
        .await
    }

    /// Writes watch session changes in one durable catalog commit, all or
    /// nothing. Refused for lack of space, it changed nothing and the store
    /// goes on; any other failure poisons it, as every catalog commit does.
    pub async fn commit_watch_sessions(&self, writes: Vec<WatchWrite>) -> Result<()> {
        self.blocking(move |store| {
            let shared = store.shared();
            shared.health.check()?;
            let mut ops = Vec::with_capacity(writes.len());
            for write in writes {
                match write {
                    WatchWrite::Session(id, record) => {
                        ops.push(CatalogOp::Put(CatalogKey::WatchSession(id), encode(&record)));
                    }
                    WatchWrite::Position(id, ledger, record) => {
                        ops.push(CatalogOp::Put(CatalogKey::WatchPosition(id, ledger), encode(&record)));
                    }
                    WatchWrite::RemovePosition(id, ledger) => {
                        ops.push(CatalogOp::Delete(CatalogKey::WatchPosition(id, ledger)));
                    }
                    WatchWrite::Forget(id) => {
                        ops.push(CatalogOp::Delete(CatalogKey::WatchSession(id)));
                        for (key, _) in shared.catalog.scan(&CatalogKey::watch_position_prefix(id))? {
                            ops.push(CatalogOp::Delete(key));
                        }
                    }
                }
            }
            shared.commit_or_poison(&ops)
        })
        .await
    }
}
