//! The pack protocols of SPEC §3, on any `Vfs` and `Catalog`:
//!
//! - **freeze** (mark-then-write): `freezing` key (synced) → write
//!   `….pack.tmp` (create-new) → fsync → rename → fsync the bucket dir (and
//!   its parents when just created) → read back and check → `frozen` key.
//! - **sweep**: `frozen` → `pruning` (synced) → unlink → fsync the bucket
//!   dir → delete the key.
//! - **finish_interrupted**: before serving, finish every `freezing` (remove its
//!   files; the freezer redoes the chunk) and `pruning` key, and check every
//!   `frozen` key has its complete file.
//!
//! **Architecture Invariant:** at every instant every pack file has a key,
//! and a `frozen` key's file is complete; a crash anywhere is finished by
//! `finish_interrupted`. Each step has a fail point (feature `failpoints`).

use std::path::{Path, PathBuf};

use ferry_core::{EntryId, LedgerName};
use ferry_format::chain::{self, ChainHash};
use ferry_format::fingerprints::{self, fingerprint};
use ferry_format::keys::CatalogKey;
use ferry_format::pack::{PackError, PackHeader, PackSource, PackWriter, decode_pack_from, stream_pieces};
use ferry_format::wal::WalRecord;
use sha2::Digest as _;

use crate::catalog::{Catalog, CatalogOp};
use crate::error::{IoContext as _, Result, StoreError};
use ferry_fs::vfs::{Vfs, VfsFile, VfsRead};

/// What the catalog holds under `chunk:{ledger}:{chunk:08}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "lowercase", deny_unknown_fields)]
pub enum ChunkState {
    Freezing,
    Frozen(PackInfo),
    Pruning(PackInfo),
}

/// A frozen pack, as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackInfo {
    pub len: u64,
    /// Lower-case hex SHA-256 of the whole file.
    pub sha256: String,
    pub format_version: u32,
    pub first_id: EntryId,
    pub count: u64,
    pub first_ts: u64,
    pub last_ts: u64,
    /// Records carrying an idempotency key: such a chunk is kept until the
    /// keys' 24 h window has passed, whatever the retention says.
    #[serde(default)]
    pub idempotency_keys: u64,
    /// The chain hash of the chunk's last entry (format 5, a chained
    /// ledger): what the ledger's `first_prev_hash` becomes when retention
    /// prunes the chunk, so what is left still verifies from First.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_hash: Option<String>,
}

impl PackInfo {
    pub fn last_id(&self) -> EntryId {
        self.first_id + self.count - 1
    }

    /// The header the pack this key describes must carry.
    pub fn header(&self, ledger: &LedgerName, chunk: u64) -> PackHeader {
        PackHeader {
            format_version: self.format_version,
            ledger: ledger.to_string(),
            chunk,
            first_id: self.first_id,
            count: self.count,
        }
    }
}

impl ChunkState {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("chunk state serialises")
    }

    pub fn decode(key: &CatalogKey, bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::CatalogCorrupted(format!("{key}: {e}")))
    }
}

/// Where packs live: `{root}/{ledger}/{bucket:05}/{chunk:08}.pack`.
#[derive(Debug, Clone)]
pub struct PackLayout {
    pub root: PathBuf,
}

const PACK_SUFFIX: &str = ".pack";
const TMP_SUFFIX: &str = ".pack.tmp";

impl PackLayout {
    pub fn ledger_dir(&self, ledger: &LedgerName) -> PathBuf {
        self.root.join(ledger.as_str())
    }

    pub fn bucket_dir(&self, ledger: &LedgerName, chunk: u64) -> PathBuf {
        self.ledger_dir(ledger).join(format!("{:05}", chunk / 1000))
    }

    pub fn pack_path(&self, ledger: &LedgerName, chunk: u64) -> PathBuf {
        self.bucket_dir(ledger, chunk).join(format!("{chunk:08}{PACK_SUFFIX}"))
    }

    pub fn tmp_path(&self, ledger: &LedgerName, chunk: u64) -> PathBuf {
        self.bucket_dir(ledger, chunk).join(format!("{chunk:08}{TMP_SUFFIX}"))
    }
}

