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
//!
//! **Where it is checked.** The request's own shape (ids contiguous, field
//! limits, its size) on the caller's thread; everything that depends on the
//! ledger (`check_run`: presence, the chain, timestamps, idempotency keys,
//! the quota) on the flusher thread, where ids are assigned, so no append
//! comes between the checks and the write. An absent ledger is checked
//! against the empty ledger the import would create before it is created
//! (with its First and chain seed in the one catalog commit of its
//! `ledger:` key); if an append creates it first, it is an existing ledger.
//! A ledger created by an import whose write then fails stays, empty, as a
//! ledger an append created does.
//!
//! **Idempotency keys** are stored with their entries as given; those still
//! inside their window (`now - ts < IDEMPOTENCY_WINDOW_MS`) are checked
//! against the keys the ledger knows and remembered once durable, so a
//! restored ledger answers a retry with the original id.

use std::collections::HashMap;

use ferry_core::limits::{APPEND_BYTES_MAX, BATCH_ENTRIES_MAX, IDEMPOTENCY_WINDOW_MS};
use ferry_core::{EntryId, LedgerName, NewEntry, Payload};
use ferry_format::chain::{self, ChainHash};
use tokio::sync::oneshot;

use crate::ledger::LedgerIndex;
use crate::messages::{FlusherMsg, ImportRequest};
use crate::pack_protocols::OwnedRecord;
use crate::{Result, Store, StoreError};

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
        let ledger = ledger.clone();
        let (request, answer, created) =
            self.blocking(move |store| store.prepare_import(&ledger, entries, prev_hash)).await?;
        self.flusher().send(FlusherMsg::Import(request)).await.map_err(|_| StoreError::ShuttingDown)?;
        let outcome = answer.await.map_err(|_| StoreError::ShuttingDown)??;
        Ok(ImportOutcome { created, ..outcome })
    }

    /// `import` for threads and tools (`ferry backup restore --data-dir`).
    pub fn import_blocking(
        &self,
        ledger: &LedgerName,
        entries: Vec<ImportEntry>,
        prev_hash: Option<ChainHash>,
    ) -> Result<ImportOutcome> {
        let (request, answer, created) = self.prepare_import(ledger, entries, prev_hash)?;
        self.flusher().blocking_send(FlusherMsg::Import(request)).map_err(|_| StoreError::ShuttingDown)?;
        let outcome = answer.blocking_recv().map_err(|_| StoreError::ShuttingDown)??;
        Ok(ImportOutcome { created, ..outcome })
    }

    /// Checks the request's shape, creates an absent ledger (after checking
    /// the request against it), and builds the flusher's request. Blocking.
    fn prepare_import(
        &self,
        ledger: &LedgerName,
        entries: Vec<ImportEntry>,
        prev_hash: Option<ChainHash>,
    ) -> Result<(ImportRequest, oneshot::Receiver<Result<ImportOutcome>>, bool)> {
        self.ready()?;
        let (stamps, entries): (Vec<Stamp>, Vec<NewEntry>) = entries
            .into_iter()
            .map(|e| {
                let stamp = Stamp { id: e.id, ts: e.ts, hash: e.hash };
                (stamp, NewEntry { key: e.key, idempotency_key: e.idempotency_key, payload: e.payload })
            })
            .unzip();
        self.check_shape(ledger, &stamps, &entries)?;
        let created = match self.shared().ledger(ledger) {
            Some(_) => false,
            None => {
                self.check_new_ledger(ledger, &stamps, &entries, prev_hash)?;
                self.create_imported_ledger_blocking(ledger, stamps[0].id, prev_hash)?
            }
        };
        let state = self.shared().ledger(ledger).ok_or_else(|| StoreError::LedgerNotFound(ledger.clone()))?;
        let (reply, answer) = oneshot::channel();
        Ok((ImportRequest { ledger: state, stamps, entries, prev_hash, reply }, answer, created))
    }

    /// What does not depend on the ledger: entries present, ids contiguous
    /// from 1 on, each field within the append limits, the whole within one
    /// append's size.
    fn check_shape(&self, ledger: &LedgerName, stamps: &[Stamp], entries: &[NewEntry]) -> Result<()> {
        let Some(first) = stamps.first() else { return Err(StoreError::EmptyBatch) };
        if stamps.len() > BATCH_ENTRIES_MAX {
            return Err(StoreError::BatchTooLarge { count: stamps.len(), max: BATCH_ENTRIES_MAX });
        }
        if first.id == 0 {
            return Err(conflict(ledger, 0, "ids start at 1".to_owned()));
        }
        let mut encoded_bytes = 0;
        for (n, (stamp, entry)) in stamps.iter().zip(entries).enumerate() {
            let expected = first.id + n as u64;
            if stamp.id != expected {
                let reason = format!("ids must be contiguous: expected id {expected} after id {}", expected - 1);
                return Err(conflict(ledger, stamp.id, reason));
            }
            encoded_bytes += self.check_entry(ledger, entry)?;
        }
        if encoded_bytes > APPEND_BYTES_MAX {
            return Err(StoreError::AppendTooLarge { bytes: encoded_bytes, max: APPEND_BYTES_MAX });
        }
        Ok(())
    }

    /// Checks an import into an absent ledger against the empty ledger it
    /// would create, so a refused import creates nothing: its First on a
    /// chunk boundary, hashes only with a `prev_hash` to check them from,
    /// then the rules every import meets, and the quota.
    fn check_new_ledger(
        &self,
        ledger: &LedgerName,
        stamps: &[Stamp],
        entries: &[NewEntry],
        prev_hash: Option<ChainHash>,
    ) -> Result<()> {
        let first = stamps[0].id;
        let chunk_entries = self.chunk_entries();
        if !(first - 1).is_multiple_of(chunk_entries) {
            let reason = format!(
                "a new ledger starts on a chunk boundary of this store (chunk_entries {chunk_entries}: \
                 id 1, {}, {}, …)",
                chunk_entries + 1,
                2 * chunk_entries + 1
            );
            return Err(conflict(ledger, first, reason));
        }
        if prev_hash.is_none()
            && let Some(carrying) = stamps.iter().find(|s| s.hash.is_some())
        {
            return Err(conflict(ledger, carrying.id, "prev_hash is needed to check the chain".to_owned()));
        }
        let view = LedgerView::empty(first, prev_hash);
        let no_reads = |_: EntryId, _: usize| Ok(Vec::new());
        check_run(ledger, &view, stamps, entries, prev_hash, ferry_core::now_ms(), no_reads, |_| Ok(None))?;
        self.shared().admit(ledger, prev_hash.is_some(), 0, entries.iter())?;
        Ok(())
    }
}

