//! Catalog keys: the one place they are built and parsed (SPEC §3).
//!
//! Keys are ASCII with `:` separators; names never contain `:` and numbers
//! are fixed-width and zero-padded, so lexical order is numeric order and
//! `CatalogKey::parse(k.encode()) == k` for every key.

use std::fmt;

use ferry_core::LedgerName;

/// Chunk numbers are written with this many digits.
pub const CHUNK_DIGITS: usize = 8;
/// The largest chunk number a key (and a pack file name) can carry.
pub const CHUNK_MAX: u64 = 99_999_999;
const PIN_DIGITS: usize = 20;
/// Watch session ids are written as this many lower-case hex digits.
pub const WATCH_SESSION_DIGITS: usize = 16;

/// A pinned layout value, written once at first start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConfigName {
    ChunkEntries,
    FormatVersion,
    /// The secret key of the idempotency-key fingerprints (format 3).
    FingerprintKey,
}

impl ConfigName {
    pub const ALL: [ConfigName; 3] = [ConfigName::ChunkEntries, ConfigName::FormatVersion, ConfigName::FingerprintKey];

    pub fn as_str(self) -> &'static str {
        match self {
            ConfigName::ChunkEntries => "chunk_entries",
            ConfigName::FormatVersion => "format_version",
            ConfigName::FingerprintKey => "fingerprint_key",
        }
    }
}

/// A durable counter: the last value handed out, so none is handed out twice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CounterName {
    /// Ledger incarnations: every ledger ever created got a distinct one.
    Incarnation,
}

impl CounterName {
    pub const ALL: [CounterName; 1] = [CounterName::Incarnation];

    pub fn as_str(self) -> &'static str {
        match self {
            CounterName::Incarnation => "incarnation",
        }
    }
}

/// Every kind of key the catalog holds.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CatalogKey {
    /// `ledger:{name}`: the ledger's metadata.
    Ledger(LedgerName),
    /// `chunk:{ledger}:{chunk:08}`: a pack file's state.
    Chunk(LedgerName, u64),
    /// `keys:{ledger}:{chunk:08}`: the fingerprints of a frozen chunk's
    /// idempotency keys (format 3; `fingerprints.rs`), while inside their
    /// window.
    Keys(LedgerName, u64),
    /// `scrub:{ledger}`: a deletion of the ledger whose records are still
    /// being erased from the WAL segments (`docs/durability.md`).
    Scrub(LedgerName),
    /// `cursor:{exporter}:{ledger}`: the last id the exporter's sink acked.
    /// Exporter names follow the ledger-name rules.
    Cursor(LedgerName, LedgerName),
    /// `pin:{id:020}`: a snapshot pin.
    Pin(u64),
    /// `config:{name}`: a pinned layout value.
    Config(ConfigName),
    /// `counter:{name}`: the last value a durable counter handed out.
    Counter(CounterName),
    /// `watch:{session:016x}`: a watch session's header (format 4).
    WatchSession(u64),
    /// `watchpos:{session:016x}:{ledger}`: where a watch session stands in
    /// one ledger (format 4).
    WatchPosition(u64, LedgerName),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed catalog key {key:?}: {reason}")]
pub struct BadKey {
    pub key: String,
    pub reason: &'static str,
}

impl CatalogKey {
    /// The key prefix under which every key of one kind sorts, e.g. `ledger:`.
    pub const LEDGER_PREFIX: &'static str = "ledger:";
    pub const CONFIG_PREFIX: &'static str = "config:";
    pub const CHUNK_PREFIX: &'static str = "chunk:";
    pub const CURSOR_PREFIX: &'static str = "cursor:";
    pub const COUNTER_PREFIX: &'static str = "counter:";
    pub const KEYS_PREFIX: &'static str = "keys:";
    pub const SCRUB_PREFIX: &'static str = "scrub:";
    pub const WATCH_SESSION_PREFIX: &'static str = "watch:";
    pub const WATCH_POSITION_PREFIX: &'static str = "watchpos:";
    pub const PIN_PREFIX: &'static str = "pin:";

    /// The prefix of every `chunk:` key of one ledger.
    pub fn chunk_prefix(ledger: &LedgerName) -> String {
        format!("chunk:{ledger}:")
    }