/// A record to freeze, with everything a pack keeps.
#[derive(Debug, Clone)]
pub struct OwnedRecord {
    pub id: EntryId,
    pub ts: u64,
    pub key: Option<String>,
    pub idempotency_key: Option<String>,
    /// The entry's chain hash, when its ledger has a chain.
    pub hash: Option<ChainHash>,
    pub payload: String,
}

impl OwnedRecord {
    /// The record as the codecs take it (no write-path flags).
    pub fn as_record<'a>(&'a self, ledger: &'a str) -> WalRecord<'a> {
        WalRecord {
            ledger,
            id: self.id,
            ts: self.ts,
            key: self.key.as_deref(),
            idempotency_key: self.idempotency_key.as_deref(),
            batch_continues: false,
            group_start: false,
            relocated: false,
            hash: self.hash,
            payload: self.payload.as_bytes(),
        }
    }
}

macro_rules! step {
    ($name:literal) => {
        // `return(enospc)` fails as a full disk does; plain `return` as EIO.
        fail::fail_point!($name, |arg: Option<String>| Err(StoreError::io(
            concat!("fail point ", $name),
            match arg.as_deref() {
                Some("enospc") => std::io::Error::from_raw_os_error(28),
                _ => std::io::Error::other("injected"),
            }
        )));
    };
}

fn io_err(what: impl Fn() -> String) -> impl Fn(std::io::Error) -> StoreError {
    move |e| StoreError::io(what(), e)
}

/// What the catalog pins that a freeze needs.
#[derive(Debug, Clone, Copy)]
pub struct Pinned {
    pub chunk_entries: u64,
    pub format_version: u32,
    /// `config:fingerprint_key`.
    pub fingerprint_key: u64,
}

/// Freezes chunk `chunk` of `ledger` from `records` (exactly the chunk's
/// ids, in order) by the mark-then-write protocol. Returns what the
/// `frozen` key now says. Every input is explicit so the protocol runs the
/// same on the real disk and the simulated one.
pub fn freeze(
    vfs: &dyn Vfs,
    catalog: &dyn Catalog,
    layout: &PackLayout,
    ledger: &LedgerName,
    chunk: u64,
    pinned: &Pinned,
    records: &mut dyn Iterator<Item = Result<OwnedRecord>>,
) -> Result<PackInfo> {
    let Pinned { chunk_entries, format_version, fingerprint_key } = *pinned;
    let key = CatalogKey::Chunk(ledger.clone(), chunk);
    catalog.commit(&[CatalogOp::Put(key.clone(), ChunkState::Freezing.encode())])?;
    step!("freeze::marked");

    let (ledger_dir, bucket) = (layout.ledger_dir(ledger), layout.bucket_dir(ledger, chunk));
    ensure_dir(vfs, &ledger_dir)?;
    ensure_dir(vfs, &bucket)?;
    let (tmp, path) = (layout.tmp_path(ledger, chunk), layout.pack_path(ledger, chunk));
    let file = vfs.create_new(&tmp).map_err(io_err(|| format!("create {}", tmp.display())))?;
    let header = PackHeader {
        format_version,
        ledger: ledger.to_string(),
        chunk,
        first_id: chunk * chunk_entries + 1,
        count: chunk_entries,
    };
    // The fingerprints of the chunk's idempotency keys, for `keys:`.
    let first_id = header.first_id;
    let mut fingerprints = Vec::new();
    let mut tapped = records.inspect(|r| {
        if let Ok(r) = r
            && let Some(k) = &r.idempotency_key
        {
            fingerprints.push(((r.id - first_id) as u32, fingerprint(fingerprint_key, k)));
        }
    });
    let written = write_pack(file, header, &mut tapped)
        .map_err(|e| match e {
            PackWriteError::Store(e) => e,
            PackWriteError::Pack(ferry_format::pack::PackError::Io(e)) => {
                StoreError::io(format!("write {}", tmp.display()), e)
            }
            PackWriteError::Pack(e) => StoreError::io(format!("write {}", tmp.display()), std::io::Error::other(e)),
        })
        .and_then(|(mut written, info)| {
            step!("freeze::written");
            written.sync().map_err(io_err(|| format!("fdatasync {}", tmp.display())))?;
            Ok(info)
        });
    // A pack that could not be written (a full disk, say) is nobody's yet:
    // it goes, so the next attempt can create it anew. If it cannot go,
    // the caller poisons.
    let info = written.map_err(|e| match vfs.remove_file(&tmp) {
        Ok(()) => e,
        Err(rm) => StoreError::Io { context: format!("remove {} after: {e}", tmp.display()), source: rm },
    })?;
    step!("freeze::synced");
    vfs.rename(&tmp, &path).map_err(io_err(|| format!("rename {} to {}", tmp.display(), path.display())))?;
    step!("freeze::renamed");
    // The renamed entry, then every level above it, not only the levels
    // this call created: a directory made by an earlier attempt that
    // crashed or failed may not be durable yet.
    for dir in [&bucket, &ledger_dir, &layout.root] {
        vfs.sync_dir(dir).map_err(io_err(|| format!("fsync directory {}", dir.display())))?;
    }
    step!("freeze::dir_synced");
    check_pack(vfs, &path, ledger, chunk, &info)?;
    drop(tapped);
    let mut ops = vec![CatalogOp::Put(key, ChunkState::Frozen(info.clone()).encode())];
    if !fingerprints.is_empty() {
        ops.push(CatalogOp::Put(CatalogKey::Keys(ledger.clone(), chunk), fingerprints::encode(&fingerprints)));
    }
    catalog.commit(&ops)?;
    step!("freeze::frozen");
    Ok(info)
}

