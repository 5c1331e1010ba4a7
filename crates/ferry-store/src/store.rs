//! `Store`: opening (locks, pinned layout, recovery), appends through the
//! flusher, reads through the ledger indexes.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use ferry_core::bus::Bus;
use ferry_core::events::{Appended, SystemEvent};
use ferry_core::limits::{
    APPEND_BYTES_MAX, APPEND_QUEUE_DEPTH, BATCH_ENTRIES_MAX, ENTRY_KEY_BYTES_MAX, FORMAT_VERSION,
    IDEMPOTENCY_KEY_BYTES_MAX,
};
use ferry_core::{Entry, EntryId, LedgerName, NewEntry, Payload, now_ms};
use ferry_format::chain;
use ferry_format::keys::CatalogKey;
use tokio::sync::{mpsc, oneshot};

use crate::catalog::{Catalog, CatalogOp, CursorValue, LedgerMeta, RedbCatalog};
use crate::config::{self, RetentionHold, StoreConfig};
use crate::disk::Disk;
use crate::error::{Result, StoreError};
use crate::flusher::Flusher;
use crate::freezer::Freezer;
use crate::health::Health;
use crate::idempotency::IdempotencyIndex;
use crate::layout;
use crate::ledger::LedgerState;
use crate::messages::{AppendOutcome, AppendRequest, FlusherMsg, FreezerMsg};
use crate::pack_protocols::{self, PackLayout};
use crate::pack_reader::PackCache;
use crate::pins::PinTable;
use crate::recovery::{self, KeyLoader, WalIndexer};
use crate::roots::{self, Roots};
use crate::shared::{self, Shared};
use crate::wal::{self, Segments};
use ferry_fs::RealFs;

/// What `GET /v1/ledgers/{ledger}` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct LedgerInfo {
    pub name: LedgerName,
    /// Never reused for the name: a deleted and re-created ledger has a new one.
    pub incarnation: u64,
    #[schema(value_type = u64)]
    pub first: EntryId,
    /// `first - 1` for a ledger with no entries.
    #[schema(value_type = u64)]
    pub head: EntryId,
    pub entries: u64,
    /// Bytes the ledger's records take in storage.
    pub bytes: u64,
    pub created_at: u64,
    /// For a ledger with a hash chain: the chain hash of the entry before
    /// `first` (lower-case hex; the chain's `h_0` while `first` is 1), so
    /// what retention left still verifies from First. Absent without a chain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_prev_hash: Option<String>,
}

/// A chained ledger's head, to anchor outside ferry (`GET
/// /v1/ledgers/{ledger}/head`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ChainHead {
    /// The head id (`first - 1` for a ledger with no entries).
    #[schema(value_type = u64)]
    pub id: EntryId,
    /// The head entry's chain hash (lower-case hex; for a ledger with no
    /// entries, the hash it chains from); `None` for a ledger without a chain.
    pub hash: Option<String>,
}

/// Where a ledger stands, from memory: what exporters follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerHead {
    pub name: LedgerName,
    /// Tells this ledger from every other of the same name (deleted and
    /// created again), durably: never reused.
    pub incarnation: u64,
    /// Unix milliseconds of its creation.
    pub created_at: u64,
    pub first: EntryId,
    /// `first - 1` for a ledger with no entries.
    pub head: EntryId,
    /// The head entry's timestamp (0 when the ledger has no entries).
    pub last_ts: u64,
}

/// Retained chunks by tier over every ledger, from memory (`/metrics`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkCounts {
    /// Chunks whose entries are in the WAL, each ledger's partial last
    /// chunk included.
    pub hot: u64,
    /// Chunks frozen into packs and not pruned.
    pub frozen: u64,
}

/// An exporter's cursor as the catalog holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportCursor {
    pub exporter: LedgerName,
    pub ledger: LedgerName,
    /// The last id the exporter's sink acknowledged.
    pub id: EntryId,
    /// The last id of a batch the head cut short that the sink may have
    /// been given and did not acknowledge: the next attempt sends exactly
    /// `id + 1..=sent_to` again.
    pub sent_to: Option<EntryId>,
}

/// One change in `Store::commit_cursors`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorUpdate {
    /// Sets the cursor of a ledger, which must still be the incarnation
    /// named and hold `id`, and `sent_to` when given (`id < sent_to`).
    /// Every `Set` replaces the whole record: one without `sent_to` clears
    /// an earlier one.
    Set {
        exporter: LedgerName,
        ledger: LedgerName,
        incarnation: u64,
        id: EntryId,
        sent_to: Option<EntryId>,
    },
    Delete {
        exporter: LedgerName,
        ledger: LedgerName,
    },
}

