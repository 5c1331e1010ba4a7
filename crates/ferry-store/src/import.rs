//! The restore path (`POST /v1/ledgers/{ledger}/import`, `ferry backup
//! restore`): entries that carry their own id, ts, key, idempotency key and
//! chain hash, applied exactly as given or refused whole.
//!
//! **The rule.** An import request names a run of contiguous ids. Ids at
//! or below the ledger's head must be identical to what is stored (ts, key,
//! payload, hash): they are answered as present and change nothing, so a
//! request sent again is a no-op (merge). Ids above the head must start at
//! `head + 1`, never stamp a ts below the head's, and, on a chained
//! ledger, carry the hash the chain computes (a hash that differs is
//! refused, naming the id). An absent ledger is created by the import: it
//! starts at the first id given (a chunk boundary of this store, so a
//! backup of a pruned ledger restores from its First) and chains from
//! `prev_hash`, the hash before that id in the ledger the entries were
//! read from. All or nothing: one request is one durable group commit.

use ferry_core::{EntryId, LedgerName, Payload};
use ferry_format::chain::ChainHash;

use crate::{Result, Store};

/// One entry to import, as a backup line holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportEntry {
    pub id: EntryId,
    pub ts: u64,
    pub key: Option<String>,
    pub idempotency_key: Option<String>,
    /// The entry's chain hash in the ledger it came from, checked against
    /// the chain here; `None` for an entry of a ledger without a chain.
    pub hash: Option<ChainHash>,
    pub payload: Payload,
}

/// What an import did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportOutcome {
    /// Entries appended.
    pub imported: u64,
    /// Entries already stored, identical.
    pub present: u64,
    /// The ledger's head after the import.
    pub head: EntryId,
    /// The ledger's incarnation in this store.
    pub incarnation: u64,
    /// The import created the ledger.
    pub created: bool,
}

impl Store {
    /// Imports a run of contiguous entries (see the module docs); all or
    /// nothing. `prev_hash` is the chain hash before the first entry: it
    /// decides the chain of a ledger the import creates (none: a ledger
    /// without a chain, refused when the entries carry hashes), and must
    /// match an existing ledger's chain where the entries join it.
    pub async fn import(
        &self,
        ledger: &LedgerName,
        entries: Vec<ImportEntry>,
        prev_hash: Option<ChainHash>,
    ) -> Result<ImportOutcome> {
        let _ = (ledger, entries, prev_hash);
        todo!("issue #18: Store::import")
    }

    /// `import` for threads and tools (`ferry backup restore --data-dir`).
    pub fn import_blocking(
        &self,
        ledger: &LedgerName,
        entries: Vec<ImportEntry>,
        prev_hash: Option<ChainHash>,
    ) -> Result<ImportOutcome> {
        let _ = (ledger, entries, prev_hash);
        todo!("issue #18: Store::import_blocking")
    }
}
