//! `ferry backup verify`: a backup checked from its files alone — the
//! manifest's own hash, `CHECKSUMS` against the manifest, every file
//! against `CHECKSUMS` (and no file unaccounted for), every line an entry
//! of its ledger with ids dense and ts never decreasing, the counts and id
//! ranges the manifest states, and each chained ledger's hash chain from
//! the hash before its first id to the head hash, across files and across
//! a chain of incremental backups. The first fault is the answer, naming
//! its file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};

use ferry_format::chain::{self, ChainHash};
use sha2::{Digest as _, Sha256};

use crate::error::{BackupError, Result};
use crate::layout::{self, CHECKSUMS, EXPORTERS, MANIFEST};
use crate::line::BackupLine;
use crate::manifest::{LedgerFile, LedgerManifest, Manifest, sha256_hex};
use crate::progress::Progress;

/// What a verification read.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The backups' directories, in the order given (base first).
    pub dirs: Vec<PathBuf>,
    /// Their manifests, in the same order.
    pub manifests: Vec<Manifest>,
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
}

/// Verifies one backup (an incremental one on its own: its chain from the
/// hash its manifest records before each ledger's first id).
pub fn verify(dir: &Path) -> Result<Verified> {
    verify_chain(&[dir.to_path_buf()])
}

/// Verifies backups that continue each other (a full one, then each
/// incremental one taken from the one before), and that they do.
pub fn verify_chain(dirs: &[PathBuf]) -> Result<Verified> {
    let manifests = dirs.iter().map(|d| Manifest::load(d)).collect::<Result<Vec<_>>>()?;
    let total = manifests.iter().flat_map(|m| m.ledgers.values()).map(|l| l.count).sum();
    let progress = Progress::new("verify", total);
    let mut verified = Verified { dirs: dirs.to_vec(), manifests: Vec::new(), entries: 0, files: 0, bytes: 0 };
    // Each ledger's (incarnation, head, head hash) after the backups so far.
    let mut reached: BTreeMap<String, (u64, u64, Option<String>)> = BTreeMap::new();
    for (i, (dir, manifest)) in dirs.iter().zip(&manifests).enumerate() {
        if i > 0 {
            continues(dir, manifest, &manifests[i - 1], &reached)?;
        }
        verify_one(dir, manifest, &progress, &mut verified)?;
        for (name, l) in &manifest.ledgers {
            reached.insert(name.clone(), (l.incarnation, l.head, l.head_hash.clone()));
        }
    }
    progress.finish(&format!(
        "{} backup(s), {} ledgers, {} entries in {} files: ok",
        dirs.len(),
        reached.len(),
        verified.entries,
        verified.files
    ));
    verified.manifests = manifests;
    Ok(verified)
}

/// `manifest` (in `dir`) continues `base`: it names it, and each of its
/// ledgers starts where the chain so far ends.
fn continues(
    dir: &Path,
    manifest: &Manifest,
    base: &Manifest,
    reached: &BTreeMap<String, (u64, u64, Option<String>)>,
) -> Result<()> {
    let bad = |reason: String| BackupError::bad(dir.join(MANIFEST), None, reason);
    match &manifest.incremental_from {
        Some(from) if from.manifest_sha256 == base.manifest_sha256 => {}
        Some(from) => {
            return Err(bad(format!(
                "it continues the backup whose manifest_sha256 is {}, not the one before it ({})",
                from.manifest_sha256, base.manifest_sha256
            )));
        }
        None => return Err(bad("a full backup, not an incremental one: it cannot follow another backup".into())),
    }
    for (name, l) in &manifest.ledgers {
        let Some((incarnation, head, head_hash)) = reached.get(name) else { continue };
        if *incarnation != l.incarnation {
            return Err(bad(format!(
                "ledger {name} is incarnation {} here and {incarnation} before: it was deleted and created again",
                l.incarnation
            )));
        }
        if l.from != head + 1 {
            return Err(bad(format!("ledger {name} starts at id {} here; the backups before end at {head}", l.from)));
        }
        if l.prev_hash != *head_hash {
            return Err(bad(format!(
                "ledger {name}: the chain hash before id {} is {:?} here and the head hash before is {head_hash:?}",
                l.from, l.prev_hash
            )));
        }
    }
    Ok(())
}

