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
//!
//! **Open files.** Only a bounded set of ledgers keep their current file
//! open between deliveries (`open_files.rs`, which also says why closing
//! one loses nothing); the others reopen it, and check it still has the
//! length they left it at. Running out of descriptors is a retryable error
//! like any other failed open, and closes every idle file of the sink, so
//! the retry after the backoff finds descriptors free.

mod config;
mod open_files;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

pub use config::FileConfig;
use ferry_core::{EntryId, LedgerName};
use ferry_export::check::{ChainRow, ChainWalk};
use ferry_export::sink::ChainStart;
use ferry_export::{Ack, Batch, Holding, SinkError};
use ferry_fs::{FsError, descriptors, durable};
use open_files::OpenFiles;

use crate::ConfigError;
use crate::error::BoxError;

const SUFFIX: &str = ".jsonl";
const NAME_DIGITS: usize = 20;

pub struct FileSink {
    config: Arc<FileConfig>,
    ledgers: Mutex<HashMap<LedgerName, Arc<Mutex<LedgerFiles>>>>,
    /// Idle handles of the ledgers' current files, at most a bound of them.
    open: Arc<OpenFiles>,
}

/// What the sink knows of one ledger's files after `prepare`.
#[derive(Debug)]
struct LedgerFiles {
    dir: PathBuf,
    /// The file being appended to, with its length; `None` starts a new one.
    /// Its handle, if open, is in `OpenFiles`.
    current: Option<Current>,
    /// The last id written and synced (the cursor after `prepare`).
    synced: EntryId,
    /// False until `prepare` ran, and again after any failure.
    prepared: bool,
}

#[derive(Debug, Clone)]
struct Current {
    path: PathBuf,
    /// Bytes in the file, every one synced.
    len: u64,
}

/// A file being written in one delivery.
struct Writing {
    file: File,
    path: PathBuf,
    len: u64,
}

impl FileSink {
    /// Builds the sink, creating `dir`. It keeps at most `OPEN_FILES_MAX`
    /// files open between deliveries, or an eighth of the process's
    /// open-file limit when that is less.
    pub fn new(config: FileConfig) -> Result<Self, ConfigError> {
        let sink = Self::with_open_files(config, open_files::bound_for(descriptors::limit().soft))?;
        tracing::info!(dir = %sink.config.dir.display(), open_files_max = sink.open.bound(), "file sink ready");
        Ok(sink)
    }

    /// Builds the sink with its own bound of idle open files.
    fn with_open_files(config: FileConfig, bound: usize) -> Result<Self, ConfigError> {
        durable::create_dir_all(&config.dir)
            .map_err(|e| ConfigError::CreateDir { dir: config.dir.clone(), error: e.into() })?;
        let open = Arc::new(OpenFiles::new(bound));
        Ok(Self { config: Arc::new(config), ledgers: Mutex::new(HashMap::new()), open })
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
        let (open, ledger) = (self.open.clone(), ledger.clone());
        blocking(self.open.clone(), move || {
            let mut files = state.lock().expect("ledger files lock");
            files.prepared = false;
            files.current = None;
            // The handle may be on a file the cut removes or shortens.
            open.forget(&ledger);
            let current = cut_back(&files.dir, cursor)?.map(|w| {
                let current = Current { path: w.path.clone(), len: w.len };
                open.put(&ledger, w.path, w.file);
                current
            });
            files.current = current;
            files.synced = cursor;
            files.prepared = true;
            Ok(())
        })
        .await
    }

