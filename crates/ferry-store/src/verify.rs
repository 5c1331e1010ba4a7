//! `ferry verify` and `ferry inspect`: an offline look at a data directory
//! that changes nothing.
//!
//! [`verify`] takes the lock of every storage root (so it refuses while a
//! server runs, naming the locked root) and checks, with the same codecs and
//! rules the store uses:
//!
//! - every catalog key parses and every value decodes; `config:` keys are
//!   present and agree with this binary;
//! - every `chunk:` key is `frozen`: a `freezing`/`pruning` key is an
//!   unfinished protocol step that the next start finishes (a warning);
//! - every frozen key has its pack file, whose length and SHA-256 match the
//!   key and which decodes fully with the key's ledger, chunk, first id,
//!   count and format version;
//! - every file under the ledgers root is accounted for by a key (orphans
//!   and stray `.pack.tmp` files are faults);
//! - every WAL segment decodes (a torn tail of the last segment is a
//!   warning: the next start cuts it; anything else is a fault naming the
//!   segment and offset); a `scrub:` key is an interrupted erasure of a
//!   deleted ledger's records (a warning), and the segments it names are
//!   checked as the next start leaves them once it has finished it;
//! - each ledger's ids are dense from its `first` up, across its packs and
//!   then its live WAL records (as recovery sees them: relocated copies
//!   replace originals; records of unlisted ledgers, of a name's earlier
//!   incarnation before `wal_from`, and of frozen chunks are dead), with
//!   timestamps never decreasing;
//! - every `cursor:` value decodes, names a listed ledger, is at most its
//!   head, and a `sent_to` in it (format 3) is after the cursor and at most
//!   the head;
//! - every `watch:` and `watchpos:` value decodes (format 4);
//! - each chained ledger's hash chain (format 5) holds from the hash before
//!   First through its packs and live WAL records: the first entry whose
//!   stored hash is not the one recomputed from the entry before is a
//!   fault naming the ledger and id (an edit the checksums cannot see).
//!
//! **Architecture Invariant:** nothing here writes to the data directory.
//! The catalog is opened read-only; a catalog that needs redb's crash
//! repair is repaired in a temporary copy outside the data directory. The
//! only file this may create is a root's lock file, if it is missing.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};

use ferry_core::LedgerName;
use ferry_core::limits::{FORMAT_VERSION, FORMAT_VERSION_OLDEST};
use ferry_format::chain;
use ferry_format::keys::{CatalogKey, ConfigName};
use ferry_format::segment::{self, SegmentEnd, SegmentRecords};
use redb::ReadableTable as _;

// The codecs `ferry inspect` prints files with, for crates that do not
// depend on `ferry-format` themselves.
pub use ferry_format::fingerprints;
pub use ferry_format::pack::{
    BlockMeta, DecodedPack, PACK_MAGIC, PackError, PackHeader, Trailer, decode_header, decode_pack,
};
pub use ferry_format::segment::{SegmentScan, SegmentStop, scan_segment};
pub use ferry_format::wal::{DecodeError, SEGMENT_MAGIC, WalRecord};

use crate::catalog::{CursorValue, LedgerMeta, TABLE};
use crate::config::StoreConfig;
use crate::error::{IoContext as _, Result, StoreError};
use crate::pack_protocols::{self, ChunkState, PackInfo, PackLayout};
use crate::recovery::{HotFault, HotRecords};
use crate::roots::{Roots, lock_roots};
use crate::wal::scrub::{self, ScrubIntent};
use crate::wal::segment_name;
use crate::watch_sessions::{WatchPositionRecord, WatchSessionRecord};
use ferry_fs::{RealFs, durable};

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Damage or an inconsistency: `ferry verify` exits 1.
    Fault,
    /// A state the next start resolves on its own (an unfinished protocol
    /// step, a torn last write).
    Warning,
}