    /// The prefix of every `watchpos:` key of one session.
    pub fn watch_position_prefix(session: u64) -> String {
        format!("watchpos:{session:016x}:")
    }

    pub fn encode(&self) -> String {
        self.to_string()
    }

    pub fn parse(key: &str) -> Result<Self, BadKey> {
        let fail = |reason| BadKey { key: key.chars().take(200).collect(), reason };
        let (kind, rest) = key.split_once(':').ok_or_else(|| fail("no ':'"))?;
        let parts: Vec<&str> = rest.split(':').collect();
        let name = |s: &str| LedgerName::parse(s).map_err(|_| fail("invalid name"));
        match (kind, parts.as_slice()) {
            ("ledger", [l]) => Ok(Self::Ledger(name(l)?)),
            ("chunk", [l, c]) => {
                let chunk = fixed_number(c, CHUNK_DIGITS).ok_or_else(|| fail("bad chunk number"))?;
                Ok(Self::Chunk(name(l)?, chunk))
            }
            ("keys", [l, c]) => {
                let chunk = fixed_number(c, CHUNK_DIGITS).ok_or_else(|| fail("bad chunk number"))?;
                Ok(Self::Keys(name(l)?, chunk))
            }
            ("scrub", [l]) => Ok(Self::Scrub(name(l)?)),
            ("cursor", [e, l]) => Ok(Self::Cursor(name(e)?, name(l)?)),
            ("watch", [id]) => Ok(Self::WatchSession(fixed_hex(id).ok_or_else(|| fail("bad session id"))?)),
            ("watchpos", [id, l]) => {
                let session = fixed_hex(id).ok_or_else(|| fail("bad session id"))?;
                Ok(Self::WatchPosition(session, name(l)?))
            }
            ("pin", [p]) => Ok(Self::Pin(fixed_number(p, PIN_DIGITS).ok_or_else(|| fail("bad pin id"))?)),
            ("config", [c]) => ConfigName::ALL
                .into_iter()
                .find(|n| n.as_str() == *c)
                .map(Self::Config)
                .ok_or_else(|| fail("unknown config name")),
            ("counter", [c]) => CounterName::ALL
                .into_iter()
                .find(|n| n.as_str() == *c)
                .map(Self::Counter)
                .ok_or_else(|| fail("unknown counter name")),
            _ => Err(fail("unknown kind or wrong number of parts")),
        }
    }
}

/// Parses exactly `WATCH_SESSION_DIGITS` lower-case hex digits.
fn fixed_hex(s: &str) -> Option<u64> {
    let lower_hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
    (s.len() == WATCH_SESSION_DIGITS && s.bytes().all(lower_hex)).then(|| u64::from_str_radix(s, 16).ok())?
}

