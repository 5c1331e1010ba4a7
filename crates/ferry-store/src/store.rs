//! `Store`: opening (locks, pinned layout, recovery), appends through the
//! flusher, reads through the ledger indexes.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use ferry_core::limits::{
    APPEND_BYTES_MAX, APPEND_QUEUE_DEPTH, BATCH_ENTRIES_MAX, CHUNK_ENTRIES_DEFAULT, CHUNK_ENTRIES_MAX,
    CHUNK_ENTRIES_MIN, ENTRY_BYTES_MAX_DEFAULT, ENTRY_BYTES_MAX_LIMIT, ENTRY_KEY_BYTES_MAX, FORMAT_VERSION,
    IDEMPOTENCY_KEY_BYTES_MAX, READ_BYTES_MAX,
};
use ferry_core::{Entry, EntryId, LedgerName, NewEntry, Payload, now_ms};
use ferry_format::keys::{CatalogKey, ConfigName};
use ferry_format::wal::{self as wal_format, decode_record};
use tokio::sync::{mpsc, oneshot};

use crate::catalog::{Catalog, CatalogOp, LedgerMeta, RedbCatalog};
use crate::durable;
use crate::error::{Result, StoreError};
use crate::flusher::{AppendRequest, Flusher, FlusherMsg, IdempotencyIndex};
use crate::health::Health;
use crate::ledger::LedgerState;
use crate::wal::{self, RecordPos, Segments};

/// Where the store lives and the limits it enforces.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    /// Default `{data_dir}/catalog`.
    pub catalog_dir: Option<PathBuf>,
    /// Default `{data_dir}/hot`.
    pub hot_dir: Option<PathBuf>,
    /// Default `{data_dir}/ledgers`.
    pub ledgers_dir: Option<PathBuf>,
    /// `None` takes the pinned value (or the default on first start).
    pub chunk_entries: Option<u64>,
    pub max_entry_bytes: usize,
    pub auto_create_ledgers: bool,
}

impl StoreConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            catalog_dir: None,
            hot_dir: None,
            ledgers_dir: None,
            chunk_entries: None,
            max_entry_bytes: ENTRY_BYTES_MAX_DEFAULT as usize,
            auto_create_ledgers: true,
        }
    }

    fn root(&self, configured: &Option<PathBuf>, default: &str) -> PathBuf {
        configured.clone().unwrap_or_else(|| self.data_dir.join(default))
    }
}

/// The result of an append: the id of every entry, in request order (an
/// entry whose idempotency key was already used gets its original id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendOutcome {
    pub ids: Vec<EntryId>,
    /// False when every entry was a repeat of an earlier append.
    pub created: bool,
}

/// What `GET /v1/ledgers/{ledger}` reports.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LedgerInfo {
    pub name: LedgerName,
    pub first: EntryId,
    /// `first - 1` for a ledger with no entries.
    pub head: EntryId,
    pub entries: u64,
    /// Bytes the ledger's records take in storage.
    pub bytes: u64,
    pub created_at: u64,
}

/// Entries of one read, and the id to read from next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBatch {
    pub entries: Vec<Entry>,
    pub next: EntryId,
}

/// The embedded durable log. Cheap to clone; all clones share one store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    catalog: Box<dyn Catalog>,
    ledgers: RwLock<BTreeMap<LedgerName, Arc<LedgerState>>>,
    /// Serialises ledger creation so a name is created once.
    create_lock: Mutex<()>,
    tx: mpsc::Sender<FlusherMsg>,
    flusher: Mutex<Option<JoinHandle<()>>>,
    segments: Arc<Segments>,
    health: Arc<Health>,
    chunk_entries: u64,
    max_entry_bytes: usize,
    auto_create_ledgers: bool,
    /// The flocks of every storage root, held until the store is dropped.
    _locks: Vec<File>,
}

impl Drop for Inner {
    /// Closes the queue and waits for the flusher to write what is still in
    /// it (appends whose callers gave up) and stop; only then do the fields
    /// drop and release the locks, so no second store can open the roots
    /// while this one still writes.
    fn drop(&mut self) {
        drop(std::mem::replace(&mut self.tx, mpsc::channel(1).0));
        if let Ok(slot) = self.flusher.get_mut()
            && let Some(handle) = slot.take()
        {
            let _ = handle.join();
        }
    }
}

