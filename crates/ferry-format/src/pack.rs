//! Pack files: one immutable, self-describing file per frozen chunk.
//!
//! ```text
//! header:  magic "FERRYPCK" (8) | format_version u32 | ledger_len u8 | ledger
//!          | chunk u64 | first_id u64 | count u64 | header_crc32c u32
//! blocks:  zstd frames (content checksum on), each ~64 KiB of WAL-encoded
//!          records (`wal::encode_record`, flags 0, 1 and 5 only), back to back
//! index:   per block: first_id u64 | offset u64 | compressed_len u32
//!          | raw_len u32 | records u32 | reserved u32 (0)    (32 bytes)
//! trailer: index_offset u64 | block_count u32 | crc32c u32 | magic "FERRYEND"
//! ```
//! The trailer's CRC-32C covers every byte before it, so the file checks
//! itself without the catalog; the catalog also keeps its SHA-256. Reading
//! from any id decompresses one block. Layout detail: `docs/format.md`.

use std::io::{self, Write};

use crate::wal::{self, WalRecord};

pub const PACK_MAGIC: &[u8; 8] = b"FERRYPCK";
pub const TRAILER_MAGIC: &[u8; 8] = b"FERRYEND";
pub const TRAILER_BYTES: usize = 24;
pub const BLOCK_META_BYTES: usize = 32;
/// Raw bytes of records gathered before a block is compressed.
pub const BLOCK_RAW_BYTES_TARGET: usize = 64 * 1024;
/// The most raw bytes a block can hold: just under the target, plus one
/// record of the largest size.
pub const BLOCK_RAW_BYTES_MAX: usize = BLOCK_RAW_BYTES_TARGET + wal::RECORD_PREFIX_BYTES + wal::RECORD_BODY_BYTES_MAX;
/// zstd level: fast to write, ~1.3 GB/s to read here.
const ZSTD_LEVEL: i32 = 1;

/// What a pack holds, from its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackHeader {
    pub format_version: u32,
    pub ledger: String,
    pub chunk: u64,
    pub first_id: u64,
    pub count: u64,
}

/// One entry of the block index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockMeta {
    pub first_id: u64,
    pub offset: u64,
    pub compressed_len: u32,
    pub raw_len: u32,
    pub records: u32,
}

