//! The store's one error type. Storage faults say where they are.

use std::path::PathBuf;

use ferry_core::LedgerName;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("ledger {0} does not exist")]
    LedgerNotFound(LedgerName),
    #[error("entry payload is {size} bytes; the limit (max_entry_bytes) is {max}")]
    EntryTooLarge { size: usize, max: usize },
    #[error("{field} is {size} bytes; the limit is {max}")]
    FieldTooLong { field: &'static str, size: usize, max: usize },
    #[error("a batch holds {count} entries; the limit is {max}")]
    BatchTooLarge { count: usize, max: usize },
    #[error("the batch encodes to {bytes} bytes; the limit is {max}")]
    AppendTooLarge { bytes: usize, max: usize },
    #[error("invalid store configuration: {0}")]
    InvalidConfig(String),
    #[error("a batch must hold at least one entry")]
    EmptyBatch,
    #[error("idempotency_key {0:?} appears more than once in the batch")]
    DuplicateIdempotencyKey(String),
    #[error("id {from} is below the first retained id {first} of ledger {ledger}")]
    BelowFirst { ledger: LedgerName, from: u64, first: u64 },
    #[error("the store is poisoned after a failed write or sync and accepts no writes: {0}")]
    Poisoned(String),
    #[error("the store is shutting down")]
    ShuttingDown,
    /// A write refused because the disk (or a quota) is full. Nothing
    /// changed; the store stays ready and takes writes again once there is
    /// room.
    #[error("refused, no space left: {0}")]
    NoSpace(String),
    /// An append that would take its ledger past `max_ledger_bytes`.
    /// Nothing changed; other ledgers are not affected, and the ledger takes
    /// appends again once retention (or a smaller append) makes room.
    #[error(
        "ledger {ledger} holds {bytes} bytes; appending {adding} more would pass its quota of {max} bytes \
         (storage.max_ledger_bytes)"
    )]
    QuotaExceeded { ledger: LedgerName, bytes: u64, adding: u64, max: u64 },
    /// A conditional append (`expected_head`) found another head. Nothing
    /// changed.
    #[error("ledger {ledger} has head {head}; the append expected head {expected}")]
    HeadMismatch { ledger: LedgerName, expected: u64, head: u64 },
    /// `max_pins` live pins already.
    #[error("{max} snapshot pins are live already (server.max_pins); delete or let one expire")]
    TooManyPins { max: usize },
    /// No live pin of that id (never, deleted, or expired).
    #[error("no live snapshot pin {0}")]
    PinNotFound(u64),
    /// The pin does not hold this ledger (it did not exist at the cut).
    #[error("snapshot pin {pin} does not hold ledger {ledger}")]
    NotInPin { pin: u64, ledger: LedgerName },
    /// A pinned ledger was deleted (or deleted and created again) after the
    /// pin was taken: what the pin cut is gone.
    #[error("ledger {ledger} was deleted after snapshot pin {pin} was taken (pinned incarnation {incarnation})")]
    PinnedLedgerGone { pin: u64, ledger: LedgerName, incarnation: u64 },
    /// An import refused at `id`: nothing changed.
    #[error("import into ledger {ledger} refused at id {id}: {reason}")]
    ImportConflict { ledger: LedgerName, id: u64, reason: String },
    #[error("storage root {root} is locked by another ferry process (lock file {lock})")]
    Locked { root: PathBuf, lock: PathBuf },
    #[error(
        "{name} is pinned to {pinned} in the catalog; the configuration asks for {configured}. Use {pinned} or a new data directory"
    )]
    PinnedMismatch { name: &'static str, pinned: String, configured: String },
    #[error(
        "the data directory has format version {found}; this ferry opens versions {oldest}..={newest}. It was written by a newer ferry: run that one"
    )]
    UnknownFormat { found: u64, oldest: u32, newest: u32 },
    #[error("corrupted WAL segment {segment} at offset {offset}{}: {reason}", ledger_suffix(.ledger))]
    Corrupted { segment: PathBuf, offset: u64, ledger: Option<LedgerName>, reason: String },
    #[error("corrupted pack of ledger {ledger} chunk {chunk} ({}) at offset {offset}: {reason}", path.display())]
    CorruptedPack { ledger: LedgerName, chunk: u64, path: PathBuf, offset: u64, reason: String },
    #[error("ledger {ledger}: ids {from}..={to} are in neither a pack nor the WAL")]
    MissingEntries { ledger: LedgerName, from: u64, to: u64 },
    #[error("cursor {id} of ledger {ledger} is beyond its head {head}")]
    InvalidCursor { ledger: LedgerName, id: u64, head: u64 },
    #[error("cursor {id} of ledger {ledger}: sent_to {sent_to} is outside {}..={head}", id + 1)]
    InvalidSentTo { ledger: LedgerName, id: u64, sent_to: u64, head: u64 },
    #[error("corrupted catalog: {0}")]
    CatalogCorrupted(String),
    #[error("catalog error: {0}")]
    Catalog(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn ledger_suffix(ledger: &Option<LedgerName>) -> String {
    ledger.as_ref().map(|l| format!(" (ledger {l})")).unwrap_or_default()
}

impl From<ferry_fs::FsError> for StoreError {
    fn from(e: ferry_fs::FsError) -> Self {
        match e {
            ferry_fs::FsError::Locked { root, lock } => StoreError::Locked { root, lock },
            ferry_fs::FsError::Io { context, source } => StoreError::io(context, source),
            other => StoreError::io("storage", std::io::Error::other(other.to_string())),
        }
    }
}

impl StoreError {
    /// An I/O failure, sorted: a full disk or quota is `NoSpace`.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        if is_no_space(&source) {
            return StoreError::NoSpace(format!("{}: {source}", context.into()));
        }
        StoreError::Io { context: context.into(), source }
    }

    pub fn is_no_space(&self) -> bool {
        matches!(self, StoreError::NoSpace(_))
    }
}

/// ENOSPC or EDQUOT: the disk or a quota is full.
pub(crate) fn is_no_space(e: &std::io::Error) -> bool {
    const EDQUOT: i32 = 122;
    e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(EDQUOT)
}

/// Adds a context line to I/O results.
pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| StoreError::io(what(), e))
    }
}