/// Entries of one read, and the id to read from next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBatch {
    /// The incarnation of the ledger the entries were read from: a caller
    /// that follows one incarnation (an exporter's cursor, a watcher)
    /// checks it, since the name may have been deleted and created again.
    pub incarnation: u64,
    pub entries: Vec<Entry>,
    pub next: EntryId,
}

/// The embedded durable log. Cheap to clone; all clones share one store.
///
/// The API convention: a method that may wait on the disk is `async` and
/// moves its blocking part to tokio's blocking pool itself, so callers on
/// the runtime never wrap it; each has a `*_blocking` twin for threads and
/// offline tools. `Store::open` is the one blocking entry point (it runs
/// once, before anything is served).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    /// The last incarnation handed out; held while a ledger is created, so
    /// a name is created once and no incarnation twice.
    last_incarnation: Mutex<u64>,
    tx: mpsc::Sender<FlusherMsg>,
    freezer_tx: std::sync::mpsc::Sender<FreezerMsg>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    max_entry_bytes: usize,
    auto_create_ledgers: bool,
    /// The flocks of every storage root, held until the store is dropped.
    _locks: Vec<File>,
}

impl Drop for Inner {
    /// Closes the queues and waits for the flusher to write what is still in
    /// them (appends whose callers gave up) and the freezer to stop; only
    /// then do the fields drop and release the locks, so no second store can
    /// open the roots while this one still writes.
    fn drop(&mut self) {
        self.shared.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(std::mem::replace(&mut self.tx, mpsc::channel(1).0));
        let _ = self.freezer_tx.send(FreezerMsg::Shutdown);
        if let Ok(threads) = self.threads.get_mut() {
            for handle in threads.drain(..) {
                let _ = handle.join();
            }
        }
    }
}

impl Store {
    /// Locks the storage roots, checks the pinned layout (migrating an older
    /// format), finishes the pack protocols, recovers the hot tier, and
    /// starts the flusher and the freezer. Blocking.
    pub fn open(config: StoreConfig) -> Result<Store> {
        config::check(&config)?;
        let locked = roots::create_and_lock(&config)?;
        let recovered = recover(&config, &locked.roots)?;
        let shared = recovered.shared.clone();
        let threads = start_threads(recovered)?;
        let count = shared.ledgers.read().expect("ledgers lock").len();
        tracing::info!(ledgers = count, chunk_entries = shared.chunk_entries, "store open");
        metrics::gauge!(ferry_core::metric_names::LEDGERS).set(count as f64);
        Ok(Store {
            inner: Arc::new(Inner {
                last_incarnation: Mutex::new(threads.last_incarnation),
                tx: threads.tx,
                freezer_tx: threads.freezer_tx,
                threads: Mutex::new(threads.handles),
                shared,
                max_entry_bytes: config.max_entry_bytes,
                auto_create_ledgers: config.auto_create_ledgers,
                _locks: locked.locks,
            }),
        })
    }

    /// The pinned `chunk_entries`.
    pub fn chunk_entries(&self) -> u64 {
        self.inner.shared.chunk_entries
    }

    pub fn max_entry_bytes(&self) -> usize {
        self.inner.max_entry_bytes
    }

    /// Ok while the store accepts writes; the poison reason otherwise.
    pub fn ready(&self) -> Result<()> {
        self.inner.shared.health.check()
    }

    /// Registers something retention must respect (an exporter's cursors, a
    /// snapshot pin): no chunk holding an id it needs is pruned.
    pub fn add_hold(&self, hold: Arc<dyn RetentionHold>) {
        self.inner.shared.holds.write().expect("holds lock").push(hold);
    }

    /// New entries, published under the ledger's name once durable and
    /// visible. Subscribers re-read storage from their own position, so a
    /// lagged one loses nothing but the wake-up.
    pub fn appends(&self) -> &Bus<Appended> {
        &self.inner.shared.appends
    }

    /// System events (`ledger.created`, `ledger.deleted`, `chunk.frozen`,
    /// `chunk.pruned`), published under their keys.
    pub fn events(&self) -> &Bus<SystemEvent> {
        &self.inner.shared.events
    }

    /// Bytes the hot tier's segment files take on disk.
    pub fn hot_disk_bytes(&self) -> u64 {
        self.inner.shared.segments.disk_bytes()
    }

    /// Appends entries durably, all or nothing, with contiguous new ids.
    /// Resolves only after the records are fsync'd.
    pub async fn append(&self, ledger: &LedgerName, entries: Vec<NewEntry>) -> Result<AppendOutcome> {
        self.append_if(ledger, entries, None).await
    }

