//! The catalog: the single source of truth for what exists (SPEC §3),
//! behind a narrow trait. Keys come from `ferry_format::keys`; values are
//! small JSON documents so `ferry inspect` can print them as they are.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use ferry_format::keys::CatalogKey;
use redb::{Database, Durability, ReadableDatabase as _, TableDefinition};

use crate::error::is_no_space;
use crate::{Result, StoreError};

/// One change in an atomic catalog commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogOp {
    Put(CatalogKey, Vec<u8>),
    Delete(CatalogKey),
}

/// A small transactional KV. Every `commit` is atomic and durable when it
/// returns. A commit refused with `NoSpace` changed nothing; any other
/// failed commit poisons the store (its caller's job).
pub trait Catalog: Send + Sync {
    fn get(&self, key: &CatalogKey) -> Result<Option<Vec<u8>>>;
    /// Every key starting with `prefix`, in key order.
    fn scan(&self, prefix: &str) -> Result<Vec<(CatalogKey, Vec<u8>)>>;
    fn commit(&self, ops: &[CatalogOp]) -> Result<()>;
}

/// `ledger:{name}`: what the catalog holds about a ledger. The head is not
/// here: it is derived from the WAL (and later the packs) on recovery.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerMeta {
    /// Tells this ledger from every other ledger ever created under the
    /// name: handed out by `counter:incarnation`, never reused. 0 only in a
    /// format-1 catalog, before the migration at start assigns one.
    #[serde(default)]
    pub incarnation: u64,
    pub created_at: u64,
    /// The lowest retained id.
    pub first: u64,
    /// The WAL position (segment, offset) the ledger was created at: records
    /// of this name before it belong to an earlier, deleted ledger.
    pub wal_from: (u32, u64),
    /// The ledger incarnation has a hash chain (format 5: decided at its
    /// creation by `[storage] hash_chain`, never changed after; a ledger
    /// created before format 5 has none).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chain: bool,
    /// The chain hash of the entry before `first`, once retention pruned
    /// the front (lower-case hex); absent while `first` is 1, where it is
    /// the chain's `h_0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_prev_hash: Option<String>,
}

impl LedgerMeta {
    /// Decodes the value of `key` (a `ledger:` key, named in the error).
    pub fn decode(key: &CatalogKey, value: &[u8]) -> Result<Self> {
        serde_json::from_slice(value).map_err(|e| StoreError::CatalogCorrupted(format!("{key}: {e}")))
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("ledger metadata serialises")
    }
}

/// `cursor:{exporter}:{ledger}`: the last id the exporter's sink
/// acknowledged, and (format 3) the in-flight range of a batch the head cut
/// short: `{"id": c, "sent_to": m}` says the sink may have been given ids
/// `c+1..=m`, so the next attempt, after a restart too, sends exactly those.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorValue {
    pub id: u64,
    /// Absent (the usual case) when no short batch is in flight; written
    /// before such a batch is sent, cleared by the next cursor write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_to: Option<u64>,
}

/// The catalog's one table. `ferry verify` reads it raw (keys as text) so a
/// malformed key is reported rather than a reason to stop.
pub(crate) const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");

/// The catalog on redb, each commit with `Durability::Immediate`.
pub struct RedbCatalog {
    /// `None` after a commit failed for lack of space, until a reopen
    /// works: redb answers every call with `PreviousIo` after a failed
    /// commit, and opening the file again recovers its last commit.
    db: RwLock<Option<Database>>,
    path: PathBuf,
}

/// The storage error inside any redb error that has one.
trait StorageCause {
    fn storage(&self) -> Option<&redb::StorageError>;
}

macro_rules! storage_cause {
    ($($t:ty),*) => {$(
        impl StorageCause for $t {
            fn storage(&self) -> Option<&redb::StorageError> {
                match self {
                    Self::Storage(s) => Some(s),
                    _ => None,
                }
            }
        }
    )*};
}
storage_cause!(redb::CommitError, redb::TransactionError, redb::TableError, redb::DatabaseError);

impl StorageCause for redb::SetDurabilityError {
    fn storage(&self) -> Option<&redb::StorageError> {
        None
    }
}

impl StorageCause for redb::StorageError {
    fn storage(&self) -> Option<&redb::StorageError> {
        Some(self)
    }
}

/// redb's page cache (its default is 1 GiB). The catalog's hot part is
/// small (ledgers, chunk states, cursors); the bulk, the `keys:` lists, is
/// written once and read only at start, so caching it would cost memory
/// per idempotency key for nothing.
const CACHE_BYTES: usize = 16 << 20;

impl RedbCatalog {
    pub const FILE: &'static str = "catalog.redb";

