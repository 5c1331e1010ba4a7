//! WAL segment files: a 16-byte header, then records back to back.
//!
//! ```text
//! header:  magic "FERRYWAL" (8) | format_version u32 LE | reserved u32 (0)
//! record:  body_len u32 LE | crc32c(body) u32 LE | body
//! body:    flags u8 | ledger_len u8 | ledger | id u64 LE | ts u64 LE
//!          | [hash (32)]                     if flags & HASH (format 5)
//!          | [key_len u16 LE | key]          if flags & KEY
//!          | [idem_len u16 LE | idem_key]    if flags & IDEMPOTENCY_KEY
//!          | payload (the rest of the body: compact JSON text)
//! flags:   1 = key present, 2 = idempotency key present,
//!          4 = more records of the same append request follow,
//!          8 = first record of a group-commit write,
//!          16 = a copy relocated from an older segment,
//!          32 = the entry's chain hash follows `ts` (format 5, `chain.rs`)
//! ```
//! The ledger and id are inside the checksum, so a record can never be
//! attributed to the wrong ledger or position. Layout detail: `docs/format.md`.

use ferry_core::limits::{ENTRY_KEY_BYTES_MAX, IDEMPOTENCY_KEY_BYTES_MAX, LEDGER_NAME_BYTES_MAX};

pub const SEGMENT_MAGIC: &[u8; 8] = b"FERRYWAL";
pub const SEGMENT_HEADER_BYTES: usize = 16;
/// `body_len` + `crc32c`.
pub const RECORD_PREFIX_BYTES: usize = 8;
/// No record body is larger than this (a 1 MiB default payload leaves room;
/// anything larger in a length field is damage, not data).
pub const RECORD_BODY_BYTES_MAX: usize = 64 * 1024 * 1024;

const FLAG_KEY: u8 = 1;
const FLAG_IDEMPOTENCY_KEY: u8 = 2;
/// More records of the same append request follow this one. Recovery drops
/// a batch whose last record is missing, so a batch is all-or-nothing even
/// when a crash tears the group write in its middle.
const FLAG_BATCH_CONTINUES: u8 = 4;
/// The first record of a group-commit write. Every group starts after the
/// previous group's fdatasync returned, so damage followed by a group start
/// lies in synced data: corruption, never a torn write.
const FLAG_GROUP_START: u8 = 8;
/// A copy of a record from an older segment, moved forward so that segment
/// can be released; it replaces the original wherever both exist.
const FLAG_RELOCATED: u8 = 16;
/// The record carries its entry's chain hash (`chain::link`), 32 bytes
/// after `ts`: set on every record of a chained ledger (format 5).
const FLAG_HASH: u8 = 32;
const FLAGS_KNOWN: u8 =
    FLAG_KEY | FLAG_IDEMPOTENCY_KEY | FLAG_BATCH_CONTINUES | FLAG_GROUP_START | FLAG_RELOCATED | FLAG_HASH;
/// Bytes of a chain hash.
pub const HASH_BYTES: usize = 32;
// The largest configurable payload plus every other field fits a record.
const _: () = assert!(
    ferry_core::limits::ENTRY_BYTES_MAX_LIMIT as usize + BODY_FIXED_BYTES + HASH_BYTES + 255 + 2 * (2 + 256)
        <= RECORD_BODY_BYTES_MAX
);
/// flags + ledger_len + id + ts.
const BODY_FIXED_BYTES: usize = 1 + 1 + 8 + 8;

/// One WAL record, borrowing from the buffer it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalRecord<'a> {
    pub ledger: &'a str,
    pub id: u64,
    pub ts: u64,
    pub key: Option<&'a str>,
    pub idempotency_key: Option<&'a str>,
    /// True on every record of an append request but its last.
    pub batch_continues: bool,
    /// True on the first record of a group-commit write.
    pub group_start: bool,
    /// True on a copy moved forward from an older segment.
    pub relocated: bool,
    /// The entry's chain hash: present on every record of a chained
    /// ledger, absent on the others (and on every record before format 5).
    pub hash: Option<[u8; HASH_BYTES]>,
    pub payload: &'a [u8],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer ends inside the record: a torn write if at the end of the
    /// last segment, damage anywhere else.
    #[error("record is cut short: needs {needed} bytes, {available} remain")]
    Truncated { needed: usize, available: usize },
    #[error("record checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    #[error("bad segment header: {0}")]
    Header(&'static str),
}