/// The id, ts and chain hash an import gives an entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stamp {
    pub id: EntryId,
    pub ts: u64,
    pub hash: Option<ChainHash>,
}

/// A ledger as an import is checked against it, read from its index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LedgerView {
    pub first: EntryId,
    /// `first - 1` for a ledger without entries.
    pub head: EntryId,
    /// The head's ts (0 without entries).
    pub last_ts: u64,
    pub chained: bool,
    /// The head's chain hash (the hash before First without entries).
    pub last_hash: Option<ChainHash>,
    /// The hash before First.
    pub first_prev_hash: Option<ChainHash>,
    /// The ledger's `bytes` (its quota's measure).
    pub bytes: u64,
}

impl LedgerView {
    pub fn of(index: &LedgerIndex) -> Self {
        Self {
            first: index.first,
            head: index.head(),
            last_ts: index.last_ts,
            chained: index.chained,
            last_hash: index.last_hash,
            first_prev_hash: index.first_prev_hash,
            bytes: index.bytes(),
        }
    }

    /// The ledger an import creates: no entries from `first`, chained from
    /// `seed` if there is one.
    fn empty(first: EntryId, seed: Option<ChainHash>) -> Self {
        Self {
            first,
            head: first - 1,
            last_ts: 0,
            chained: seed.is_some(),
            last_hash: seed,
            first_prev_hash: seed,
            bytes: 0,
        }
    }
}

/// What `check_run` decided: `entries[..present]` are stored already and
/// identical; the rest are appended with `hashes` (one each, `None` on a
/// ledger without a chain).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Checked {
    pub present: usize,
    pub hashes: Vec<Option<ChainHash>>,
}

