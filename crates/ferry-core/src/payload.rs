//! `Payload`: an entry's JSON value, validated and stored as compact text.

use std::fmt;

/// A JSON value held as its compact text: valid JSON with no whitespace
/// outside strings. Stored and served byte for byte as given (numbers, key
/// order and escapes are kept), so a payload is never re-encoded; compact
/// text also keeps it on one line for NDJSON and JSONL.
#[derive(Clone, PartialEq, Eq)]
pub struct Payload(Box<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("payload is not valid JSON: {0}")]
pub struct InvalidPayload(pub String);

impl Payload {
    /// Validates `text` as one JSON value and compacts it.
    pub fn from_json(text: &str) -> Result<Self, InvalidPayload> {
        serde_json::from_str::<serde::de::IgnoredAny>(text).map_err(|e| InvalidPayload(e.to_string()))?;
        Ok(Self::from_valid_json(text))
    }

    /// Compacts text already known to be one valid JSON value (for example a
    /// `serde_json::value::RawValue`).
    pub fn from_valid_json(text: &str) -> Self {
        Self(compact(text).into_boxed_str())
    }

    /// Wraps bytes read back from ferry's own storage, which were compact
    /// JSON when written and are protected by a checksum.
    pub fn from_stored(bytes: &[u8]) -> Result<Self, InvalidPayload> {
        let text = std::str::from_utf8(bytes).map_err(|e| InvalidPayload(e.to_string()))?;
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

/// Drops JSON whitespace outside strings. `text` must be valid JSON.
fn compact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    out
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
}