pub fn encode_segment_header(format_version: u32) -> [u8; SEGMENT_HEADER_BYTES] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES];
    h[..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&format_version.to_le_bytes());
    h
}

/// Checks a segment header and returns its format version.
pub fn decode_segment_header(buf: &[u8]) -> Result<u32, DecodeError> {
    if buf.len() < SEGMENT_HEADER_BYTES {
        return Err(DecodeError::Header("shorter than 16 bytes"));
    }
    if &buf[..8] != SEGMENT_MAGIC {
        return Err(DecodeError::Header("wrong magic"));
    }
    if buf[12..16] != [0; 4] {
        return Err(DecodeError::Header("reserved bytes are not zero"));
    }
    Ok(u32::from_le_bytes(buf[8..12].try_into().expect("4 bytes")))
}

/// The encoded size of `record`, prefix included.
pub fn encoded_len(record: &WalRecord<'_>) -> usize {
    RECORD_PREFIX_BYTES
        + BODY_FIXED_BYTES
        + record.ledger.len()
        + record.hash.map_or(0, |_| HASH_BYTES)
        + record.key.map_or(0, |k| 2 + k.len())
        + record.idempotency_key.map_or(0, |k| 2 + k.len())
        + record.payload.len()
}

/// Appends `record` to `out`. Panics if a field exceeds its limit: callers
/// validate against `ferry_core::limits` first, so that is a bug.
pub fn encode_record(record: &WalRecord<'_>, out: &mut Vec<u8>) {
    assert!(record.ledger.len() <= LEDGER_NAME_BYTES_MAX);
    assert!(record.key.is_none_or(|k| k.len() <= ENTRY_KEY_BYTES_MAX));
    assert!(record.idempotency_key.is_none_or(|k| k.len() <= IDEMPOTENCY_KEY_BYTES_MAX));
    let start = out.len();
    let body_len = encoded_len(record) - RECORD_PREFIX_BYTES;
    assert!(body_len <= RECORD_BODY_BYTES_MAX);
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // crc, filled in below
    let flags = if record.key.is_some() { FLAG_KEY } else { 0 }
        | if record.idempotency_key.is_some() { FLAG_IDEMPOTENCY_KEY } else { 0 }
        | if record.batch_continues { FLAG_BATCH_CONTINUES } else { 0 }
        | if record.group_start { FLAG_GROUP_START } else { 0 }
        | if record.relocated { FLAG_RELOCATED } else { 0 }
        | if record.hash.is_some() { FLAG_HASH } else { 0 };
    out.push(flags);
    out.push(record.ledger.len() as u8);
    out.extend_from_slice(record.ledger.as_bytes());
    out.extend_from_slice(&record.id.to_le_bytes());
    out.extend_from_slice(&record.ts.to_le_bytes());
    if let Some(hash) = &record.hash {
        out.extend_from_slice(hash);
    }
    for k in [record.key, record.idempotency_key].into_iter().flatten() {
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend_from_slice(k.as_bytes());
    }
    out.extend_from_slice(record.payload);
    let crc = crc32c::crc32c(&out[start + RECORD_PREFIX_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    debug_assert_eq!(out.len() - start, body_len + RECORD_PREFIX_BYTES);
}

/// Decodes the record at the start of `buf`; returns it and its encoded size.
/// Whether `buf` could begin with the first record of a group commit, from
/// its prefix alone (body length in range and within `buf`, the group
/// start flag, no unknown flag): the encoded length to checksum if so. What
/// makes the torn-tail rule cheap: only such offsets are checksummed.
pub fn group_start_candidate(buf: &[u8]) -> Option<usize> {
    let prefix = buf.get(..RECORD_PREFIX_BYTES + 1)?;
    let body_len = u32::from_le_bytes(prefix[..4].try_into().expect("4 bytes")) as usize;
    let flags = prefix[RECORD_PREFIX_BYTES];
    let total = RECORD_PREFIX_BYTES + body_len;
    let plausible = (BODY_FIXED_BYTES + 1..=RECORD_BODY_BYTES_MAX).contains(&body_len)
        && total <= buf.len()
        && flags & FLAG_GROUP_START != 0
        && flags & !FLAGS_KNOWN == 0;
    plausible.then_some(total)
}

pub fn decode_record(buf: &[u8]) -> Result<(WalRecord<'_>, usize), DecodeError> {
    if buf.len() < RECORD_PREFIX_BYTES {
        return Err(DecodeError::Truncated { needed: RECORD_PREFIX_BYTES, available: buf.len() });
    }
    let body_len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    let stored = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if !(BODY_FIXED_BYTES + 1..=RECORD_BODY_BYTES_MAX).contains(&body_len) {
        return Err(DecodeError::Malformed("body length out of range"));
    }
    let total = RECORD_PREFIX_BYTES + body_len;
    if buf.len() < total {
        return Err(DecodeError::Truncated { needed: total, available: buf.len() });
    }
    let body = &buf[RECORD_PREFIX_BYTES..total];
    let computed = crc32c::crc32c(body);
    if computed != stored {
        return Err(DecodeError::Checksum { stored, computed });
    }
    Ok((decode_body(body)?, total))
}

fn decode_body(body: &[u8]) -> Result<WalRecord<'_>, DecodeError> {
    let mut r = Reader(body);
    let flags = r.u8()?;
    if flags & !FLAGS_KNOWN != 0 {
        return Err(DecodeError::Malformed("unknown flags"));
    }
    let ledger_len = r.u8()? as usize;
    let ledger = r.str(ledger_len)?;
    let id = r.u64()?;
    let ts = r.u64()?;
    let hash = if flags & FLAG_HASH != 0 { Some(r.take(HASH_BYTES)?.try_into().expect("32 bytes")) } else { None };
    let key = if flags & FLAG_KEY != 0 { Some(r.prefixed_str()?) } else { None };
    let idempotency_key = if flags & FLAG_IDEMPOTENCY_KEY != 0 { Some(r.prefixed_str()?) } else { None };
    if ledger.is_empty() || id == 0 {
        return Err(DecodeError::Malformed("empty ledger or zero id"));
    }
    // The decoder accepts exactly what the encoder may write.
    if ledger.len() > LEDGER_NAME_BYTES_MAX
        || key.is_some_and(|k| k.len() > ENTRY_KEY_BYTES_MAX)
        || idempotency_key.is_some_and(|k| k.len() > IDEMPOTENCY_KEY_BYTES_MAX)
    {
        return Err(DecodeError::Malformed("a field is over its limit"));
    }
    let batch_continues = flags & FLAG_BATCH_CONTINUES != 0;
    let group_start = flags & FLAG_GROUP_START != 0;
    let relocated = flags & FLAG_RELOCATED != 0;
    Ok(WalRecord { ledger, id, ts, key, idempotency_key, batch_continues, group_start, relocated, hash, payload: r.0 })
}

/// Where a record's fields lie, read from its framing alone: the checksum
/// is not checked. What erasing a deleted ledger's record needs, also after
/// a crash tore that erasure: it never changes the bytes read here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordShape<'a> {
    /// The ledger name's bytes.
    pub ledger: &'a [u8],
    /// Encoded size, prefix included.
    pub len: usize,
    /// The chain hash, the key's text, the idempotency key's text and the
    /// payload, as byte ranges from the record's start (empty when absent):
    /// what a scrub erases. The hash goes too: with the hash before it, it
    /// would confirm a guess of a short payload.
    pub content: [std::ops::Range<usize>; 4],
}