/// One thing `verify` found, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    /// The file concerned (the catalog file for catalog keys).
    pub path: PathBuf,
    /// Byte offset in `path`, where one is known.
    pub offset: Option<u64>,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let level = match self.severity {
            Severity::Fault => "fault",
            Severity::Warning => "warning",
        };
        write!(f, "{level}: {}", self.path.display())?;
        if let Some(offset) = self.offset {
            write!(f, " at offset {offset}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// What `verify` found and what it looked at.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
    /// `ledger:` keys.
    pub ledgers: u64,
    /// Frozen pack files checked.
    pub packs: u64,
    /// Live entries: ids from each ledger's `first` to its head.
    pub entries: u64,
    /// WAL segment files decoded.
    pub segments: u64,
    /// Records decoded in those segments (live or not).
    pub wal_records: u64,
}

impl Report {
    pub fn faults(&self) -> usize {
        self.findings.iter().filter(|f| f.severity == Severity::Fault).count()
    }

    pub fn warnings(&self) -> usize {
        self.findings.iter().filter(|f| f.severity == Severity::Warning).count()
    }

    /// True when nothing is damaged (warnings allowed).
    pub fn is_ok(&self) -> bool {
        self.faults() == 0
    }

    /// One line: the counts and the verdict.
    pub fn summary(&self) -> String {
        format!(
            "{} ledgers, {} packs, {} entries, {} WAL segments ({} records): {} faults, {} warnings",
            self.ledgers,
            self.packs,
            self.entries,
            self.segments,
            self.wal_records,
            self.faults(),
            self.warnings()
        )
    }

    fn fault(&mut self, path: impl Into<PathBuf>, offset: Option<u64>, message: impl Into<String>) {
        let (path, message) = (path.into(), message.into());
        self.findings.push(Finding { severity: Severity::Fault, path, offset, message });
    }

    fn warn(&mut self, path: impl Into<PathBuf>, offset: Option<u64>, message: impl Into<String>) {
        let (path, message) = (path.into(), message.into());
        self.findings.push(Finding { severity: Severity::Warning, path, offset, message });
    }
}

/// Every catalog entry, raw and in key order, read without changing the
/// catalog file.
#[derive(Debug, Default)]
pub struct CatalogDump {
    pub entries: Vec<(String, Vec<u8>)>,
    /// Set when the file was not closed cleanly and a repaired temporary
    /// copy was read instead.
    pub repaired_copy: bool,
}

/// The catalog's entries under the roots' locks (for `ferry inspect`).
pub fn dump_catalog(config: &StoreConfig) -> Result<CatalogDump> {
    let locked = lock_roots(config)?;
    read_catalog(&locked.roots.catalog_file())
}

/// Reads every entry of the catalog file. The file is opened read-only; if
/// redb says it needs its crash repair (the last writer did not close it),
/// the repair runs on a temporary copy outside the data directory.
fn read_catalog(path: &Path) -> Result<CatalogDump> {
    let err = |what: &str, e: &dyn fmt::Display| StoreError::Catalog(format!("{what} {}: {e}", path.display()));
    if !path.is_file() {
        return Err(err("open", &"no such file"));
    }
    match redb::ReadOnlyDatabase::open(path) {
        Ok(db) => Ok(CatalogDump { entries: read_table(&db).map_err(|e| err("read", &e))?, repaired_copy: false }),
        Err(redb::DatabaseError::RepairAborted) => {
            let copy = std::env::temp_dir().join(format!(
                "ferry-verify-{}-{}.redb",
                std::process::id(),
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
            ));
            std::fs::copy(path, &copy).context(|| format!("copy {} to {}", path.display(), copy.display()))?;
            let read = redb::Database::open(&copy)
                .map_err(|e| err("repair a copy of", &e))
                .and_then(|db| read_table(&db).map_err(|e| err("read a repaired copy of", &e)));
            // The copy is ours, outside the data directory.
            let _ = durable::remove_file(&copy);
            Ok(CatalogDump { entries: read?, repaired_copy: true })
        }
        Err(e) => Err(err("open", &e)),
    }
}

fn read_table(db: &impl redb::ReadableDatabase) -> std::result::Result<Vec<(String, Vec<u8>)>, redb::Error> {
    let tx = db.begin_read()?;
    let table = match tx.open_table(TABLE) {
        Ok(t) => t,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for item in table.iter()? {
        let (k, v) = item?;
        out.push((k.value().to_owned(), v.value().to_vec()));
    }
    Ok(out)
}

/// `{seq:020}.wal` → seq; the canonical spelling is `segment_name`'s.
use ferry_format::segment::parse_segment_name as segment_seq;

/// What the check learns about one ledger on the way.
struct LedgerCheck {
    meta: LedgerMeta,
    /// Frozen chunks by number (from the catalog).
    frozen: BTreeMap<u64, PackInfo>,
    /// The first id not in a frozen chunk.
    hot_base: u64,
    /// The timestamp of the last id before `hot_base`.
    last_ts: u64,
    /// Frozen ids at or above `first`.
    frozen_entries: u64,
    /// The last id, as recovery sees it (`first - 1` when empty); known
    /// after `check_hot_ids`.
    head: u64,
    /// The highest id of an original (not relocated) live record.

    /// Live hot records: id → (segment, offset, ts); a later record of the
    /// same id (a relocated copy) replaces an earlier one.
    hot: HotRecords<(u64, u64)>,
}

/// Checks the data directory of `config` under the roots' locks. `Err` only
/// when the check cannot start (a locked or missing root); everything it
/// finds is in the report. One function per phase, in the order recovery
/// meets the same things.
pub fn verify(config: &StoreConfig) -> Result<Report> {
    let locked = lock_roots(config)?;
    let roots = &locked.roots;
    let mut report = Report::default();
    let catalog_file = roots.catalog_file();
    let Some(dump) = open_catalog(&mut report, &catalog_file) else { return Ok(report) };
    let layout = PackLayout { root: roots.ledgers.clone() };
    let mut keys = read_keys(&mut report, &catalog_file, &dump);
    let pinned = check_pinned(&mut report, &catalog_file, &keys);
    check_chunk_keys(&mut report, &catalog_file, &layout, &pinned, &mut keys);
    check_key_lists(&mut report, &catalog_file, &keys);
    check_ledger_files(&mut report, roots, &layout, &keys.chunks)?;
    check_frozen_ids(&mut report, &layout, &mut keys.ledgers);
    check_wal(&mut report, &roots.hot, pinned.format_version, &keys.scrubs, &mut keys.ledgers)?;
    check_hot_ids(&mut report, &roots.hot, &mut keys.ledgers);
    check_chains(&mut report, &layout, &roots.hot, &keys.ledgers);
    check_cursors(&mut report, &catalog_file, &keys);
    Ok(report)
}

/// Reads the catalog; a catalog that cannot be read is the one finding.
fn open_catalog(report: &mut Report, catalog_file: &Path) -> Option<CatalogDump> {
    match read_catalog(catalog_file) {
        Ok(dump) => {
            if dump.repaired_copy {
                report.warn(
                    catalog_file,
                    None,
                    "the catalog was not closed cleanly (a crash?); checked a repaired copy, the next start repairs it",
                );
            }
            Some(dump)
        }
        Err(e) => {
            report.fault(catalog_file, None, format!("cannot read the catalog: {e}"));
            None
        }
    }
}

/// What the catalog's keys say, each value decoded.
#[derive(Default)]
struct Keys {
    config: BTreeMap<ConfigName, u64>,
    ledgers: BTreeMap<LedgerName, LedgerCheck>,
    chunks: BTreeMap<(LedgerName, u64), ChunkState>,
    cursors: Vec<(LedgerName, LedgerName, CursorValue)>,
    last_incarnation: Option<u64>,
    /// `keys:` values: (ledger, chunk) → the raw fingerprint list.
    key_lists: BTreeMap<(LedgerName, u64), Vec<u8>>,
    /// `scrub:` values: deletions whose records a crash left half erased.
    scrubs: BTreeMap<LedgerName, ScrubIntent>,
}

/// Parses every key and decodes every value; what does not parse or decode
/// is a fault and is left out.
fn read_keys(report: &mut Report, catalog_file: &Path, dump: &CatalogDump) -> Keys {
    let mut keys = Keys::default();
    let decimal = |value: &[u8]| std::str::from_utf8(value).ok().and_then(|s| s.parse::<u64>().ok());
    for (raw_key, value) in &dump.entries {
        let key = match CatalogKey::parse(raw_key) {
            Ok(k) => k,
            Err(e) => {
                report.fault(catalog_file, None, e.to_string());
                continue;
            }
        };
        let not_decimal = || format!("{key}: not a decimal number: {value:?}");
        match &key {
            CatalogKey::Config(name) => match decimal(value) {
                Some(v) => {
                    keys.config.insert(*name, v);
                }
                None => report.fault(catalog_file, None, not_decimal()),
            },
            CatalogKey::Counter(_) => match decimal(value) {
                Some(v) => keys.last_incarnation = Some(v),
                None => report.fault(catalog_file, None, not_decimal()),
            },
            CatalogKey::Ledger(name) => match LedgerMeta::decode(&key, value) {
                Ok(meta) => {
                    keys.ledgers.insert(name.clone(), LedgerCheck::new(meta));
                }
                Err(e) => report.fault(catalog_file, None, format!("bad ledger metadata: {e}")),
            },
            CatalogKey::Chunk(ledger, chunk) => match ChunkState::decode(&key, value) {
                Ok(state) => {
                    keys.chunks.insert((ledger.clone(), *chunk), state);
                }
                Err(e) => report.fault(catalog_file, None, e.to_string()),
            },
            CatalogKey::Keys(ledger, chunk) => {
                keys.key_lists.insert((ledger.clone(), *chunk), value.clone());
            }
            CatalogKey::Cursor(exporter, ledger) => match serde_json::from_slice::<CursorValue>(value) {
                Ok(cursor) => keys.cursors.push((exporter.clone(), ledger.clone(), cursor)),
                Err(e) => report.fault(catalog_file, None, format!("{key}: bad cursor value: {e}")),
            },
            CatalogKey::Scrub(ledger) => match ScrubIntent::decode(&key, value) {
                Ok(intent) => {
                    let msg = format!(
                        "{key}: the deletion of ledger {ledger} stopped while its records were being scrubbed from \
                         the WAL; the next start finishes it"
                    );
                    report.warn(catalog_file, None, msg);
                    keys.scrubs.insert(ledger.clone(), intent);
                }
                Err(e) => report.fault(catalog_file, None, e.to_string()),
            },
            CatalogKey::Pin(_) => {
                if let Err(e) = crate::pins::Pin::decode(&key, value) {
                    report.fault(catalog_file, None, format!("bad snapshot pin: {e}"));
                }
            }
            CatalogKey::WatchSession(_) => {
                if let Err(e) = WatchSessionRecord::decode(&key, value) {
                    report.fault(catalog_file, None, format!("bad watch session: {e}"));
                }
            }
            CatalogKey::WatchPosition(..) => {
                if let Err(e) = WatchPositionRecord::decode(&key, value) {
                    report.fault(catalog_file, None, format!("bad watch position: {e}"));
                }
            }
        }
    }
    report.ledgers = keys.ledgers.len() as u64;
    keys
}

/// The pinned layout values the rest of the check relies on.
struct Pinned {
    /// `None` when missing or zero (reported).
    chunk_entries: Option<u64>,
    format_version: u32,
}

/// The `config:` keys, the format version, incarnations, and cursors of
/// ledgers that do not exist.
fn check_pinned(report: &mut Report, catalog_file: &Path, keys: &Keys) -> Pinned {
    let format_version = check_format_version(report, catalog_file, &keys.config);
    for name in ConfigName::ALL {
        // Format 3 brought the fingerprint key; the migration writes it.
        let expected = name != ConfigName::FingerprintKey || format_version >= 3;
        if expected && !keys.config.contains_key(&name) {
            report.fault(catalog_file, None, format!("config:{} is missing", name.as_str()));
        }
    }
    let chunk_entries = keys.config.get(&ConfigName::ChunkEntries).copied().filter(|n| *n > 0);
    check_incarnations(report, catalog_file, format_version, keys.last_incarnation, &keys.ledgers);
    for (exporter, ledger, _) in &keys.cursors {
        if !keys.ledgers.contains_key(ledger) {
            let msg =
                format!("cursor:{exporter}:{ledger}: a cursor of ledger {ledger}, which the catalog does not list");
            report.fault(catalog_file, None, msg);
        }
    }
    Pinned { chunk_entries, format_version }
}

/// Every `keys:` value belongs to a frozen (or pruning) chunk and decodes
/// against its entry count.
fn check_key_lists(report: &mut Report, catalog_file: &Path, keys: &Keys) {
    for ((ledger, chunk), value) in &keys.key_lists {
        let key = CatalogKey::Keys(ledger.clone(), *chunk);
        match keys.chunks.get(&(ledger.clone(), *chunk)) {
            Some(ChunkState::Frozen(info) | ChunkState::Pruning(info)) => {
                if let Err(e) = ferry_format::fingerprints::decode(value, info.count) {
                    report.fault(catalog_file, None, format!("{key}: {e}"));
                }
            }
            Some(ChunkState::Freezing) | None => {
                report.fault(catalog_file, None, format!("{key}: no frozen chunk:{ledger}:{chunk:08} accounts for it"));
            }
        }
    }
}

/// Every `chunk:` key against the layout, and its pack file against the key.
fn check_chunk_keys(report: &mut Report, catalog_file: &Path, layout: &PackLayout, pinned: &Pinned, keys: &mut Keys) {
    for ((ledger, chunk), state) in &keys.chunks {
        let path = layout.pack_path(ledger, *chunk);
        let key = CatalogKey::Chunk(ledger.clone(), *chunk);
        let info = match state {
            ChunkState::Freezing | ChunkState::Pruning(_) => {
                let step = if matches!(state, ChunkState::Freezing) { "freezing" } else { "pruning" };
                let msg = format!("{key} is {step}: an unfinished protocol step, the next start finishes it");
                report.warn(&path, None, msg);
                continue;
            }
            ChunkState::Frozen(info) => info,
        };
        report.packs += 1;
        if let Some(n) = pinned.chunk_entries
            && (chunk.checked_mul(n).and_then(|f| f.checked_add(1)) != Some(info.first_id) || info.count != n)
        {
            let msg = format!(
                "{key} says ids {}..={} but chunk {chunk} of {n} entries holds ids {}..={}",
                info.first_id,
                info.first_id.saturating_add(info.count).saturating_sub(1),
                chunk.saturating_mul(n).saturating_add(1),
                chunk.saturating_add(1).saturating_mul(n)
            );
            report.fault(catalog_file, None, msg);
        }
        let version = pinned.format_version;
        if !segment::version_readable(info.format_version, version) {
            let msg = format!("{key} has format version {}; the catalog pins {version}", info.format_version);
            report.fault(catalog_file, None, msg);
        }
        check_pack(report, &path, ledger, *chunk, info);
        match keys.ledgers.get_mut(ledger) {
            Some(l) => {
                l.frozen.insert(*chunk, info.clone());
            }
            None => {
                report.fault(catalog_file, None, format!("{key} is frozen but the catalog lists no ledger {ledger}"))
            }
        }
    }
}

/// Ids across packs, as recovery loads them (`recovery::load_frozen`).
fn check_frozen_ids(report: &mut Report, layout: &PackLayout, ledgers: &mut BTreeMap<LedgerName, LedgerCheck>) {
    for (name, l) in ledgers {
        for (chunk, info) in &l.frozen {
            let path = layout.pack_path(name, *chunk);
            if info.count == 0 || info.first_id == 0 {
                continue; // reported with the pack
            }
            let Some(last) = info.first_id.checked_add(info.count - 1) else {
                continue; // reported with the pack: no chunk holds such ids
            };
            if last < l.meta.first {
                let msg = format!("chunk {chunk} of ledger {name} ends below the ledger's first id {}", l.meta.first);
                report.warn(&path, None, msg);
                continue;
            }
            if info.first_id != l.hot_base {
                let msg = if info.first_id > l.hot_base {
                    format!("ledger {name}: ids {}..={} are in no frozen chunk", l.hot_base, info.first_id - 1)
                } else {
                    format!("ledger {name}: chunk {chunk} starts at id {} below id {}", info.first_id, l.hot_base)
                };
                report.fault(&path, None, msg);
            }
            if info.first_ts < l.last_ts {
                let msg = format!("ledger {name}: chunk {chunk} starts at ts {} after ts {}", info.first_ts, l.last_ts);
                report.fault(&path, None, msg);
            }
            l.frozen_entries += (last - info.first_id.max(l.meta.first)).saturating_add(1);
            l.hot_base = last.saturating_add(1);
            l.last_ts = info.last_ts;
        }
    }
}

/// Hot ids, as recovery installs them (`recovery::WalIndexer::install`).
fn check_hot_ids(report: &mut Report, hot: &Path, ledgers: &mut BTreeMap<LedgerName, LedgerCheck>) {
    for (name, l) in ledgers {
        l.head = l.hot_base.saturating_sub(1);
        for (id, (segment, offset), _, fault) in l.hot.in_order(l.hot_base, l.last_ts) {
            l.head = id;
            let path = hot.join(segment_name(segment));
            match fault {
                Some(HotFault::Gap { from, to }) => {
                    let msg = format!("ledger {name}: ids {from}..={to} are in neither a pack nor the WAL");
                    report.fault(&path, Some(offset), msg);
                }
                Some(HotFault::TsBack { ts, previous }) => {
                    report.fault(&path, Some(offset), format!("ledger {name}: ts {ts} of id {id} is before {previous}"))
                }
                None => {}
            }
        }
        report.entries += l.frozen_entries + l.hot.len() as u64;
    }
}

/// Walks every chained ledger's hash chain in id order, packs then live WAL
/// records (as recovery sees them), recomputing each link from the stored
/// entry; reports the first id where it breaks. Damage the other checks
/// found (a pack that does not decode, a gap) ends the walk of that ledger
/// quietly: it is reported already.
fn check_chains(report: &mut Report, layout: &PackLayout, hot: &Path, ledgers: &BTreeMap<LedgerName, LedgerCheck>) {
    let mut segments: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    for (name, l) in ledgers.iter().filter(|(_, l)| l.meta.chain) {
        let catalog_path = layout.ledger_dir(name);
        let start = match &l.meta.first_prev_hash {
            Some(text) => chain::from_hex(text),
            None if l.meta.first == 1 => Some(chain::genesis(name.as_str(), l.meta.incarnation)),
            None => None,
        };
        let Some(start) = start else {
            let msg =
                format!("ledger {name}: it has a hash chain but no valid first_prev_hash for First {}", l.meta.first);
            report.fault(&catalog_path, None, msg);
            continue;
        };
        let mut walk = ChainWalk { ledger: name, prev: start, next: l.meta.first, broken: false };
        for (chunk, info) in &l.frozen {
            if walk.broken || info.first_id.saturating_add(info.count) <= l.meta.first {
                continue;
            }
            let path = layout.pack_path(name, *chunk);
            let Ok(bytes) = std::fs::read(&path) else {
                walk.broken = true; // reported by `check_pack`
                break;
            };
            let mut records = Vec::new();
            let decoded = ferry_format::pack::decode_pack(&bytes, |r| {
                records.push((r.id, r.ts, r.key.map(str::to_owned), r.hash, r.payload.to_vec()));
            });
            if decoded.is_err() {
                walk.broken = true; // reported by `check_pack`
                break;
            }
            for (id, ts, key, hash, payload) in records.into_iter().filter(|r| r.0 >= l.meta.first) {
                let record = ChainRecord { id, ts, key: key.as_deref(), hash, payload: &payload };
                if let Err(msg) = walk.step(&record) {
                    report.fault(&path, None, msg);
                    break;
                }
            }
        }
        for (id, (seq, offset), _, fault) in l.hot.in_order(l.hot_base, l.last_ts) {
            if walk.broken || fault.is_some() {
                break;
            }
            let path = hot.join(segment_name(seq));
            if let std::collections::btree_map::Entry::Vacant(v) = segments.entry(seq) {
                v.insert(std::fs::read(&path).unwrap_or_default());
            }
            let bytes = &segments[&seq];
            let Some(Ok((r, _))) = bytes.get(offset as usize..).map(ferry_format::wal::decode_record) else {
                break; // reported by `check_wal`
            };
            let record = ChainRecord { id, ts: r.ts, key: r.key, hash: r.hash, payload: r.payload };
            if let Err(msg) = walk.step(&record) {
                report.fault(&path, Some(offset), msg);
            }
        }
    }
}

/// What of a stored entry its chain hash covers, and the hash it carries.
struct ChainRecord<'a> {
    id: u64,
    ts: u64,
    key: Option<&'a str>,
    hash: Option<chain::ChainHash>,
    payload: &'a [u8],
}

/// One ledger's chain, followed entry by entry.
struct ChainWalk<'a> {
    ledger: &'a LedgerName,
    prev: chain::ChainHash,
    next: u64,
    broken: bool,
}

