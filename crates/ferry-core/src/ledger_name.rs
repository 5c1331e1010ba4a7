//! `LedgerName`: the only way to hold a ledger name is to have parsed one.

use std::fmt;
use std::sync::Arc;

use crate::limits::LEDGER_NAME_BYTES_MAX;

/// A validated ledger name: `^[a-z0-9][a-z0-9._-]{0,62}$`.
///
/// Every name is a safe single path component (never `.` or `..`, never a
/// separator), so it can be used as a directory name without escaping.
/// Cheap to clone (shared text): every entry read carries its ledger.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LedgerName(Arc<str>);

/// Why a string is not a ledger name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ledger name {name:?}: {reason}")]
pub struct InvalidLedgerName {
    pub name: String,
    pub reason: &'static str,
}

impl LedgerName {
    pub fn parse(name: &str) -> Result<Self, InvalidLedgerName> {
        let fail = |reason| Err(InvalidLedgerName { name: name.chars().take(100).collect(), reason });
        let bytes = name.as_bytes();
        let Some(&first) = bytes.first() else {
            return fail("must not be empty");
        };
        if bytes.len() > LEDGER_NAME_BYTES_MAX {
            return fail("must be at most 63 characters");
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return fail("must start with a lower-case letter or a digit");
        }
        let allowed = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(b);
        if !bytes.iter().all(allowed) {
            return fail("may contain only a-z, 0-9, '.', '_' and '-'");
        }
        Ok(Self(name.into()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for LedgerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for LedgerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// In the OpenAPI document, a ledger name is a string of the alphabet
/// `parse` takes, so a generated client can check one before sending it.
impl utoipa::PartialSchema for LedgerName {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::Type::String)
            .pattern(Some("^[a-z0-9][a-z0-9._-]{0,62}$"))
            .min_length(Some(1))
            .max_length(Some(LEDGER_NAME_BYTES_MAX))
            .description(Some("A ledger name: a-z, 0-9, '.', '_' and '-', starting with a letter or a digit."))
            .into()
    }
}

impl utoipa::ToSchema for LedgerName {}

impl serde::Serialize for LedgerName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for LedgerName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        LedgerName::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_spec_alphabet() {
        for ok in ["a", "0", "audit", "payments.eu", "a_b-c.d", &"a".repeat(63)] {
            assert!(LedgerName::parse(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn rejects_traversal_case_separators_and_length() {
        for bad in ["", ".", "..", "../x", "a/b", "a\\b", "Audit", "-a", "_a", ".a", "a b", "é", &"a".repeat(64), "a\0"]
        {
            assert!(LedgerName::parse(bad).is_err(), "{bad:?}");
        }
    }
}
