//! Entries: what an append carries in (`NewEntry`) and what ferry hands out
//! (`Entry`, whose JSON form is the same everywhere: API, sinks, backups).

use crate::{LedgerName, Payload};

/// An entry's id within its ledger: 1, 2, 3, … with no gaps.
pub type EntryId = u64;

/// One entry to append, before ferry assigns its id and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    pub key: Option<String>,
    pub idempotency_key: Option<String>,
    pub payload: Payload,
}

/// A stored entry. Its schema in the OpenAPI document describes the JSON
/// form `write_json` writes (absent fields are left out, never null).
#[derive(Debug, Clone, PartialEq, Eq, utoipa::ToSchema)]
pub struct Entry {
    pub ledger: LedgerName,
    #[schema(value_type = u64, minimum = 1)]
    pub id: EntryId,
    /// Unix milliseconds assigned by ferry; never decreasing within a ledger.
    pub ts: u64,
    #[schema(value_type = String, required = false)]
    pub key: Option<String>,
    /// The entry's link in its ledger's hash chain (`docs/format.md`,
    /// "Hash chain"); `None` for a ledger without one.
    #[schema(value_type = String, required = false, pattern = "^[0-9a-f]{64}$")]
    pub hash: Option<[u8; 32]>,
    /// The JSON value appended, as sent (compacted).
    #[schema(value_type = serde_json::Value)]
    pub payload: Payload,
}

impl Entry {
    /// Bytes `write_json` appends, at most.
    pub fn json_len_max(&self) -> usize {
        // 45 bytes of fixed text (the key's included), two u64s of up to 20
        // digits, the ledger name, and the key escaped at worst six bytes
        // per byte (`\u00XX`), and the hash: 10 bytes of text, 64 digits.
        96 + 74 + self.ledger.as_str().len() + self.key.as_ref().map_or(0, |k| 6 * k.len()) + self.payload.len()
    }

    /// Appends the entry's JSON form to `out`:
    /// `{"ledger":"audit","id":42,"ts":1763769600123,"key":"user-7","hash":"…","payload":{…}}`,
    /// `key` and `hash` (lower-case hex) omitted when absent. Written by hand because it is the hot path
    /// of every read, and the payload is already compact JSON text.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        self.write_json_with(out, None);
    }

    /// The entry's JSON form with its idempotency key before the payload:
    /// `{"ledger":…,"id":…,"ts":…,"key"?:…,"hash"?:…,"idempotency_key":"…","payload":…}`,
    /// the line of a backup and of an import (`idempotency_key` omitted
    /// when `None`, which gives exactly `write_json`).
    pub fn write_json_with(&self, out: &mut Vec<u8>, idempotency_key: Option<&str>) {
        let mut numbers = itoa::Buffer::new();
        // Ledger names need no escaping: their alphabet is [a-z0-9._-].
        out.extend_from_slice(br#"{"ledger":""#);
        out.extend_from_slice(self.ledger.as_str().as_bytes());
        out.extend_from_slice(br#"","id":"#);
        out.extend_from_slice(numbers.format(self.id).as_bytes());
        out.extend_from_slice(br#","ts":"#);
        out.extend_from_slice(numbers.format(self.ts).as_bytes());
        if let Some(key) = &self.key {
            out.extend_from_slice(br#","key":"#);
            // Writing a str into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, key);
        }
        if let Some(hash) = &self.hash {
            out.extend_from_slice(br#","hash":""#);
            let at = out.len();
            out.resize(at + 64, 0);
            hex::encode_to_slice(hash, &mut out[at..]).expect("64 hex digits for 32 bytes");
            out.push(b'"');
        }
        if let Some(key) = idempotency_key {
            out.extend_from_slice(br#","idempotency_key":"#);
            let _ = serde_json::to_writer(&mut *out, key);
        }
        out.extend_from_slice(br#","payload":"#);
        out.extend_from_slice(self.payload.as_str().as_bytes());
        out.push(b'}');
    }

    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(64 + self.payload.len());
        self.write_json(&mut out);
        String::from_utf8(out).expect("entry JSON is UTF-8")
    }
}

impl serde::Serialize for Entry {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let raw = serde_json::value::RawValue::from_string(self.to_json()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_form_matches_the_spec_and_parses() {
        let mut e = Entry {
            ledger: LedgerName::parse("audit").unwrap(),
            id: 42,
            ts: 1763769600123,
            key: Some("user-\"7\"".into()),
            hash: None,
            payload: Payload::from_json(r#"{"a": 1}"#).unwrap(),
        };
        assert_eq!(
            e.to_json(),
            r#"{"ledger":"audit","id":42,"ts":1763769600123,"key":"user-\"7\"","payload":{"a":1}}"#
        );
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["key"], "user-\"7\"");
        e.key = None;
        assert_eq!(e.to_json(), r#"{"ledger":"audit","id":42,"ts":1763769600123,"payload":{"a":1}}"#);
        e.hash = Some([0xab; 32]);
        let json = e.to_json();
        assert_eq!(
            json,
            format!(
                r#"{{"ledger":"audit","id":42,"ts":1763769600123,"hash":"{}","payload":{{"a":1}}}}"#,
                "ab".repeat(32)
            )
        );
        assert!(json.len() <= e.json_len_max());
        let mut line = Vec::new();
        e.write_json_with(&mut line, Some("order-\"9\""));
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!((v["idempotency_key"].as_str(), v["id"].as_u64()), (Some("order-\"9\""), Some(42)));
        assert!(String::from_utf8(line).unwrap().ends_with(r#""idempotency_key":"order-\"9\"","payload":{"a":1}}"#));
    }
}