impl Store {
    /// Locks the storage roots, checks the pinned layout, recovers the hot
    /// tier and starts the flusher. Blocking.
    pub fn open(config: StoreConfig) -> Result<Store> {
        check_config(&config)?;
        let roots = [
            config.data_dir.clone(),
            config.root(&config.catalog_dir, "catalog"),
            config.root(&config.hot_dir, "hot"),
            config.root(&config.ledgers_dir, "ledgers"),
        ];
        let mut locks = Vec::new();
        let mut locked = HashSet::new();
        for root in &roots {
            durable::create_dir_all(root)?;
            if locked.insert(std::fs::canonicalize(root).unwrap_or(root.clone())) {
                locks.push(durable::lock_root(root)?);
            }
        }
        let [_, catalog_dir, hot_dir, _] = roots;
        let catalog = RedbCatalog::open(&catalog_dir)?;
        let chunk_entries = pin_layout(&catalog, config.chunk_entries)?;
        let ledgers = load_ledgers(&catalog)?;

        let mut idempotency = IdempotencyIndex::default();
        let recovered = wal::recover(&hot_dir, FORMAT_VERSION, |path, scanned| {
            index_record(&ledgers, &mut idempotency, path, scanned)
        })?;
        idempotency.expire(now_ms());
        let segments = Arc::new(Segments::new(hot_dir.clone()));
        for (seq, file) in recovered.segments {
            segments.insert(seq, file);
        }
        let health = Arc::new(Health::default());
        let (tx, rx) = mpsc::channel(APPEND_QUEUE_DEPTH);
        let flusher = Flusher {
            rx,
            writer: recovered.writer,
            segments: segments.clone(),
            health: health.clone(),
            idempotency,
            format_version: FORMAT_VERSION,
            hot_dir,
        };
        let handle = std::thread::Builder::new()
            .name("ferry-flusher".into())
            .spawn(move || flusher.run())
            .map_err(|e| StoreError::io("start the flusher thread", e))?;
        tracing::info!(ledgers = ledgers.len(), chunk_entries, "store open");
        metrics::gauge!("ferry_ledgers").set(ledgers.len() as f64);
        Ok(Store {
            inner: Arc::new(Inner {
                catalog: Box::new(catalog),
                ledgers: RwLock::new(ledgers),
                create_lock: Mutex::new(()),
                tx,
                flusher: Mutex::new(Some(handle)),
                segments,
                health,
                chunk_entries,
                max_entry_bytes: config.max_entry_bytes,
                auto_create_ledgers: config.auto_create_ledgers,
                _locks: locks,
            }),
        })
    }

    /// The pinned `chunk_entries`.
    pub fn chunk_entries(&self) -> u64 {
        self.inner.chunk_entries
    }

    pub fn max_entry_bytes(&self) -> usize {
        self.inner.max_entry_bytes
    }

    /// Ok while the store accepts writes; the poison reason otherwise.
    pub fn ready(&self) -> Result<()> {
        self.inner.health.check()
    }