    /// `append`, applied only if the ledger's head is `expected_head` when
    /// its group commits (0: the ledger is empty or absent), else
    /// `HeadMismatch` with the head, and nothing changes. The check is made
    /// by the flusher as it assigns ids, so of appends racing with the same
    /// expected head exactly one is applied. Idempotency keys are resolved
    /// first: a request whose entries are all repeats answers the original
    /// ids whatever the head; one with new entries is checked against the
    /// head before them. An absent ledger is created (`auto_create_ledgers`)
    /// only for `expected_head` 0; any other answers `HeadMismatch` with
    /// head 0 and creates nothing.
    pub async fn append_expecting(
        &self,
        ledger: &LedgerName,
        entries: Vec<NewEntry>,
        expected_head: EntryId,
    ) -> Result<AppendOutcome> {
        self.append_if(ledger, entries, Some(expected_head)).await
    }

    async fn append_if(
        &self,
        ledger: &LedgerName,
        entries: Vec<NewEntry>,
        expected_head: Option<EntryId>,
    ) -> Result<AppendOutcome> {
        let encoded_bytes = self.validate(ledger, &entries)?;
        self.ready()?;
        let existing = self.inner.shared.ledger(ledger);
        // An absent ledger's head is 0: refused before anything is created.
        if existing.is_none()
            && self.inner.auto_create_ledgers
            && let Some(expected) = expected_head.filter(|&h| h > 0)
        {
            return Err(StoreError::HeadMismatch { ledger: ledger.clone(), expected, head: 0 });
        }
        let state = match existing {
            Some(state) => state,
            None if self.inner.auto_create_ledgers => {
                self.create_ledger(ledger).await?;
                self.inner.shared.ledger(ledger).ok_or_else(|| StoreError::LedgerNotFound(ledger.clone()))?
            }
            None => return Err(StoreError::LedgerNotFound(ledger.clone())),
        };
        let started = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest { ledger: state, entries, encoded_bytes, expected_head, reply };
        self.inner.tx.send(FlusherMsg::Append(request)).await.map_err(|_| StoreError::ShuttingDown)?;
        let outcome = answer.await.map_err(|_| StoreError::ShuttingDown)?;
        metrics::histogram!(ferry_core::metric_names::APPEND_SECONDS).record(started.elapsed().as_secs_f64());
        outcome
    }

    /// Checks every limit; returns the WAL bytes the entries encode to.
    fn validate(&self, ledger: &LedgerName, entries: &[NewEntry]) -> Result<usize> {
        if entries.is_empty() {
            return Err(StoreError::EmptyBatch);
        }
        if entries.len() > BATCH_ENTRIES_MAX {
            return Err(StoreError::BatchTooLarge { count: entries.len(), max: BATCH_ENTRIES_MAX });
        }
        let mut seen = HashSet::new();
        let mut encoded_bytes = 0;
        for e in entries {
            encoded_bytes += self.check_entry(ledger, e)?;
            if let Some(k) = &e.idempotency_key
                && !seen.insert(k.as_str())
            {
                return Err(StoreError::DuplicateIdempotencyKey(k.clone()));
            }
        }
        if encoded_bytes > APPEND_BYTES_MAX {
            return Err(StoreError::AppendTooLarge { bytes: encoded_bytes, max: APPEND_BYTES_MAX });
        }
        Ok(encoded_bytes)
    }

    /// Checks one entry's field limits (appends and imports alike); returns
    /// the WAL bytes it encodes to.
    pub(crate) fn check_entry(&self, ledger: &LedgerName, e: &NewEntry) -> Result<usize> {
        let max = self.inner.max_entry_bytes;
        if e.payload.len() > max {
            return Err(StoreError::EntryTooLarge { size: e.payload.len(), max });
        }
        check_len("key", e.key.as_deref(), ENTRY_KEY_BYTES_MAX)?;
        check_len("idempotency_key", e.idempotency_key.as_deref(), IDEMPOTENCY_KEY_BYTES_MAX)?;
        // Counted with a chain hash: the ledger may not exist yet.
        Ok(shared::wal_bytes(ledger, e, true) as usize)
    }

    /// Creates a ledger durably; false when it already existed.
    pub async fn create_ledger(&self, name: &LedgerName) -> Result<bool> {
        let name = name.clone();
        self.blocking(move |store| store.create_ledger_blocking(&name)).await
    }

    /// `create_ledger` for threads and tools: blocks on the catalog commit.
    pub fn create_ledger_blocking(&self, name: &LedgerName) -> Result<bool> {
        let chain = self.inner.shared.hash_chain.iter().any(|p| p.matches(name.as_str()));
        self.create_ledger_from(name, 1, chain, None)
    }

