//! The logic of ferry's fuzz targets, shared by the cargo-fuzz binaries in
//! `fuzz_targets/` and by `tests/corpus.rs`, which runs it over a fixed,
//! deterministic corpus where no nightly toolchain is at hand.
//!
//! Each function takes arbitrary bytes and panics only on a finding: a
//! decoder that panicked, or a round trip that did not give the input back.
//! Checksums stop almost every random input at the door, so `wal_record`
//! and `pack` also decode a copy whose CRC-32Cs are recomputed: that copy
//! reaches the decoders behind the checksums.
//!
//! Inputs that hit a known, reported finding (reproduced by the ignored
//! tests in `tests/corpus.rs`) crash or are skipped, as [`Known`] says:
//! `FERRY_FUZZ_KNOWN=skip` lets a run look for new findings only.

use std::sync::OnceLock;

use ferry_core::limits::{ENTRY_KEY_BYTES_MAX, IDEMPOTENCY_KEY_BYTES_MAX, LEDGER_NAME_BYTES_MAX};

use ferry_format::keys::CatalogKey;
use ferry_format::pack::decode_pack;
use ferry_format::wal::{
    SEGMENT_HEADER_BYTES, decode_record, decode_segment_header, encode_record, encode_segment_header,
};

/// `wal::decode_segment_header` and `wal::decode_record` on arbitrary bytes:
/// they never panic, and whatever decodes re-encodes to the same bytes. The
/// bytes are read both as one record and as a segment (header, then
/// records back to back until the first that does not decode).
pub fn wal_record(data: &[u8], known: Known) {
    wal_bytes(data, known);
    let mut fixed = data.to_vec();
    let at = if fixed.starts_with(b"FERRYWAL") { SEGMENT_HEADER_BYTES } else { 0 };
    if let Some(rest) = fixed.get_mut(at..) {
        fix_record_crc(rest);
    }
    if fixed != data {
        wal_bytes(&fixed, known);
    }
}

fn wal_bytes(data: &[u8], known: Known) {
    record_round_trips(data, known);
    if let Ok(version) = decode_segment_header(data) {
        assert_eq!(encode_segment_header(version)[..], data[..SEGMENT_HEADER_BYTES], "header round trip");
        let mut offset = SEGMENT_HEADER_BYTES;
        while offset < data.len() {
            match record_round_trips(&data[offset..], known) {
                Some(used) => offset += used,
                None => break,
            }
        }
    }
}

/// Decodes one record at the start of `data`; if it decodes, checks that
/// encoding it gives exactly the bytes it came from. Returns its length.
fn record_round_trips(data: &[u8], known: Known) -> Option<usize> {
    let (record, used) = decode_record(data).ok()?;
    assert!(used <= data.len(), "decoded {used} bytes of {}", data.len());
    let over_limits = record.ledger.len() > LEDGER_NAME_BYTES_MAX
        || record.key.is_some_and(|k| k.len() > ENTRY_KEY_BYTES_MAX)
        || record.idempotency_key.is_some_and(|k| k.len() > IDEMPOTENCY_KEY_BYTES_MAX);
    if over_limits && known == Known::Skip {
        return Some(used); // known: the decoder does not enforce the encoder's limits
    }
    let mut again = Vec::with_capacity(used);
    encode_record(&record, &mut again);
    assert_eq!(again, &data[..used], "record round trip of {record:?}");
    Some(used)
}

/// `pack::decode_pack` on arbitrary bytes never panics, and what it accepts
/// is consistent: records of the header's ledger, dense from its first id,
/// as many as the header says.
pub fn pack(data: &[u8], known: Known) {
    pack_bytes(data, known);
    let mut fixed = data.to_vec();
    fix_pack_crcs(&mut fixed);
    if fixed != data {
        pack_bytes(&fixed, known);
    }
}

