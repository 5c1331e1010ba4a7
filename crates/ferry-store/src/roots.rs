//! The storage roots (SPEC §3: data dir, catalog, hot, ledgers; each may
//! be placed elsewhere) and their locks: one owner per root (SPEC §2.7).

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;

use ferry_fs::durable;

use crate::config::StoreConfig;
use crate::error::{IoContext as _, Result, StoreError};

/// The storage roots of a configuration.
#[derive(Debug, Clone)]
pub struct Roots {
    pub data_dir: PathBuf,
    pub catalog: PathBuf,
    pub hot: PathBuf,
    pub ledgers: PathBuf,
}

impl Roots {
    pub fn of(config: &StoreConfig) -> Self {
        let root = |dir: &Option<PathBuf>, default: &str| dir.clone().unwrap_or_else(|| config.data_dir.join(default));
        Self {
            data_dir: config.data_dir.clone(),
            catalog: root(&config.catalog_dir, "catalog"),
            hot: root(&config.hot_dir, "hot"),
            ledgers: root(&config.ledgers_dir, "ledgers"),
        }
    }

    pub fn catalog_file(&self) -> PathBuf {
        self.catalog.join(crate::RedbCatalog::FILE)
    }

    /// Each root with the name of its lock file.
    fn with_lock_names(&self) -> [(&PathBuf, &'static str); 4] {
        [
            (&self.data_dir, durable::LOCK_FILE),
            (&self.catalog, durable::ROOT_LOCK_FILE),
            (&self.hot, durable::ROOT_LOCK_FILE),
            (&self.ledgers, durable::ROOT_LOCK_FILE),
        ]
    }
}

/// The roots with their flocks held (released on drop).
#[derive(Debug)]
pub struct LockedRoots {
    pub roots: Roots,
    pub(crate) locks: Vec<File>,
}

/// Takes the flock of every storage root (a root that is the same directory
/// as another is locked once), without creating any directory: a missing
/// root is an error. What offline tools (`ferry verify`, `inspect`) use.
pub fn lock_roots(config: &StoreConfig) -> Result<LockedRoots> {
    lock(Roots::of(config), false)
}

/// Creates missing roots (durably) and takes their flocks: what
/// `Store::open` does first.
pub(crate) fn create_and_lock(config: &StoreConfig) -> Result<LockedRoots> {
    lock(Roots::of(config), true)
}

fn lock(roots: Roots, create: bool) -> Result<LockedRoots> {
    let mut locks = Vec::new();
    let mut locked = HashSet::new();
    for (root, lock_name) in roots.with_lock_names() {
        if create {
            durable::create_dir_all(root)?;
        } else if !root.is_dir() {
            let e = std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory");
            return Err(StoreError::io(format!("open storage root {}", root.display()), e));
        }
        let canonical = std::fs::canonicalize(root).context(|| format!("resolve {}", root.display()))?;
        if locked.insert(canonical) {
            locks.push(durable::lock_root(root, lock_name)?);
        }
    }
    Ok(LockedRoots { roots, locks })
}