    /// Creates a ledger for an import: it starts at `first` (a chunk
    /// boundary, checked by the caller) and has a hash chain iff `seed` (the
    /// hash before `first`) is given, whatever `[storage] hash_chain` says;
    /// the seed is in the same catalog commit as the `ledger:` key. False
    /// when the ledger already existed.
    pub(crate) fn create_imported_ledger_blocking(
        &self,
        name: &LedgerName,
        first: EntryId,
        seed: Option<chain::ChainHash>,
    ) -> Result<bool> {
        self.create_ledger_from(name, first, seed.is_some(), seed.as_ref().map(chain::to_hex))
    }

    fn create_ledger_from(
        &self,
        name: &LedgerName,
        first: EntryId,
        chain: bool,
        first_prev_hash: Option<String>,
    ) -> Result<bool> {
        let shared = &self.inner.shared;
        shared.health.check()?;
        let mut last_incarnation = self.inner.last_incarnation.lock().expect("create lock");
        if shared.ledger(name).is_some() {
            return Ok(false);
        }
        let incarnation = *last_incarnation + 1;
        // Every record of an earlier ledger of this name was durable before
        // its deletion, so it lies before this position.
        let meta = LedgerMeta {
            incarnation,
            created_at: now_ms(),
            first,
            wal_from: shared.durable_end(),
            chain,
            first_prev_hash,
        };
        let ops = [
            CatalogOp::Put(CatalogKey::Ledger(name.clone()), meta.encode()),
            layout::set_last_incarnation(incarnation),
        ];
        shared.commit_or_poison(&ops)?;
        *last_incarnation = incarnation;
        let state = Arc::new(LedgerState::new(name.clone(), meta, shared.chunk_entries));
        let count = {
            let mut ledgers = shared.ledgers.write().expect("ledgers lock");
            ledgers.insert(name.clone(), state);
            ledgers.len()
        };
        metrics::gauge!(ferry_core::metric_names::LEDGERS).set(count as f64);
        shared.events.publish(&format!("ledger.created/{name}"), &SystemEvent::ledger_created(name));
        tracing::info!(ledger = %name, "ledger created");
        Ok(true)
    }

    /// Deletes a ledger: its packs (through the sweep), its hot entries,
    /// its cursors and its metadata. Appends to it fail from the start of
    /// the deletion; afterwards the name can be created again.
    pub async fn delete_ledger(&self, name: &LedgerName) -> Result<()> {
        self.delete_ledger_by(name, None).await
    }

    /// `delete_ledger`, naming who asked (a token's name) in the
    /// `ledger.deleted` event's `actor`.
    pub async fn delete_ledger_by(&self, name: &LedgerName, actor: Option<&str>) -> Result<()> {
        self.ready()?;
        let state = self.inner.shared.ledger(name).ok_or_else(|| StoreError::LedgerNotFound(name.clone()))?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .freezer_tx
            .send(FreezerMsg::Delete(state, actor.map(str::to_owned), reply))
            .map_err(|_| StoreError::ShuttingDown)?;
        answer.await.map_err(|_| StoreError::ShuttingDown)?
    }

    pub fn ledger_info(&self, name: &LedgerName) -> Option<LedgerInfo> {
        self.inner.shared.ledger(name).map(|s| info(&s))
    }

    /// A ledger's head id and chain hash, read together (one lock), from memory.
    pub fn chain_head(&self, name: &LedgerName) -> Option<ChainHead> {
        let state = self.inner.shared.ledger(name)?;
        let index = state.index.read().expect("index lock");
        Some(ChainHead { id: index.head(), hash: index.last_hash.as_ref().map(chain::to_hex) })
    }

    /// One ledger's position, from memory.
    pub fn ledger_head(&self, name: &LedgerName) -> Option<LedgerHead> {
        self.inner.shared.ledger(name).map(|s| head_of(&s))
    }

    /// Every ledger's position, from memory.
    pub fn ledger_heads(&self) -> Vec<LedgerHead> {
        let ledgers = self.inner.shared.ledgers.read().expect("ledgers lock");
        ledgers.values().map(|s| head_of(s)).collect()
    }

    /// Retained chunks by tier, from memory: one short read lock per
    /// ledger, no storage read, so a scrape may ask.
    pub fn chunk_counts(&self) -> ChunkCounts {
        let ledgers = self.inner.shared.ledgers.read().expect("ledgers lock");
        let mut counts = ChunkCounts::default();
        for state in ledgers.values() {
            let index = state.index.read().expect("index lock");
            counts.hot += (index.positions.len() as u64).div_ceil(index.chunk_entries);
            counts.frozen += index.frozen.len() as u64;
        }
        counts
    }

    pub fn list_ledgers(&self) -> Vec<LedgerInfo> {
        let ledgers = self.inner.shared.ledgers.read().expect("ledgers lock");
        ledgers.values().map(|s| info(s)).collect()
    }

