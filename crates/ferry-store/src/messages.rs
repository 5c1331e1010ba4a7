//! What the store's threads send each other: appends to the flusher, work
//! for the freezer, and what an append answers. Kept apart from the threads
//! so neither thread's module needs the other's.

use std::sync::Arc;

use ferry_core::{EntryId, LedgerName, NewEntry};
use tokio::sync::oneshot;

use crate::Result;
use crate::ledger::LedgerState;

/// The result of an append: the id of every entry, in request order (an
/// entry whose idempotency key was already used gets its original id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub ids: Vec<EntryId>,
    /// False when every entry was a repeat of an earlier append.
    pub created: bool,
}

pub(crate) struct AppendRequest {
    pub ledger: Arc<LedgerState>,
    pub entries: Vec<NewEntry>,
    /// The WAL bytes the new entries encode to (at most `APPEND_BYTES_MAX`).
    pub encoded_bytes: usize,
    /// Apply only if the ledger's head is this when the group plans it
    /// (counting earlier appends of the group); see `Store::append_expecting`.
    pub expected_head: Option<EntryId>,
    pub reply: oneshot::Sender<Result<AppendOutcome>>,
}

pub(crate) enum FlusherMsg {
    Append(AppendRequest),
    /// Copy the live records of this sealed segment forward so it can go.
    Relocate(u32),
    /// Answer once every message before this one is written and visible
    /// (a deletion waits for it after marking its ledger deleted, so no
    /// append of the ledger is in flight when its key goes).
    Barrier(oneshot::Sender<()>),
    /// Answer with every ledger's head, read between two group commits: a
    /// consistent cut (a snapshot pin).
    Cut(oneshot::Sender<Vec<crate::LedgerHead>>),
    /// A ledger was deleted: forget its idempotency keys (a ledger created
    /// later under the name must not answer with the old ids).
    ForgetLedger(LedgerName),
    Shutdown,
}

pub(crate) enum FreezerMsg {
    /// The ledger has a full chunk in the hot tier.
    Check(Arc<LedgerState>),
    /// Delete the ledger; answer when it is gone.
    /// The `Option<String>` names who asked (a token's name), for the
    /// `ledger.deleted` event.
    Delete(Arc<LedgerState>, Option<String>, oneshot::Sender<Result<()>>),
    /// Answer once the retention pass under way (if any) has ended.
    Barrier(oneshot::Sender<()>),
    Shutdown,
}
