//! The hot tier's segment files: the append handle, the shared read
//! handles, and the replay at start. Every file operation goes through the
//! checked `Disk` on a `Vfs`, so the simulated disk crash-tests the WAL as
//! it does the pack protocols.
//!
//! Segments are `{hot_dir}/{seq:020}.wal`, written strictly in sequence by
//! the flusher. **Architecture Invariant:** only the last segment can end in
//! a torn write (each group commit is one write followed by one fdatasync,
//! and a failed one poisons the store), so a bad record in any older segment,
//! or one followed by valid records, is corruption and stops recovery. The
//! one write over synced bytes is a deleted ledger's scrub (`scrub`), which
//! recovery finishes before it scans.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use ferry_format::segment::{self, SegmentEnd, SegmentRecords};
use ferry_format::wal::{SEGMENT_HEADER_BYTES, WalRecord, encode_segment_header};

use ferry_fs::durable;
use ferry_fs::vfs::VfsSegment;
use nohash_hasher::IntSet;

use crate::disk::Disk;
use crate::error::{IoContext as _, Result, StoreError};

pub(crate) use ferry_format::segment::segment_name;

/// Where a record lives: segment sequence number, byte offset, encoded size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordPos {
    pub segment: u32,
    pub offset: u32,
    pub len: u32,
}

/// Every live segment: its read handle (`pread` needs no seek position, so
/// one handle serves all threads) and how much of it is still live.
///
/// **Architecture Invariant:** a segment is released (unlinked) only when
/// it is not the one being written and no live record is left in it: every
/// record in it belongs to a frozen chunk whose key is durable, to a
/// deleted ledger whose deletion is durable, or was relocated durably.
#[derive(Debug)]
pub(crate) struct Segments {
    dir: PathBuf,
    files: RwLock<BTreeMap<u32, Segment>>,
    /// The segment the flusher writes; never released.
    current: std::sync::atomic::AtomicU32,
}

#[derive(Debug, Clone)]
struct Segment {
    file: Arc<dyn VfsSegment>,
    live_records: u64,
    live_bytes: u64,
    /// A relocation of its live records was asked for and not yet done.
    relocating: bool,
    /// The incarnations of the ledgers with a record in it, live or not:
    /// the segments a deletion must scrub (`scrub`).
    holders: IntSet<u64>,
}

/// A segment read that found the segment already released: the records
/// moved (frozen or relocated) since the caller looked them up.
pub(crate) const RELEASED: &str = "segment was released";

impl Segments {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, files: RwLock::default(), current: Default::default() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn path(&self, segment: u32) -> PathBuf {
        self.dir.join(segment_name(segment.into()))
    }

    pub fn insert(&self, segment: u32, file: Arc<dyn VfsSegment>) {
        let seg = Segment { file, live_records: 0, live_bytes: 0, relocating: false, holders: IntSet::default() };
        self.files.write().expect("segments lock").insert(segment, seg);
    }