/// The shape of the record at the start of `buf`, by the same framing rules
/// as `decode_record`, without the checksum and without looking at the
/// key, idempotency key and payload bytes.
pub fn record_shape(buf: &[u8]) -> Result<RecordShape<'_>, DecodeError> {
    if buf.len() < RECORD_PREFIX_BYTES {
        return Err(DecodeError::Truncated { needed: RECORD_PREFIX_BYTES, available: buf.len() });
    }
    let body_len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if !(BODY_FIXED_BYTES + 1..=RECORD_BODY_BYTES_MAX).contains(&body_len) {
        return Err(DecodeError::Malformed("body length out of range"));
    }
    let len = RECORD_PREFIX_BYTES + body_len;
    if buf.len() < len {
        return Err(DecodeError::Truncated { needed: len, available: buf.len() });
    }
    let body = &buf[RECORD_PREFIX_BYTES..len];
    let mut r = Reader(body);
    let flags = r.u8()?;
    if flags & !FLAGS_KNOWN != 0 {
        return Err(DecodeError::Malformed("unknown flags"));
    }
    let ledger_len = r.u8()? as usize;
    let ledger = r.take(ledger_len)?;
    if ledger.is_empty() || ledger.len() > LEDGER_NAME_BYTES_MAX {
        return Err(DecodeError::Malformed("ledger name length out of range"));
    }
    r.take(16)?; // id, ts
    let at = |r: &Reader<'_>| len - r.0.len();
    let hash = if flags & FLAG_HASH != 0 {
        let start = at(&r);
        r.take(HASH_BYTES)?;
        start..start + HASH_BYTES
    } else {
        0..0
    };
    let mut text = |present: bool, max: usize| -> Result<std::ops::Range<usize>, DecodeError> {
        if !present {
            return Ok(0..0);
        }
        let n = u16::from_le_bytes(r.take(2)?.try_into().expect("2 bytes")) as usize;
        if n > max {
            return Err(DecodeError::Malformed("a field is over its limit"));
        }
        let start = at(&r);
        r.take(n)?;
        Ok(start..start + n)
    };
    let key = text(flags & FLAG_KEY != 0, ENTRY_KEY_BYTES_MAX)?;
    let idempotency_key = text(flags & FLAG_IDEMPOTENCY_KEY != 0, IDEMPOTENCY_KEY_BYTES_MAX)?;
    let payload = at(&r)..len;
    Ok(RecordShape { ledger, len, content: [hash, key, idempotency_key, payload] })
}

