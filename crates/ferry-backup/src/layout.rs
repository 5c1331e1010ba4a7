//! The names of a backup's files (SPEC §7):
//!
//! ```text
//! DEST/
//!   MANIFEST.json                           written last (temp, fsync, rename, fsync dir)
//!   CHECKSUMS                               `sha256sum -c CHECKSUMS` checks every other file
//!   exporters.json                          cursors at the pin (informational)
//!   ledgers/{ledger}/ledger.json            name, created_at, first, head, count, …
//!   ledgers/{ledger}/entries-{n:06}.jsonl   entry lines in id order, ≤ 64 MiB each
//! ```
//! Ledger names are safe file names by construction (SPEC §1).

use std::path::{Component, Path};

pub const MANIFEST: &str = "MANIFEST.json";
pub const MANIFEST_TMP: &str = "MANIFEST.json.tmp";
pub const CHECKSUMS: &str = "CHECKSUMS";
pub const EXPORTERS: &str = "exporters.json";
pub const LEDGERS: &str = "ledgers";
pub const LEDGER_JSON: &str = "ledger.json";

/// A file of entry lines is closed before this size (a line longer than
/// the rest of the room starts the next file).
pub const FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// `ledgers/{ledger}/entries-{n:06}.jsonl`, relative to the backup.
pub fn entries_file(ledger: &str, n: u32) -> String {
    format!("{LEDGERS}/{ledger}/entries-{n:06}.jsonl")
}

/// `ledgers/{ledger}/ledger.json`, relative to the backup.
pub fn ledger_json(ledger: &str) -> String {
    format!("{LEDGERS}/{ledger}/{LEDGER_JSON}")
}

/// A path a backup names (in `CHECKSUMS` or the manifest) that stays inside
/// it: relative, no `..`, no root. Anything else is refused before it is
/// opened, whatever wrote the file.
pub fn is_inside(path: &str) -> bool {
    !path.is_empty() && Path::new(path).components().all(|c| matches!(c, Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_containment() {
        assert_eq!(entries_file("audit", 3), "ledgers/audit/entries-000003.jsonl");
        assert!(is_inside("ledgers/audit/ledger.json"));
        for bad in ["", "/etc/passwd", "../x", "ledgers/../../x", "./a"] {
            assert!(!is_inside(bad), "{bad}");
        }
    }
}