impl ChainWalk<'_> {
    /// Checks the next entry's stored hash against the one recomputed from
    /// the previous hash and the entry; the first mismatch ends the walk.
    fn step(&mut self, r: &ChainRecord<'_>) -> std::result::Result<(), String> {
        let ledger = self.ledger;
        let expected = chain::link(&self.prev, r.id, r.ts, r.key, r.payload);
        let problem = match r.hash {
            _ if r.id != self.next => Some(format!("id {} where id {} was expected", r.id, self.next)),
            None => Some("it carries no hash".to_owned()),
            Some(stored) if stored != expected => Some(format!(
                "stored {}, recomputed {} (the entry or one before it was altered)",
                chain::to_hex(&stored),
                chain::to_hex(&expected)
            )),
            Some(_) => None,
        };
        if let Some(problem) = problem {
            self.broken = true;
            return Err(format!("ledger {ledger}: the hash chain breaks at id {}: {problem}", r.id));
        }
        (self.prev, self.next) = (expected, r.id + 1);
        Ok(())
    }
}

/// Every cursor of a listed ledger against its head: the cursor is at most
/// the head, and `sent_to`, the last id of a batch in flight, is after the
/// cursor and at most the head (the store writes nothing else).
fn check_cursors(report: &mut Report, catalog_file: &Path, keys: &Keys) {
    for (exporter, ledger, cursor) in &keys.cursors {
        let Some(head) = keys.ledgers.get(ledger).map(|l| l.head) else { continue }; // reported
        let key = format!("cursor:{exporter}:{ledger}");
        if cursor.id > head {
            report.fault(catalog_file, None, format!("{key}: cursor {} is beyond the head {head}", cursor.id));
        }
        match cursor.sent_to {
            Some(to) if to <= cursor.id => {
                let msg = format!("{key}: sent_to {to} is not after the cursor {}", cursor.id);
                report.fault(catalog_file, None, msg);
            }
            Some(to) if to > head => {
                report.fault(catalog_file, None, format!("{key}: sent_to {to} is beyond the head {head}"));
            }
            _ => {}
        }
    }
}