    /// Appends entries durably, all or nothing, with contiguous new ids.
    /// Resolves only after the records are fsync'd.
    pub async fn append(&self, ledger: &LedgerName, entries: Vec<NewEntry>) -> Result<AppendOutcome> {
        let encoded_bytes = self.validate(ledger, &entries)?;
        self.inner.health.check()?;
        let state = match self.ledger(ledger) {
            Some(state) => state,
            None if self.inner.auto_create_ledgers => {
                let (store, name) = (self.clone(), ledger.clone());
                tokio::task::spawn_blocking(move || store.create_ledger(&name))
                    .await
                    .map_err(|_| StoreError::ShuttingDown)??;
                self.ledger(ledger).ok_or_else(|| StoreError::LedgerNotFound(ledger.clone()))?
            }
            None => return Err(StoreError::LedgerNotFound(ledger.clone())),
        };
        let started = std::time::Instant::now();
        let (reply, answer) = oneshot::channel();
        let request = AppendRequest { ledger: state, entries, encoded_bytes, reply };
        self.inner.tx.send(FlusherMsg::Append(request)).await.map_err(|_| StoreError::ShuttingDown)?;
        let outcome = answer.await.map_err(|_| StoreError::ShuttingDown)?;
        metrics::histogram!("ferry_append_seconds").record(started.elapsed().as_secs_f64());
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
            let max = self.inner.max_entry_bytes;
            if e.payload.len() > max {
                return Err(StoreError::EntryTooLarge { size: e.payload.len(), max });
            }
            check_len("key", e.key.as_deref(), ENTRY_KEY_BYTES_MAX)?;
            check_len("idempotency_key", e.idempotency_key.as_deref(), IDEMPOTENCY_KEY_BYTES_MAX)?;
            if let Some(k) = &e.idempotency_key
                && !seen.insert(k.as_str())
            {
                return Err(StoreError::DuplicateIdempotencyKey(k.clone()));
            }
            encoded_bytes += wal_format::encoded_len(&wal_format::WalRecord {
                ledger: ledger.as_str(),
                id: 1,
                ts: 0,
                key: e.key.as_deref(),
                idempotency_key: e.idempotency_key.as_deref(),
                batch_continues: false,
                group_start: false,
                payload: e.payload.as_str().as_bytes(),
            });
        }
        if encoded_bytes > APPEND_BYTES_MAX {
            return Err(StoreError::AppendTooLarge { bytes: encoded_bytes, max: APPEND_BYTES_MAX });
        }
        Ok(encoded_bytes)
    }

    /// Creates a ledger durably; false when it already existed. Blocking.
    pub fn create_ledger(&self, name: &LedgerName) -> Result<bool> {
        self.inner.health.check()?;
        let _guard = self.inner.create_lock.lock().expect("create lock");
        if self.ledger(name).is_some() {
            return Ok(false);
        }
        let meta = LedgerMeta { created_at: now_ms(), first: 1 };
        let value = serde_json::to_vec(&meta).expect("metadata serialises");
        let op = CatalogOp::Put(CatalogKey::Ledger(name.clone()), value);
        if let Err(e) = self.inner.catalog.commit(&[op]) {
            self.inner.health.poison(e.to_string());
            return Err(e);
        }
        let state = Arc::new(LedgerState::new(name.clone(), meta));
        let count = {
            let mut ledgers = self.inner.ledgers.write().expect("ledgers lock");
            ledgers.insert(name.clone(), state);
            ledgers.len()
        };
        metrics::gauge!("ferry_ledgers").set(count as f64);
        tracing::info!(ledger = %name, "ledger created");
        Ok(true)
    }

    fn ledger(&self, name: &LedgerName) -> Option<Arc<LedgerState>> {
        self.inner.ledgers.read().expect("ledgers lock").get(name).cloned()
    }

    pub fn ledger_info(&self, name: &LedgerName) -> Option<LedgerInfo> {
        self.ledger(name).map(|s| info(&s))
    }

    pub fn list_ledgers(&self) -> Vec<LedgerInfo> {
        let ledgers = self.inner.ledgers.read().expect("ledgers lock");
        ledgers.values().map(|s| info(s)).collect()
    }

    /// Reads up to `limit` entries from `from` (default: First) in id order,
    /// stopping early after `READ_BYTES_MAX`. Blocking: it reads files.
    pub fn read(&self, ledger: &LedgerName, from: Option<EntryId>, limit: usize) -> Result<ReadBatch> {
        let state = self.ledger(ledger).ok_or_else(|| StoreError::LedgerNotFound(ledger.clone()))?;
        let (from, positions) = {
            let index = state.index.read().expect("index lock");
            let from = from.unwrap_or(index.first);
            if from < index.first {
                return Err(StoreError::BelowFirst { ledger: ledger.clone(), from, first: index.first });
            }
            let positions = index.range(from, limit);
            let mut bytes = 0usize;
            let fit = positions
                .iter()
                .take_while(|p| {
                    let fits = bytes < READ_BYTES_MAX;
                    bytes += p.len as usize;
                    fits
                })
                .count();
            (from, positions[..fit].to_vec())
        };
        let entries = self.load(ledger, from, &positions)?;
        let next = from + entries.len() as u64;
        Ok(ReadBatch { entries, next })
    }

    /// Loads records, one `pread` per run of adjacent records, checking that
    /// each decoded record is the ledger and id the index said it was.
    fn load(&self, ledger: &LedgerName, from: EntryId, positions: &[RecordPos]) -> Result<Vec<Entry>> {
        let mut entries = Vec::with_capacity(positions.len());
        let mut rest = positions;
        while let Some(first) = rest.first() {
            let run = rest
                .windows(2)
                .take_while(|w| w[1].segment == w[0].segment && w[1].offset == w[0].offset + w[0].len)
                .count()
                + 1;
            let (now, later) = rest.split_at(run);
            let end = now.last().map(|p| p.offset + p.len).expect("run is non-empty");
            let bytes =
                self.inner.segments.read_at(first.segment, first.offset.into(), (end - first.offset) as usize)?;
            for pos in now {
                let expected = from + entries.len() as u64;
                let at = (pos.offset - first.offset) as usize;
                entries.push(self.decode_at(ledger, expected, *pos, &bytes[at..at + pos.len as usize])?);
            }
            rest = later;
        }
        Ok(entries)
    }

    fn decode_at(&self, ledger: &LedgerName, id: EntryId, pos: RecordPos, bytes: &[u8]) -> Result<Entry> {
        let corrupted = |reason: String| StoreError::Corrupted {
            segment: self.inner.segments.path(pos.segment),
            offset: pos.offset.into(),
            ledger: Some(ledger.clone()),
            reason,
        };
        let (record, _) = decode_record(bytes).map_err(|e| corrupted(e.to_string()))?;
        if record.ledger != ledger.as_str() || record.id != id {
            return Err(corrupted(format!(
                "index expected {ledger}/{id}, the record is {}/{}",
                record.ledger, record.id
            )));
        }
        let payload = Payload::from_stored(record.payload).map_err(|e| corrupted(e.to_string()))?;
        Ok(Entry { ledger: ledger.clone(), id, ts: record.ts, key: record.key.map(str::to_owned), payload })
    }

    /// Stops the flusher after the appends already queued. Safe to call
    /// more than once; later appends fail with `ShuttingDown`.
    pub async fn shutdown(&self) {
        let _ = self.inner.tx.send(FlusherMsg::Shutdown).await;
        let handle = self.inner.flusher.lock().expect("flusher lock").take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// The limits a `StoreConfig` must respect, whoever built it.
fn check_config(config: &StoreConfig) -> Result<()> {
    if let Some(c) = config.chunk_entries
        && !(CHUNK_ENTRIES_MIN..=CHUNK_ENTRIES_MAX).contains(&c)
    {
        return Err(StoreError::InvalidConfig(format!(
            "chunk_entries {c} is outside {CHUNK_ENTRIES_MIN}..={CHUNK_ENTRIES_MAX}"
        )));
    }
    if config.max_entry_bytes == 0 || config.max_entry_bytes as u64 > ENTRY_BYTES_MAX_LIMIT {
        return Err(StoreError::InvalidConfig(format!(
            "max_entry_bytes {} is outside 1..={ENTRY_BYTES_MAX_LIMIT}",
            config.max_entry_bytes
        )));
    }
    Ok(())
}

fn check_len(field: &'static str, value: Option<&str>, max: usize) -> Result<()> {
    match value {
        Some(v) if v.len() > max => Err(StoreError::FieldTooLong { field, size: v.len(), max }),
        _ => Ok(()),
    }
}

fn info(state: &LedgerState) -> LedgerInfo {
    let index = state.index.read().expect("index lock");
    LedgerInfo {
        name: state.name.clone(),
        first: index.first,
        head: index.head(),
        entries: index.positions.len() as u64,
        bytes: index.bytes,
        created_at: state.meta.created_at,
    }
}

/// Writes the layout values on first start; on later starts refuses a
/// configuration that disagrees with them. Returns `chunk_entries`.
fn pin_layout(catalog: &dyn Catalog, chunk_entries: Option<u64>) -> Result<u64> {
    let read = |name: ConfigName| -> Result<Option<u64>> {
        let Some(bytes) = catalog.get(&CatalogKey::Config(name))? else { return Ok(None) };
        let value = std::str::from_utf8(&bytes).ok().and_then(|s| s.parse().ok());
        value.map(Some).ok_or_else(|| {
            StoreError::CatalogCorrupted(format!(
                "config:{} holds {:?}",
                name.as_str(),
                String::from_utf8_lossy(&bytes)
            ))
        })
    };
    let mismatch = |name: ConfigName, pinned: u64, configured: u64| StoreError::PinnedMismatch {
        name: name.as_str(),
        pinned: pinned.to_string(),
        configured: configured.to_string(),
    };
    let version = u64::from(FORMAT_VERSION);
    let mut ops = Vec::new();
    let chunk = match (read(ConfigName::ChunkEntries)?, chunk_entries) {
        (Some(p), Some(c)) if p != c => return Err(mismatch(ConfigName::ChunkEntries, p, c)),
        (Some(p), _) => p,
        (None, c) => {
            let c = c.unwrap_or(CHUNK_ENTRIES_DEFAULT);
            ops.push(CatalogOp::Put(CatalogKey::Config(ConfigName::ChunkEntries), c.to_string().into_bytes()));
            c
        }
    };
    match read(ConfigName::FormatVersion)? {
        Some(p) if p != version => return Err(mismatch(ConfigName::FormatVersion, p, version)),
        Some(_) => {}
        None => {
            ops.push(CatalogOp::Put(CatalogKey::Config(ConfigName::FormatVersion), version.to_string().into_bytes()))
        }
    }
    if !ops.is_empty() {
        catalog.commit(&ops)?;
    }
    Ok(chunk)
}

fn load_ledgers(catalog: &dyn Catalog) -> Result<BTreeMap<LedgerName, Arc<LedgerState>>> {
    let mut ledgers = BTreeMap::new();
    for (key, value) in catalog.scan(CatalogKey::LEDGER_PREFIX)? {
        let CatalogKey::Ledger(name) = key else {
            return Err(StoreError::CatalogCorrupted(format!("{key} under the ledger prefix")));
        };
        let meta: LedgerMeta =
            serde_json::from_slice(&value).map_err(|e| StoreError::CatalogCorrupted(format!("ledger:{name}: {e}")))?;
        ledgers.insert(name.clone(), Arc::new(LedgerState::new(name, meta)));
    }
    Ok(ledgers)
}

/// Recovery: adds one scanned record to its ledger's index, checking that
/// ids are dense and timestamps never decrease.
fn index_record(
    ledgers: &BTreeMap<LedgerName, Arc<LedgerState>>,
    idempotency: &mut IdempotencyIndex,
    path: &Path,
    scanned: wal::ScannedRecord<'_>,
) -> Result<()> {
    let wal::ScannedRecord { record, pos } = scanned;
    let corrupted = |reason: String| StoreError::Corrupted {
        segment: path.to_path_buf(),
        offset: pos.offset.into(),
        ledger: LedgerName::parse(record.ledger).ok(),
        reason,
    };
    let state = LedgerName::parse(record.ledger)
        .ok()
        .and_then(|name| ledgers.get(&name))
        .ok_or_else(|| corrupted(format!("record of ledger {:?}, which the catalog does not list", record.ledger)))?;
    let mut index = state.index.write().expect("index lock");
    if record.id != index.next_id() {
        return Err(corrupted(format!("id {} where {} was expected (ids must be dense)", record.id, index.next_id())));
    }
    if record.ts < index.last_ts {
        return Err(corrupted(format!("timestamp {} is before the previous {}", record.ts, index.last_ts)));
    }
    index.push(record.id, record.ts, pos);
    if let Some(key) = record.idempotency_key {
        idempotency.insert(&state.name, key, record.id, record.ts);
    }
    Ok(())
}
