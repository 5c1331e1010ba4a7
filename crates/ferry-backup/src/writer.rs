//! Writes a backup's files: entry files rolled by size, each hashed as it
//! is written and fsync'd when closed; then `CHECKSUMS`; then every
//! directory synced; then `MANIFEST.json` under a temporary name, synced,
//! renamed, and the directory synced — so a directory holding a manifest
//! holds every file it names, durably, and one without is refused by
//! every command as incomplete.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write as _};
use std::path::{Path, PathBuf};

use ferry_fs::durable;
use sha2::{Digest as _, Sha256};

use crate::error::{BackupError, Result};
use crate::layout::{self, CHECKSUMS, LEDGERS, MANIFEST, MANIFEST_TMP};
use crate::manifest::{FileManifest, Manifest};

/// A backup being written.
pub(crate) struct BackupWriter {
    dir: PathBuf,
    /// Every file written so far (relative path → SHA-256), for `CHECKSUMS`.
    checksums: BTreeMap<String, String>,
    /// Directories created, synced once at the end.
    dirs: Vec<PathBuf>,
    max_file_bytes: u64,
}

impl BackupWriter {
    /// Starts a backup in `dir`, which must be absent or empty: a backup is
    /// never written over another one, or over a half-written one.
    pub fn create(dir: &Path, max_file_bytes: u64) -> Result<Self> {
        Self::check_dest(dir)?;
        durable::create_dir_all(&dir.join(LEDGERS))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            checksums: BTreeMap::new(),
            dirs: vec![dir.join(LEDGERS), dir.to_path_buf()],
            max_file_bytes,
        })
    }

    /// Refuses a destination that exists and is not an empty directory;
    /// creates nothing (so a backup that fails before it starts writing
    /// leaves nothing behind).
    pub fn check_dest(dir: &Path) -> Result<()> {
        match std::fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(BackupError::Refused(format!(
                        "{} is not empty: a backup goes into a new or empty directory",
                        dir.display()
                    )));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(BackupError::io(format!("read {}", dir.display()), e)),
        }
        Ok(())
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a whole small file (`ledger.json`, `exporters.json`).
    pub fn write_file(&mut self, rel: &str, bytes: &[u8]) -> Result<()> {
        let mut file = OutFile::create(&self.dir, rel)?;
        file.write(bytes)?;
        let (sha, _) = file.close()?;
        self.checksums.insert(rel.to_owned(), sha);
        Ok(())
    }

    /// Creates `ledgers/{ledger}/` (each ledger once, before its files).
    pub fn ledger_dir(&mut self, ledger: &str) -> Result<()> {
        let dir = self.dir.join(LEDGERS).join(ledger);
        durable::create_dir_all(&dir)?;
        self.dirs.insert(0, dir);
        Ok(())
    }

    /// Starts the entry files of one ledger (its directory made already).
    pub fn entries(&mut self, ledger: &str) -> Result<EntriesWriter<'_>> {
        Ok(EntriesWriter { backup: self, ledger: ledger.to_owned(), open: None, files: Vec::new() })
    }

    /// Writes `CHECKSUMS`, syncs every directory, then writes the manifest
    /// atomically. Returns it as written.
    pub fn finish(mut self, mut manifest: Manifest) -> Result<Manifest> {
        let mut checksums = String::new();
        for (path, sha) in &self.checksums {
            checksums.push_str(&format!("{sha}  {path}\n"));
        }
        let mut file = OutFile::create(&self.dir, CHECKSUMS)?;
        file.write(checksums.as_bytes())?;
        let (sha, _) = file.close()?;
        manifest.checksums_sha256 = sha;
        for dir in std::mem::take(&mut self.dirs) {
            durable::sync_dir(&dir)?;
        }
        fail::fail_point!("backup::before_manifest");
        let bytes = manifest.to_bytes();
        let tmp = self.dir.join(MANIFEST_TMP);
        let mut file = OutFile::create(&self.dir, MANIFEST_TMP)?;
        file.write(&bytes)?;
        file.close()?;
        durable::rename(&tmp, &self.dir.join(MANIFEST))?;
        durable::sync_dir(&self.dir)?;
        Ok(serde_json::from_slice(&bytes).expect("the manifest just written parses"))
    }
}

/// The entry files of one ledger: lines go to `entries-000001.jsonl` until
/// the next line would pass the size limit, then to the next file.
pub(crate) struct EntriesWriter<'w> {
    backup: &'w mut BackupWriter,
    ledger: String,
    open: Option<(OutFile, FileManifest)>,
    files: Vec<FileManifest>,
}

impl EntriesWriter<'_> {
    /// Appends the line of entry `id` (without its newline).
    pub fn push(&mut self, id: u64, line: &[u8]) -> Result<()> {
        let len = line.len() as u64 + 1;
        if let Some((_, m)) = &self.open
            && m.bytes + len > self.backup.max_file_bytes
        {
            self.close()?;
        }
        if self.open.is_none() {
            let rel = layout::entries_file(&self.ledger, self.files.len() as u32 + 1);
            let file = OutFile::create(&self.backup.dir, &rel)?;
            let m = FileManifest { path: rel, from: id, to: id, count: 0, bytes: 0, sha256: String::new() };
            self.open = Some((file, m));
        }
        let (file, m) = self.open.as_mut().expect("opened above");
        file.write(line)?;
        file.write(b"\n")?;
        m.to = id;
        m.count += 1;
        m.bytes += len;
        Ok(())
    }

    fn close(&mut self) -> Result<()> {
        if let Some((file, mut m)) = self.open.take() {
            let (sha, _) = file.close()?;
            m.sha256 = sha.clone();
            self.backup.checksums.insert(m.path.clone(), sha);
            self.files.push(m);
        }
        Ok(())
    }

    /// Closes the last file; the files written, in id order.
    pub fn finish(mut self) -> Result<Vec<FileManifest>> {
        self.close()?;
        Ok(std::mem::take(&mut self.files))
    }
}

/// A new file, hashed as it is written, synced when closed.
struct OutFile {
    path: PathBuf,
    out: BufWriter<File>,
    hasher: Sha256,
    bytes: u64,
}

impl OutFile {
    fn create(dir: &Path, rel: &str) -> Result<Self> {
        let path = dir.join(rel);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| BackupError::io(format!("create {}", path.display()), e))?;
        Ok(Self { path, out: BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new(), bytes: 0 })
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.hasher.update(bytes);
        self.bytes += bytes.len() as u64;
        self.out.write_all(bytes).map_err(|e| BackupError::io(format!("write {}", self.path.display()), e))
    }

    /// Flushes and fsyncs; (SHA-256, bytes).
    fn close(self) -> Result<(String, u64)> {
        let Self { path, out, hasher, bytes } = self;
        let file =
            out.into_inner().map_err(|e| BackupError::io(format!("write {}", path.display()), e.into_error()))?;
        durable::sync_data(&file, &path)?;
        Ok((hex::encode(hasher.finalize()), bytes))
    }
}