/// The pinned format version: this build's, or an older one it knows (the
/// next start migrates it: a warning); anything else is a fault.
fn check_format_version(report: &mut Report, catalog_file: &Path, config: &BTreeMap<ConfigName, u64>) -> u32 {
    match config.get(&ConfigName::FormatVersion).and_then(|v| u32::try_from(*v).ok()) {
        Some(v) if v == FORMAT_VERSION => v,
        Some(v) if (FORMAT_VERSION_OLDEST..FORMAT_VERSION).contains(&v) => {
            let msg = format!("config:format_version is {v}; the next start migrates it to {FORMAT_VERSION}");
            report.warn(catalog_file, None, msg);
            v
        }
        Some(v) => {
            let msg = format!(
                "config:format_version is {v}; this ferry reads versions {FORMAT_VERSION_OLDEST}..={FORMAT_VERSION}"
            );
            report.fault(catalog_file, None, msg);
            FORMAT_VERSION
        }
        None => FORMAT_VERSION, // reported as missing
    }
}

/// From format 2 on, every ledger has a distinct incarnation no higher than
/// `counter:incarnation`.
fn check_incarnations(
    report: &mut Report,
    catalog_file: &Path,
    format_version: u32,
    last: Option<u64>,
    ledgers: &BTreeMap<LedgerName, LedgerCheck>,
) {
    if format_version < 2 {
        return; // assigned by the migration at the next start
    }
    let last = last.unwrap_or(0);
    let mut seen = BTreeMap::new();
    for (name, l) in ledgers {
        let n = l.meta.incarnation;
        if n == 0 || n > last {
            let msg = format!("ledger:{name} has incarnation {n}, outside 1..=counter:incarnation ({last})");
            report.fault(catalog_file, None, msg);
        } else if let Some(other) = seen.insert(n, name) {
            report.fault(catalog_file, None, format!("ledgers {other} and {name} share incarnation {n}"));
        }
    }
}

