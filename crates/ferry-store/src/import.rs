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
//! A `prev_hash` given for an existing ledger must be the hash before the
//! run's first id here (the head's when the run starts at `head + 1`).
//! An import creates its ledger whatever `auto_create_ledgers` says, and
//! stamps nothing: its ts are the entries' own, not raised to a watch's
//! floor (`Shared::ts_floor`).
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
use crate::messages::{FlusherMsg, ImportOutcome, ImportRequest, Stamp};
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
        let run = Run { ledger, stamps, entries, prev_hash };
        let no_reads = |_: EntryId, _: usize| Ok(Vec::new());
        check_run(&run, &LedgerView::empty(first, prev_hash), ferry_core::now_ms(), no_reads, |_| Ok(None))?;
        self.shared().admit(ledger, prev_hash.is_some(), 0, entries.iter())?;
        Ok(())
    }
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

/// One import request, as `check_run` takes it: `stamps` are contiguous
/// (`check_shape`), one for each of `entries`.
pub(crate) struct Run<'a> {
    pub ledger: &'a LedgerName,
    pub stamps: &'a [Stamp],
    pub entries: &'a [NewEntry],
    /// The chain hash before the first entry, if the request names one.
    pub prev_hash: Option<ChainHash>,
}

/// The import rules of the module docs, against `view`, sans I/O: the
/// stored records come from `stored(from, limit)` (which may answer fewer
/// than asked, never none), and the id a live idempotency key already has
/// in the ledger from `original(key)`.
pub(crate) fn check_run(
    run: &Run<'_>,
    view: &LedgerView,
    now: u64,
    stored: impl FnMut(EntryId, usize) -> Result<Vec<OwnedRecord>>,
    original: impl FnMut(&str) -> Result<Option<EntryId>>,
) -> Result<Checked> {
    let ledger = run.ledger;
    let from = run.stamps[0].id;
    let to = from + run.stamps.len() as u64 - 1;
    if from < view.first {
        return Err(conflict(ledger, from, format!("below First {}, cannot be compared", view.first)));
    }
    if from > view.head + 1 {
        return Err(conflict(ledger, from, format!("not contiguous: the head is {}", view.head)));
    }
    if !view.chained
        && let Some(carrying) = run.stamps.iter().find(|s| s.hash.is_some())
    {
        return Err(conflict(ledger, carrying.id, "the ledger has no hash chain".to_owned()));
    }
    // The stored entries the request overlaps, and the one before them
    // (for its hash) unless that is below First.
    let read_from = if from > view.first && from <= view.head { from - 1 } else { from };
    let stored_run =
        if from <= view.head { read_range(ledger, read_from, to.min(view.head), stored)? } else { Vec::new() };
    let prev = hash_before(run, view, stored_run.first())?;
    let mut walk = Walk { prev, last_ts: view.last_ts, hashes: Vec::new(), fresh: HashMap::new(), original };
    let mut present = 0;
    for (stamp, entry) in run.stamps.iter().zip(run.entries) {
        if stamp.id <= view.head {
            let record = &stored_run[(stamp.id - read_from) as usize];
            compare(ledger, stamp, entry, record)?;
            (walk.prev, walk.last_ts) = (record.hash, record.ts);
            present += 1;
        } else {
            walk.new_entry(ledger, stamp, entry, now)?;
        }
    }
    Ok(Checked { present, hashes: walk.hashes })
}

/// The chain hash before the run's first id in this ledger (`None` without
/// a chain), checked against the request's `prev_hash`. `stored_first` is
/// the first stored record read for the run: the one before it when the
/// run starts inside the ledger.
fn hash_before(run: &Run<'_>, view: &LedgerView, stored_first: Option<&OwnedRecord>) -> Result<Option<ChainHash>> {
    let (ledger, from) = (run.ledger, run.stamps[0].id);
    let here = if !view.chained {
        None
    } else if from == view.head + 1 {
        view.last_hash
    } else if from == view.first {
        view.first_prev_hash
    } else {
        stored_first.and_then(|r| r.hash)
    };
    if view.chained && here.is_none() {
        let reason = format!("ledger {ledger}: it has a hash chain but no hash before id {from}");
        return Err(StoreError::CatalogCorrupted(reason));
    }
    if let Some(given) = run.prev_hash
        && here != Some(given)
    {
        let here = here.as_ref().map_or_else(|| "none (the ledger has no hash chain)".to_owned(), chain::to_hex);
        let reason = format!(
            "the chain does not continue: prev_hash is {}, the hash before id {from} here is {here}",
            chain::to_hex(&given)
        );
        return Err(conflict(ledger, from, reason));
    }
    Ok(here)
}

/// The walk over a run's new entries: the chain and the ts go on from the
/// entry before, and each live idempotency key must be new to the ledger.
struct Walk<'a, F> {
    /// The chain hash of the entry before (`None` without a chain).
    prev: Option<ChainHash>,
    last_ts: u64,
    /// The hash of each new entry, in order.
    hashes: Vec<Option<ChainHash>>,
    /// Live idempotency keys of the run's new entries, with their ids.
    fresh: HashMap<&'a str, EntryId>,
    original: F,
}

