//! One line of an entries file: the entry's JSON form (SPEC §1) with its
//! idempotency key while that is inside its window —
//! `{"ledger":"audit","id":42,"ts":…,"key"?:…,"hash"?:…,"idempotency_key"?:…,"payload":…}` —
//! the same line the import route takes.

use ferry_format::chain::{self, ChainHash};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A parsed line; `payload` is the stored compact JSON text, byte for byte
/// (what the chain hashes).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupLine<'a> {
    pub ledger: &'a str,
    pub id: u64,
    pub ts: u64,
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub hash: Option<&'a str>,
    #[serde(default)]
    pub idempotency_key: Option<String>,
    #[serde(borrow)]
    pub payload: &'a RawValue,
}

impl<'a> BackupLine<'a> {
    /// Parses one line (without its newline).
    pub fn parse(line: &'a [u8]) -> Result<Self, String> {
        serde_json::from_slice(line).map_err(|e| format!("not an entry line: {e}"))
    }

    /// The line's chain hash, decoded.
    pub fn chain_hash(&self) -> Result<Option<ChainHash>, String> {
        self.hash
            .map(|h| chain::from_hex(h).ok_or_else(|| format!("hash {h:?} is not 64 lower-case hex digits")))
            .transpose()
    }

    /// The hash this entry has in a chain whose previous link is `prev`.
    pub fn link(&self, prev: &ChainHash) -> ChainHash {
        chain::link(prev, self.id, self.ts, self.key.as_deref(), self.payload.get().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse_and_unknown_fields_are_refused() {
        let line = br#"{"ledger":"a","id":3,"ts":9,"key":"k","idempotency_key":"i","payload":{"x": [1,2]}}"#;
        let l = BackupLine::parse(line).unwrap();
        assert_eq!((l.ledger, l.id, l.ts, l.key.as_deref()), ("a", 3, 9, Some("k")));
        assert_eq!(l.payload.get(), r#"{"x": [1,2]}"#);
        assert!(BackupLine::parse(br#"{"ledger":"a","id":3,"ts":9,"payload":1,"extra":0}"#).is_err());
        assert!(BackupLine::parse(br#"{"ledger":"a","id":3,"ts":9}"#).is_err());
        let bad = BackupLine::parse(br#"{"ledger":"a","id":3,"ts":9,"hash":"zz","payload":1}"#).unwrap();
        assert!(bad.chain_hash().is_err());
    }
}
