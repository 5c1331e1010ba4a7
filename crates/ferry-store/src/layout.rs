//! The pinned layout and the format policy (`docs/format.md`, "Format
//! versions"): `chunk_entries` and `format_version` are written at first
//! start; a later start refuses a different `chunk_entries`, migrates a
//! data directory of an older format version it knows (one catalog commit
//! per step, logged), and refuses a version newer than it knows.

use ferry_core::limits::{CHUNK_ENTRIES_DEFAULT, FORMAT_VERSION, FORMAT_VERSION_OLDEST};
use ferry_format::keys::{CatalogKey, ConfigName, CounterName};

use crate::catalog::{Catalog, CatalogOp, LedgerMeta};
use crate::{Result, StoreError};

/// Writes the layout values on first start; on later starts refuses a
/// configuration that disagrees with them and brings an older format up to
/// this build's. Returns the pinned `chunk_entries`.
pub(crate) fn pin(catalog: &dyn Catalog, chunk_entries: Option<u64>) -> Result<u64> {
    let mut ops = Vec::new();
    let chunk = match (read_u64(catalog, &CatalogKey::Config(ConfigName::ChunkEntries))?, chunk_entries) {
        (Some(p), Some(c)) if p != c => return Err(mismatch(ConfigName::ChunkEntries, p, c)),
        (Some(p), _) => p,
        (None, c) => {
            let c = c.unwrap_or(CHUNK_ENTRIES_DEFAULT);
            ops.push(put_u64(CatalogKey::Config(ConfigName::ChunkEntries), c));
            c
        }
    };
    let first_start = ops.len() == 1; // `chunk_entries` was not pinned yet
    match read_u64(catalog, &CatalogKey::Config(ConfigName::FormatVersion))? {
        None if first_start => {
            ops.push(put_u64(CatalogKey::Config(ConfigName::FormatVersion), FORMAT_VERSION.into()));
            ops.push(put_u64(CatalogKey::Config(ConfigName::FingerprintKey), rand::random()));
        }
        // Pinning it now would skip the migrations the data may need.
        None => return Err(StoreError::CatalogCorrupted("config:format_version is missing".into())),
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) if (u64::from(FORMAT_VERSION_OLDEST)..u64::from(FORMAT_VERSION)).contains(&v) => {
            migrate(catalog, v as u32)?
        }
        Some(v) => {
            return Err(StoreError::UnknownFormat { found: v, oldest: FORMAT_VERSION_OLDEST, newest: FORMAT_VERSION });
        }
    }
    if !ops.is_empty() {
        catalog.commit(&ops)?;
    }
    Ok(chunk)
}

/// Runs every migration step from `from` up to `FORMAT_VERSION`, each one
/// catalog commit that also moves `config:format_version`, so a crash
/// between steps resumes at the next one.
fn migrate(catalog: &dyn Catalog, from: u32) -> Result<()> {
    for version in from..FORMAT_VERSION {
        let mut ops = match version {
            1 => durable_incarnations(catalog)?,
            2 => fingerprint_key_op(catalog)?.into_iter().collect(),
            // 3 → 4 adds the watch session keys; nothing older changes.
            3 => Vec::new(),
            // 4 → 5 adds the hash chain to ledgers created from now on;
            // ledgers created before stay without one (no `chain` key).
            4 => Vec::new(),
            // 5 → 6 adds the snapshot pins (`pin:` keys); nothing older
            // changes.
            5 => Vec::new(),
            _ => unreachable!("FORMAT_VERSION_OLDEST..FORMAT_VERSION has a step for each version"),
        };
        let changed = ops.len();
        ops.push(put_u64(CatalogKey::Config(ConfigName::FormatVersion), u64::from(version + 1)));
        catalog.commit(&ops)?;
        tracing::info!(from = version, to = version + 1, changed, "migrated the data directory's format version");
    }
    Ok(())
}

/// 1 → 2: every ledger gets a durable incarnation (in name order) and
/// `counter:incarnation` the last one handed out.
fn durable_incarnations(catalog: &dyn Catalog) -> Result<Vec<CatalogOp>> {
    let mut last = read_u64(catalog, &CatalogKey::Counter(CounterName::Incarnation))?.unwrap_or(0);
    let mut ops = Vec::new();
    for (key, value) in catalog.scan(CatalogKey::LEDGER_PREFIX)? {
        let mut meta = LedgerMeta::decode(&key, &value)?;
        if meta.incarnation == 0 {
            last += 1;
            meta.incarnation = last;
            ops.push(CatalogOp::Put(key, meta.encode()));
        }
    }
    ops.push(put_u64(CatalogKey::Counter(CounterName::Incarnation), last));
    Ok(ops)
}

/// 2 → 3: the data directory gets its secret fingerprint key. Chunks frozen
/// before have no `keys:` value; recovery reads their packs instead.
fn fingerprint_key_op(catalog: &dyn Catalog) -> Result<Option<CatalogOp>> {
    let present = read_u64(catalog, &CatalogKey::Config(ConfigName::FingerprintKey))?.is_some();
    Ok((!present).then(|| put_u64(CatalogKey::Config(ConfigName::FingerprintKey), rand::random())))
}

/// The secret key of the idempotency-key fingerprints (pinned at first
/// start, or by the migration to format 3).
pub(crate) fn fingerprint_key(catalog: &dyn Catalog) -> Result<u64> {
    read_u64(catalog, &CatalogKey::Config(ConfigName::FingerprintKey))?
        .ok_or_else(|| StoreError::CatalogCorrupted("config:fingerprint_key is missing".into()))
}

/// The last incarnation handed out (0 before the first ledger).
pub(crate) fn last_incarnation(catalog: &dyn Catalog) -> Result<u64> {
    Ok(read_u64(catalog, &CatalogKey::Counter(CounterName::Incarnation))?.unwrap_or(0))
}

/// The catalog op recording `n` as the last incarnation handed out.
pub(crate) fn set_last_incarnation(n: u64) -> CatalogOp {
    put_u64(CatalogKey::Counter(CounterName::Incarnation), n)
}

/// Reads a decimal value (`config:` and `counter:` keys are plain text, so
/// `ferry inspect` prints them as they are).
fn read_u64(catalog: &dyn Catalog, key: &CatalogKey) -> Result<Option<u64>> {
    let Some(bytes) = catalog.get(key)? else { return Ok(None) };
    let value = std::str::from_utf8(&bytes).ok().and_then(|s| s.parse().ok());
    value
        .map(Some)
        .ok_or_else(|| StoreError::CatalogCorrupted(format!("{key} holds {:?}", String::from_utf8_lossy(&bytes))))
}

fn put_u64(key: CatalogKey, value: u64) -> CatalogOp {
    CatalogOp::Put(key, value.to_string().into_bytes())
}

fn mismatch(name: ConfigName, pinned: u64, configured: u64) -> StoreError {
    StoreError::PinnedMismatch { name: name.as_str(), pinned: pinned.to_string(), configured: configured.to_string() }
}
