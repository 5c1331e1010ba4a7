//! `file`: JSON lines in `{dir}/{ledger}/{first_id:020}.jsonl`, a new file
//! when the current one would pass `max_file_bytes`.
//!
//! **Why exactly once in effect.** A batch is acknowledged only after its
//! lines are written and `fdatasync`'d (and the directory synced when a
//! file was created), so every id up to the cursor is in the files. Bytes
//! past the cursor can exist only from a delivery that was not
//! acknowledged (a crash, a failed sync, a cancelled write); the runtime
//! calls `prepare(cursor)` before the next delivery, which removes every
//! file that starts after the cursor and truncates the last one right after
//! the line of id `cursor`. The next batch starts at `cursor + 1`. So the
//! files always hold ids `first..=cursor` once each, in order, whatever
//! happened in between. A reset to an earlier id cuts the files back the
//! same way and rewrites from there.

mod config;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use config::FileConfig;
use ferry_core::{EntryId, LedgerName};
use ferry_export::{Ack, Batch, SinkError};
use ferry_fs::durable;

use crate::ConfigError;
use crate::error::BoxError;

const SUFFIX: &str = ".jsonl";
const NAME_DIGITS: usize = 20;

pub struct FileSink {
    config: Arc<FileConfig>,
    ledgers: Mutex<HashMap<LedgerName, Arc<Mutex<LedgerFiles>>>>,
}

/// What the sink knows of one ledger's files after `prepare`.
#[derive(Debug)]
struct LedgerFiles {
    dir: PathBuf,
    /// The file being appended to, with its length; `None` starts a new one.
    current: Option<Current>,
    /// The last id written and synced (the cursor after `prepare`).
    synced: EntryId,
    /// False until `prepare` ran, and again after any failure.
    prepared: bool,
}

#[derive(Debug)]
struct Current {
    file: File,
    path: PathBuf,
    len: u64,
}

impl FileSink {
    pub fn new(config: FileConfig) -> Result<Self, ConfigError> {
        durable::create_dir_all(&config.dir)
            .map_err(|e| ConfigError::CreateDir { dir: config.dir.clone(), error: e.into() })?;
        Ok(Self { config: Arc::new(config), ledgers: Mutex::new(HashMap::new()) })
    }

    fn ledger(&self, ledger: &LedgerName) -> Arc<Mutex<LedgerFiles>> {
        let mut map = self.ledgers.lock().expect("file sink lock");
        map.entry(ledger.clone())
            .or_insert_with(|| {
                let dir = self.config.dir.join(ledger.as_str());
                Arc::new(Mutex::new(LedgerFiles { dir, current: None, synced: 0, prepared: false }))
            })
            .clone()
    }

    pub async fn prepare(&self, ledger: &LedgerName, cursor: EntryId) -> Result<(), SinkError> {
        let state = self.ledger(ledger);
        blocking(move || {
            let mut files = state.lock().expect("ledger files lock");
            files.prepared = false;
            files.current = None;
            cut_back(&files.dir, cursor).map(|current| {
                files.current = current;
                files.synced = cursor;
                files.prepared = true;
            })
        })
        .await
    }

    pub async fn deliver(&self, batch: &Batch) -> Result<Ack, SinkError> {
        let state = self.ledger(&batch.ledger);
        let max = self.config.max_file_bytes;
        let lines = Lines::of(batch);
        let through = batch.last_id();
        blocking(move || {
            let mut files = state.lock().expect("ledger files lock");
            if !files.prepared || lines.first_id() != Some(files.synced + 1) {
                files.prepared = false;
                return Err(FileError::NotNext { synced: files.synced });
            }
            let written = write_lines(&mut files, &lines, max);
            if written.is_err() {
                files.prepared = false;
            } else {
                files.synced = through;
            }
            written
        })
        .await?;
        Ok(Ack { through })
    }
}

/// What went wrong between the sink and its files. Every one is retryable:
/// `prepare` cuts the files back to the cursor before the next attempt.
#[derive(Debug, thiserror::Error)]
enum FileError {
    /// A plain file-system call failed on `path`.
    #[error("{op} {}: {error}", path.display())]
    Io { op: &'static str, path: PathBuf, error: std::io::Error },
    /// A sync, truncation or removal through `durable` failed (its error
    /// names the step and the file).
    #[error("{0}")]
    Durable(BoxError),
    /// A complete line up to the cursor that is not an entry.
    #[error("{} at offset {offset}: not an entry line: {error}", path.display())]
    NotAnEntry { path: PathBuf, offset: u64, error: serde_json::Error },
    /// Ids up to the cursor that do not ascend.
    #[error("{} at offset {offset}: id {id} after id {last}", path.display())]
    OutOfOrder { path: PathBuf, offset: u64, id: EntryId, last: EntryId },
    /// A batch that does not start right after the synced id.
    #[error("batch does not follow id {synced} of the files; preparing again")]
    NotNext { synced: EntryId },
}

impl FileError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        move |error| Self::Io { op, path: path.to_path_buf(), error }
    }
}

/// Wraps an error of the `durable` module.
fn durable_error(e: impl Into<BoxError>) -> FileError {
    FileError::Durable(e.into())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, SinkError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| SinkError::retryable(format!("file sink task: {e}")))?
        .map_err(|e| SinkError::retryable(e.to_string()))
}

/// A batch as JSON lines in one buffer, with where each line ends.
struct Lines {
    bytes: Vec<u8>,
    /// Each entry's id and the offset just past its line.
    ends: Vec<(EntryId, usize)>,
}

