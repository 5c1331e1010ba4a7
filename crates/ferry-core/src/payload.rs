//! `Payload`: an entry's JSON value, validated and stored as compact text.

mod portable;

use std::fmt;

pub use portable::{Problem, Unportable, check_portable};

/// A JSON value held as its compact text: valid JSON with no whitespace
/// outside strings. Stored and served byte for byte as given (numbers, key
/// order and escapes are kept), so a payload is never re-encoded; compact
/// text also keeps it on one line for NDJSON and JSONL.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Box<str>);

/// Why text is not a payload ferry takes in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidPayload {
    /// Not one JSON value.
    #[error("payload is not valid JSON: {0}")]
    Syntax(String),
    /// Valid JSON that strict parsers cannot read back as sent (see
    /// `portable.rs`).
    #[error("{}", .0.at("payload"))]
    Unportable(Unportable),
}

impl Payload {
    /// Validates `text` as one JSON value that strict parsers read back as
    /// sent, and compacts it.
    pub fn from_json(text: &str) -> Result<Self, InvalidPayload> {
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| InvalidPayload::Syntax(e.to_string()))?;
        Self::from_raw_json(text)
    }

    /// Takes text whose JSON syntax is already checked (the text of a
    /// `serde_json::value::RawValue`): checks that strict parsers read it
    /// back as sent, and compacts it, in one pass.
    pub fn from_raw_json(text: &str) -> Result<Self, InvalidPayload> {
        let compact = portable::compact_portable(text).map_err(InvalidPayload::Unportable)?;
        Ok(Self(compact.into_boxed_str()))
    }

    /// Wraps bytes read back from ferry's own storage, which were compact
    /// JSON when written and are protected by a checksum.
    pub fn from_stored(bytes: &[u8]) -> Result<Self, InvalidPayload> {
        let text = std::str::from_utf8(bytes).map_err(|e| InvalidPayload::Syntax(e.to_string()))?;
        Ok(Self(text.into()))
    }

    /// Takes text read back from ferry's own storage (already checked as
    /// UTF-8 and covered by a checksum) without copying it.
    pub fn from_stored_text(text: String) -> Self {
        Self(text.into_boxed_str())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl serde::Serialize for Payload {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Infallible for text that came through `from_json`/`from_stored`.
        let raw = serde_json::value::RawValue::from_string(self.0.to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compacts_whitespace_outside_strings_only() {
        let p = Payload::from_json(" {\n \"a b\" : [1, 2.50e3, \"x \\\" y\\\\\"] ,\"c\":null}\t").unwrap();
        assert_eq!(p.as_str(), r#"{"a b":[1,2.50e3,"x \" y\\"],"c":null}"#);
    }

    #[test]
    fn rejects_invalid_or_trailing_json() {
        for bad in ["", "{", "{\"a\":}", "1 2", "nul"] {
            assert!(Payload::from_json(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_what_strict_parsers_cannot_read_back_naming_where() {
        let e = Payload::from_json(r#"{"a": [1, {"b": 1e999}]}"#).unwrap_err();
        assert!(matches!(e, InvalidPayload::Unportable(_)), "{e:?}");
        assert!(e.to_string().starts_with("payload.a[1].b: the number 1e999 "), "{e}");
        assert!(matches!(Payload::from_json("{"), Err(InvalidPayload::Syntax(_))));
    }
}