fn pack_bytes(data: &[u8], known: Known) {
    let header = ferry_format::pack::decode_header(data).ok().map(|(h, _)| h);
    if known == Known::Skip && header.as_ref().is_some_and(|h| h.first_id > u64::MAX / 2 || h.count > u64::MAX / 2) {
        return; // known: the id arithmetic overflows near u64::MAX
    }
    if known == Known::Skip && oversized_block(data) {
        return; // known: a block's raw_len is allocated before decompressing
    }
    let mut ids = Vec::new();
    let mut other_ledger = None;
    let decoded = decode_pack(data, |r| {
        ids.push(r.id);
        if header.as_ref().is_none_or(|h| h.ledger != r.ledger) {
            other_ledger.get_or_insert_with(|| r.ledger.to_owned());
        }
    });
    let Ok(pack) = decoded else { return };
    assert_eq!(other_ledger, None, "a record of another ledger in {:?}", pack.header);
    assert_eq!(ids.len() as u64, pack.header.count, "records vs header {:?}", pack.header);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(*id, pack.header.first_id.wrapping_add(i as u64), "ids not dense in {:?}", pack.header);
    }
}

/// True when the pack's index (read with the codec's own functions)
/// declares a block larger than a writer can produce: a full block plus one
/// record of the largest size.
fn oversized_block(data: &[u8]) -> bool {
    use ferry_format::pack::{BLOCK_RAW_BYTES_TARGET, TRAILER_BYTES, decode_header, decode_index, decode_trailer};
    use ferry_format::wal::{RECORD_BODY_BYTES_MAX, RECORD_PREFIX_BYTES};
    let max = BLOCK_RAW_BYTES_TARGET + RECORD_PREFIX_BYTES + RECORD_BODY_BYTES_MAX;
    let (Ok((header, header_len)), Some(tail_at)) = (decode_header(data), data.len().checked_sub(TRAILER_BYTES)) else {
        return false;
    };
    let Ok(trailer) = decode_trailer(&data[tail_at..], data.len() as u64) else { return false };
    let Some(index) = usize::try_from(trailer.index_offset).ok().and_then(|at| data.get(at..tail_at)) else {
        return false;
    };
    // Called after the first-id check above, so this cannot overflow.
    let blocks = decode_index(index, &header, header_len, trailer.index_offset);
    blocks.is_ok_and(|blocks| blocks.iter().any(|b| b.raw_len as usize > max))
}

/// `CatalogKey::parse` on arbitrary text never panics, and a key it accepts
/// encodes back to exactly that text (and parses to itself again).
pub fn catalog_key(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(key) = CatalogKey::parse(text) {
        let encoded = key.encode();
        assert_eq!(encoded, text, "catalog key round trip of {key:?}");
        assert_eq!(CatalogKey::parse(&encoded).as_ref(), Ok(&key));
    }
}

/// What to do with an input that hits a known, reported finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Known {
    /// Crash on it, like on any other finding.
    Crash,
    /// Pass over it, to look for new findings.
    Skip,
}

impl Known {
    /// `FERRY_FUZZ_KNOWN=skip` or `=crash`; `default` when unset.
    pub fn from_env(default: Known) -> Known {
        static KNOWN: OnceLock<Option<Known>> = OnceLock::new();
        let set = KNOWN.get_or_init(|| match std::env::var("FERRY_FUZZ_KNOWN").as_deref() {
            Ok("skip") => Some(Known::Skip),
            Ok("crash") => Some(Known::Crash),
            _ => None,
        });
        set.unwrap_or(default)
    }
}

/// Recomputes the CRC-32C of the WAL record at the start of `data`.
pub fn fix_record_crc(data: &mut [u8]) {
    if data.len() < 8 {
        return;
    }
    let body_len = u32::from_le_bytes(data[..4].try_into().expect("4 bytes")) as usize;
    if let Some(body) = data.get(8..8usize.saturating_add(body_len)) {
        let crc = crc32c::crc32c(body);
        data[4..8].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Recomputes a pack's header and trailer checksums.
pub fn fix_pack_crcs(data: &mut [u8]) {
    if data.len() > 13 {
        let end = 13 + data[12] as usize + 24;
        if end + 4 <= data.len() {
            let crc = crc32c::crc32c(&data[..end]);
            data[end..end + 4].copy_from_slice(&crc.to_le_bytes());
        }
    }
    if data.len() >= 24 {
        let at = data.len() - 12;
        let crc = crc32c::crc32c(&data[..at]);
        data[at..at + 4].copy_from_slice(&crc.to_le_bytes());
    }
}
