//! The read side of pack files: an open-pack cache and reads from any id.
//! Every read is checked (index against header, zstd frame checksums,
//! record CRCs, dense ids); damage is an error naming ledger, chunk, file
//! and offset, never wrong data. A pack that cannot be opened for want of a
//! descriptor (EMFILE) is an I/O error, not damage: the read fails and may
//! be retried; the cache first closes the packs it holds and tries once
//! more, so its own descriptors never keep a read from succeeding (issue
//! #12 item 9).

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use ferry_core::{EntryId, LedgerName};
use ferry_format::pack::{self, BlockMeta, TRAILER_BYTES};
use ferry_format::wal::WalRecord;

use crate::error::{Result, StoreError};
use crate::pack_protocols::{OwnedRecord, PackInfo, PackLayout};
use ferry_fs::vfs::{Vfs, VfsRead};

/// Open packs kept at once.
const OPEN_PACKS_MAX: usize = 256;

/// An open, checked pack: its header and block index in memory.
pub(crate) struct PackReader {
    file: Box<dyn VfsRead>,
    path: PathBuf,
    ledger: LedgerName,
    chunk: u64,
    blocks: Vec<BlockMeta>,
}

impl PackReader {
    pub fn open(vfs: &dyn Vfs, layout: &PackLayout, ledger: &LedgerName, chunk: u64, info: &PackInfo) -> Result<Self> {
        let path = layout.pack_path(ledger, chunk);
        let bad = |offset: u64, reason: String| StoreError::CorruptedPack {
            ledger: ledger.clone(),
            chunk,
            path: path.clone(),
            offset,
            reason,
        };
        let file = vfs.open_read(&path).map_err(|e| {
            if ferry_fs::descriptors::exhausted(&e) {
                // Not damage: the same open succeeds once descriptors are free.
                StoreError::io(format!("open pack {}", path.display()), e)
            } else {
                bad(0, format!("open: {e}"))
            }
        })?;
        let len = file.len().map_err(|e| bad(0, e.to_string()))?;
        if len != info.len || len < TRAILER_BYTES as u64 {
            return Err(bad(0, format!("{len} bytes; the catalog says {}", info.len)));
        }
        let read = |offset: u64, n: usize| -> Result<Vec<u8>> {
            let mut buf = vec![0; n];
            file.read_at(&mut buf, offset).map_err(|e| bad(offset, e.to_string()))?;
            Ok(buf)
        };
        let trailer_at = len - TRAILER_BYTES as u64;
        let trailer =
            pack::decode_trailer(&read(trailer_at, TRAILER_BYTES)?, len).map_err(|e| bad(trailer_at, e.to_string()))?;
        let head_len = usize::try_from(trailer.index_offset.min(4096)).unwrap_or(4096);
        let (header, header_len) = pack::decode_header(&read(0, head_len)?).map_err(|e| bad(0, e.to_string()))?;
        let expected = info.header(ledger, chunk);
        if header != expected {
            return Err(bad(0, format!("header {header:?} does not match the catalog's {expected:?}")));
        }
        let index_len = (trailer_at - trailer.index_offset) as usize;
        let index = read(trailer.index_offset, index_len)?;
        let blocks = pack::decode_index(&index, &header, header_len, trailer.index_offset)
            .map_err(|e| bad(trailer.index_offset, e.to_string()))?;
        Ok(Self { file, path, ledger: ledger.clone(), chunk, blocks })
    }

    /// Appends records from `from` on to `out` until `limit` records or
    /// `bytes_max` payload bytes (at least one record), or the pack's end.
    pub fn read(&self, from: EntryId, limit: usize, bytes_max: usize, out: &mut Vec<OwnedRecord>) -> Result<()> {
        let start = self.blocks.partition_point(|b| b.first_id <= from).saturating_sub(1);
        let (mut taken, mut bytes) = (0, 0);
        let (mut compressed, mut raw) = (Vec::new(), Vec::new());
        for meta in &self.blocks[start..] {
            let bad = |reason: String| StoreError::CorruptedPack {
                ledger: self.ledger.clone(),
                chunk: self.chunk,
                path: self.path.clone(),
                offset: meta.offset,
                reason,
            };
            compressed.resize(meta.compressed_len as usize, 0);
            self.file.read_at(&mut compressed, meta.offset).map_err(|e| bad(e.to_string()))?;
            pack::decode_block_into(&compressed, meta, &mut raw).map_err(|e| bad(e.to_string()))?;
            for r in pack::block_records(&raw, meta) {
                let r = r.map_err(|e| bad(e.to_string()))?;
                if r.id < from {
                    continue;
                }
                if r.ledger != self.ledger.as_str() {
                    return Err(bad(format!("record of ledger {}", r.ledger)));
                }
                if taken == limit || (taken > 0 && bytes >= bytes_max) {
                    return Ok(());
                }
                bytes += r.payload.len();
                taken += 1;
                out.push(owned(&r).map_err(bad)?);
            }
        }
        Ok(())
    }