impl<'a, F: FnMut(&str) -> Result<Option<EntryId>>> Walk<'a, F> {
    fn new_entry(&mut self, ledger: &LedgerName, stamp: &Stamp, entry: &'a NewEntry, now: u64) -> Result<()> {
        if stamp.ts < self.last_ts {
            let reason = format!("ts {} is below the previous entry's ts {}", stamp.ts, self.last_ts);
            return Err(conflict(ledger, stamp.id, reason));
        }
        let payload = entry.payload.as_str().as_bytes();
        let hash = self.prev.map(|p| chain::link(&p, stamp.id, stamp.ts, entry.key.as_deref(), payload));
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
        if let Some(key) = entry.idempotency_key.as_deref()
            && is_live(stamp.ts, now)
        {
            let earlier = match self.fresh.get(key) {
                Some(&id) => Some(id),
                None => (self.original)(key)?,
            };
            if let Some(id) = earlier {
                let reason = format!("idempotency_key {key:?} is already used by id {id}");
                return Err(conflict(ledger, stamp.id, reason));
            }
            self.fresh.insert(key, stamp.id);
        }
        (self.prev, self.last_ts) = (hash, stamp.ts);
        self.hashes.push(hash);
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn name() -> LedgerName {
        LedgerName::parse("audit").unwrap()
    }

    fn new_entry(payload: &str, idempotency_key: Option<&str>) -> NewEntry {
        NewEntry {
            key: None,
            idempotency_key: idempotency_key.map(str::to_owned),
            payload: Payload::from_json(payload).unwrap(),
        }
    }

    /// A chained ledger holding ids 1 and 2 (ts 10 and 20) from `seed`.
    fn two_stored(seed: ChainHash) -> (LedgerView, Vec<OwnedRecord>) {
        let h1 = chain::link(&seed, 1, 10, None, b"1");
        let h2 = chain::link(&h1, 2, 20, None, b"2");
        let record = |id, ts, hash| OwnedRecord {
            id,
            ts,
            key: None,
            idempotency_key: None,
            hash: Some(hash),
            payload: id.to_string(),
        };
        let view = LedgerView {
            first: 1,
            head: 2,
            last_ts: 20,
            chained: true,
            last_hash: Some(h2),
            first_prev_hash: Some(seed),
            bytes: 0,
        };
        (view, vec![record(1, 10, h1), record(2, 20, h2)])
    }

    #[test]
    fn a_run_from_inside_the_ledger_is_compared_then_chained_from_what_is_stored() {
        let seed = [9; 32];
        let (view, records) = two_stored(seed);
        let stored = |from: EntryId, limit: usize| {
            Ok(records.iter().filter(|r| r.id >= from).take(limit).cloned().collect::<Vec<_>>())
        };
        let stamps = [Stamp { id: 2, ts: 20, hash: None }, Stamp { id: 3, ts: 20, hash: None }];
        let entries = [new_entry("2", None), new_entry("3", None)];
        let ledger = name();
        let run = Run { ledger: &ledger, stamps: &stamps, entries: &entries, prev_hash: records[0].hash };
        let checked = check_run(&run, &view, 30, stored, |_| Ok(None)).unwrap();
        let h3 = chain::link(records[1].hash.as_ref().unwrap(), 3, 20, None, b"3");
        assert_eq!(checked, Checked { present: 1, hashes: vec![Some(h3)] });

        let wrong = Run { prev_hash: Some(seed), ..run };
        let refused = check_run(&wrong, &view, 30, stored, |_| Ok(None)).unwrap_err();
        assert!(matches!(refused, StoreError::ImportConflict { id: 2, .. }), "{refused}");
        let short = |_: EntryId, _: usize| Ok(Vec::new());
        let run = Run { prev_hash: None, ..run };
        let missing = check_run(&run, &view, 30, short, |_| Ok(None)).unwrap_err();
        assert!(matches!(missing, StoreError::MissingEntries { from: 1, to: 2, .. }), "{missing}");
    }

    #[test]
    fn a_live_idempotency_key_is_new_to_the_ledger_and_the_run_an_expired_one_is_stored_as_given() {
        let ledger = name();
        let view = LedgerView::empty(1, None);
        let stamps = [Stamp { id: 1, ts: 5, hash: None }, Stamp { id: 2, ts: 5, hash: None }];
        let entries = [new_entry("1", Some("k")), new_entry("2", Some("k"))];
        let run = Run { ledger: &ledger, stamps: &stamps, entries: &entries, prev_hash: None };
        let no_reads = |_: EntryId, _: usize| Ok(Vec::new());
        let twice = check_run(&run, &view, 10, no_reads, |_| Ok(None)).unwrap_err();
        assert!(matches!(twice, StoreError::ImportConflict { id: 2, .. }), "{twice}");
        let known = check_run(&run, &view, 10, no_reads, |_| Ok(Some(7))).unwrap_err();
        assert!(known.to_string().contains("already used by id 7"), "{known}");
        let later = 5 + IDEMPOTENCY_WINDOW_MS;
        let expired = check_run(&run, &view, later, no_reads, |_| Ok(Some(7))).unwrap();
        assert_eq!(expired, Checked { present: 0, hashes: vec![None, None] });
    }
}
