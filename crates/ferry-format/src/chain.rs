//! The per-ledger hash chain (format 5, issue #21): every entry of a
//! chained ledger incarnation carries `h_n`, which commits to the entry and
//! to every entry before it, so an edited, dropped or reordered entry
//! breaks the chain from that id on.
//!
//! ```text
//! h_0 = SHA-256("ferry-chain:" ‖ ledger ‖ ":" ‖ u64_be(incarnation))
//! h_n = SHA-256(h_{n-1} ‖ u64_be(id) ‖ u64_be(ts)
//!               ‖ u32_be(len key) ‖ key ‖ u32_be(len payload) ‖ payload)
//! ```
//! `key` is empty when absent; `payload` is the stored compact JSON text.
//! Big-endian on purpose (unlike the file encodings): it is the order a
//! reader writes by hand in any language. `docs/format.md` has a test
//! vector, checked below.

use sha2::{Digest as _, Sha256};

/// One link of the chain: a SHA-256 digest.
pub type ChainHash = [u8; 32];

/// `h_0` of a ledger incarnation: what its first entry chains from.
pub fn genesis(ledger: &str, incarnation: u64) -> ChainHash {
    let mut sha = Sha256::new();
    sha.update(b"ferry-chain:");
    sha.update(ledger.as_bytes());
    sha.update(b":");
    sha.update(incarnation.to_be_bytes());
    sha.finalize().into()
}

/// `h_n` of the entry (`id`, `ts`, `key`, `payload`) after `prev`.
pub fn link(prev: &ChainHash, id: u64, ts: u64, key: Option<&str>, payload: &[u8]) -> ChainHash {
    let key = key.unwrap_or("").as_bytes();
    let mut sha = Sha256::new();
    sha.update(prev);
    sha.update(id.to_be_bytes());
    sha.update(ts.to_be_bytes());
    // Lengths are bounded far below u32 (keys 256 bytes, payloads 64 MiB).
    sha.update((key.len() as u32).to_be_bytes());
    sha.update(key);
    sha.update((payload.len() as u32).to_be_bytes());
    sha.update(payload);
    sha.finalize().into()
}

/// Lower-case hex, the chain's text form everywhere (entries, ledger
/// info, the catalog).
pub fn to_hex(hash: &ChainHash) -> String {
    hex::encode(hash)
}

/// Parses `to_hex`'s form; `None` for anything else.
pub fn from_hex(text: &str) -> Option<ChainHash> {
    let mut out = [0u8; 32];
    hex::decode_to_slice(text, &mut out).ok()?;
    (text.bytes().all(|b| !b.is_ascii_uppercase())).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The test vector of `docs/format.md` ("Hash chain"): keep the two in step.
    #[test]
    fn the_documented_test_vector() {
        let h0 = genesis("audit", 1);
        assert_eq!(to_hex(&h0), "d8e8618a0a9a4f3353560363187ab4e9f9ddc5af89fbfb665bcd178a7dd313d9");
        let h1 = link(&h0, 1, 1_796_400_000_000, Some("user-7"), br#"{"action":"login"}"#);
        assert_eq!(to_hex(&h1), "76c1fb187cba315a0c90bfc04af21aec782e315a81f26c80ff8398bcbae2cece");
        let h2 = link(&h1, 2, 1_796_400_000_005, None, b"[1,2,3]");
        assert_eq!(to_hex(&h2), "2a56187f81c79eb287796682baab96440e8b2c5362ac07ff26294e6e9cbc8012");
    }

    #[test]
    fn hex_round_trips_and_rejects_other_text() {
        let h = genesis("a", 7);
        assert_eq!(from_hex(&to_hex(&h)), Some(h));
        assert_eq!(from_hex(&to_hex(&h).to_uppercase()), None);
        assert_eq!(from_hex("00"), None);
    }
}