/// The trailer: where the index is, and the whole-file checksum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub index_offset: u64,
    pub block_count: u32,
    pub crc32c: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("bad pack header: {0}")]
    Header(String),
    #[error("bad pack trailer: {0}")]
    Trailer(String),
    #[error("bad block index: {0}")]
    Index(String),
    #[error("bad block at offset {offset}: {reason}")]
    Block { offset: u64, reason: String },
    #[error("pack checksum mismatch: trailer says {stored:#010x}, the bytes give {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("records out of sequence: {0}")]
    Sequence(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Streams a pack to `out`: header first, blocks as they fill, then the
/// index and trailer. Checks on `finish` that exactly `count` records with
/// dense ids from `first_id` went in.
pub struct PackWriter<W: Write> {
    out: CrcWriter<W>,
    header: PackHeader,
    raw: Vec<u8>,
    raw_first_id: u64,
    raw_records: u32,
    blocks: Vec<BlockMeta>,
    next_id: u64,
    compressor: zstd::bulk::Compressor<'static>,
}

impl<W: Write> PackWriter<W> {
    pub fn new(out: W, header: PackHeader) -> Result<Self, PackError> {
        if header.ledger.is_empty()
            || header.ledger.len() > 255
            || header.count == 0
            || header.first_id == 0
            || header.first_id.checked_add(header.count).is_none()
        {
            return Err(PackError::Header("empty ledger, zero count, zero first id or ids past u64".into()));
        }
        let mut compressor = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
        compressor.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
        let mut out = CrcWriter { inner: out, crc: 0, written: 0 };
        out.write_all(&encode_header(&header))?;
        let next_id = header.first_id;
        Ok(Self {
            out,
            header,
            raw: Vec::with_capacity(BLOCK_RAW_BYTES_TARGET * 2),
            raw_first_id: next_id,
            raw_records: 0,
            blocks: Vec::new(),
            next_id,
            compressor,
        })
    }

    /// Adds the next record; its ledger must be the pack's and its id the
    /// next one.
    pub fn push(&mut self, record: &WalRecord<'_>) -> Result<(), PackError> {
        if record.ledger != self.header.ledger || record.id != self.next_id {
            return Err(PackError::Sequence(format!(
                "expected {}/{}, got {}/{}",
                self.header.ledger, self.next_id, record.ledger, record.id
            )));
        }
        if record.id >= self.header.first_id + self.header.count {
            return Err(PackError::Sequence(format!("record {} is past the chunk", record.id)));
        }
        if self.raw_records == 0 {
            self.raw_first_id = record.id;
        }
        let stored = WalRecord { batch_continues: false, group_start: false, relocated: false, ..record.clone() };
        wal::encode_record(&stored, &mut self.raw);
        self.raw_records += 1;
        self.next_id += 1;
        if self.raw.len() >= BLOCK_RAW_BYTES_TARGET {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<(), PackError> {
        if self.raw_records == 0 {
            return Ok(());
        }
        let compressed = self.compressor.compress(&self.raw)?;
        self.blocks.push(BlockMeta {
            first_id: self.raw_first_id,
            offset: self.out.written,
            compressed_len: u32::try_from(compressed.len()).map_err(|_| PackError::Header("block too large".into()))?,
            raw_len: u32::try_from(self.raw.len()).map_err(|_| PackError::Header("block too large".into()))?,
            records: self.raw_records,
        });
        self.out.write_all(&compressed)?;
        self.raw.clear();
        self.raw_records = 0;
        Ok(())
    }

    /// Writes the index and trailer; returns the writer, the file length and
    /// the whole-file CRC-32C written in the trailer.
    pub fn finish(mut self) -> Result<(W, u64, u32), PackError> {
        self.flush_block()?;
        let expected_end = self.header.first_id + self.header.count;
        if self.next_id != expected_end {
            return Err(PackError::Sequence(format!(
                "{} records written, the header says {}",
                self.next_id - self.header.first_id,
                self.header.count
            )));
        }
        let index_offset = self.out.written;
        for b in &self.blocks {
            self.out.write_all(&encode_block_meta(b))?;
        }
        let block_count = u32::try_from(self.blocks.len()).map_err(|_| PackError::Index("too many blocks".into()))?;
        let mut head = [0u8; 12];
        head[..8].copy_from_slice(&index_offset.to_le_bytes());
        head[8..].copy_from_slice(&block_count.to_le_bytes());
        self.out.write_all(&head)?;
        let crc = self.out.crc;
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(TRAILER_MAGIC)?;
        self.out.inner.flush()?;
        Ok((self.out.inner, self.out.written, crc))
    }
}

/// Counts and checksums what passes through.
struct CrcWriter<W> {
    inner: W,
    crc: u32,
    written: u64,
}

impl<W: Write> Write for CrcWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.crc = crc32c::crc32c_append(self.crc, &buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn encode_header(h: &PackHeader) -> Vec<u8> {
    let mut out = Vec::with_capacity(48 + h.ledger.len());
    out.extend_from_slice(PACK_MAGIC);
    out.extend_from_slice(&h.format_version.to_le_bytes());
    out.push(h.ledger.len() as u8);
    out.extend_from_slice(h.ledger.as_bytes());
    out.extend_from_slice(&h.chunk.to_le_bytes());
    out.extend_from_slice(&h.first_id.to_le_bytes());
    out.extend_from_slice(&h.count.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// Decodes the header at the start of `buf`; returns it and its length.
pub fn decode_header(buf: &[u8]) -> Result<(PackHeader, usize), PackError> {
    let bad = |s: &str| PackError::Header(s.into());
    if buf.len() < 13 || &buf[..8] != PACK_MAGIC {
        return Err(bad("wrong magic or too short"));
    }
    let ledger_len = buf[12] as usize;
    let len = 13 + ledger_len + 24 + 4;
    if buf.len() < len {
        return Err(bad("cut short"));
    }
    let stored = u32_at(buf, len - 4);
    let computed = crc32c::crc32c(&buf[..len - 4]);
    if stored != computed {
        return Err(bad("header checksum mismatch"));
    }
    let ledger = std::str::from_utf8(&buf[13..13 + ledger_len]).map_err(|_| bad("ledger is not UTF-8"))?;
    let at = 13 + ledger_len;
    let header = PackHeader {
        format_version: u32_at(buf, 8),
        ledger: ledger.to_owned(),
        chunk: u64_at(buf, at),
        first_id: u64_at(buf, at + 8),
        count: u64_at(buf, at + 16),
    };
    if header.count == 0 || header.first_id == 0 || header.ledger.is_empty() {
        return Err(bad("zero count, zero first id or empty ledger"));
    }
    if header.first_id.checked_add(header.count).is_none() {
        return Err(bad("ids run past u64"));
    }
    Ok((header, len))
}

/// Decodes the last `TRAILER_BYTES` of a pack of `file_len` bytes.
pub fn decode_trailer(tail: &[u8], file_len: u64) -> Result<Trailer, PackError> {
    let bad = |s: &str| PackError::Trailer(s.into());
    if tail.len() != TRAILER_BYTES {
        return Err(bad("wrong length"));
    }
    if &tail[16..24] != TRAILER_MAGIC {
        return Err(bad("wrong magic (a pack cut short?)"));
    }
    let t = Trailer { index_offset: u64_at(tail, 0), block_count: u32_at(tail, 8), crc32c: u32_at(tail, 12) };
    let index_end = t.index_offset.checked_add(u64::from(t.block_count) * BLOCK_META_BYTES as u64);
    if index_end != Some(file_len.saturating_sub(TRAILER_BYTES as u64)) {
        return Err(bad("index does not end where the trailer begins"));
    }
    Ok(t)
}

fn encode_block_meta(b: &BlockMeta) -> [u8; BLOCK_META_BYTES] {
    let mut out = [0u8; BLOCK_META_BYTES];
    out[..8].copy_from_slice(&b.first_id.to_le_bytes());
    out[8..16].copy_from_slice(&b.offset.to_le_bytes());
    out[16..20].copy_from_slice(&b.compressed_len.to_le_bytes());
    out[20..24].copy_from_slice(&b.raw_len.to_le_bytes());
    out[24..28].copy_from_slice(&b.records.to_le_bytes());
    out
}

/// Decodes and checks the block index against the header: blocks are
/// contiguous from the header's end to the index, ids dense, counts add up.
pub fn decode_index(
    buf: &[u8],
    header: &PackHeader,
    header_len: usize,
    index_offset: u64,
) -> Result<Vec<BlockMeta>, PackError> {
    let bad = |s: String| PackError::Index(s);
    if !buf.len().is_multiple_of(BLOCK_META_BYTES) {
        return Err(bad("length is not a whole number of entries".into()));
    }
    let mut blocks = Vec::with_capacity(buf.len() / BLOCK_META_BYTES);
    let (mut offset, mut next_id) = (header_len as u64, header.first_id);
    for raw in buf.chunks_exact(BLOCK_META_BYTES) {
        let b = BlockMeta {
            first_id: u64_at(raw, 0),
            offset: u64_at(raw, 8),
            compressed_len: u32_at(raw, 16),
            raw_len: u32_at(raw, 20),
            records: u32_at(raw, 24),
        };
        let reserved = u32_at(raw, 28);
        if b.offset != offset || b.first_id != next_id || b.records == 0 || reserved != 0 {
            return Err(bad(format!("block {} does not follow its predecessor", blocks.len())));
        }
        if b.raw_len as usize > BLOCK_RAW_BYTES_MAX {
            return Err(bad(format!("block {} claims {} raw bytes", blocks.len(), b.raw_len)));
        }
        if b.compressed_len as usize > zstd::zstd_safe::compress_bound(BLOCK_RAW_BYTES_MAX) {
            return Err(bad(format!("block {} claims {} compressed bytes", blocks.len(), b.compressed_len)));
        }
        let overflow = || bad(format!("block {} runs past u64", blocks.len()));
        offset = offset.checked_add(u64::from(b.compressed_len)).ok_or_else(overflow)?;
        next_id = next_id.checked_add(u64::from(b.records)).ok_or_else(overflow)?;
        blocks.push(b);
    }
    if offset != index_offset || next_id != header.first_id + header.count {
        return Err(bad(format!(
            "blocks hold ids up to {} and end at {offset}; the header says {} entries, the index starts at {index_offset}",
            next_id - 1,
            header.count
        )));
    }
    Ok(blocks)
}

thread_local! {
    /// One zstd context per thread: creating one per block costs as much as
    /// decompressing a small block.
    static DECOMPRESSOR: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("allocate a zstd context"));
}

/// Decompresses one block (its zstd frame checksum verified) and checks it
/// holds exactly the index's records.
pub fn decode_block(compressed: &[u8], meta: &BlockMeta) -> Result<Vec<u8>, PackError> {
    let mut raw = Vec::new();
    decode_block_into(compressed, meta, &mut raw)?;
    Ok(raw)
}

/// `decode_block` into a buffer the caller reuses across blocks.
pub fn decode_block_into(compressed: &[u8], meta: &BlockMeta, raw: &mut Vec<u8>) -> Result<(), PackError> {
    let bad = |reason: String| PackError::Block { offset: meta.offset, reason };
    // Check the frame's own size before allocating for it.
    match zstd::zstd_safe::get_frame_content_size(compressed) {
        Ok(Some(n)) if n == u64::from(meta.raw_len) && n as usize <= BLOCK_RAW_BYTES_MAX => {}
        other => return Err(bad(format!("frame content size {other:?}, the index says {}", meta.raw_len))),
    }
    raw.clear();
    raw.reserve(meta.raw_len as usize);
    DECOMPRESSOR.with(|d| d.borrow_mut().decompress_to_buffer(compressed, raw)).map_err(|e| bad(e.to_string()))?;
    if raw.len() != meta.raw_len as usize {
        return Err(bad(format!("{} bytes decompressed, the index says {}", raw.len(), meta.raw_len)));
    }
    Ok(())
}

/// Iterates the records of a decompressed block, checking ids run densely
/// from the block's first id.
pub fn block_records<'a>(
    raw: &'a [u8],
    meta: &'a BlockMeta,
) -> impl Iterator<Item = Result<WalRecord<'a>, PackError>> + 'a {
    let mut at = 0usize;
    let mut n = 0u32;
    std::iter::from_fn(move || {
        if n == meta.records {
            return (at != raw.len())
                .then(|| Err(PackError::Block { offset: meta.offset, reason: "bytes after the last record".into() }));
        }
        let out = match wal::decode_record(&raw[at..]) {
            Ok((r, used)) if r.id == meta.first_id + u64::from(n) => {
                at += used;
                Ok(r)
            }
            Ok((r, _)) => Err(PackError::Block {
                offset: meta.offset,
                reason: format!("record {} where {} was expected", r.id, meta.first_id + u64::from(n)),
            }),
            Err(e) => Err(PackError::Block { offset: meta.offset, reason: format!("record at {at}: {e}") }),
        };
        n = if out.is_ok() { n + 1 } else { meta.records };
        if out.is_err() {
            at = raw.len();
        }
        Some(out)
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A whole pack decoded and checked from its bytes alone: header, trailer
/// checksum, index, every block and record. For `ferry inspect`, `ferry
/// verify` and the fuzzer.
#[derive(Debug)]
pub struct DecodedPack {
    pub header: PackHeader,
    pub trailer: Trailer,
    pub blocks: Vec<BlockMeta>,
}

pub fn decode_pack(bytes: &[u8], visit: impl FnMut(&WalRecord<'_>)) -> Result<DecodedPack, PackError> {
    decode_pack_from(bytes, visit)
}

/// Where a pack's bytes are read from: a slice in memory, or a file read a
/// piece at a time, so that checking a pack of any size holds at most one
/// block (and one `STREAM_PIECE_BYTES` piece) in memory.
pub trait PackSource {
    fn byte_len(&self) -> io::Result<u64>;
    /// Fills `buf` with the bytes at `offset`.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl PackSource for [u8] {
    fn byte_len(&self) -> io::Result<u64> {
        Ok(<[u8]>::len(self) as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let bytes = start.checked_add(buf.len()).and_then(|end| self.get(start..end));
        buf.copy_from_slice(bytes.ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?);
        Ok(())
    }
}

/// The size of the pieces a pack is streamed in (checksums).
pub const STREAM_PIECE_BYTES: usize = 1 << 20;

/// The longest header: magic, version, ledger length, a 255-byte ledger,
/// chunk, first id, count, CRC.
const HEADER_BYTES_MAX: usize = 13 + 255 + 24 + 4;

/// Feeds bytes `0..end` of `source` to `f`, `STREAM_PIECE_BYTES` at a time.
pub fn stream_pieces(source: &(impl PackSource + ?Sized), end: u64, mut f: impl FnMut(&[u8])) -> io::Result<()> {
    let mut piece = vec![0u8; STREAM_PIECE_BYTES.min(usize::try_from(end).unwrap_or(usize::MAX))];
    let mut at = 0u64;
    while at < end {
        let n = piece.len().min(usize::try_from(end - at).unwrap_or(usize::MAX));
        source.read_exact_at(&mut piece[..n], at)?;
        f(&piece[..n]);
        at += n as u64;
    }
    Ok(())
}

fn read_vec(source: &(impl PackSource + ?Sized), offset: u64, len: usize) -> Result<Vec<u8>, PackError> {
    let mut buf = vec![0u8; len];
    source.read_exact_at(&mut buf, offset)?;
    Ok(buf)
}

/// `decode_pack` over any `PackSource`, streaming: the whole-file CRC in
/// pieces, then the header, the index and one block at a time.
pub fn decode_pack_from(
    source: &(impl PackSource + ?Sized),
    mut visit: impl FnMut(&WalRecord<'_>),
) -> Result<DecodedPack, PackError> {
    let len = source.byte_len()?;
    if len < TRAILER_BYTES as u64 {
        return Err(PackError::Trailer("file shorter than a trailer".into()));
    }
    let trailer = decode_trailer(&read_vec(source, len - TRAILER_BYTES as u64, TRAILER_BYTES)?, len)?;
    let mut computed = 0;
    stream_pieces(source, len - 12, |piece| computed = crc32c::crc32c_append(computed, piece))?;
    if computed != trailer.crc32c {
        return Err(PackError::Checksum { stored: trailer.crc32c, computed });
    }
    let head_len = HEADER_BYTES_MAX.min(usize::try_from(len).unwrap_or(usize::MAX));
    let (header, header_len) = decode_header(&read_vec(source, 0, head_len)?)?;
    let index_end = len - TRAILER_BYTES as u64;
    let index_start = Some(trailer.index_offset).filter(|s| *s <= index_end && *s >= header_len as u64);
    let index_start = index_start.ok_or_else(|| PackError::Index("index offset out of range".into()))?;
    let index = read_vec(source, index_start, usize::try_from(index_end - index_start).map_err(io::Error::other)?)?;
    let blocks = decode_index(&index, &header, header_len, trailer.index_offset)?;
    let mut compressed = Vec::new();
    let mut raw = Vec::new();
    for b in &blocks {
        compressed.resize(b.compressed_len as usize, 0);
        source.read_exact_at(&mut compressed, b.offset)?;
        decode_block_into(&compressed, b, &mut raw)?;
        for r in block_records(&raw, b) {
            let r = r?;
            if r.ledger != header.ledger {
                return Err(PackError::Block { offset: b.offset, reason: format!("record of ledger {}", r.ledger) });
            }
            visit(&r);
        }
    }
    Ok(DecodedPack { header, trailer, blocks })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build(count: u64, payload_len: usize) -> Vec<u8> {
        let header = PackHeader { format_version: 1, ledger: "audit".into(), chunk: 2, first_id: 2 * count + 1, count };
        let mut w = PackWriter::new(Vec::new(), header.clone()).unwrap();
        let payload = format!("\"{}\"", "x".repeat(payload_len));
        for i in 0..count {
            let key = format!("k{i}");
            let r = WalRecord {
                ledger: "audit",
                id: header.first_id + i,
                ts: 1000 + i,
                key: (i % 3 == 0).then_some(key.as_str()),
                idempotency_key: None,
                batch_continues: true,
                group_start: true,
                relocated: true,
                hash: None,
                payload: payload.as_bytes(),
            };
            w.push(&r).unwrap();
        }
        let (bytes, len, _) = w.finish().unwrap();
        assert_eq!(bytes.len() as u64, len);
        bytes
    }

    /// A source that remembers the largest single read.
    struct Counting<'a> {
        bytes: &'a [u8],
        largest: std::cell::Cell<usize>,
    }

    impl PackSource for Counting<'_> {
        fn byte_len(&self) -> io::Result<u64> {
            Ok(self.bytes.len() as u64)
        }

        fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.largest.set(self.largest.get().max(buf.len()));
            self.bytes.read_exact_at(buf, offset)
        }
    }

    /// Issue #12 item 11: checking a pack must not read it into memory
    /// whole. A pack of several MiB decodes with no read larger than a
    /// streamed piece or one compressed block, and to the same records.
    #[test]
    fn a_pack_decodes_streamed_in_bounded_reads() {
        let header = PackHeader { format_version: 2, ledger: "audit".into(), chunk: 0, first_id: 1, count: 4000 };
        let mut w = PackWriter::new(Vec::new(), header).unwrap();
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for id in 1..=4000u64 {
            let noise: String = (0..64)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    format!("{x:016x}")
                })
                .collect();
            let payload = format!("\"{noise}\"");
            let r = WalRecord {
                ledger: "audit",
                id,
                ts: id,
                key: None,
                idempotency_key: None,
                batch_continues: false,
                group_start: false,
                relocated: false,
                hash: None,
                payload: payload.as_bytes(),
            };
            w.push(&r).unwrap();
        }
        let (bytes, ..) = w.finish().unwrap();
        assert!(bytes.len() > 2 * STREAM_PIECE_BYTES, "{} bytes", bytes.len());
        let source = Counting { bytes: &bytes, largest: std::cell::Cell::new(0) };
        let mut streamed = Vec::new();
        decode_pack_from(&source, |r| streamed.push(r.id)).unwrap();
        let mut whole = Vec::new();
        decode_pack(&bytes, |r| whole.push(r.id)).unwrap();
        assert_eq!(streamed, whole);
        assert_eq!(streamed.len(), 4000);
        let bound = STREAM_PIECE_BYTES.max(zstd::zstd_safe::compress_bound(BLOCK_RAW_BYTES_MAX));
        assert!(source.largest.get() <= bound, "a read of {} bytes", source.largest.get());
    }

    #[test]
    fn a_pack_round_trips_across_many_blocks() {
        let bytes = build(3000, 100);
        let mut ids = Vec::new();
        let pack = decode_pack(&bytes, |r| {
            assert!(!r.batch_continues && !r.group_start && !r.relocated, "write-path flags are not kept");
            ids.push(r.id);
        })
        .unwrap();
        assert!(pack.blocks.len() > 2, "{} blocks", pack.blocks.len());
        assert_eq!(pack.header.count, 3000);
        assert_eq!(ids, (6001..=9000).collect::<Vec<_>>());
    }

    #[test]
    fn every_truncation_and_sampled_bit_flips_are_detected() {
        let bytes = build(50, 30);
        for cut in 0..bytes.len() {
            assert!(decode_pack(&bytes[..cut], |_| {}).is_err(), "cut at {cut}");
        }
        for bit in (0..bytes.len() * 8).step_by(7) {
            let mut b = bytes.clone();
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(decode_pack(&b, |_| {}).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn writer_refuses_gaps_and_short_chunks() {
        let header = PackHeader { format_version: 1, ledger: "a".into(), chunk: 0, first_id: 1, count: 2 };
        let rec = |id| WalRecord {
            ledger: "a",
            id,
            ts: 0,
            key: None,
            idempotency_key: None,
            batch_continues: false,
            group_start: false,
            relocated: false,
            hash: None,
            payload: b"1",
        };
        let mut w = PackWriter::new(Vec::new(), header.clone()).unwrap();
        assert!(w.push(&rec(2)).is_err());
        w.push(&rec(1)).unwrap();
        assert!(w.finish().is_err(), "one record short");
    }
}