impl LedgerCheck {
    fn new(meta: LedgerMeta) -> Self {
        Self {
            hot_base: meta.first,
            meta,
            frozen: BTreeMap::new(),
            last_ts: 0,
            frozen_entries: 0,
            head: 0,
            hot: HotRecords::default(),
        }
    }
}

/// Checks one frozen chunk's pack file against its key; at most one fault.
fn check_pack(report: &mut Report, path: &Path, ledger: &LedgerName, chunk: u64, info: &PackInfo) {
    let file = match ferry_fs::vfs::Vfs::open_read(&ferry_fs::RealFs, path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            report.fault(path, None, format!("missing pack file: chunk:{ledger}:{chunk:08} is frozen"));
            return;
        }
        Err(e) => {
            report.fault(path, None, format!("cannot read the pack file: {e}"));
            return;
        }
    };
    if let Err(damage) = pack_protocols::check_pack_bytes(&pack_protocols::ReadSource(&*file), ledger, chunk, info) {
        let msg = format!("corrupted pack of chunk:{ledger}:{chunk:08}: {}", damage.problems.join("; "));
        report.fault(path, damage.offset, msg);
    }
}

/// Every file under the ledgers root must be a pack some key accounts for.
fn check_ledger_files(
    report: &mut Report,
    roots: &Roots,
    layout: &PackLayout,
    chunk_keys: &BTreeMap<(LedgerName, u64), ChunkState>,
) -> Result<()> {
    let root = &layout.root;
    // Other roots (and lock files) may live inside the ledgers root when
    // configured so; they are not its content.
    let others: HashSet<PathBuf> = [&roots.data_dir, &roots.catalog, &roots.hot]
        .into_iter()
        .filter_map(|r| std::fs::canonicalize(r).ok())
        .collect();
    let is_other = |p: &Path| std::fs::canonicalize(p).is_ok_and(|c| others.contains(&c));
    // Files one and two levels down, where `walk_packs` looks for none.
    let list = |dir: &Path| -> Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for item in std::fs::read_dir(dir).context(|| format!("list {}", dir.display()))? {
            out.push(item.context(|| format!("list {}", dir.display()))?.path());
        }
        out.sort();
        Ok(out)
    };
    for top in list(root)? {
        let name = top.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if [durable::LOCK_FILE, durable::ROOT_LOCK_FILE].contains(&name) || is_other(&top) {
            continue;
        }
        if !top.is_dir() {
            report.fault(&top, None, "a stray file in the ledgers root that no catalog key accounts for");
            continue;
        }
        for bucket in list(&top)? {
            if !bucket.is_dir() {
                report.fault(&bucket, None, "a stray file in a ledger directory that no catalog key accounts for");
            }
        }
    }
    for (dir, name) in pack_protocols::walk_packs(&RealFs, root)? {
        let path = dir.join(&name);
        if dir.parent().is_some_and(is_other) {
            continue;
        }
        if path.is_dir() {
            report.fault(&path, None, "a stray directory inside a bucket that no catalog key accounts for");
            continue;
        }
        if let Some(pack_name) = name.strip_suffix(".tmp") {
            let owner = pack_protocols::parse_pack_path(layout, &dir.join(pack_name));
            let freezing = owner.and_then(|o| chunk_keys.get(&o)).is_some_and(|s| matches!(s, ChunkState::Freezing));
            if !freezing {
                report.fault(&path, None, "a temporary pack file that no freezing key owns (orphan)");
            }
            continue;
        }
        match pack_protocols::parse_pack_path(layout, &path) {
            Some(owner) if chunk_keys.contains_key(&owner) => {}
            Some((ledger, chunk)) => {
                let msg = format!("orphan pack file: no catalog key chunk:{ledger}:{chunk:08} accounts for it");
                report.fault(&path, None, msg);
            }
            None => report.fault(&path, None, "orphan file: not a pack path, and no catalog key accounts for it"),
        }
    }
    Ok(())
}

