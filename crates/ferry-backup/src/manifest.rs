//! `MANIFEST.json` and `ledger.json`: what a backup holds, written last.
//!
//! **The manifest's own hash.** `CHECKSUMS` cannot cover the file that
//! names its hash, so the manifest carries `manifest_sha256`: the SHA-256
//! of the file as written, with that field's value blank. It is the last
//! field, on a line of its own, so a shell checks it with
//! `sed 's/"manifest_sha256": "[0-9a-f]*"/"manifest_sha256": ""/' MANIFEST.json | sha256sum`
//! against `jq -r .manifest_sha256 MANIFEST.json`. An edited manifest is
//! refused, and with it the whole backup.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{BackupError, Result};
use crate::layout::MANIFEST;

/// `format` of every manifest.
pub const FORMAT: &str = "ferry-backup";
/// The layout version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const SELF_FIELD: &str = "\"manifest_sha256\": \"";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    pub format_version: u32,
    /// Unix milliseconds when the backup was complete.
    pub created_at: u64,
    pub ferry_version: String,
    /// Where it was read from: the server's URL or `data-dir:PATH`.
    pub source: String,
    pub pin: PinRecord,
    /// Set for an incremental backup: the backup it continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental_from: Option<Incremental>,
    pub ledgers: BTreeMap<String, LedgerManifest>,
    /// The SHA-256 of `CHECKSUMS` (lower-case hex).
    pub checksums_sha256: String,
    /// The SHA-256 of this file with this value blank (module docs).
    pub manifest_sha256: String,
}

/// The snapshot pin the backup read through.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinRecord {
    pub id: String,
    pub created_at: u64,
    /// Every pinned ledger's head (of the ledgers backed up).
    pub heads: BTreeMap<String, u64>,
}

/// The backup an incremental one continues.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    /// That backup's `manifest_sha256`.
    pub manifest_sha256: String,
    pub created_at: u64,
    /// Its heads: each ledger here starts after them.
    pub heads: BTreeMap<String, u64>,
}

/// One ledger of a backup.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerManifest {
    /// Its incarnation in the source node.
    pub incarnation: u64,
    pub created_at: u64,
    /// Its First at the pin.
    pub first: u64,
    /// Its head at the pin (`first - 1` when empty).
    pub head: u64,
    /// The first id in this backup: `first`, or the base's head + 1.
    pub from: u64,
    /// Entries in this backup: `head - from + 1`, or 0.
    pub count: u64,
    /// The chain hash before `from` (chained ledgers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    /// The chain hash of the head (`prev_hash` when `count` is 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
    pub files: Vec<FileManifest>,
}

impl LedgerManifest {
    pub fn chained(&self) -> bool {
        self.prev_hash.is_some()
    }
}

/// One file of entry lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileManifest {
    /// Relative to the backup.
    pub path: String,
    pub from: u64,
    pub to: u64,
    pub count: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// `ledgers/{ledger}/ledger.json`: the ledger, readable on its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerFile {
    pub name: String,
    pub incarnation: u64,
    pub created_at: u64,
    pub first: u64,
    pub head: u64,
    pub from: u64,
    pub count: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_hash: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub head_hash: Option<String>,
}

impl LedgerFile {
    pub fn of(name: &str, l: &LedgerManifest) -> Self {
        Self {
            name: name.to_owned(),
            incarnation: l.incarnation,
            created_at: l.created_at,
            first: l.first,
            head: l.head,
            from: l.from,
            count: l.count,
            prev_hash: l.prev_hash.clone(),
            head_hash: l.head_hash.clone(),
        }
    }
}

pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl Manifest {
    /// The file's bytes, `manifest_sha256` filled in.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let blank = Manifest { manifest_sha256: String::new(), ..self.clone() };
        let mut bytes = serde_json::to_vec_pretty(&blank).expect("a manifest serialises");
        bytes.push(b'\n');
        let sha = sha256_hex(&bytes);
        let at = find_self_field(&bytes).expect("the blank field is written");
        bytes.splice(at..at, sha.bytes());
        bytes
    }

    /// Reads and checks `DIR/MANIFEST.json`: present, parses, its own hash
    /// holds, a format this build reads. Returns it with its hash.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let incomplete = |reason: String| BackupError::Incomplete { dir: dir.to_path_buf(), reason };
        let path = dir.join(MANIFEST);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(incomplete(format!(
                    "no {MANIFEST}: not a backup, or an incomplete one (a backup writes it last)"
                )));
            }
            Err(e) => return Err(BackupError::io(format!("read {}", path.display()), e)),
        };
        let bad = |reason: String| BackupError::bad(&path, None, reason);
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("not a backup manifest: {e}")))?;
        if manifest.format != FORMAT {
            return Err(bad(format!("format is {:?}, not {FORMAT:?}", manifest.format)));
        }
        if manifest.format_version != FORMAT_VERSION {
            return Err(bad(format!(
                "format_version {} is not one this ferry reads ({FORMAT_VERSION})",
                manifest.format_version
            )));
        }
        let at = find_self_field(&bytes).ok_or_else(|| bad("no manifest_sha256 field on a line of its own".into()))?;
        let end = at + manifest.manifest_sha256.len();
        if bytes.get(at..end) != Some(manifest.manifest_sha256.as_bytes()) || bytes.get(end) != Some(&b'"') {
            return Err(bad("the manifest_sha256 field is not where it was written".into()));
        }
        let mut blank = bytes.clone();
        blank.drain(at..end);
        let sha = sha256_hex(&blank);
        if sha != manifest.manifest_sha256 {
            return Err(bad(format!(
                "the manifest was changed after it was written: its SHA-256 (with manifest_sha256 blank) is {sha}, \
                 it says {}",
                manifest.manifest_sha256
            )));
        }
        Ok(manifest)
    }
}

/// Where the value of the last `"manifest_sha256": "` begins.
fn find_self_field(bytes: &[u8]) -> Option<usize> {
    let needle = SELF_FIELD.as_bytes();
    bytes.windows(needle.len()).rposition(|w| w == needle).map(|at| at + needle.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            format_version: FORMAT_VERSION,
            created_at: 1,
            ferry_version: "0.1.0".into(),
            source: "http://x/\"manifest_sha256\": \"".into(),
            pin: PinRecord { id: "7".into(), created_at: 1, heads: BTreeMap::new() },
            incremental_from: None,
            ledgers: BTreeMap::new(),
            checksums_sha256: "00".into(),
            manifest_sha256: String::new(),
        }
    }

    #[test]
    fn the_manifest_hash_covers_the_file_with_its_own_value_blank() {
        let dir = tempfile::tempdir().unwrap();
        let bytes = sample().to_bytes();
        let text = String::from_utf8(bytes.clone()).unwrap();
        let sha = serde_json::from_slice::<Manifest>(&bytes).unwrap().manifest_sha256;
        assert_eq!(sha.len(), 64);
        let blank = text.replace(&format!("\"manifest_sha256\": \"{sha}\""), "\"manifest_sha256\": \"\"");
        assert_eq!(sha256_hex(blank.as_bytes()), sha);
        #[allow(clippy::disallowed_methods)] // a test builds the file it checks
        std::fs::write(dir.path().join(MANIFEST), &bytes).unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap().manifest_sha256, sha);
        let edited = text.replace("\"created_at\": 1,\n  \"ferry", "\"created_at\": 2,\n  \"ferry");
        assert_ne!(edited, text);
        #[allow(clippy::disallowed_methods)]
        std::fs::write(dir.path().join(MANIFEST), edited).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("MANIFEST.json: the manifest was changed"), "{err}");
    }
}
