//! `ferry backup create`: a snapshot pin, renewed every third of its ttl;
//! every ledger the globs match read from First (or, incrementally, from
//! after the base backup's head) to its pinned head into entry files; then
//! `ledger.json`s, `exporters.json`, `CHECKSUMS` and, once a last renewal
//! proved the pin held throughout, `MANIFEST.json`. Memory stays bounded:
//! lines stream from the source to the files.
//!
//! A backup that fails (a renewal refused, a pinned ledger deleted, the
//! source gone) writes no manifest: the directory is an incomplete backup
//! every command refuses, and the pin is deleted, or expires by itself
//! if the process was killed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::now_ms;

use crate::error::{BackupError, Result};
use crate::layout::{self, EXPORTERS};
use crate::line::BackupLine;
use crate::manifest::{FORMAT, FORMAT_VERSION, Incremental, LedgerFile, LedgerManifest, Manifest, PinRecord};
use crate::progress::Progress;
use crate::source::{Cut, Source};
use crate::writer::BackupWriter;

/// Renewal is checked this often (in lines) while a ledger is read.
const CHECK_EVERY_LINES: u64 = 4_096;

#[derive(Debug, Clone)]
pub struct CreateOptions {
    pub dest: PathBuf,
    /// Globs over ledger names; empty: every ledger.
    pub ledgers: Vec<String>,
    /// Back up only what came after this backup's heads.
    pub incremental_from: Option<PathBuf>,
    /// The pin's ttl; it is renewed every third of it.
    pub pin_ttl: Duration,
    /// An entry file is closed before it passes this many bytes.
    pub max_file_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct CreateReport {
    pub manifest: Manifest,
    pub entries: u64,
    pub bytes: u64,
}

pub async fn create(source: &Source, options: &CreateOptions) -> Result<CreateReport> {
    let globs = options
        .ledgers
        .iter()
        .map(|g| glob::Pattern::new(g).map_err(|e| BackupError::Refused(format!("--ledgers {g:?}: {e}"))))
        .collect::<Result<Vec<_>>>()?;
    let base = options.incremental_from.as_deref().map(Manifest::load).transpose()?;
    BackupWriter::check_dest(&options.dest)?;
    let cut = source.take_pin(options.pin_ttl).await?;
    fail::fail_point!("backup::pinned");
    let failed = Arc::new(Mutex::new(None::<String>));
    let renewal = tokio::spawn(renew(source.clone(), cut.id.clone(), options.pin_ttl, failed.clone()));
    let outcome = match BackupWriter::create(&options.dest, options.max_file_bytes) {
        Ok(writer) => write(source, options, &globs, base.as_ref(), writer, &cut, &failed).await,
        Err(e) => Err(e),
    };
    renewal.abort();
    source.release_pin(&cut.id).await;
    outcome.map_err(|e| {
        let dest = options.dest.display();
        BackupError::Refused(format!("{e}; the backup was aborted: {dest} holds no MANIFEST.json (remove it)"))
    })
}

/// Renews the pin every third of its ttl until aborted; a failure is left
/// in `failed` for the reader to stop at.
async fn renew(source: Source, pin: String, ttl: Duration, failed: Arc<Mutex<Option<String>>>) {
    loop {
        tokio::time::sleep(ttl / 3).await;
        if let Err(e) = source.renew_pin(&pin, ttl).await {
            *failed.lock().expect("renewal lock") = Some(e.to_string());
            return;
        }
    }
}

fn renewal_failed(failed: &Mutex<Option<String>>) -> Result<()> {
    match failed.lock().expect("renewal lock").clone() {
        Some(e) => Err(BackupError::Refused(format!("the snapshot pin could not be renewed: {e}"))),
        None => Ok(()),
    }
}

async fn write(
    source: &Source,
    options: &CreateOptions,
    globs: &[glob::Pattern],
    base: Option<&Manifest>,
    mut writer: BackupWriter,
    cut: &Cut,
    failed: &Mutex<Option<String>>,
) -> Result<CreateReport> {
    let chosen: Vec<(&String, &(u64, u64, u64))> =
        cut.ledgers.iter().filter(|(name, _)| globs.is_empty() || globs.iter().any(|g| g.matches(name))).collect();
    let total = chosen.iter().map(|(_, (_, first, head))| (head + 1).saturating_sub(*first)).sum();
    let progress = Progress::new("backup", total);
    let mut ledgers = BTreeMap::new();
    let (mut entries, mut bytes) = (0, 0);
    for (name, &(incarnation, first, head)) in chosen {
        renewal_failed(failed)?;
        let gone =
            || BackupError::Refused(format!("ledger {name} was deleted after snapshot pin {} was taken", cut.id));
        let facts = source.facts(name).await?.filter(|f| f.incarnation == incarnation).ok_or_else(gone)?;
        let (from, prev_hash) = match base.and_then(|b| b.ledgers.get(name.as_str())) {
            Some(old) if old.incarnation != incarnation => {
                return Err(BackupError::Refused(format!(
                    "ledger {name} was deleted and created again since the base backup (incarnation {} then, \
                     {incarnation} now): take a full backup",
                    old.incarnation
                )));
            }
            Some(old) if old.head + 1 < first || old.head > head => {
                return Err(BackupError::Refused(format!(
                    "ledger {name} holds ids {first}..={head} now and the base backup ends at {}: an incremental \
                     backup cannot continue it (retention pruned past it?); take a full backup",
                    old.head
                )));
            }
            Some(old) => (old.head + 1, old.head_hash.clone()),
            None => (first, facts.first_prev_hash.clone()),
        };
        let count = (head + 1).saturating_sub(from);
        writer.ledger_dir(name)?;
        let mut files = Vec::new();
        let mut head_hash = prev_hash.clone();
        if count > 0 {
            let mut lines = source.lines(&cut.id, name, from, head).await?;
            let mut out = writer.entries(name)?;
            let mut next = from;
            let mut last = Vec::new();
            while next <= head {
                let Some(line) = lines.next().await? else { break };
                let id = line_id(&line, name).ok_or_else(|| {
                    BackupError::Refused(format!("ledger {name}: the source sent a line that is not entry {next}"))
                })?;
                if id != next {
                    return Err(BackupError::Refused(format!("ledger {name}: the source sent id {id} for id {next}")));
                }
                out.push(id, &line)?;
                bytes += line.len() as u64 + 1;
                next += 1;
                if (next - from).is_multiple_of(CHECK_EVERY_LINES) {
                    progress.add(CHECK_EVERY_LINES);
                    renewal_failed(failed)?;
                }
                if next > head {
                    last = line;
                }
            }
            progress.add((next - from) % CHECK_EVERY_LINES);
            if next <= head {
                // Cut short: tell a deleted ledger from a lost source.
                source.facts(name).await?.filter(|f| f.incarnation == incarnation).ok_or_else(gone)?;
                return Err(BackupError::Refused(format!(
                    "ledger {name}: the read through the pin ended at id {}, before the pinned head {head}",
                    next - 1
                )));
            }
            files = out.finish()?;
            if prev_hash.is_some() {
                let line = BackupLine::parse(&last).map_err(|e| BackupError::Refused(format!("ledger {name}: {e}")))?;
                head_hash = line.hash.map(str::to_owned);
            }
        }
        let ledger = LedgerManifest {
            incarnation,
            created_at: facts.created_at,
            first,
            head,
            from,
            count,
            prev_hash,
            head_hash,
            files,
        };
        let json = serde_json::to_vec_pretty(&LedgerFile::of(name, &ledger)).expect("ledger.json serialises");
        writer.write_file(&layout::ledger_json(name), &json)?;
        progress.ledger(name, count);
        entries += count;
        ledgers.insert(name.clone(), ledger);
    }
    let cursors: Vec<serde_json::Value> = source
        .cursors()
        .await?
        .into_iter()
        .filter(|c| c["ledger"].as_str().is_some_and(|l| ledgers.contains_key(l)))
        .collect();
    writer.write_file(EXPORTERS, &serde_json::to_vec_pretty(&cursors).expect("cursors serialise"))?;
    // A renewal now proves the pin never lapsed: an expired pin cannot be
    // renewed, and while it lived nothing it cut could be pruned.
    renewal_failed(failed)?;
    source.renew_pin(&cut.id, options.pin_ttl).await?;
    let manifest = Manifest {
        format: FORMAT.into(),
        format_version: FORMAT_VERSION,
        created_at: now_ms(),
        ferry_version: env!("CARGO_PKG_VERSION").into(),
        source: source.describe(),
        pin: PinRecord {
            id: cut.id.clone(),
            created_at: cut.created_at,
            heads: ledgers.iter().map(|(n, l)| (n.clone(), l.head)).collect(),
        },
        incremental_from: base.map(|b| Incremental {
            manifest_sha256: b.manifest_sha256.clone(),
            created_at: b.created_at,
            heads: b.ledgers.iter().map(|(n, l)| (n.clone(), l.head)).collect(),
        }),
        ledgers,
        checksums_sha256: String::new(),
        manifest_sha256: String::new(),
    };
    let dir = writer.dir().display().to_string();
    let manifest = writer.finish(manifest)?;
    progress.finish(&format!("{dir}: {} ledgers, {entries} entries, {bytes} bytes", manifest.ledgers.len()));
    Ok(CreateReport { manifest, entries, bytes })
}

/// The id of an entry line of `ledger`, read from its fixed prefix
/// `{"ledger":"NAME","id":N,` (the entry's JSON form always starts so)
/// without parsing the rest; `None` for anything else.
fn line_id(line: &[u8], ledger: &str) -> Option<u64> {
    let rest = line.strip_prefix(br#"{"ledger":""#)?;
    let rest = rest.strip_prefix(ledger.as_bytes())?;
    let rest = rest.strip_prefix(br#"","id":"#)?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if rest.get(digits) != Some(&b',') || digits == 0 || digits > 20 {
        return None;
    }
    std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_ids_come_from_the_fixed_prefix() {
        assert_eq!(line_id(br#"{"ledger":"a","id":42,"ts":1,"payload":1}"#, "a"), Some(42));
        assert_eq!(line_id(br#"{"ledger":"ab","id":42,"ts":1,"payload":1}"#, "a"), None);
        assert_eq!(line_id(br#"{"ledger":"a","id":,"ts":1}"#, "a"), None);
        assert_eq!(line_id(br#"{"ledger":"a","id":99999999999999999999999,"ts":1}"#, "a"), None);
    }
}
