//! Idempotency-key fingerprints and the catalog value that keeps a frozen
//! chunk's (`keys:{ledger}:{chunk:08}`, format 3), so a restart reloads the
//! keys of the last 24 h without reading packs.
//!
//! A fingerprint is SipHash-1-3 of the key's UTF-8 bytes under the data
//! directory's secret `config:fingerprint_key` (a random u64, with a fixed
//! second half of the 128-bit SipHash key): stable across restarts and
//! versions, and not something a client can aim two keys at.
//!
//! ```text
//! value: entries back to back, ascending offset, each
//!        offset u32 (id - chunk's first id) | fingerprint u64   (12 bytes, LE)
//! ```

use std::hash::Hasher as _;

use siphasher::sip::SipHasher13;

/// The fixed second half of the SipHash key ("ferrykey").
const KEY_HIGH: u64 = u64::from_le_bytes(*b"ferrykey");
/// Bytes of one entry.
pub const ENTRY_BYTES: usize = 12;

/// The fingerprint of an idempotency key under `secret`.
pub fn fingerprint(secret: u64, idempotency_key: &str) -> u64 {
    let mut h = SipHasher13::new_with_keys(secret, KEY_HIGH);
    h.write(idempotency_key.as_bytes());
    h.finish()
}

/// Encodes (offset, fingerprint) entries, given in ascending offset order.
pub fn encode(entries: &[(u32, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.len() * ENTRY_BYTES);
    for (offset, fp) in entries {
        out.extend_from_slice(&offset.to_le_bytes());
        out.extend_from_slice(&fp.to_le_bytes());
    }
    out
}

/// Decodes a chunk's entries; offsets must ascend and stay below `count`
/// (the chunk's entries).
pub fn decode(bytes: &[u8], count: u64) -> Result<Vec<(u32, u64)>, String> {
    if !bytes.len().is_multiple_of(ENTRY_BYTES) {
        return Err(format!("{} bytes is not a whole number of {ENTRY_BYTES}-byte entries", bytes.len()));
    }
    let mut out = Vec::with_capacity(bytes.len() / ENTRY_BYTES);
    let mut previous: Option<u32> = None;
    for e in bytes.chunks_exact(ENTRY_BYTES) {
        let offset = u32::from_le_bytes(e[..4].try_into().expect("4 bytes"));
        let fp = u64::from_le_bytes(e[4..].try_into().expect("8 bytes"));
        if u64::from(offset) >= count || previous.is_some_and(|p| offset <= p) {
            return Err(format!("entry offset {offset} is out of order or beyond the chunk's {count} entries"));
        }
        previous = Some(offset);
        out.push((offset, fp));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_stable_and_depend_on_the_secret() {
        // Pinned: a change here breaks every data directory's stored keys.
        assert_eq!(fingerprint(1, "req-1"), fingerprint(1, "req-1"));
        assert_ne!(fingerprint(1, "req-1"), fingerprint(2, "req-1"));
        assert_ne!(fingerprint(1, "req-1"), fingerprint(1, "req-2"));
        assert_eq!(fingerprint(0, ""), 0x4a6d_a85d_8eb1_ad77);
    }

    #[test]
    fn entries_round_trip_and_bad_values_are_refused() {
        let entries = [(0, 7), (3, u64::MAX), (4, 1)];
        assert_eq!(decode(&encode(&entries), 5).unwrap(), entries);
        assert!(decode(&encode(&entries), 4).is_err(), "offset 4 of a 4-entry chunk");
        assert!(decode(&encode(&[(2, 1), (2, 2)]), 5).is_err(), "repeated offset");
        assert!(decode(&[0; 11], 5).is_err());
        assert_eq!(decode(&[], 5).unwrap(), []);
    }
}