/// The import rules of the module docs, against `view` (sans I/O: the
/// stored records come from `stored(from, limit)`, which may answer fewer
/// than asked but never none, and the id a live idempotency key already
/// has from `original(key)`). `stamps` are contiguous (`check_shape`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn check_run(
    ledger: &LedgerName,
    view: &LedgerView,
    stamps: &[Stamp],
    entries: &[NewEntry],
    prev_hash: Option<ChainHash>,
    now: u64,
    stored: impl FnMut(EntryId, usize) -> Result<Vec<OwnedRecord>>,
    mut original: impl FnMut(&str) -> Result<Option<EntryId>>,
) -> Result<Checked> {
    let from = stamps[0].id;
    let to = from + stamps.len() as u64 - 1;
    if from < view.first {
        return Err(conflict(ledger, from, format!("below First {}, cannot be compared", view.first)));
    }
    if from > view.head + 1 {
        return Err(conflict(ledger, from, format!("not contiguous: the head is {}", view.head)));
    }
    if !view.chained
        && let Some(carrying) = stamps.iter().find(|s| s.hash.is_some())
    {
        return Err(conflict(ledger, carrying.id, "the ledger has no hash chain".to_owned()));
    }
    // The stored entries the request overlaps, and the one before them
    // (for its hash) unless that is below First.
    let read_from = if from > view.first && from <= view.head { from - 1 } else { from };
    let present_records =
        if from <= view.head { read_range(ledger, read_from, to.min(view.head), stored)? } else { Vec::new() };
    let mut prev = if !view.chained {
        None
    } else if from == view.head + 1 {
        view.last_hash
    } else if from == view.first {
        view.first_prev_hash
    } else {
        present_records[0].hash
    };
    if view.chained && prev.is_none() {
        return Err(StoreError::CatalogCorrupted(format!(
            "ledger {ledger}: it has a hash chain but no hash before id {from}"
        )));
    }
    if let Some(given) = prev_hash
        && prev != Some(given)
    {
        let here = prev.as_ref().map_or_else(|| "none (the ledger has no hash chain)".to_owned(), chain::to_hex);
        let reason = format!(
            "the chain does not continue: prev_hash is {}, the hash before id {from} here is {here}",
            chain::to_hex(&given)
        );
        return Err(conflict(ledger, from, reason));
    }
    let mut last_ts = view.last_ts;
    let mut present = 0;
    let mut hashes = Vec::new();
    // Live idempotency keys of the new entries, with their ids.
    let mut fresh: HashMap<&str, EntryId> = HashMap::new();
    for (stamp, entry) in stamps.iter().zip(entries) {
        if stamp.id <= view.head {
            let record = &present_records[(stamp.id - read_from) as usize];
            compare(ledger, stamp, entry, record)?;
            (prev, last_ts) = (record.hash, record.ts);
            present += 1;
            continue;
        }
        if stamp.ts < last_ts {
            let reason = format!("ts {} is below the previous entry's ts {last_ts}", stamp.ts);
            return Err(conflict(ledger, stamp.id, reason));
        }
        last_ts = stamp.ts;
        let hash =
            prev.map(|p| chain::link(&p, stamp.id, stamp.ts, entry.key.as_deref(), entry.payload.as_str().as_bytes()));
        if let (Some(expected), Some(given)) = (hash, stamp.hash)
            && expected != given
        {
            let reason = format!(
                "chain hash differs: expected {}, the entry carries {}",
                chain::to_hex(&expected),
                chain::to_hex(&given)
            );
            return Err(conflict(ledger, stamp.id, reason));
        }
        prev = hash;
        hashes.push(hash);
        if let Some(key) = entry.idempotency_key.as_deref()
            && is_live(stamp.ts, now)
        {
            let earlier = match fresh.get(key) {
                Some(&id) => Some(id),
                None => original(key)?,
            };
            if let Some(id) = earlier {
                let reason = format!("idempotency_key {key:?} is already used by id {id}");
                return Err(conflict(ledger, stamp.id, reason));
            }
            fresh.insert(key, stamp.id);
        }
    }
    Ok(Checked { present, hashes })
}

/// An entry's idempotency key is still answered at `now` (and worth
/// remembering, and shown to a backup).
pub(crate) fn is_live(ts: u64, now: u64) -> bool {
    now.saturating_sub(ts) < IDEMPOTENCY_WINDOW_MS
}

/// The stored records `from..=to`, all of them.
fn read_range(
    ledger: &LedgerName,
    from: EntryId,
    to: EntryId,
    mut stored: impl FnMut(EntryId, usize) -> Result<Vec<OwnedRecord>>,
) -> Result<Vec<OwnedRecord>> {
    let mut out: Vec<OwnedRecord> = Vec::with_capacity((to - from + 1) as usize);
    loop {
        let next = from + out.len() as u64;
        if next > to {
            break;
        }
        let records = stored(next, (to - next + 1) as usize)?;
        if records.is_empty() || records.iter().enumerate().any(|(n, r)| r.id != next + n as u64) {
            return Err(StoreError::MissingEntries { ledger: ledger.clone(), from: next, to });
        }
        out.extend(records);
    }
    out.truncate((to - from + 1) as usize);
    Ok(out)
}

/// An imported entry at an id the ledger holds must be what it holds.
fn compare(ledger: &LedgerName, stamp: &Stamp, entry: &NewEntry, record: &OwnedRecord) -> Result<()> {
    let differs = |field: &str, stored: String, given: String| {
        let reason = format!("{field} differs from the stored entry: stored {stored}, given {given}");
        Err(conflict(ledger, stamp.id, reason))
    };
    if stamp.ts != record.ts {
        return differs("ts", record.ts.to_string(), stamp.ts.to_string());
    }
    if entry.key != record.key {
        return differs("key", format!("{:?}", record.key), format!("{:?}", entry.key));
    }
    if entry.payload.as_str() != record.payload {
        return differs("payload", shorten(&record.payload), shorten(entry.payload.as_str()));
    }
    if let (Some(stored), Some(given)) = (record.hash, stamp.hash)
        && stored != given
    {
        return differs("hash", chain::to_hex(&stored), chain::to_hex(&given));
    }
    Ok(())
}

/// A payload in an error message: its first 64 bytes at most.
fn shorten(text: &str) -> String {
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_owned(),
    }
}

fn conflict(ledger: &LedgerName, id: EntryId, reason: String) -> StoreError {
    StoreError::ImportConflict { ledger: ledger.clone(), id, reason }
}