fn verify_one(dir: &Path, manifest: &Manifest, progress: &Progress, verified: &mut Verified) -> Result<()> {
    let checksums = read_checksums(dir, manifest)?;
    let mut expected = BTreeSet::from([EXPORTERS.to_owned()]);
    for (name, l) in &manifest.ledgers {
        expected.insert(layout::ledger_json(name));
        expected.extend(l.files.iter().map(|f| f.path.clone()));
    }
    let checksums_path = dir.join(CHECKSUMS);
    if let Some(missing) = expected.iter().find(|p| !checksums.contains_key(*p)) {
        return Err(BackupError::bad(&checksums_path, None, format!("{missing} is not in it")));
    }
    if let Some(extra) = checksums.keys().find(|p| !expected.contains(*p)) {
        return Err(BackupError::bad(&checksums_path, None, format!("it names {extra}, which the manifest does not")));
    }
    let exporters = whole_file(dir, EXPORTERS, &checksums)?;
    serde_json::from_slice::<serde_json::Value>(&exporters)
        .map_err(|e| BackupError::bad(dir.join(EXPORTERS), None, format!("not JSON: {e}")))?;
    for (name, l) in &manifest.ledgers {
        let rel = layout::ledger_json(name);
        let bytes = whole_file(dir, &rel, &checksums)?;
        let file: LedgerFile = serde_json::from_slice(&bytes)
            .map_err(|e| BackupError::bad(dir.join(&rel), None, format!("not a ledger.json: {e}")))?;
        if file != LedgerFile::of(name, l) {
            return Err(BackupError::bad(dir.join(&rel), None, "it differs from the ledger in MANIFEST.json"));
        }
        verify_ledger(dir, name, l, &checksums, verified)?;
        progress.add(l.count);
        progress.ledger(name, l.count);
    }
    Ok(())
}

/// `CHECKSUMS`: its hash is the manifest's, and each line is
/// `{sha256}  {path}` with a path inside the backup, named once.
fn read_checksums(dir: &Path, manifest: &Manifest) -> Result<BTreeMap<String, String>> {
    let path = dir.join(CHECKSUMS);
    let bytes = std::fs::read(&path).map_err(|e| BackupError::io(format!("read {}", path.display()), e))?;
    let sha = sha256_hex(&bytes);
    if sha != manifest.checksums_sha256 {
        return Err(BackupError::bad(
            &path,
            None,
            format!("its SHA-256 is {sha}; MANIFEST.json says {}", manifest.checksums_sha256),
        ));
    }
    let text = std::str::from_utf8(&bytes).map_err(|_| BackupError::bad(&path, None, "not UTF-8 text"))?;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let bad = |reason: &str| BackupError::bad(&path, Some(n as u64 + 1), reason.to_owned());
        let (sha, file) = line.split_once("  ").ok_or_else(|| bad("not `{sha256}  {path}`"))?;
        if sha.len() != 64 || !sha.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad("the hash is not 64 lower-case hex digits"));
        }
        if !layout::is_inside(file) {
            return Err(bad("the path leaves the backup directory"));
        }
        if out.insert(file.to_owned(), sha.to_owned()).is_some() {
            return Err(bad("the path is named twice"));
        }
    }
    Ok(out)
}

/// A small file, read whole and checked against `CHECKSUMS`.
fn whole_file(dir: &Path, rel: &str, checksums: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let path = dir.join(rel);
    let bytes = std::fs::read(&path).map_err(|e| BackupError::io(format!("read {}", path.display()), e))?;
    let sha = sha256_hex(&bytes);
    if Some(&sha) != checksums.get(rel) {
        return Err(BackupError::bad(&path, None, format!("its SHA-256 is {sha}, not the one in CHECKSUMS")));
    }
    Ok(bytes)
}