/// Creates `dir` if missing.
fn ensure_dir(vfs: &dyn Vfs, dir: &Path) -> Result<()> {
    match vfs.create_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::io(format!("create directory {}", dir.display()), e)),
    }
}

enum PackWriteError {
    Store(StoreError),
    Pack(ferry_format::pack::PackError),
}

/// A `VfsFile` that also hashes what goes through it.
struct Hashing {
    file: Box<dyn VfsFile>,
    sha: sha2::Sha256,
}

impl std::io::Write for Hashing {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write_all(buf)?;
        self.sha.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn write_pack(
    file: Box<dyn VfsFile>,
    header: PackHeader,
    records: &mut dyn Iterator<Item = Result<OwnedRecord>>,
) -> std::result::Result<(Box<dyn VfsFile>, PackInfo), PackWriteError> {
    let (first_id, count, format_version) = (header.first_id, header.count, header.format_version);
    let ledger = header.ledger.clone();
    let mut writer =
        PackWriter::new(Hashing { file, sha: sha2::Sha256::new() }, header).map_err(PackWriteError::Pack)?;
    let (mut first_ts, mut last_ts, mut idempotency_keys, mut last_hash) = (None, 0, 0, None);
    for r in records {
        let r = r.map_err(PackWriteError::Store)?;
        first_ts.get_or_insert(r.ts);
        last_ts = r.ts;
        idempotency_keys += u64::from(r.idempotency_key.is_some());
        last_hash = r.hash;
        writer.push(&r.as_record(&ledger)).map_err(PackWriteError::Pack)?;
    }
    let (hashing, len, _crc) = writer.finish().map_err(PackWriteError::Pack)?;
    let sha256 = hex(&hashing.sha.finalize());
    let first_ts = first_ts.unwrap_or(0);
    let last_hash = last_hash.as_ref().map(chain::to_hex);
    let info =
        PackInfo { len, sha256, format_version, first_id, count, first_ts, last_ts, idempotency_keys, last_hash };
    Ok((hashing.file, info))
}

/// A file opened through the `Vfs` as a `PackSource`.
pub(crate) struct ReadSource<'a>(pub &'a dyn VfsRead);

impl PackSource for ReadSource<'_> {
    fn byte_len(&self) -> std::io::Result<u64> {
        self.0.len()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.0.read_at(buf, offset)
    }
}