    /// The ledgers named after `after` that `keep` accepts, in name order,
    /// at most `limit`; and the last one's name when more follow. Walks
    /// only as far as the page reaches (plus the ledgers `keep` refuses).
    pub fn list_ledgers_page(
        &self,
        after: Option<&LedgerName>,
        limit: usize,
        keep: impl Fn(&LedgerName) -> bool,
    ) -> (Vec<LedgerInfo>, Option<LedgerName>) {
        use std::ops::Bound;
        let ledgers = self.inner.shared.ledgers.read().expect("ledgers lock");
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut kept = ledgers.range::<LedgerName, _>((lower, Bound::Unbounded)).filter(|(name, _)| keep(name));
        let page: Vec<LedgerInfo> = kept.by_ref().take(limit).map(|(_, s)| info(s)).collect();
        let more = kept.next().is_some();
        let next = if more { page.last().map(|l| l.name.clone()) } else { None };
        (page, next)
    }

    /// Reads up to `limit` entries from `from` (default: First) in id order,
    /// across packs and the hot tier, stopping early after `READ_BYTES_MAX`.
    pub async fn read(&self, ledger: &LedgerName, from: Option<EntryId>, limit: usize) -> Result<ReadBatch> {
        let ledger = ledger.clone();
        self.blocking(move |store| store.read_blocking(&ledger, from, limit)).await
    }

    /// `read` for threads and tools: blocks on the file reads.
    pub fn read_blocking(&self, ledger: &LedgerName, from: Option<EntryId>, limit: usize) -> Result<ReadBatch> {
        let shared = &self.inner.shared;
        shared.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        metrics::counter!(ferry_core::metric_names::STORE_READS_TOTAL).increment(1);
        let state = shared.ledger(ledger).ok_or_else(|| StoreError::LedgerNotFound(ledger.clone()))?;
        let from = from.unwrap_or_else(|| state.index.read().expect("index lock").first);
        let records = shared.read_records(&state, from, limit)?;
        let entries: Vec<Entry> = records
            .into_iter()
            .map(|r| Entry {
                ledger: ledger.clone(),
                id: r.id,
                ts: r.ts,
                key: r.key,
                hash: r.hash,
                payload: Payload::from_stored_text(r.payload),
            })
            .collect();
        let next = from + entries.len() as u64;
        Ok(ReadBatch { incarnation: state.incarnation, entries, next })
    }

    /// The id of `ledger`'s first entry stamped at or after `ts` (unix ms),
    /// or `head + 1` when there is none yet; a `ts` before the first
    /// retained entry gives First. A search over the chunks' timestamps and
    /// a bisection in one chunk or the hot tier (`Shared::
    /// first_stamped_at_or_after`), never a scan.
    pub async fn first_at_or_after(&self, ledger: &LedgerName, ts: u64) -> Result<EntryId> {
        let ledger = ledger.clone();
        self.blocking(move |store| store.first_at_or_after_blocking(&ledger, ts)).await
    }

    /// `first_at_or_after` for threads and tools: blocks on the file reads.
    pub fn first_at_or_after_blocking(&self, ledger: &LedgerName, ts: u64) -> Result<EntryId> {
        let shared = &self.inner.shared;
        let state = shared.ledger(ledger).ok_or_else(|| StoreError::LedgerNotFound(ledger.clone()))?;
        // Retention may prune the chunk being searched: search again, from
        // the new First.
        let mut pruned = 0;
        loop {
            match shared.first_stamped_at_or_after(&state, ts) {
                Err(StoreError::BelowFirst { .. }) if pruned < 8 => pruned += 1,
                found => return found,
            }
        }
    }