    fn open_database(path: &Path) -> std::result::Result<Database, redb::DatabaseError> {
        redb::Builder::new().set_cache_size(CACHE_BYTES).create(path)
    }

    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(Self::FILE);
        let db = Self::open_database(&path).map_err(|e| Self::error(&path, "open", &e))?;
        let cat = Self { db: RwLock::new(Some(db)), path };
        cat.commit(&[])?; // creates the table on first start
        Ok(cat)
    }

    /// A redb failure as a store error: `NoSpace` when the disk or a quota
    /// is full (the commit was refused; the catalog reopens), `Catalog`
    /// otherwise.
    fn error<E: StorageCause + std::fmt::Display>(path: &Path, what: &str, e: &E) -> StoreError {
        if let Some(redb::StorageError::Io(io)) = e.storage()
            && is_no_space(io)
        {
            return StoreError::NoSpace(format!("catalog {what} in {}: {io}", path.display()));
        }
        StoreError::Catalog(format!("{what} in {}: {e}", path.display()))
    }

    fn err<E: StorageCause + std::fmt::Display>(&self, what: &str, e: E) -> StoreError {
        Self::error(&self.path, what, &e)
    }

    /// Runs `f` on the open database, reopening it first if a refused
    /// commit closed it.
    fn with_db<T>(&self, f: impl FnOnce(&Database) -> Result<T>) -> Result<T> {
        {
            let db = self.db.read().expect("catalog lock");
            if let Some(db) = db.as_ref() {
                return f(db);
            }
        }
        let mut slot = self.db.write().expect("catalog lock");
        if slot.is_none() {
            let db = Self::open_database(&self.path).map_err(|e| self.err("reopen", e))?;
            tracing::info!(catalog = %self.path.display(), "catalog reopened after a refused commit");
            *slot = Some(db);
        }
        f(slot.as_ref().expect("just opened"))
    }

    fn commit_on(&self, db: &Database, ops: &[CatalogOp]) -> Result<()> {
        let mut tx = db.begin_write().map_err(|e| self.err("begin write", e))?;
        tx.set_durability(Durability::Immediate).map_err(|e| self.err("set durability", e))?;
        {
            let mut table = tx.open_table(TABLE).map_err(|e| self.err("open table", e))?;
            for op in ops {
                match op {
                    CatalogOp::Put(k, v) => {
                        table.insert(k.encode().as_str(), v.as_slice()).map_err(|e| self.err("insert", e))?;
                    }
                    CatalogOp::Delete(k) => {
                        table.remove(k.encode().as_str()).map_err(|e| self.err("remove", e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| self.err("commit", e))
    }
}

impl Catalog for RedbCatalog {
    fn get(&self, key: &CatalogKey) -> Result<Option<Vec<u8>>> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.err("begin read", e))?;
            let table = tx.open_table(TABLE).map_err(|e| self.err("open table", e))?;
            let value = table.get(key.encode().as_str()).map_err(|e| self.err("get", e))?;
            Ok(value.map(|v| v.value().to_vec()))
        })
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(CatalogKey, Vec<u8>)>> {
        self.with_db(|db| {
            let tx = db.begin_read().map_err(|e| self.err("begin read", e))?;
            let table = tx.open_table(TABLE).map_err(|e| self.err("open table", e))?;
            let mut out = Vec::new();
            for item in table.range(prefix..).map_err(|e| self.err("range", e))? {
                let (k, v) = item.map_err(|e| self.err("range", e))?;
                if !k.value().starts_with(prefix) {
                    break;
                }
                let key = CatalogKey::parse(k.value()).map_err(|e| StoreError::CatalogCorrupted(e.to_string()))?;
                out.push((key, v.value().to_vec()));
            }
            Ok(out)
        })
    }

    /// A commit refused for lack of space changed nothing (redb's last
    /// commit stands; the new pages were never referenced), so the
    /// database is closed and reopened on next use instead of poisoning
    /// the store; any other failure is the caller's to poison on.
    fn commit(&self, ops: &[CatalogOp]) -> Result<()> {
        // `return` refuses the commit as a full disk does (redb's own
        // behaviour on ENOSPC is proven on a real tmpfs in the tests).
        fail::fail_point!("catalog::commit", |_| {
            let full = std::io::Error::from_raw_os_error(28);
            Err(StoreError::NoSpace(format!("catalog commit in {}: {full}", self.path.display())))
        });
        let result = self.with_db(|db| self.commit_on(db, ops));
        if let Err(e) = &result
            && e.is_no_space()
        {
            let mut slot = self.db.write().expect("catalog lock");
            *slot = None; // dropped: closes the file
            tracing::warn!(error = %e, "a catalog commit was refused for lack of space; the catalog reopens on next use");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_core::LedgerName;
    use ferry_format::keys::ConfigName;

    #[test]
    fn commits_are_visible_after_reopen_and_scans_stay_in_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let a = CatalogKey::Ledger(LedgerName::parse("a").unwrap());
        let b = CatalogKey::Ledger(LedgerName::parse("b").unwrap());
        let c = CatalogKey::Config(ConfigName::ChunkEntries);
        {
            let cat = RedbCatalog::open(dir.path()).unwrap();
            cat.commit(&[
                CatalogOp::Put(a.clone(), b"1".to_vec()),
                CatalogOp::Put(b.clone(), b"2".to_vec()),
                CatalogOp::Put(c.clone(), b"3".to_vec()),
            ])
            .unwrap();
            cat.commit(&[CatalogOp::Delete(b.clone())]).unwrap();
        }
        let cat = RedbCatalog::open(dir.path()).unwrap();
        assert_eq!(cat.get(&a).unwrap(), Some(b"1".to_vec()));
        assert_eq!(cat.get(&b).unwrap(), None);
        let ledgers = cat.scan(CatalogKey::LEDGER_PREFIX).unwrap();
        assert_eq!(ledgers, vec![(a, b"1".to_vec())]);
    }
}