    pub fn set_current(&self, segment: u32) {
        self.current.store(segment, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn current(&self) -> u32 {
        self.current.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn file(&self, segment: u32) -> Option<Arc<dyn VfsSegment>> {
        self.files.read().expect("segments lock").get(&segment).map(|s| s.file.clone())
    }

    /// Counts records that became live (`sign` +1) or dead (-1).
    pub fn account(&self, positions: impl IntoIterator<Item = RecordPos>, live: bool) {
        // Sum runs of one segment first: a group's records share a segment,
        // so this is one map update per group, not one per record.
        let mut runs: Vec<(u32, u64, u64)> = Vec::new();
        for p in positions {
            match runs.last_mut() {
                Some((seg, records, bytes)) if *seg == p.segment => {
                    *records += 1;
                    *bytes += u64::from(p.len);
                }
                _ => runs.push((p.segment, 1, u64::from(p.len))),
            }
        }
        let mut files = self.files.write().expect("segments lock");
        for (segment, records, bytes) in runs {
            if let Some(s) = files.get_mut(&segment) {
                if live {
                    s.live_records += records;
                    s.live_bytes += bytes;
                } else {
                    s.live_records -= records;
                    s.live_bytes -= bytes;
                }
            }
        }
    }

    /// Notes that ledgers (by incarnation) wrote records into `segment`.
    pub fn note_holders(&self, segment: u32, incarnations: impl IntoIterator<Item = u64>) {
        if let Some(s) = self.files.write().expect("segments lock").get_mut(&segment) {
            s.holders.extend(incarnations);
        }
    }

    /// The ledgers (by incarnation) with a record in `segment`, live or not.
    pub fn holders(&self, segment: u32) -> IntSet<u64> {
        let files = self.files.read().expect("segments lock");
        files.get(&segment).map(|s| s.holders.clone()).unwrap_or_default()
    }

    /// The segments still there that hold a record of the ledger
    /// `incarnation`, live or not.
    pub fn holding(&self, incarnation: u64) -> Vec<u32> {
        let files = self.files.read().expect("segments lock");
        files.iter().filter(|(_, s)| s.holders.contains(&incarnation)).map(|(n, _)| *n).collect()
    }

    /// Takes every sealed segment with nothing live out of the set; the
    /// caller unlinks them. Sealed means *below* the current one: a segment
    /// the flusher has just created (inserted, not yet current) is never
    /// taken.
    pub fn take_dead(&self) -> Vec<PathBuf> {
        let mut files = self.files.write().expect("segments lock");
        let current = self.current();
        let dead: Vec<u32> =
            files.iter().filter(|(n, s)| **n < current && s.live_records == 0).map(|(n, _)| *n).collect();
        dead.into_iter()
            .map(|n| {
                files.remove(&n);
                self.path(n)
            })
            .collect()
    }

    /// Sealed segments less than half live, not yet being relocated; marks
    /// them as being relocated.
    pub fn take_sparse(&self) -> Vec<u32> {
        let mut files = self.files.write().expect("segments lock");
        let current = self.current();
        let mut out = Vec::new();
        for (n, s) in files.iter_mut().filter(|(n, s)| **n < current && s.live_records > 0 && !s.relocating) {
            let len = s.file.len().unwrap_or(0);
            if s.live_bytes * 2 < len {
                s.relocating = true;
                out.push(*n);
            }
        }
        out
    }

    pub fn relocation_done(&self, segment: u32) {
        if let Some(s) = self.files.write().expect("segments lock").get_mut(&segment) {
            s.relocating = false;
        }
    }

    /// Bytes of every segment file, for metrics and tests.
    pub fn disk_bytes(&self) -> u64 {
        let files = self.files.read().expect("segments lock");
        files.values().map(|s| s.file.len().unwrap_or(0)).sum()
    }

    /// Reads `len` bytes at `offset` of a segment.
    pub fn read_at(&self, segment: u32, offset: u64, len: usize) -> Result<Vec<u8>> {
        let file = self.file(segment).ok_or_else(|| StoreError::Corrupted {
            segment: self.path(segment),
            offset,
            ledger: None,
            reason: RELEASED.into(),
        })?;
        let mut buf = vec![0; len];
        file.read_at(&mut buf, offset)
            .context(|| format!("read {} bytes at {offset} of {}", len, self.path(segment).display()))?;
        Ok(buf)
    }
}

/// The segment the flusher appends to.
#[derive(Debug)]
pub(crate) struct SegmentWriter {
    pub seq: u32,
    pub file: Arc<dyn VfsSegment>,
    pub path: PathBuf,
    /// Bytes in the file, all durable.
    pub len: u64,
}

impl SegmentWriter {
    /// Creates segment `seq` with its header, durably.
    pub fn create(disk: &Disk, dir: &Path, seq: u32, format_version: u32) -> Result<Self> {
        let name = segment_name(seq.into());
        let file = disk.create_segment(dir, &name, &encode_segment_header(format_version))?;
        Ok(Self { seq, file, path: dir.join(name), len: SEGMENT_HEADER_BYTES as u64 })
    }

    /// Writes `buf` at the end and makes it durable. A refused write leaves
    /// the segment as it was; a failed sync poisons (both inside `Disk`).
    pub fn append_durably(&mut self, disk: &Disk, buf: &[u8]) -> Result<()> {
        disk.write(&*self.file, &self.path, buf, self.len)?;
        disk.sync(&*self.file, &self.path)?;
        self.len += buf.len() as u64;
        Ok(())
    }
}

/// A record found by the recovery scan, with where it is.
pub(crate) struct ScannedRecord<'a> {
    pub record: WalRecord<'a>,
    pub pos: RecordPos,
}

/// What recovery leaves behind: every segment's read handle and the writer
/// positioned after the last complete batch.
pub(crate) struct RecoveredWal {
    pub segments: Vec<(u32, Arc<dyn VfsSegment>)>,
    pub writer: SegmentWriter,
}

/// Scans every segment in order, handing each record of a complete append
/// batch to `visit`, truncating a torn tail of the last segment, and
/// returning the handles. Any other damage is a precise error. The rules
/// are `ferry_format::segment`'s, which `ferry verify` applies too.
pub(crate) fn replay(
    disk: &Disk,
    dir: &Path,
    format_version: u32,
    mut visit: impl FnMut(&Path, ScannedRecord<'_>) -> Result<()>,
) -> Result<RecoveredWal> {
    let names = list_segments(disk, dir)?;
    let last_seq = names.last().map(|(seq, _)| *seq);
    let mut segments = Vec::new();
    let mut writer = None;
    for (seq, path) in names {
        let is_last = Some(seq) == last_seq;
        let file = disk.open_segment(&path)?;
        let bytes = disk.read_all(&*file, &path)?;
        let end = if is_last && segment::is_torn_header(&bytes, format_version) {
            rewrite_torn_header(disk, dir, &*file, &path, format_version)?
        } else {
            scan_segment(&path, seq, &bytes, format_version, is_last, &mut visit)?
        };
        if end < bytes.len() as u64 {
            tracing::warn!(
                segment = %path.display(), offset = end, dropped_bytes = bytes.len() as u64 - end,
                "truncating a torn tail left by a crash (no acknowledged entry is in it)"
            );
            disk.truncate(&*file, &path, end)?;
        }
        segments.push((seq, file.clone()));
        if is_last {
            writer = Some(SegmentWriter { seq, file, path, len: end });
        }
    }
    let writer = match writer {
        Some(w) => {
            // A `kill -9` between a group's write and its fdatasync leaves
            // the whole group in the page cache, where the scan above found
            // it. Nothing may be served (read, exported, answered to a
            // retry) that a power loss could still take back with its id,
            // so the last segment and its directory are synced first.
            disk.sync(&*w.file, &w.path)?;
            disk.sync_dir(dir)?;
            w
        }
        None => {
            let w = SegmentWriter::create(disk, dir, 1, format_version)?;
            segments.push((w.seq, w.file.clone()));
            w
        }
    };
    Ok(RecoveredWal { segments, writer })
}

/// A crash while the last segment was created left its header torn: it
/// holds no record, so the header is written again (and its directory
/// entry synced, which may not have happened before the crash).
fn rewrite_torn_header(
    disk: &Disk,
    dir: &Path,
    file: &dyn VfsSegment,
    path: &Path,
    format_version: u32,
) -> Result<u64> {
    tracing::warn!(segment = %path.display(), "rewriting the torn header of a segment created just before a crash");
    disk.truncate(file, path, 0)?;
    disk.write(file, path, &encode_segment_header(format_version), 0)?;
    disk.sync(file, path)?;
    disk.sync_dir(dir)?;
    Ok(SEGMENT_HEADER_BYTES as u64)
}

fn list_segments(disk: &Disk, dir: &Path) -> Result<Vec<(u32, PathBuf)>> {
    let mut out = Vec::new();
    for name in disk.list_dir(dir)? {
        let path = dir.join(&name);
        match segment::parse_segment_name(&name) {
            Some(seq) => {
                let seq = u32::try_from(seq).map_err(|_| StoreError::Corrupted {
                    segment: path.clone(),
                    offset: 0,
                    ledger: None,
                    reason: "segment number out of range".into(),
                })?;
                out.push((seq, path));
            }
            None if name == durable::LOCK_FILE || name == durable::ROOT_LOCK_FILE => {}
            None => tracing::warn!(file = %path.display(), "ignoring a file that is not a WAL segment"),
        }
    }
    out.sort();
    Ok(out)
}

/// Scans one segment, visiting the records of complete append batches;
/// returns the offset recovery keeps (the end, or the cut of a torn tail).
fn scan_segment(
    path: &Path,
    seq: u32,
    bytes: &[u8],
    format_version: u32,
    is_last: bool,
    visit: &mut impl FnMut(&Path, ScannedRecord<'_>) -> Result<()>,
) -> Result<u64> {
    let corrupted = |offset: u64, ledger: Option<&str>, reason: String| StoreError::Corrupted {
        segment: path.to_path_buf(),
        offset,
        ledger: ledger.and_then(|l| ferry_core::LedgerName::parse(l).ok()),
        reason,
    };
    let mut records = match SegmentRecords::new(bytes) {
        Ok((v, records)) if segment::version_readable(v, format_version) => records,
        Ok((v, _)) => {
            return Err(corrupted(
                0,
                None,
                format!("segment has format version {v}; the catalog pins {format_version}"),
            ));
        }
        Err(e) => return Err(corrupted(0, None, e.to_string())),
    };
    // Records of the current append batch, held back until its last record.
    let mut batch: Vec<ScannedRecord<'_>> = Vec::new();
    for (offset, len, record) in records.by_ref() {
        let continues = record.batch_continues;
        batch.push(ScannedRecord { record, pos: RecordPos { segment: seq, offset: offset as u32, len: len as u32 } });
        if !continues {
            for r in batch.drain(..) {
                visit(path, r)?;
            }
        }
    }
    match records.end(is_last) {
        SegmentEnd::Clean => Ok(bytes.len() as u64),
        // A batch cut short by a crash was never acknowledged: it goes whole.
        SegmentEnd::Torn { keep } => Ok(keep),
        SegmentEnd::Damaged { offset, reason } => {
            Err(corrupted(offset, batch.first().map(|r| r.record.ledger), reason))
        }
    }
}

pub(crate) mod scrub;
#[cfg(test)]
mod sim_tests;
