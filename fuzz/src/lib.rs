//! The logic of ferry's fuzz targets, shared by the cargo-fuzz binaries in
//! `fuzz_targets/` and by `tests/corpus.rs`, which runs it over a fixed,
//! deterministic corpus where no nightly toolchain is at hand.
//!
//! Each function takes arbitrary bytes and panics only on a finding: a
//! decoder that panicked, or a round trip that did not give the input back.
//! Checksums stop almost every random input at the door, so `wal_record`
//! and `pack` also decode a copy whose CRC-32Cs are recomputed: that copy
//! reaches the decoders behind the checksums.

use ferry_format::keys::CatalogKey;
use ferry_format::pack::decode_pack;
use ferry_format::wal::{
    SEGMENT_HEADER_BYTES, decode_record, decode_segment_header, encode_record, encode_segment_header, is_scrubbed,
    record_shape, scrub_record,
};

/// `wal::decode_segment_header` and `wal::decode_record` on arbitrary bytes:
/// they never panic, and whatever decodes re-encodes to the same bytes. The
/// bytes are read both as one record and as a segment (header, then
/// records back to back until the first that does not decode).
pub fn wal_record(data: &[u8]) {
    wal_bytes(data);
    let mut fixed = data.to_vec();
    let at = if fixed.starts_with(b"FERRYWAL") { SEGMENT_HEADER_BYTES } else { 0 };
    if let Some(rest) = fixed.get_mut(at..) {
        fix_record_crc(rest);
    }
    if fixed != data {
        wal_bytes(&fixed);
    }
}

fn wal_bytes(data: &[u8]) {
    record_round_trips(data);
    if let Ok(version) = decode_segment_header(data) {
        assert_eq!(encode_segment_header(version)[..], data[..SEGMENT_HEADER_BYTES], "header round trip");
        let mut offset = SEGMENT_HEADER_BYTES;
        while offset < data.len() {
            match record_round_trips(&data[offset..]) {
                Some(used) => offset += used,
                None => break,
            }
        }
    }
}

/// Decodes one record at the start of `data`; if it decodes, checks that
/// encoding it gives exactly the bytes it came from, and that scrubbing it
/// keeps its shape and place. Returns its length.
fn record_round_trips(data: &[u8]) -> Option<usize> {
    let shape = record_shape(data).ok();
    let (record, used) = decode_record(data).ok()?;
    assert!(used <= data.len(), "decoded {used} bytes of {}", data.len());
    let mut again = Vec::with_capacity(used);
    encode_record(&record, &mut again);
    assert_eq!(again, &data[..used], "record round trip of {record:?}");
    let shape = shape.expect("a record that decodes has a shape");
    assert_eq!((shape.ledger, shape.len), (record.ledger.as_bytes(), used), "shape of {record:?}");
    let mut scrubbed = data[..used].to_vec();
    scrub_record(&mut scrubbed).expect("a record that decodes can be scrubbed");
    let (after, len) = decode_record(&scrubbed).expect("a scrubbed record decodes");
    assert_eq!((after.ledger, after.id, after.ts, len), (record.ledger, record.id, record.ts, used));
    assert!(is_scrubbed(&after) || record.payload.is_empty(), "scrubbed {record:?}");
    Some(used)
}

/// `pack::decode_pack` on arbitrary bytes never panics, and what it accepts
/// is consistent: records of the header's ledger, dense from its first id,
/// as many as the header says.
pub fn pack(data: &[u8]) {
    pack_bytes(data);
    let mut fixed = data.to_vec();
    fix_pack_crcs(&mut fixed);
    if fixed != data {
        pack_bytes(&fixed);
    }
}

fn pack_bytes(data: &[u8]) {
    let header = ferry_format::pack::decode_header(data).ok().map(|(h, _)| h);
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
        assert_eq!(Some(*id), pack.header.first_id.checked_add(i as u64), "ids not dense in {:?}", pack.header);
    }
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
