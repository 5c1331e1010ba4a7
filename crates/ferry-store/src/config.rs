//! `StoreConfig`: where the store lives and the limits it enforces, and
//! `[retention]` with the holds retention must respect.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ferry_core::limits::{
    CHUNK_ENTRIES_MAX, CHUNK_ENTRIES_MIN, ENTRY_BYTES_MAX_DEFAULT, ENTRY_BYTES_MAX_LIMIT, WAL_SEGMENT_BYTES_MAX,
};
use ferry_core::{EntryId, LedgerName};

use crate::error::{Result, StoreError};

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
    /// `[storage] max_ledger_bytes`: an append that would take a ledger's
    /// bytes (`LedgerIndex::bytes`) past this is refused with
    /// `QuotaExceeded`. `None`: no quota.
    pub max_ledger_bytes: Option<u64>,
    pub retention: RetentionPolicy,
    /// WAL segment size; smaller values are for tests of segment release.
    pub wal_segment_bytes: u64,
    /// Holds retention respects from its first pass on (`Store::add_hold`
    /// adds more later).
    pub holds: Vec<Arc<dyn RetentionHold>>,
    /// `[storage] hash_chain`: globs of the ledger names that get a hash
    /// chain when created (`docs/format.md`, "Hash chain"). A ledger keeps
    /// what it was created with.
    pub hash_chain: Vec<String>,
    /// `[storage] checkpoint_every`: a chained ledger publishes a
    /// `ledger.checkpoint` event `{ledger, id, hash}` at every id that is a
    /// multiple of this; 0: never.
    pub checkpoint_every: u64,
}

/// `[storage] hash_chain` is empty by default (no ledger gets a chain):
/// the flusher hashes every entry on its one thread, and issue #21's
/// benchmark measured 15–37% less append throughput on 1,000-entry batches
/// with the chain on, above the 5% the issue allows a default to cost.
/// `[storage] checkpoint_every` by default.
pub const CHECKPOINT_EVERY_DEFAULT: u64 = 10_000;

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
            max_ledger_bytes: None,
            retention: RetentionPolicy::default(),
            wal_segment_bytes: WAL_SEGMENT_BYTES_MAX,
            holds: Vec::new(),
            hash_chain: Vec::new(),
            checkpoint_every: CHECKPOINT_EVERY_DEFAULT,
        }
    }
}

/// Something that needs a ledger's entries from some id on, so retention
/// must not prune them (an exporter's cursor, a snapshot pin).
pub trait RetentionHold: Send + Sync + std::fmt::Debug {
    /// The lowest id this holder still needs, or `None` for no need.
    fn needs_from(&self, ledger: &LedgerName) -> Option<EntryId>;
}

/// `[retention]`: how old a frozen chunk may get, and how many bytes a
/// ledger or the whole store may hold, before the oldest frozen chunks are
/// pruned.
#[derive(Debug, Clone, Default)]
pub struct RetentionPolicy {
    /// `None`: keep forever.
    pub max_age: Option<Duration>,
    /// The bytes of every ledger together; past it the oldest frozen chunk
    /// of the whole store goes first. `None`: no limit.
    pub max_bytes: Option<u64>,
    /// Per-ledger settings.
    pub ledgers: BTreeMap<LedgerName, LedgerRetention>,
}

/// `[retention.ledgers]`: one ledger's own retention.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerRetention {
    /// Overrides `[retention] max_age`; `None` keeps the global one.
    pub max_age: Option<Duration>,
    /// The ledger's own byte limit (beside the store's); `None`: none.
    pub max_bytes: Option<u64>,
}

impl RetentionPolicy {
    pub fn max_age(&self, ledger: &LedgerName) -> Option<Duration> {
        self.ledgers.get(ledger).and_then(|l| l.max_age).or(self.max_age)
    }

    /// The ledger's own byte limit.
    pub fn ledger_max_bytes(&self, ledger: &LedgerName) -> Option<u64> {
        self.ledgers.get(ledger).and_then(|l| l.max_bytes)
    }
}

/// The `hash_chain` globs, parsed.
pub(crate) fn hash_chain_patterns(config: &StoreConfig) -> Result<Vec<glob::Pattern>> {
    config
        .hash_chain
        .iter()
        .map(|g| {
            glob::Pattern::new(g).map_err(|e| {
                StoreError::InvalidConfig(format!("hash_chain: {g:?} is not a valid glob: {e} (e.g. \"audit*\")"))
            })
        })
        .collect()
}

/// The limits a `StoreConfig` must respect, whoever built it.
pub(crate) fn check(config: &StoreConfig) -> Result<()> {
    hash_chain_patterns(config)?;
    if let Some(c) = config.chunk_entries
        && !(CHUNK_ENTRIES_MIN..=CHUNK_ENTRIES_MAX).contains(&c)
    {
        return Err(StoreError::InvalidConfig(format!(
            "chunk_entries {c} is outside {CHUNK_ENTRIES_MIN}..={CHUNK_ENTRIES_MAX}"
        )));
    }
    if !(4096..=WAL_SEGMENT_BYTES_MAX).contains(&config.wal_segment_bytes) {
        return Err(StoreError::InvalidConfig(format!(
            "wal_segment_bytes {} is outside 4096..={WAL_SEGMENT_BYTES_MAX}",
            config.wal_segment_bytes
        )));
    }
    if config.max_entry_bytes == 0 || config.max_entry_bytes as u64 > ENTRY_BYTES_MAX_LIMIT {
        return Err(StoreError::InvalidConfig(format!(
            "max_entry_bytes {} is outside 1..={ENTRY_BYTES_MAX_LIMIT}",
            config.max_entry_bytes
        )));
    }
    // Zero would refuse every append or prune everything: "no limit" is `None`.
    if config.max_ledger_bytes == Some(0) {
        return Err(StoreError::InvalidConfig("max_ledger_bytes 0: use None for no quota".into()));
    }
    let retention = &config.retention;
    let ledger_limits = retention.ledgers.values().map(|l| l.max_bytes);
    if std::iter::once(retention.max_bytes).chain(ledger_limits).any(|m| m == Some(0)) {
        return Err(StoreError::InvalidConfig("retention max_bytes 0: use None for no limit".into()));
    }
    Ok(())
}