/// Parses exactly `digits` ASCII digits.
fn fixed_number(s: &str, digits: usize) -> Option<u64> {
    (s.len() == digits && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
}

impl fmt::Display for CatalogKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ledger(l) => write!(f, "ledger:{l}"),
            Self::Chunk(l, c) => {
                assert!(*c <= CHUNK_MAX, "chunk number {c} exceeds the key width");
                write!(f, "chunk:{l}:{c:08}")
            }
            Self::Keys(l, c) => {
                assert!(*c <= CHUNK_MAX, "chunk number {c} exceeds the key width");
                write!(f, "keys:{l}:{c:08}")
            }
            Self::Scrub(l) => write!(f, "scrub:{l}"),
            Self::Cursor(e, l) => write!(f, "cursor:{e}:{l}"),
            Self::Pin(p) => write!(f, "pin:{p:020}"),
            Self::Config(c) => write!(f, "config:{}", c.as_str()),
            Self::Counter(c) => write!(f, "counter:{}", c.as_str()),
            Self::WatchSession(id) => write!(f, "watch:{id:016x}"),
            Self::WatchPosition(id, l) => write!(f, "watchpos:{id:016x}:{l}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ln(s: &str) -> LedgerName {
        LedgerName::parse(s).unwrap()
    }

    #[test]
    fn known_keys_have_the_spec_spelling() {
        assert_eq!(CatalogKey::Ledger(ln("audit")).encode(), "ledger:audit");
        assert_eq!(CatalogKey::Chunk(ln("audit"), 3).encode(), "chunk:audit:00000003");
        assert_eq!(CatalogKey::Keys(ln("audit"), 3).encode(), "keys:audit:00000003");
        assert_eq!(CatalogKey::Scrub(ln("audit")).encode(), "scrub:audit");
        assert_eq!(CatalogKey::Cursor(ln("ch"), ln("audit")).encode(), "cursor:ch:audit");
        assert_eq!(CatalogKey::Pin(9).encode(), "pin:00000000000000000009");
        assert_eq!(CatalogKey::Config(ConfigName::ChunkEntries).encode(), "config:chunk_entries");
        assert_eq!(CatalogKey::Counter(CounterName::Incarnation).encode(), "counter:incarnation");
        assert_eq!(CatalogKey::WatchSession(0xab).encode(), "watch:00000000000000ab");
        assert_eq!(CatalogKey::WatchPosition(0xab, ln("audit")).encode(), "watchpos:00000000000000ab:audit");
        assert!(CatalogKey::Chunk(ln("a"), 1).encode().starts_with(&CatalogKey::chunk_prefix(&ln("a"))));
        let position = CatalogKey::WatchPosition(7, ln("a")).encode();
        assert!(position.starts_with(&CatalogKey::watch_position_prefix(7)));
        assert!(!position.starts_with(CatalogKey::WATCH_SESSION_PREFIX), "headers scan without positions");
    }

    #[test]
    fn malformed_keys_are_rejected() {
        for bad in [
            "",
            "ledger",
            "ledger:",
            "ledger:A",
            "ledger:a:b",
            "chunk:a:1",
            "chunk:a:0000000x",
            "chunk:a:000000001",
            "keys:a:1",
            "scrub:",
            "scrub:a:b",
            "pin:1",
            "config:nope",
            "counter:nope",
            "counter:incarnation:1",
            "nope:a",
            "cursor:a",
            "ledger:..",
            "watch:ab",
            "watch:00000000000000AB",
            "watch:00000000000000ab:audit",
            "watchpos:00000000000000ab",
            "watchpos:0000000000000xab:audit",
        ] {
            assert!(CatalogKey::parse(bad).is_err(), "{bad:?}");
        }
    }

    fn any_name() -> impl Strategy<Value = LedgerName> {
        "[a-z0-9][a-z0-9._-]{0,62}".prop_map(|s| LedgerName::parse(&s).unwrap())
    }

    fn any_key() -> impl Strategy<Value = CatalogKey> {
        prop_oneof![
            any_name().prop_map(CatalogKey::Ledger),
            (any_name(), 0..=CHUNK_MAX).prop_map(|(l, c)| CatalogKey::Chunk(l, c)),
            (any_name(), 0..=CHUNK_MAX).prop_map(|(l, c)| CatalogKey::Keys(l, c)),
            any_name().prop_map(CatalogKey::Scrub),
            (any_name(), any_name()).prop_map(|(e, l)| CatalogKey::Cursor(e, l)),
            any::<u64>().prop_map(CatalogKey::Pin),
            proptest::sample::select(ConfigName::ALL.to_vec()).prop_map(CatalogKey::Config),
            proptest::sample::select(CounterName::ALL.to_vec()).prop_map(CatalogKey::Counter),
            any::<u64>().prop_map(CatalogKey::WatchSession),
            (any::<u64>(), any_name()).prop_map(|(s, l)| CatalogKey::WatchPosition(s, l)),
        ]
    }

    proptest! {
        #[test]
        fn every_key_round_trips(key in any_key()) {
            prop_assert_eq!(CatalogKey::parse(&key.encode()).unwrap(), key);
        }

        #[test]
        fn lexical_order_is_numeric_order(l in any_name(), a in 0..=CHUNK_MAX, b in 0..=CHUNK_MAX) {
            let (ka, kb) = (CatalogKey::Chunk(l.clone(), a).encode(), CatalogKey::Chunk(l, b).encode());
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(s in ".{0,80}") {
            let _ = CatalogKey::parse(&s);
        }
    }
}