/// Scrubs one record in place (`record` is exactly one record): the bytes
/// of its chain hash, key, idempotency key and payload become zero and its checksum is
/// computed again; its length, flags, ledger, id and timestamp stay, so it
/// still decodes as the same ledger's record at the same place. Scrubbing
/// twice, or scrubbing a record torn while it was being scrubbed (each byte
/// either old or new), gives the same bytes.
pub fn scrub_record(record: &mut [u8]) -> Result<(), DecodeError> {
    let shape = record_shape(record)?;
    if shape.len != record.len() {
        return Err(DecodeError::Malformed("not exactly one record"));
    }
    for range in shape.content {
        record[range].fill(0);
    }
    let crc = crc32c::crc32c(&record[RECORD_PREFIX_BYTES..]);
    record[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// True for a record `scrub_record` wrote: its payload and keys are all
/// zero bytes. A stored payload is JSON text, never empty and never holding
/// a NUL byte, so no record as appended looks scrubbed.
pub fn is_scrubbed(record: &WalRecord<'_>) -> bool {
    let zero = |text: &[u8]| text.iter().all(|b| *b == 0);
    !record.payload.is_empty()
        && zero(record.payload)
        && record.key.is_none_or(|k| zero(k.as_bytes()))
        && record.idempotency_key.is_none_or(|k| zero(k.as_bytes()))
}

/// A cursor over a checked body; every read is bounds-checked.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Malformed("field runs past the body"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes")))
    }
    fn str(&mut self, n: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::Malformed("text is not UTF-8"))
    }
    fn prefixed_str(&mut self) -> Result<&'a str, DecodeError> {
        let n = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes")) as usize;
        self.str(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> WalRecord<'static> {
        WalRecord {
            ledger: "audit",
            id: 7,
            ts: 1_763_769_600_123,
            key: Some("user-7"),
            idempotency_key: None,
            batch_continues: true,
            group_start: false,
            relocated: false,
            hash: Some([0x5a; 32]),
            payload: br#"{"a":1}"#,
        }
    }

    #[test]
    fn header_round_trips_and_rejects_damage() {
        let h = encode_segment_header(1);
        assert_eq!(decode_segment_header(&h), Ok(1));
        let mut bad = h;
        bad[0] ^= 1;
        assert!(decode_segment_header(&bad).is_err());
        assert!(decode_segment_header(&h[..15]).is_err());
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut buf = Vec::new();
        encode_record(&sample(), &mut buf);
        for bit in 0..buf.len() * 8 {
            let mut damaged = buf.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            match decode_record(&damaged) {
                Err(_) => {}
                Ok((r, _)) => panic!("bit {bit} flipped went unnoticed: {r:?}"),
            }
        }
    }

    #[test]
    fn every_truncation_is_reported_as_truncated() {
        let mut buf = Vec::new();
        encode_record(&sample(), &mut buf);
        for n in 0..buf.len() {
            assert!(matches!(decode_record(&buf[..n]), Err(DecodeError::Truncated { .. })), "cut at {n}");
        }
    }

    #[test]
    fn a_scrubbed_record_keeps_its_place_and_loses_its_data() {
        let mut buf = Vec::new();
        encode_record(&WalRecord { idempotency_key: Some("idem-7"), ..sample() }, &mut buf);
        let original = buf.clone();
        scrub_record(&mut buf).unwrap();
        let (r, used) = decode_record(&buf).unwrap();
        assert_eq!(used, original.len());
        assert_eq!((r.ledger, r.id, r.ts, r.batch_continues), ("audit", 7, 1_763_769_600_123, true));
        assert_eq!((r.key, r.idempotency_key, r.payload), (Some("\0\0\0\0\0\0"), Some("\0\0\0\0\0\0"), &[0u8; 7][..]));
        assert!(is_scrubbed(&r));
        assert_eq!(r.hash, Some([0; 32]), "the chain hash is erased too");
        assert!(!buf.windows(32).any(|w| w == [0x5a; 32]), "the hash is still there");
        assert!(!is_scrubbed(&decode_record(&original).unwrap().0));
        for text in [&b"user-7"[..], b"idem-7", br#"{"a":1}"#] {
            assert!(!buf.windows(text.len()).any(|w| w == text), "{text:?} is still there");
        }
        let mut again = buf.clone();
        scrub_record(&mut again).unwrap();
        assert_eq!(again, buf, "scrubbing is idempotent");
        assert!(scrub_record(&mut buf[..original.len() - 1]).is_err(), "exactly one record");
    }

    proptest! {
        #[test]
        fn records_round_trip(
            ledger in "[a-z0-9][a-z0-9._-]{0,62}",
            id in 1u64..,
            ts in any::<u64>(),
            key in proptest::option::of(".{0,64}"),
            idem in proptest::option::of(".{0,64}"),
            batch_continues in any::<bool>(),
            group_start in any::<bool>(),
            relocated in any::<bool>(),
            hash in proptest::option::of(any::<[u8; 32]>()),
            payload in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let rec = WalRecord {
                ledger: &ledger, id, ts, key: key.as_deref(),
                idempotency_key: idem.as_deref(), batch_continues, group_start, relocated, hash, payload: &payload,
            };
            let mut buf = vec![0xAA];
            encode_record(&rec, &mut buf);
            prop_assert_eq!(buf.len() - 1, encoded_len(&rec));
            let (back, used) = decode_record(&buf[1..]).unwrap();
            prop_assert_eq!(used, buf.len() - 1);
            prop_assert_eq!(back, rec);
        }

        #[test]
        fn a_scrub_torn_anywhere_is_finished_by_scrubbing_again(
            key in proptest::option::of(".{0,64}"),
            idem in proptest::option::of(".{0,64}"),
            payload in proptest::collection::vec(1u8.., 1..512),
            torn in proptest::collection::vec(any::<bool>(), 1..1024),
        ) {
            let rec = WalRecord { key: key.as_deref(), idempotency_key: idem.as_deref(), payload: &payload, ..sample() };
            let mut original = Vec::new();
            encode_record(&rec, &mut original);
            let mut scrubbed = original.clone();
            scrub_record(&mut scrubbed).unwrap();
            // A crash while the scrub was written: each byte old or new.
            let mut mixed: Vec<u8> = original.iter().zip(&scrubbed).enumerate()
                .map(|(i, (o, s))| if torn[i % torn.len()] { *s } else { *o })
                .collect();
            let shape = record_shape(&mixed).unwrap();
            prop_assert_eq!((shape.ledger, shape.len), (&b"audit"[..], original.len()));
            scrub_record(&mut mixed).unwrap();
            prop_assert_eq!(&mixed, &scrubbed);
            prop_assert!(is_scrubbed(&decode_record(&mixed).unwrap().0));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_record(&bytes);
            let _ = record_shape(&bytes);
            let _ = decode_segment_header(&bytes);
        }
    }
}
