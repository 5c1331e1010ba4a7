//! `ferry backup restore`: from backups verified before anything is
//! written (a full one, then the incremental ones in order), refuse ledgers
//! that exist unless merging, then import each ledger's lines in order, in
//! requests of bounded size, each chained from the hash before its first
//! line. A conflict names the backup file and line of the entry refused.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead as _, BufReader};

use ferry_core::limits::BATCH_ENTRIES_MAX;

use crate::error::{BackupError, Result};
use crate::line::BackupLine;
use crate::manifest::{LedgerManifest, Manifest};
use crate::progress::Progress;
use crate::target::{Imported, Target};
use crate::verify::Verified;

/// Bytes of lines per import request at first (halved while the target
/// answers "too large").
const REQUEST_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RestoreMode {
    /// Refuse when any ledger of the backup exists in the target.
    #[default]
    FailIfExists,
    /// Entries already in the target must be identical; the rest is added.
    Merge,
}

#[derive(Debug, Clone, Default)]
pub struct RestoreReport {
    pub ledgers: usize,
    pub imported: u64,
    pub present: u64,
}

/// Restores backups `verify_chain` passed (the caller verifies first, so a
/// target is not even opened for a bad backup).
pub async fn restore(verified: &Verified, target: &Target, mode: RestoreMode) -> Result<RestoreReport> {
    let dirs = &verified.dirs;
    let names: BTreeSet<&String> = verified.manifests.iter().flat_map(|m| m.ledgers.keys()).collect();
    if mode == RestoreMode::FailIfExists {
        let mut existing = Vec::new();
        for name in &names {
            if target.head(name).await?.is_some() {
                existing.push(name.as_str());
            }
        }
        if !existing.is_empty() {
            return Err(BackupError::Refused(format!(
                "ledger(s) {} exist in the target: restore into a node without them, or use --mode merge (entries \
                 already there must then be identical)",
                existing.join(", ")
            )));
        }
    }
    let progress = Progress::new("restore", verified.entries);
    let mut report = RestoreReport { ledgers: names.len(), ..RestoreReport::default() };
    for (dir, manifest) in dirs.iter().zip(&verified.manifests) {
        for (name, ledger) in &manifest.ledgers {
            restore_ledger(dir, manifest, name, ledger, target, &progress, &mut report).await?;
            progress.ledger(name, ledger.count);
        }
    }
    progress.finish(&format!(
        "{} ledgers: {} entries imported, {} already present",
        report.ledgers, report.imported, report.present
    ));
    Ok(report)
}

async fn restore_ledger(
    dir: &std::path::Path,
    manifest: &Manifest,
    name: &str,
    ledger: &LedgerManifest,
    target: &Target,
    progress: &Progress,
    report: &mut RestoreReport,
) -> Result<()> {
    if ledger.count == 0 {
        if manifest.incremental_from.is_none() && target.head(name).await?.is_none() {
            target.create(name).await?;
        }
        return Ok(());
    }
    let mut prev_hash = ledger.prev_hash.clone();
    let mut limit = REQUEST_BYTES;
    for f in &ledger.files {
        let path = dir.join(&f.path);
        let file = File::open(&path).map_err(|e| BackupError::io(format!("open {}", path.display()), e))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let mut pending: Vec<Vec<u8>> = Vec::new();
        let mut pending_bytes = 0;
        let mut done = false;
        while !done {
            let mut line = Vec::new();
            let read = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| BackupError::io(format!("read {}", path.display()), e))?;
            if read == 0 {
                done = true;
            } else {
                line.pop();
                pending_bytes += line.len() + 1;
                pending.push(line);
            }
            if pending.is_empty() || (!done && pending_bytes < limit && pending.len() < BATCH_ENTRIES_MAX) {
                continue;
            }
            // Send what is pending, in pieces as small as the target needs.
            let mut sent = 0;
            while sent < pending.len() {
                let mut end = sent;
                let mut bytes = 0;
                while end < pending.len()
                    && end - sent < BATCH_ENTRIES_MAX
                    && (end == sent || bytes + pending[end].len() < limit)
                {
                    bytes += pending[end].len() + 1;
                    end += 1;
                }
                let batch = &pending[sent..end];
                match target.import(name, batch, prev_hash.as_deref()).await? {
                    Imported::Done { imported, present } => {
                        report.imported += imported;
                        report.present += present;
                        progress.add(batch.len() as u64);
                        if prev_hash.is_some() {
                            let last = BackupLine::parse(batch.last().expect("a batch is not empty"))
                                .map_err(|e| BackupError::bad(&path, None, e))?;
                            prev_hash = last.hash.map(str::to_owned);
                        }
                        sent = end;
                    }
                    Imported::TooLarge if batch.len() > 1 => limit = (bytes / 2).max(1),
                    Imported::TooLarge => {
                        return Err(BackupError::Refused(format!(
                            "ledger {name}: the target refuses one entry as too large ({})",
                            path.display()
                        )));
                    }
                    Imported::Conflict { id, message } => {
                        let at = id.and_then(|id| {
                            ledger.files.iter().find(|f| (f.from..=f.to).contains(&id)).map(|f| (f, id))
                        });
                        return Err(match at {
                            Some((f, id)) => BackupError::bad(
                                dir.join(&f.path),
                                Some(id - f.from + 1),
                                format!("the target refused this entry: {message}"),
                            ),
                            None => {
                                BackupError::Refused(format!("ledger {name}: the target refused the import: {message}"))
                            }
                        });
                    }
                }
            }
            pending.clear();
            pending_bytes = 0;
        }
    }
    Ok(())
}