    /// `Store::read` calls so far.
    pub fn reads(&self) -> u64 {
        self.inner.shared.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every exporter cursor in the catalog, in key order.
    pub async fn cursors(&self) -> Result<Vec<ExportCursor>> {
        self.blocking(|store| store.cursors_blocking()).await
    }

    /// `cursors` for threads and tools: blocks on the catalog read.
    pub fn cursors_blocking(&self) -> Result<Vec<ExportCursor>> {
        let mut out = Vec::new();
        for (key, value) in self.inner.shared.catalog.scan(CatalogKey::CURSOR_PREFIX)? {
            let CatalogKey::Cursor(exporter, ledger) = key else {
                return Err(StoreError::CatalogCorrupted(format!("{key} under the cursor prefix")));
            };
            let value: CursorValue = serde_json::from_slice(&value)
                .map_err(|e| StoreError::CatalogCorrupted(format!("cursor:{exporter}:{ledger}: {e}")))?;
            out.push(ExportCursor { exporter, ledger, id: value.id, sent_to: value.sent_to });
        }
        Ok(out)
    }

    /// Writes cursor changes in one durable catalog commit, all or nothing.
    /// A `Set` for a ledger that was deleted (or deleted and created again)
    /// or beyond its head fails with `LedgerNotFound`/`InvalidCursor`, and
    /// one whose `sent_to` is not in `id + 1..=head` with `InvalidSentTo`,
    /// and writes nothing, so a cursor never outlives its ledger.
    pub async fn commit_cursors(&self, updates: Vec<CursorUpdate>) -> Result<()> {
        self.blocking(move |store| store.commit_cursors_blocking(&updates)).await
    }

    /// `commit_cursors` for threads and tools: blocks on the catalog commit.
    ///
    /// Group commit: callers queue their updates, and whoever next holds
    /// `cursor_lock` checks each caller's updates on its own (one caller's
    /// deleted ledger fails only that caller) and writes every valid
    /// caller's in one catalog commit. Each caller still gets all or
    /// nothing for its own updates; exporters shipping many ledgers at once
    /// share one sync instead of one each.
    pub fn commit_cursors_blocking(&self, updates: &[CursorUpdate]) -> Result<()> {
        let shared = &self.inner.shared;
        shared.health.check()?;
        let answer = Arc::new(Mutex::new(None));
        shared
            .cursor_queue
            .lock()
            .expect("cursor queue lock")
            .push(QueuedCursors { updates: updates.to_vec(), answer: answer.clone() });
        let _guard = shared.cursor_lock.lock().expect("cursor lock");
        // A holder before us may have written ours already.
        if let Some(result) = answer.lock().expect("cursor answer lock").take() {
            return result;
        }
        let queued = std::mem::take(&mut *shared.cursor_queue.lock().expect("cursor queue lock"));
        let mut ops = Vec::new();
        let mut written = Vec::with_capacity(queued.len());
        for q in queued {
            match cursor_ops(shared, &q.updates) {
                Ok(mut more) => {
                    ops.append(&mut more);
                    written.push(q.answer);
                }
                Err(e) => *q.answer.lock().expect("cursor answer lock") = Some(Err(e)),
            }
        }
        let committed = if ops.is_empty() { Ok(()) } else { shared.commit_or_poison(&ops) };
        let (no_space, shown) = match &committed {
            Ok(()) => (false, String::new()),
            Err(e) => (e.is_no_space(), e.to_string()),
        };
        for slot in written {
            let result = match &committed {
                Ok(()) => Ok(()),
                Err(StoreError::NoSpace(message)) if no_space => Err(StoreError::NoSpace(message.clone())),
                Err(_) => Err(StoreError::Poisoned(shown.clone())),
            };
            *slot.lock().expect("cursor answer lock") = Some(result);
        }
        answer.lock().expect("cursor answer lock").take().expect("our updates were in the queue we took")
    }
}

/// One caller's cursor updates waiting in `Shared::cursor_queue`, and where
/// its answer goes.
pub(crate) struct QueuedCursors {
    updates: Vec<CursorUpdate>,
    answer: Arc<Mutex<Option<Result<()>>>>,
}

/// The catalog operations of one caller's cursor updates, checked against
/// the ledgers (under `cursor_lock`): all valid, or the first error.
fn cursor_ops(shared: &Shared, updates: &[CursorUpdate]) -> Result<Vec<CatalogOp>> {
    {
        let mut ops = Vec::with_capacity(updates.len());
        for update in updates {
            match update {
                CursorUpdate::Set { exporter, ledger, incarnation, id, sent_to } => {
                    let state = shared
                        .ledger(ledger)
                        .filter(|s| s.incarnation == *incarnation && !s.is_deleted())
                        .ok_or_else(|| StoreError::LedgerNotFound(ledger.clone()))?;
                    let head = state.index.read().expect("index lock").head();
                    if *id > head {
                        return Err(StoreError::InvalidCursor { ledger: ledger.clone(), id: *id, head });
                    }
                    if let Some(to) = *sent_to
                        && !(*id < to && to <= head)
                    {
                        return Err(StoreError::InvalidSentTo { ledger: ledger.clone(), id: *id, sent_to: to, head });
                    }
                    let value = CursorValue { id: *id, sent_to: *sent_to };
                    let value = serde_json::to_vec(&value).expect("cursor serialises");
                    ops.push(CatalogOp::Put(CatalogKey::Cursor(exporter.clone(), ledger.clone()), value));
                }
                CursorUpdate::Delete { exporter, ledger } => {
                    ops.push(CatalogOp::Delete(CatalogKey::Cursor(exporter.clone(), ledger.clone())));
                }
            }
        }
        Ok(ops)
    }
}

impl Store {
    pub(crate) fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    pub(crate) fn flusher(&self) -> &mpsc::Sender<FlusherMsg> {
        &self.inner.tx
    }