    pub async fn deliver(&self, batch: &Batch) -> Result<Ack, SinkError> {
        let state = self.ledger(&batch.ledger);
        let max = self.config.max_file_bytes;
        let lines = Lines::of(batch);
        let through = batch.last_id();
        let (open, ledger) = (self.open.clone(), batch.ledger.clone());
        blocking(self.open.clone(), move || {
            let mut files = state.lock().expect("ledger files lock");
            if !files.prepared || lines.first_id() != Some(files.synced + 1) {
                files.prepared = false;
                return Err(FileError::NotNext { synced: files.synced });
            }
            let written = write_lines(&mut files, &lines, max, &open, &ledger);
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

impl FileSink {
    /// The range check: counts the complete lines of the ledger's files,
    /// and walks a chained ledger's chain over them in the same pass (the
    /// lines carry the payload's exact text and the hash). Reads under the
    /// ledger's lock, so no delivery writes meanwhile.
    pub async fn check(&self, ledger: &LedgerName, start: ChainStart, cursor: EntryId) -> Result<Holding, SinkError> {
        let state = self.ledger(ledger);
        blocking(self.open.clone(), move || {
            let files = state.lock().expect("ledger files lock");
            count_lines(&files.dir, &start, cursor)
        })
        .await
    }
}

/// What the files of a ledger hold, by the ids of their complete lines. A
/// repeat or a step back shows as an id not above the greatest seen. For
/// a chained ledger the lines also go through the chain walk, until it
/// breaks or passes the cursor.
fn count_lines(dir: &Path, start: &ChainStart, cursor: EntryId) -> Result<Holding, FileError> {
    let first = start.first;
    let mut holding = Holding::default();
    let mut greatest_in_range = 0;
    let mut walk = ChainWalk::new(start, cursor);
    let mut walking = walk.is_some();
    for (_, path) in list(dir)? {
        let file = File::open(&path).map_err(FileError::io("open", &path))?;
        let mut reader = BufReader::new(file);
        let (mut line, mut offset) = (Vec::new(), 0u64);
        loop {
            line.clear();
            let n = reader.read_until(b'\n', &mut line).map_err(FileError::io("read", &path))?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            let not_an_entry = |error| FileError::NotAnEntry { path: path.clone(), offset, error };
            let id = serde_json::from_slice::<IdOnly>(&line).map_err(not_an_entry)?.id;
            if let Some(walk) = walk.as_mut().filter(|_| walking) {
                let entry = serde_json::from_slice::<ChainLine<'_>>(&line).map_err(not_an_entry)?;
                walking = walk.push(entry.row());
            }
            offset += n as u64;
            holding.min = Some(holding.min.map_or(id, |m| m.min(id)));
            holding.max = Some(holding.max.map_or(id, |m| m.max(id)));
            if id < first {
                holding.below_first += 1;
            } else if id > cursor {
                holding.above_cursor += 1;
            } else {
                holding.in_range += 1;
                if id > greatest_in_range {
                    holding.distinct += 1;
                    greatest_in_range = id;
                }
            }
        }
    }
    holding.chain = walk.map(ChainWalk::finish);
    Ok(holding)
}

#[derive(serde::Deserialize)]
struct IdOnly {
    id: EntryId,
}

/// The fields of an entry's JSON (a file line, a NATS message body) the
/// chain hashes, the payload as written (`Entry::write_json` writes its
/// stored text verbatim).
#[derive(serde::Deserialize)]
pub(crate) struct ChainLine<'a> {
    id: EntryId,
    ts: u64,
    key: Option<String>,
    hash: Option<String>,
    #[serde(borrow)]
    payload: &'a serde_json::value::RawValue,
}

impl ChainLine<'_> {
    pub(crate) fn row(&self) -> ChainRow<'_> {
        ChainRow {
            id: self.id,
            ts: self.ts,
            key: self.key.as_deref(),
            payload: self.payload.get().as_bytes(),
            hash: self.hash.as_deref(),
        }
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
    /// A reopened file whose length is not the one the sink left it at.
    #[error("{} is {found} bytes, not the {expected} the sink wrote; preparing again", path.display())]
    Changed { path: PathBuf, expected: u64, found: u64 },
}

impl FileError {
    fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        move |error| Self::Io { op, path: path.to_path_buf(), error }
    }

    /// True when an open failed for want of a descriptor (EMFILE, ENFILE).
    fn descriptors_exhausted(&self) -> bool {
        match self {
            Self::Io { error, .. } => descriptors::exhausted(error),
            Self::Durable(e) => e.downcast_ref::<FsError>().is_some_and(FsError::descriptors_exhausted),
            _ => false,
        }
    }
}

/// Wraps an error of the `durable` module.
fn durable_error(e: impl Into<BoxError>) -> FileError {
    FileError::Durable(e.into())
}

/// Runs the sink's file work on the blocking pool. Every failure is
/// retryable; one for want of a descriptor also closes the sink's idle
/// files, so that the retry finds some free whoever else holds the rest.
async fn blocking<T: Send + 'static>(
    open: Arc<OpenFiles>,
    f: impl FnOnce() -> Result<T, FileError> + Send + 'static,
) -> Result<T, SinkError> {
    let run = move || {
        f().map_err(|e| {
            if e.descriptors_exhausted() {
                let closed = open.close_all();
                format!("{e} (closed the sink's {closed} idle files; retrying after the backoff)")
            } else {
                e.to_string()
            }
        })
    };
    tokio::task::spawn_blocking(run)
        .await
        .map_err(|e| SinkError::retryable(format!("file sink task: {e}")))?
        .map_err(SinkError::retryable)
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
/// `write` per file; a file left behind is synced and closed at once, the
/// last one goes back to `open` once synced.
fn write_lines(
    files: &mut LedgerFiles,
    lines: &Lines,
    max: u64,
    open: &OpenFiles,
    ledger: &LedgerName,
) -> Result<(), FileError> {
    // The current file, opened only when bytes go to it.
    let mut current: Option<Result<Writing, Current>> = files.current.take().map(Err);
    let (mut start, mut created) = (0, false);
    for (i, &(id, end)) in lines.ends.iter().enumerate() {
        let line_start = if i == 0 { 0 } else { lines.ends[i - 1].1 };
        let roll = match &current {
            None => true,
            Some(c) => {
                let len = c.as_ref().map_or_else(|c| c.len, |w| w.len);
                let before = len + (line_start - start) as u64;
                before > 0 && before + (end - line_start) as u64 > max
            }
        };
        if roll {
            if let Some(c) = current.take()
                && line_start > start
            {
                let mut w = writing(c, open, ledger)?;
                append(&mut w, &lines.bytes[start..line_start])?;
                durable::sync_data(&w.file, &w.path).map_err(durable_error)?;
            }
            start = line_start;
            current = Some(Ok(create(&files.dir, id)?));
            created = true;
        }
    }
    let Some(last) = current else { return Ok(()) };
    let mut last = writing(last, open, ledger)?;
    append(&mut last, &lines.bytes[start..])?;
    durable::sync_data(&last.file, &last.path).map_err(durable_error)?;
    if created {
        durable::sync_dir(&files.dir).map_err(durable_error)?;
    }
    files.current = Some(Current { path: last.path.clone(), len: last.len });
    open.put(ledger, last.path, last.file);
    Ok(())
}

/// The handle to write `c` through: the one just created, the idle one,
/// or the file reopened (and checked to be as long as the sink left it).
fn writing(c: Result<Writing, Current>, open: &OpenFiles, ledger: &LedgerName) -> Result<Writing, FileError> {
    let c = match c {
        Ok(w) => return Ok(w),
        Err(c) => c,
    };
    let file = match open.take(ledger, &c.path) {
        Some(file) => file,
        None => {
            let file = OpenOptions::new().append(true).open(&c.path).map_err(FileError::io("reopen", &c.path))?;
            let found = file.metadata().map_err(FileError::io("stat", &c.path))?.len();
            if found != c.len {
                return Err(FileError::Changed { path: c.path, expected: c.len, found });
            }
            file
        }
    };
    Ok(Writing { file, path: c.path, len: c.len })
}

fn create(dir: &Path, first_id: EntryId) -> Result<Writing, FileError> {
    let path = dir.join(format!("{first_id:0NAME_DIGITS$}{SUFFIX}"));
    let file = OpenOptions::new().create_new(true).append(true).open(&path).map_err(FileError::io("create", &path))?;
    Ok(Writing { file, path, len: 0 })
}

fn append(w: &mut Writing, bytes: &[u8]) -> Result<(), FileError> {
    w.file.write_all(bytes).map_err(FileError::io("write", &w.path))?;
    w.len += bytes.len() as u64;
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
fn cut_back(dir: &Path, cursor: EntryId) -> Result<Option<Writing>, FileError> {
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
    Ok(Some(Writing { file, path: path.clone(), len: end }))
}

/// The byte offset just after the line of id `cursor` (or after the last
/// complete line with a smaller id), and that line's id.
fn end_of(file: &File, path: &Path, cursor: EntryId) -> Result<(u64, EntryId), FileError> {
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
