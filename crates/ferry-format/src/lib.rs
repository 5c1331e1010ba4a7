//! Pure codecs for the bytes ferry writes to disk: WAL segment headers and
//! records, packs and catalog keys, and the rules for reading a whole
//! segment (`segment`), which recovery and `ferry verify` share. No I/O; every decoder is total (any input
//! gives a value or an error, never a panic) so it can be fuzzed.

pub mod chain;
pub mod fingerprints;
pub mod keys;
pub mod pack;
pub mod segment;
pub mod wal;