/// Decodes every segment, and collects each ledger's live hot records the
/// way `recovery::WalIndexer::visit` does. A segment an interrupted scrub
/// names is checked as the next start leaves it, once it has finished the
/// scrub (in memory: nothing is written).
fn check_wal(
    report: &mut Report,
    hot: &Path,
    format_version: u32,
    scrubs: &BTreeMap<LedgerName, ScrubIntent>,
    ledgers: &mut BTreeMap<LedgerName, LedgerCheck>,
) -> Result<()> {
    let segments = list_segments(report, hot)?;
    let last = segments.last().map(|(seq, _)| *seq);
    for (seq, path) in segments {
        let is_last = Some(seq) == last;
        let mut bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                report.fault(&path, None, format!("cannot read the segment: {e}"));
                continue;
            }
        };
        for (ledger, intent) in scrubs {
            let Some(seq) = u32::try_from(seq).ok().filter(|s| intent.segments.contains(s)) else { continue };
            let end = intent.end_in(seq).unwrap_or(bytes.len() as u64);
            if let Err(damage) = scrub::scrub_bytes(&mut bytes, ledger.as_str(), end) {
                let msg = format!("the next start cannot finish scrubbing ledger {ledger}: {}", damage.reason);
                report.fault(&path, Some(damage.offset), msg);
            }
        }
        report.segments += 1;
        let mut records = match SegmentRecords::new(&bytes) {
            Err(_) if is_last && segment::is_torn_header(&bytes, format_version) => {
                let msg = "header torn by a crash while the segment was created; the next start rewrites it";
                report.warn(&path, Some(0), msg);
                continue;
            }
            Err(e) => {
                report.fault(&path, Some(0), e.to_string());
                continue;
            }
            Ok((v, _)) if !segment::version_readable(v, format_version) => {
                report.fault(
                    &path,
                    Some(0),
                    format!("segment has format version {v}; the catalog pins {format_version}"),
                );
                continue;
            }
            Ok((_, records)) => records,
        };
        let mut decoded = Vec::new();
        decoded.extend(records.by_ref());
        report.wal_records += decoded.len() as u64;
        judge_segment_end(report, &path, &records, is_last, bytes.len() as u64);
        for (offset, _, record) in decoded.iter().take_while(|(o, _, _)| *o < records.batches_end) {
            collect_live_record(report, &path, seq, *offset, record, ledgers);
        }
    }
    Ok(())
}