/// Reads a written pack back and checks it against what was written: the
/// second half of "assert in pairs".
fn check_pack(vfs: &dyn Vfs, path: &Path, ledger: &LedgerName, chunk: u64, info: &PackInfo) -> Result<()> {
    let file = vfs.open_read(path).context(|| format!("read back {}", path.display()))?;
    check_pack_bytes(&ReadSource(&*file), ledger, chunk, info).map_err(|damage| StoreError::CorruptedPack {
        ledger: ledger.clone(),
        chunk,
        path: path.to_path_buf(),
        offset: damage.offset.unwrap_or(0),
        reason: damage.problems.join("; "),
    })
}

/// What is wrong with a pack file's bytes, and where, if known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PackDamage {
    pub offset: Option<u64>,
    pub problems: Vec<String>,
}

/// The one check of a pack's bytes against its catalog key, used by the
/// freezer's read-back and by `ferry verify`, streamed (one block and one
/// piece in memory, whatever the pack's size): length and SHA-256, a full
/// checked decode, the header (ledger, chunk, first id, count, format
/// version), the record count, and timestamps in order and equal to the
/// key's first and last.
pub(crate) fn check_pack_bytes(
    source: &dyn PackSource,
    ledger: &LedgerName,
    chunk: u64,
    info: &PackInfo,
) -> std::result::Result<(), PackDamage> {
    let mut problems = Vec::new();
    let unreadable = |e: std::io::Error| PackDamage { offset: None, problems: vec![format!("cannot be read: {e}")] };
    let len = source.byte_len().map_err(unreadable)?;
    if len != info.len {
        problems.push(format!("{len} bytes; the catalog says {}", info.len));
    } else {
        let mut sha = sha2::Sha256::new();
        stream_pieces(source, len, |piece| sha.update(piece)).map_err(unreadable)?;
        if hex(&sha.finalize()) != info.sha256 {
            problems.push("SHA-256 differs from the catalog's".to_owned());
        }
    }
    let (mut seen, mut first_ts, mut last_ts, mut ts_order) = (0u64, None, 0u64, None);
    let decoded = decode_pack_from(source, |r| {
        seen += 1;
        first_ts.get_or_insert(r.ts);
        if r.ts < last_ts && ts_order.is_none() {
            ts_order = Some(format!("ts of id {} is before the previous record's", r.id));
        }
        last_ts = r.ts;
    });
    let mut offset = None;
    match decoded {
        Ok(pack) => {
            let (h, expected) = (&pack.header, info.header(ledger, chunk));
            if *h != expected || seen != info.count {
                problems.push(format!("header {h:?} with {seen} records does not match the catalog's {expected:?}"));
            } else if first_ts != Some(info.first_ts) || last_ts != info.last_ts {
                let (from, to) = (info.first_ts, info.last_ts);
                problems.push(format!("timestamps {first_ts:?}..{last_ts} differ from the catalog's {from}..{to}"));
            }
            problems.extend(ts_order);
        }
        Err(e) => {
            offset = match &e {
                PackError::Block { offset, .. } => Some(*offset),
                PackError::Header(_) => Some(0),
                _ => None,
            };
            problems.push(format!("does not decode: {e}"));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(PackDamage { offset, problems }) }
}

pub fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// Removes chunk `chunk` of `ledger` by the key-driven sweep. `with` are
/// catalog changes committed atomically with the demotion (e.g. the
/// ledger's new `first`).
pub fn sweep(
    vfs: &dyn Vfs,
    catalog: &dyn Catalog,
    layout: &PackLayout,
    ledger: &LedgerName,
    chunk: u64,
    info: &PackInfo,
    with: Vec<CatalogOp>,
) -> Result<()> {
    demote(catalog, ledger, chunk, info, with)?;
    sweep_demoted(vfs, catalog, layout, ledger, chunk)
}

/// The sweep's first step: the chunk's key becomes `pruning`, with `with`
/// in the same commit. Until it is durable nothing has changed.
pub fn demote(
    catalog: &dyn Catalog,
    ledger: &LedgerName,
    chunk: u64,
    info: &PackInfo,
    with: Vec<CatalogOp>,
) -> Result<()> {
    let key = CatalogKey::Chunk(ledger.clone(), chunk);
    let mut ops = vec![CatalogOp::Put(key, ChunkState::Pruning(info.clone()).encode())];
    ops.extend(with);
    catalog.commit(&ops)?;
    step!("sweep::demoted");
    Ok(())
}

/// The part of the sweep after the `pruning` key is durable: unlink, fsync
/// the bucket, delete the key. Also what recovery runs for a `pruning` key.
pub fn sweep_demoted(
    vfs: &dyn Vfs,
    catalog: &dyn Catalog,
    layout: &PackLayout,
    ledger: &LedgerName,
    chunk: u64,
) -> Result<()> {
    let path = layout.pack_path(ledger, chunk);
    remove_if_present(vfs, &path)?;
    step!("sweep::unlinked");
    // Even when the file was already gone: an earlier attempt may have
    // unlinked it and crashed before this fsync.
    sync_dir_if_present(vfs, &layout.bucket_dir(ledger, chunk))?;
    step!("sweep::dir_synced");
    catalog.commit(&[
        CatalogOp::Delete(CatalogKey::Chunk(ledger.clone(), chunk)),
        CatalogOp::Delete(CatalogKey::Keys(ledger.clone(), chunk)),
    ])?;
    step!("sweep::deleted");
    Ok(())
}

/// fsyncs a directory if it exists.
fn sync_dir_if_present(vfs: &dyn Vfs, dir: &Path) -> Result<()> {
    match vfs.sync_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(StoreError::io(format!("fsync directory {}", dir.display()), e)),
    }
}

