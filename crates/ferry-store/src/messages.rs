//! What the store's threads send each other: appends to the flusher, work
//! for the freezer, and what an append answers. Kept apart from the threads
//! so neither thread's module needs the other's.

use std::sync::Arc;

use ferry_core::{EntryId, LedgerName, NewEntry};
use ferry_format::chain::ChainHash;
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

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ImportOutcome {
    /// Entries appended.
    pub imported: u64,
    /// Entries already stored, identical.
    pub present: u64,
    /// The ledger's head after the import.
    #[schema(value_type = u64)]
    pub head: EntryId,
    /// The ledger's incarnation in this store.
    pub incarnation: u64,
    /// The import created the ledger.
    pub created: bool,
}

/// The id, ts and chain hash an import gives an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub id: EntryId,
    pub ts: u64,
    pub hash: Option<ChainHash>,
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

/// An import (`Store::import`): entries that carry their own ids, ts and
/// hashes, checked on the flusher thread against the ledger as it stands
/// and written as a group commit of their own.
pub(crate) struct ImportRequest {
    pub ledger: Arc<LedgerState>,
    /// Each entry's id, ts and hash, in id order (contiguous, checked).
    pub stamps: Vec<Stamp>,
    /// The rest of each entry, as an append carries it.
    pub entries: Vec<NewEntry>,
    /// The chain hash before the first entry, if the request names one.
    pub prev_hash: Option<ChainHash>,
    pub reply: oneshot::Sender<Result<ImportOutcome>>,
}

pub(crate) enum FlusherMsg {
    Append(AppendRequest),
    /// An import; it ends the group of appends before it.
    Import(ImportRequest),
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