    pub(crate) fn freezer_tx(&self) -> &std::sync::mpsc::Sender<FreezerMsg> {
        &self.inner.freezer_tx
    }

    /// The last incarnation handed out (0 before the first ledger).
    pub(crate) fn last_incarnation(&self) -> u64 {
        *self.inner.last_incarnation.lock().expect("create lock")
    }

    /// Runs blocking store work on tokio's blocking pool: the one place the
    /// async API leaves the runtime's threads.
    pub(crate) async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(Store) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(store)).await.map_err(|_| StoreError::ShuttingDown)?
    }

    /// Stops the flusher after the appends already queued, and the freezer.
    /// Safe to call more than once; later appends fail with `ShuttingDown`.
    pub async fn shutdown(&self) {
        self.inner.shared.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = self.inner.tx.send(FlusherMsg::Shutdown).await;
        let _ = self.inner.freezer_tx.send(FreezerMsg::Shutdown);
        let threads = std::mem::take(&mut *self.inner.threads.lock().expect("threads lock"));
        if !threads.is_empty() {
            let _ = tokio::task::spawn_blocking(move || threads.into_iter().for_each(|h| drop(h.join()))).await;
        }
    }
}

fn check_len(field: &'static str, value: Option<&str>, max: usize) -> Result<()> {
    match value {
        Some(v) if v.len() > max => Err(StoreError::FieldTooLong { field, size: v.len(), max }),
        _ => Ok(()),
    }
}

pub(crate) fn head_of(state: &LedgerState) -> LedgerHead {
    let index = state.index.read().expect("index lock");
    LedgerHead {
        name: state.name.clone(),
        incarnation: state.incarnation,
        created_at: state.meta.created_at,
        first: index.first,
        head: index.head(),
        last_ts: index.last_ts,
    }
}

fn info(state: &LedgerState) -> LedgerInfo {
    let index = state.index.read().expect("index lock");
    LedgerInfo {
        name: state.name.clone(),
        incarnation: state.incarnation,
        first: index.first,
        head: index.head(),
        entries: (index.head() + 1).saturating_sub(index.first),
        bytes: index.bytes(),
        created_at: state.meta.created_at,
        first_prev_hash: index.first_prev_hash.as_ref().map(chain::to_hex),
    }
}

fn load_ledgers(catalog: &dyn Catalog, chunk_entries: u64) -> Result<BTreeMap<LedgerName, Arc<LedgerState>>> {
    let mut ledgers = BTreeMap::new();
    for (key, value) in catalog.scan(CatalogKey::LEDGER_PREFIX)? {
        let CatalogKey::Ledger(name) = key else {
            return Err(StoreError::CatalogCorrupted(format!("{key} under the ledger prefix")));
        };
        let meta = LedgerMeta::decode(&CatalogKey::Ledger(name.clone()), &value)?;
        if meta.incarnation == 0 {
            // The format migration gave every ledger one before this runs.
            return Err(StoreError::CatalogCorrupted(format!("ledger:{name} has no incarnation")));
        }
        ledgers.insert(name.clone(), Arc::new(LedgerState::new(name, meta, chunk_entries)));
    }
    Ok(ledgers)
}

/// A recovered store, before its threads run.
struct Recovered {
    shared: Arc<Shared>,
    writer: wal::SegmentWriter,
    idempotency: IdempotencyIndex,
    last_incarnation: u64,
}