fn verify_ledger(
    dir: &Path,
    name: &str,
    l: &LedgerManifest,
    checksums: &BTreeMap<String, String>,
    verified: &mut Verified,
) -> Result<()> {
    let manifest_path = dir.join(MANIFEST);
    let bad = |reason: String| BackupError::bad(&manifest_path, None, format!("ledger {name}: {reason}"));
    let count = if l.head >= l.from { l.head - l.from + 1 } else { 0 };
    if l.from < l.first || l.count != count {
        return Err(bad(format!("from {}, first {}, head {} and count {} disagree", l.from, l.first, l.head, l.count)));
    }
    let mut prev: Option<ChainHash> = match &l.prev_hash {
        Some(h) => Some(chain::from_hex(h).ok_or_else(|| bad(format!("prev_hash {h:?} is not a chain hash")))?),
        None => None,
    };
    let mut next = l.from;
    let mut last_ts = 0;
    for f in &l.files {
        if f.from != next || f.to < f.from || f.count != f.to - f.from + 1 {
            return Err(bad(format!(
                "file {} holds ids {}..={} ({} entries); expected from {next}",
                f.path, f.from, f.to, f.count
            )));
        }
        if checksums.get(&f.path) != Some(&f.sha256) {
            return Err(bad(format!("file {}: its SHA-256 differs from CHECKSUMS", f.path)));
        }
        let path = dir.join(&f.path);
        let file = File::open(&path).map_err(|e| BackupError::io(format!("open {}", path.display()), e))?;
        let mut reader =
            BufReader::with_capacity(1 << 20, HashingRead { inner: file, hasher: Sha256::new(), bytes: 0 });
        let mut line = Vec::new();
        let mut n = 0u64;
        loop {
            line.clear();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| BackupError::io(format!("read {}", path.display()), e))?;
            if read == 0 {
                break;
            }
            n += 1;
            let at = |reason: String| BackupError::bad(&path, Some(n), reason);
            if line.pop() != Some(b'\n') {
                return Err(at("the last line has no newline: the file was cut short".into()));
            }
            let entry = BackupLine::parse(&line).map_err(at)?;
            if entry.ledger != name {
                return Err(at(format!("an entry of ledger {:?} in ledger {name}'s file", entry.ledger)));
            }
            if entry.id != next || entry.id > f.to {
                return Err(at(format!("id {} where id {next} belongs (ledger {name})", entry.id)));
            }
            if entry.ts < last_ts {
                return Err(at(format!(
                    "ledger {name} id {}: ts {} is before the previous entry's {last_ts}",
                    entry.id, entry.ts
                )));
            }
            let hash = entry.chain_hash().map_err(at)?;
            match (&mut prev, hash) {
                (Some(p), Some(h)) => {
                    let want = entry.link(p);
                    if want != h {
                        return Err(at(format!(
                            "ledger {name} id {}: the hash chain breaks here (the entry's hash is {}, its fields and the \
                             previous hash give {})",
                            entry.id,
                            chain::to_hex(&h),
                            chain::to_hex(&want)
                        )));
                    }
                    *p = h;
                }
                (Some(_), None) => {
                    return Err(at(format!("ledger {name} id {}: no hash in a chained ledger", entry.id)));
                }
                (None, Some(_)) => {
                    return Err(at(format!("ledger {name} id {}: a hash in a ledger without a chain", entry.id)));
                }
                (None, None) => {}
            }
            last_ts = entry.ts;
            next += 1;
        }
        let reader = reader.into_inner();
        let sha = hex::encode(reader.hasher.finalize());
        if sha != f.sha256 {
            return Err(BackupError::bad(&path, None, format!("its SHA-256 is {sha}, not the one in CHECKSUMS")));
        }
        if next != f.to + 1 {
            return Err(BackupError::bad(
                &path,
                Some(n),
                format!("it ends at id {} (ledger {name}); the manifest says {}", next - 1, f.to),
            ));
        }
        verified.files += 1;
        verified.bytes += reader.bytes;
    }
    if next != l.from + l.count {
        return Err(bad(format!("the files end at id {}; the head is {}", next - 1, l.head)));
    }
    if prev.map(|h| chain::to_hex(&h)) != l.head_hash {
        return Err(bad("the chain ends at another hash than head_hash".into()));
    }
    verified.entries += l.count;
    Ok(())
}

/// Hashes what passes through, so a file is read once.
struct HashingRead<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: std::io::Read> std::io::Read for HashingRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// Proves verified backups against an anchored head (`GET
/// /v1/ledgers/{ledger}/head` or a `ledger.checkpoint` event kept outside
/// ferry): the chain hash the backups give entry `id` of `ledger` is `hash`.
/// The chain itself was checked by `verify_chain`, so a match proves every
/// entry up to `id` is what was appended. Returns where the hash was found.
pub fn prove_anchor(verified: &Verified, ledger: &str, id: u64, hash: &str) -> Result<String> {
    let refused = |reason: String| BackupError::Refused(format!("ledger {ledger} id {id}: {reason}"));
    let Some((dir, l)) = verified
        .dirs
        .iter()
        .zip(&verified.manifests)
        .rev()
        .filter_map(|(d, m)| m.ledgers.get(ledger).map(|l| (d, l)))
        .find(|(_, l)| l.from.saturating_sub(1) <= id && id <= l.head)
    else {
        return Err(refused("the backups do not hold it".into()));
    };
    let (found, place) = if id == l.head {
        (l.head_hash.clone(), format!("{}: head_hash", dir.join(MANIFEST).display()))
    } else if id + 1 == l.from {
        (l.prev_hash.clone(), format!("{}: prev_hash", dir.join(MANIFEST).display()))
    } else {
        let f =
            l.files.iter().find(|f| (f.from..=f.to).contains(&id)).ok_or_else(|| refused("no file holds it".into()))?;
        let path = dir.join(&f.path);
        let n = id - f.from + 1;
        let file = File::open(&path).map_err(|e| BackupError::io(format!("open {}", path.display()), e))?;
        let mut lines = BufReader::new(file).split(b'\n');
        let line = lines
            .nth((n - 1) as usize)
            .transpose()
            .map_err(|e| BackupError::io(format!("read {}", path.display()), e))?
            .ok_or_else(|| refused(format!("{} has no line {n}", path.display())))?;
        let entry = BackupLine::parse(&line).map_err(|e| BackupError::bad(&path, Some(n), e))?;
        (entry.hash.map(str::to_owned), format!("{} line {n}", path.display()))
    };
    match found {
        None => Err(refused("the ledger has no hash chain in the backup".into())),
        Some(found) if found == hash => Ok(place),
        Some(found) => Err(refused(format!("the backup's chain hash is {found} ({place}); the anchor says {hash}"))),
    }
}