fn remove_if_present(vfs: &dyn Vfs, path: &Path) -> Result<bool> {
    match vfs.remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(StoreError::io(format!("remove {}", path.display()), e)),
    }
}

/// Removes a ledger's bucket directories and its own directory, and syncs
/// their parents; after a ledger's chunks were all swept. Only what is
/// ferry's goes: a file someone else left there (and the directories
/// holding it) stays, and is returned so the caller can report it; it is
/// no reason to fail the deletion.
pub fn remove_ledger_dirs(vfs: &dyn Vfs, layout: &PackLayout, ledger: &LedgerName) -> Result<Vec<PathBuf>> {
    let dir = layout.ledger_dir(ledger);
    let names = match vfs.list_dir(&dir) {
        Ok(names) => names,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StoreError::io(format!("list {}", dir.display()), e)),
    };
    let mut left = Vec::new();
    for name in names {
        let path = dir.join(&name);
        let is_bucket = name.len() == 5 && name.bytes().all(|b| b.is_ascii_digit());
        match is_bucket.then(|| vfs.list_dir(&path)) {
            Some(Ok(inside)) if inside.is_empty() => {
                vfs.remove_dir(&path).map_err(io_err(|| format!("remove directory {}", path.display())))?
            }
            Some(Ok(inside)) => left.extend(inside.into_iter().map(|n| path.join(n))),
            Some(Err(_)) | None => left.push(path),
        }
    }
    vfs.sync_dir(&dir).map_err(io_err(|| format!("fsync directory {}", dir.display())))?;
    if left.is_empty() {
        vfs.remove_dir(&dir).map_err(io_err(|| format!("remove directory {}", dir.display())))?;
        vfs.sync_dir(&layout.root).map_err(io_err(|| format!("fsync directory {}", layout.root.display())))?;
    }
    Ok(left)
}

/// What `recover` found: every frozen chunk, and files no key accounts for.
#[derive(Debug, Default)]
pub struct Recovered {
    pub frozen: Vec<(LedgerName, u64, PackInfo)>,
    pub orphans: Vec<PathBuf>,
}

