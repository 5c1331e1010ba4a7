//! The catalog: the single source of truth for what exists (SPEC §3),
//! behind a narrow trait. Keys come from `ferry_format::keys`; values are
//! small JSON documents so `ferry inspect` can print them as they are.

use std::path::{Path, PathBuf};

use ferry_format::keys::CatalogKey;
use redb::{Database, Durability, ReadableDatabase as _, TableDefinition};

use crate::{Result, StoreError};

/// One change in an atomic catalog commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogOp {
    Put(CatalogKey, Vec<u8>),
    Delete(CatalogKey),
}

/// A small transactional KV. Every `commit` is atomic and durable when it
/// returns; a failed commit poisons the store (its caller's job).
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

/// `cursor:{exporter}:{ledger}`: the last id the exporter's sink acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CursorValue {
    pub id: u64,
}

/// The catalog's one table. `ferry verify` reads it raw (keys as text) so a
/// malformed key is reported rather than a reason to stop.
pub(crate) const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("catalog");

/// The catalog on redb, each commit with `Durability::Immediate`.
pub struct RedbCatalog {
    db: Database,
    path: PathBuf,
}

impl RedbCatalog {
    pub const FILE: &'static str = "catalog.redb";

    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join(Self::FILE);
        let db = Database::create(&path).map_err(|e| StoreError::Catalog(format!("open {}: {e}", path.display())))?;
        let cat = Self { db, path };
        cat.commit(&[])?; // creates the table on first start
        Ok(cat)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> StoreError {
        StoreError::Catalog(format!("{what} in {}: {e}", self.path.display()))
    }
}

impl Catalog for RedbCatalog {
    fn get(&self, key: &CatalogKey) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(|e| self.err("begin read", e))?;
        let table = tx.open_table(TABLE).map_err(|e| self.err("open table", e))?;
        let value = table.get(key.encode().as_str()).map_err(|e| self.err("get", e))?;
        Ok(value.map(|v| v.value().to_vec()))
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(CatalogKey, Vec<u8>)>> {
        let tx = self.db.begin_read().map_err(|e| self.err("begin read", e))?;
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
    }

    fn commit(&self, ops: &[CatalogOp]) -> Result<()> {
        let mut tx = self.db.begin_write().map_err(|e| self.err("begin write", e))?;
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