/// Opens the catalog (pinning or migrating the layout), finishes the pack
/// protocols, and rebuilds every index: frozen chunks from the catalog,
/// hot records from one WAL replay.
fn recover(config: &StoreConfig, roots: &Roots) -> Result<Recovered> {
    let catalog = RedbCatalog::open(&roots.catalog)?;
    let chunk_entries = layout::pin(&catalog, config.chunk_entries)?;
    let last_incarnation = layout::last_incarnation(&catalog)?;
    let fingerprint_key = layout::fingerprint_key(&catalog)?;
    let ledgers = load_ledgers(&catalog, chunk_entries)?;
    let pins = Arc::new(PinTable::load(&catalog)?);
    let pack_layout = PackLayout { root: roots.ledgers.clone() };
    let recovered_packs = pack_protocols::finish_interrupted(&RealFs, &catalog, &pack_layout)?;
    for orphan in &recovered_packs.orphans {
        tracing::warn!(file = %orphan.display(), "pack file without a catalog key (ferry verify lists it)");
    }
    let health = Arc::new(Health::default());
    let shared = Arc::new(Shared {
        catalog: Box::new(catalog),
        ledgers: RwLock::new(ledgers),
        segments: Segments::new(roots.hot.clone()),
        disk: Disk::new(Arc::new(RealFs), health.clone()),
        health,
        layout: pack_layout,
        packs: PackCache::default(),
        vfs: RealFs,
        chunk_entries,
        format_version: FORMAT_VERSION,
        fingerprint_key,
        wal_segment_bytes: config.wal_segment_bytes,
        retention: config.retention.clone(),
        max_ledger_bytes: config.max_ledger_bytes,
        holds: RwLock::new(config.holds.iter().cloned().chain([pins.clone() as Arc<dyn RetentionHold>]).collect()),
        pins,
        hash_chain: config::hash_chain_patterns(config)?,
        checkpoint_every: config.checkpoint_every,
        durable_end: Default::default(),
        ts_floor: Default::default(),
        stopping: Default::default(),
        appends: Bus::default(),
        events: Bus::default(),
        cursor_lock: Default::default(),
        cursor_queue: Default::default(),
        reads: Default::default(),
    });
    let now = now_ms();
    let mut keys = KeyLoader::new(now, fingerprint_key);
    recovery::load_frozen(&shared, recovered_packs.frozen, &mut keys)?;
    // Before the scan: a scrub a crash interrupted may have torn records.
    wal::scrub::finish_interrupted(&shared.disk, &*shared.catalog, &roots.hot)?;
    let (replayed, live, holders) = {
        let ledgers = shared.ledgers.read().expect("ledgers lock");
        let mut indexer = WalIndexer::new(&ledgers, &mut keys, &roots.hot);
        let replayed =
            wal::replay(&shared.disk, &roots.hot, FORMAT_VERSION, |path, scanned| indexer.visit(path, scanned))?;
        let holders = indexer.take_holders();
        (replayed, indexer.install()?, holders)
    };
    for (seq, file) in replayed.segments {
        shared.segments.insert(seq, file);
    }
    for (seq, incarnations) in holders {
        shared.segments.note_holders(seq, incarnations);
    }
    shared.segments.set_current(replayed.writer.seq);
    shared.segments.account(live, true);
    shared.set_durable_end(replayed.writer.seq, replayed.writer.len);
    // Reads the head entries: after the segments are installed.
    recovery::restore_chain_heads(&shared)?;
    let idempotency = keys.finish(&shared)?;
    Ok(Recovered { shared, writer: replayed.writer, idempotency, last_incarnation })
}

/// The running threads of a store and the queues to them.
struct Threads {
    tx: mpsc::Sender<FlusherMsg>,
    freezer_tx: std::sync::mpsc::Sender<FreezerMsg>,
    handles: Vec<JoinHandle<()>>,
    last_incarnation: u64,
}

/// Starts the flusher and the freezer, and queues every chunk that filled
/// before the last stop for freezing.
fn start_threads(recovered: Recovered) -> Result<Threads> {
    let Recovered { shared, writer, idempotency, last_incarnation } = recovered;
    let (tx, rx) = mpsc::channel(APPEND_QUEUE_DEPTH);
    let (freezer_tx, freezer_rx) = std::sync::mpsc::channel();
    let flusher = Flusher { rx, writer, shared: shared.clone(), freezer: freezer_tx.clone(), idempotency };
    let freezer =
        Freezer { rx: freezer_rx, shared: shared.clone(), flusher: tx.clone(), store_over_limit: Default::default() };
    let spawn = |name: &'static str, f: Box<dyn FnOnce() + Send>| {
        let guard = PanicGuard { thread: name, health: shared.health.clone() };
        let body = move || {
            let _guard = guard;
            f()
        };
        std::thread::Builder::new()
            .name(name.into())
            .spawn(body)
            .map_err(|e| StoreError::io(format!("start {name}"), e))
    };
    let handles = vec![
        spawn("ferry-flusher", Box::new(move || flusher.run()))?,
        spawn("ferry-freezer", Box::new(move || freezer.run()))?,
    ];
    for state in shared.ledgers.read().expect("ledgers lock").values() {
        if state.index.read().expect("index lock").next_chunk_to_freeze().is_some() {
            state.freeze_queued.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = freezer_tx.send(FreezerMsg::Check(state.clone()));
        }
    }
    Ok(Threads { tx, freezer_tx, handles, last_incarnation })
}

/// Poisons the store when the thread it lives on unwinds: a store thread
/// that panicked (a broken invariant) no longer does its work, so the store
/// must refuse writes and say it is not ready rather than stay green.
struct PanicGuard {
    thread: &'static str,
    health: Arc<Health>,
}

impl Drop for PanicGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.health.poison(format!("the {} thread panicked; restart ferry to recover", self.thread));
        }
    }
}