/// Every file of the hot root that is a segment, in order; anything else is
/// reported.
fn list_segments(report: &mut Report, hot: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for item in std::fs::read_dir(hot).context(|| format!("list {}", hot.display()))? {
        let item = item.context(|| format!("list {}", hot.display()))?;
        let (path, name) = (item.path(), item.file_name());
        let name = name.to_string_lossy();
        if name == durable::LOCK_FILE || name == durable::ROOT_LOCK_FILE || path.is_dir() {
            continue;
        }
        match segment_seq(&name) {
            Some(seq) if seq <= u64::from(u32::MAX) => segments.push((seq, path)),
            Some(_) => report.fault(&path, None, "WAL segment number out of range"),
            None => report.warn(&path, None, "not a WAL segment; the store ignores it"),
        }
    }
    segments.sort();
    Ok(segments)
}

/// Reports how a segment ends, by the rules recovery applies.
fn judge_segment_end(report: &mut Report, path: &Path, records: &SegmentRecords<'_>, is_last: bool, len: u64) {
    match (records.end(is_last), &records.stop) {
        (SegmentEnd::Clean, _) => {}
        (SegmentEnd::Torn { .. }, Some(stop)) => report.warn(
            path,
            Some(stop.offset),
            format!(
                "torn tail of the last segment ({} bytes: {}); the next start cuts it",
                len - stop.offset,
                stop.error
            ),
        ),
        (SegmentEnd::Torn { keep }, None) => report.warn(
            path,
            Some(keep),
            "an append batch cut short at the end of the last segment; the next start drops it whole",
        ),
        (SegmentEnd::Damaged { offset, reason }, _) => report.fault(path, Some(offset), reason),
    }
}

/// One record of a complete batch: live unless its ledger is gone, it
/// belongs to an earlier incarnation of the name, or a pack holds its id.
fn collect_live_record(
    report: &mut Report,
    path: &Path,
    seq: u64,
    offset: u64,
    record: &WalRecord<'_>,
    ledgers: &mut BTreeMap<LedgerName, LedgerCheck>,
) {
    let Some(l) = LedgerName::parse(record.ledger).ok().and_then(|n| ledgers.get_mut(&n)) else {
        return; // a deleted ledger's record
    };
    if HotRecords::<(u64, u64)>::is_dead(l.meta.wal_from, (seq, offset), record.id, l.hot_base) {
        return; // an earlier ledger of the name, or frozen
    }
    if let Err(reason) = l.hot.offer(record.id, record.ts, (seq, offset), record.relocated) {
        report.fault(path, Some(offset), format!("ledger {}: {reason}", record.ledger));
    }
}
