//! Test support: an in-memory catalog whose commits are sync points of the
//! same `CrashClock` as the simulated disk (`ferry_fs::sim::SimFs`), so a
//! crash test stops the world at any sync, disk or catalog.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ferry_format::keys::CatalogKey;
pub use ferry_fs::sim::{CrashClock, SimFs};

use crate::catalog::{Catalog, CatalogOp};
use crate::{Result, StoreError};

/// An in-memory catalog whose commits are sync points of a `CrashClock`.
#[derive(Debug, Clone)]
pub struct MemCatalog {
    map: Arc<Mutex<BTreeMap<String, Vec<u8>>>>,
    clock: Arc<CrashClock>,
}

impl MemCatalog {
    pub fn new(clock: Arc<CrashClock>) -> Self {
        Self { map: Arc::default(), clock }
    }

    /// The catalog after a crash now (commits are atomic and durable).
    pub fn crash_image(&self) -> MemCatalog {
        let map = self.map.lock().expect("catalog lock").clone();
        MemCatalog { map: Arc::new(Mutex::new(map)), clock: CrashClock::new() }
    }
}

impl Catalog for MemCatalog {
    fn get(&self, key: &CatalogKey) -> Result<Option<Vec<u8>>> {
        Ok(self.map.lock().expect("catalog lock").get(&key.encode()).cloned())
    }

    fn scan(&self, prefix: &str) -> Result<Vec<(CatalogKey, Vec<u8>)>> {
        let map = self.map.lock().expect("catalog lock");
        let mut out = Vec::new();
        for (k, v) in map.range(prefix.to_owned()..).take_while(|(k, _)| k.starts_with(prefix)) {
            let key = CatalogKey::parse(k).map_err(|e| StoreError::CatalogCorrupted(e.to_string()))?;
            out.push((key, v.clone()));
        }
        Ok(out)
    }

    fn commit(&self, ops: &[CatalogOp]) -> Result<()> {
        self.clock.sync_point().map_err(|e| StoreError::Catalog(e.to_string()))?;
        let mut map = self.map.lock().expect("catalog lock");
        for op in ops {
            match op {
                CatalogOp::Put(k, v) => map.insert(k.encode(), v.clone()),
                CatalogOp::Delete(k) => map.remove(&k.encode()),
            };
        }
        Ok(())
    }
}