impl Lines {
    fn of(batch: &Batch) -> Self {
        let capacity = batch.entries.iter().map(|e| e.json_len_max() + 1).sum();
        let mut bytes = Vec::with_capacity(capacity);
        let mut ends = Vec::with_capacity(batch.entries.len());
        for e in &batch.entries {
            e.write_json(&mut bytes);
            bytes.push(b'\n');
            ends.push((e.id, bytes.len()));
        }
        Self { bytes, ends }
    }

    fn first_id(&self) -> Option<EntryId> {
        self.ends.first().map(|(id, _)| *id)
    }
}

/// Appends the lines, starting a new file (named after the first id it
/// holds) before a line that would take the current one past `max`, then
/// syncs every file written and, if one was created, the directory. One
/// `write` per file.
fn write_lines(files: &mut LedgerFiles, lines: &Lines, max: u64) -> Result<(), FileError> {
    let mut current = files.current.take();
    let mut finished: Vec<Current> = Vec::new();
    let (mut start, mut created) = (0, false);
    for (i, &(id, end)) in lines.ends.iter().enumerate() {
        let line_start = if i == 0 { 0 } else { lines.ends[i - 1].1 };
        let roll = match &current {
            None => true,
            Some(c) => {
                let before = c.len + (line_start - start) as u64;
                before > 0 && before + (end - line_start) as u64 > max
            }
        };
        if roll {
            if let Some(mut c) = current.take() {
                append(&mut c, &lines.bytes[start..line_start])?;
                finished.push(c);
            }
            start = line_start;
            current = Some(create(&files.dir, id)?);
            created = true;
        }
    }
    let Some(mut last) = current else { return Ok(()) };
    append(&mut last, &lines.bytes[start..])?;
    for c in finished.iter().chain([&last]) {
        durable::sync_data(&c.file, &c.path).map_err(durable_error)?;
    }
    if created {
        durable::sync_dir(&files.dir).map_err(durable_error)?;
    }
    files.current = Some(last);
    Ok(())
}

fn create(dir: &Path, first_id: EntryId) -> Result<Current, FileError> {
    let path = dir.join(format!("{first_id:0NAME_DIGITS$}{SUFFIX}"));
    let file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(FileError::io("create", &path))?;
    Ok(Current { file, path, len: 0 })
}

fn append(c: &mut Current, bytes: &[u8]) -> Result<(), FileError> {
    c.file.write_all(bytes).map_err(FileError::io("write", &c.path))?;
    c.len += bytes.len() as u64;
    Ok(())
}

/// The ledger's files, by the first id each holds.
fn list(dir: &Path) -> Result<Vec<(EntryId, PathBuf)>, FileError> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(FileError::io("list", dir)(e)),
    };
    for entry in entries {
        let entry = entry.map_err(FileError::io("list", dir))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SUFFIX)) else { continue };
        if stem.len() == NAME_DIGITS
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(id) = stem.parse()
        {
            out.push((id, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Makes the files hold exactly the ids up to `cursor`: removes files that
/// start after it and truncates the last one after the line of `cursor`.
/// Returns the file to keep appending to (`None`: start a new one).
fn cut_back(dir: &Path, cursor: EntryId) -> Result<Option<Current>, FileError> {
    durable::create_dir_all(dir).map_err(durable_error)?;
    let files = list(dir)?;
    let mut removed = false;
    for (_, path) in files.iter().rev().take_while(|(first, _)| *first > cursor) {
        durable::remove_file(path).map_err(durable_error)?;
        removed = true;
    }
    if removed {
        durable::sync_dir(dir).map_err(durable_error)?;
    }
    let Some((_, path)) = files.iter().rev().find(|(first, _)| *first <= cursor) else { return Ok(None) };
    let file = OpenOptions::new().read(true).append(true).open(path).map_err(FileError::io("open", path))?;
    let (end, last) = end_of(&file, path, cursor)?;
    let len = file.metadata().map_err(FileError::io("stat", path))?.len();
    if len != end {
        durable::truncate(&file, path, end).map_err(durable_error)?;
    }
    if last < cursor {
        // The files end before the cursor (a reset forward, or files removed
        // by hand): continue in a new file named after the next id.
        tracing::warn!(file = %path.display(), last, cursor, "file sink: files end before the cursor");
        return Ok(None);
    }
    Ok(Some(Current { file, path: path.clone(), len: end }))
}

/// The byte offset just after the line of id `cursor` (or after the last
/// complete line with a smaller id), and that line's id.
fn end_of(file: &File, path: &Path, cursor: EntryId) -> Result<(u64, EntryId), FileError> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: EntryId,
    }
    let mut reader = BufReader::new(file);
    let (mut offset, mut end, mut last) = (0u64, 0u64, 0);
    let mut line = Vec::new();
    loop {
        if last == cursor {
            // Whatever follows was never acknowledged: cut it unread, even
            // if a power loss left garbage there.
            return Ok((end, last));
        }
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(FileError::io("read", path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok((end, last)); // end of file, or a torn last line
        }
        let id = serde_json::from_slice::<IdOnly>(&line)
            .map_err(|error| FileError::NotAnEntry { path: path.to_path_buf(), offset, error })?
            .id;
        if id > cursor {
            return Ok((end, last));
        }
        if id <= last && last != 0 {
            return Err(FileError::OutOfOrder { path: path.to_path_buf(), offset, id, last });
        }
        offset += n as u64;
        (end, last) = (offset, id);
    }
}

#[cfg(test)]
mod tests;