/// Finishes every `freezing` and `pruning` key, checks every `frozen` key's
/// file is there with its length, removes stray temporary files, and lists
/// pack files without a key. Runs before serving.
pub fn finish_interrupted(vfs: &dyn Vfs, catalog: &dyn Catalog, layout: &PackLayout) -> Result<Recovered> {
    let mut out = Recovered::default();
    for (key, value) in catalog.scan(CatalogKey::CHUNK_PREFIX)? {
        let CatalogKey::Chunk(ledger, chunk) = &key else {
            return Err(StoreError::CatalogCorrupted(format!("{key} under the chunk prefix")));
        };
        match ChunkState::decode(&key, &value)? {
            ChunkState::Freezing => {
                remove_if_present(vfs, &layout.tmp_path(ledger, *chunk))?;
                remove_if_present(vfs, &layout.pack_path(ledger, *chunk))?;
                step!("recover::freezing_unlinked");
                // Also when nothing was left to remove: an earlier recovery
                // may have unlinked them and crashed before this fsync.
                sync_dir_if_present(vfs, &layout.bucket_dir(ledger, *chunk))?;
                catalog.commit(&[CatalogOp::Delete(key.clone())])?;
                tracing::info!(%ledger, chunk, "recovery: removed an unfinished freeze; it will be redone");
            }
            ChunkState::Pruning(_) => {
                sweep_demoted(vfs, catalog, layout, ledger, *chunk)?;
                tracing::info!(%ledger, chunk, "recovery: finished an interrupted sweep");
            }
            ChunkState::Frozen(info) => {
                let path = layout.pack_path(ledger, *chunk);
                let len = vfs.open_read(&path).and_then(|f| f.len()).ok();
                if len != Some(info.len) {
                    return Err(StoreError::CorruptedPack {
                        ledger: ledger.clone(),
                        chunk: *chunk,
                        path,
                        offset: 0,
                        reason: format!("the catalog says frozen with {} bytes; the file has {len:?}", info.len),
                    });
                }
                out.frozen.push((ledger.clone(), *chunk, info));
            }
        }
    }
    out.orphans = strays(vfs, catalog, layout)?;
    Ok(out)
}

/// Removes `.pack.tmp` files (no `freezing` key is left to own them) and
/// returns pack files that no `frozen` key accounts for.
fn strays(vfs: &dyn Vfs, catalog: &dyn Catalog, layout: &PackLayout) -> Result<Vec<PathBuf>> {
    let mut orphans = Vec::new();
    for (dir, name) in walk_packs(vfs, &layout.root)? {
        let path = dir.join(&name);
        if name.ends_with(TMP_SUFFIX) {
            remove_if_present(vfs, &path)?;
            vfs.sync_dir(&dir).map_err(io_err(|| format!("fsync directory {}", dir.display())))?;
            continue;
        }
        let owned = parse_pack_path(layout, &path)
            .map(|(l, c)| catalog.get(&CatalogKey::Chunk(l, c)))
            .transpose()?
            .flatten()
            .is_some();
        if !owned {
            tracing::warn!(file = %path.display(), "a pack file no catalog key accounts for");
            orphans.push(path);
        }
    }
    Ok(orphans)
}

/// Every file two levels below `root` (`{ledger}/{bucket}/{file}`), as
/// (directory, name).
pub fn walk_packs(vfs: &dyn Vfs, root: &Path) -> Result<Vec<(PathBuf, String)>> {
    let list = |dir: &Path| match vfs.list_dir(dir) {
        Ok(names) => Ok(names),
        // Not there, or a file (the root's lock file): nothing below it.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory) => {
            Ok(Vec::new())
        }
        Err(e) => Err(StoreError::io(format!("list {}", dir.display()), e)),
    };
    let mut out = Vec::new();
    for ledger in list(root)? {
        let ledger_dir = root.join(&ledger);
        for bucket in list(&ledger_dir)? {
            let bucket_dir = ledger_dir.join(&bucket);
            for name in list(&bucket_dir)? {
                out.push((bucket_dir.clone(), name));
            }
        }
    }
    Ok(out)
}

/// The (ledger, chunk) a pack path names, if it is a well-formed one.
pub fn parse_pack_path(layout: &PackLayout, path: &Path) -> Option<(LedgerName, u64)> {
    let rel = path.strip_prefix(&layout.root).ok()?;
    let parts: Vec<&str> = rel.iter().map(|p| p.to_str()).collect::<Option<_>>()?;
    let [ledger, bucket, file] = parts.as_slice() else { return None };
    let ledger = LedgerName::parse(ledger).ok()?;
    let digits = file.strip_suffix(PACK_SUFFIX)?;
    let chunk: u64 =
        (digits.len() == 8 && digits.bytes().all(|b| b.is_ascii_digit())).then(|| digits.parse().ok())??;
    (*bucket == format!("{:05}", chunk / 1000)).then_some((ledger, chunk))
}