    /// Every record of the pack, for rebuilding idempotency keys.
    pub fn all(&self) -> Result<Vec<OwnedRecord>> {
        let mut all = Vec::new();
        let first = self.blocks.first().map_or(1, |b| b.first_id);
        self.read(first, usize::MAX, usize::MAX, &mut all)?;
        Ok(all)
    }
}

/// An owned copy of a decoded record.
pub(crate) fn owned(r: &WalRecord<'_>) -> std::result::Result<OwnedRecord, String> {
    let payload = std::str::from_utf8(r.payload).map_err(|e| format!("payload of {} is not UTF-8: {e}", r.id))?;
    Ok(OwnedRecord {
        id: r.id,
        ts: r.ts,
        key: r.key.map(str::to_owned),
        idempotency_key: r.idempotency_key.map(str::to_owned),
        hash: r.hash,
        payload: payload.to_owned(),
    })
}

/// Open packs by (ledger, chunk, the pack's SHA-256 from its catalog key),
/// oldest evicted first. The digest is the pack's identity: a read racing a
/// deletion may cache a pack of the old ledger after `forget`, and the
/// ledger created again under the name writes a different file at the same
/// path, which must never be served from that stale entry.
type PackKey = (LedgerName, u64, String);

/// Open readers, and their keys oldest first.
#[derive(Default)]
struct OpenPacks(HashMap<PackKey, Arc<PackReader>>, VecDeque<PackKey>);

#[derive(Default)]
pub(crate) struct PackCache {
    open: Mutex<OpenPacks>,
}

impl PackCache {
    pub fn get(
        &self,
        vfs: &dyn Vfs,
        layout: &PackLayout,
        ledger: &LedgerName,
        chunk: u64,
        info: &PackInfo,
    ) -> Result<Arc<PackReader>> {
        let key = (ledger.clone(), chunk, info.sha256.clone());
        if let Some(r) = self.open.lock().expect("pack cache").0.get(&key) {
            return Ok(r.clone());
        }
        let reader = match PackReader::open(vfs, layout, ledger, chunk, info) {
            Err(StoreError::Io { source, .. }) if ferry_fs::descriptors::exhausted(&source) => {
                let closed = self.close_all();
                tracing::warn!(ledger = %ledger, chunk, closed, "out of file descriptors: closed the open packs");
                PackReader::open(vfs, layout, ledger, chunk, info)?
            }
            opened => opened?,
        };
        let reader = Arc::new(reader);
        let mut guard = self.open.lock().expect("pack cache");
        let OpenPacks(map, order) = &mut *guard;
        if map.insert(key.clone(), reader.clone()).is_none() {
            order.push_back(key);
        }
        while order.len() > OPEN_PACKS_MAX {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
        Ok(reader)
    }

    /// Closes every cached pack (readers still in use close when done);
    /// returns how many were cached.
    fn close_all(&self) -> usize {
        let OpenPacks(map, order) = std::mem::take(&mut *self.open.lock().expect("pack cache"));
        drop(order);
        map.len()
    }

    /// Forgets a pack (pruned) or every pack of a ledger (`chunk` None).
    pub fn forget(&self, ledger: &LedgerName, chunk: Option<u64>) {
        let mut guard = self.open.lock().expect("pack cache");
        let OpenPacks(map, order) = &mut *guard;
        map.retain(|(l, c, _), _| !(l == ledger && chunk.is_none_or(|x| x == *c)));
        order.retain(|k| map.contains_key(k));
    }
}
