//! The checked disk: every WAL file operation goes through here, on any
//! `Vfs` (the real disk, or the simulated one in crash tests), and the
//! failure of each is sorted inside the call (redb's checked backend), not
//! at each call site:
//!
//! - a failed **sync or truncation** poisons the store: the file's durable
//!   state is unknown (the kernel may have dropped the dirty pages), so no
//!   later write may build on it;
//! - a failed **write** is cut back to the last synced length, and that cut
//!   synced: the write is refused and the store goes on (a full disk is
//!   not a lost disk); only if the cut fails does the store poison;
//! - a failed **overwrite** (scrubbing a deleted ledger's records) is an
//!   ordinary error: its `scrub:` key has it redone;
//! - a failed **open, create or listing** (EMFILE, ENOENT, ENOSPC on
//!   create) is an ordinary error: nothing was written;
//! - after a poison, every **write and create** is refused before it
//!   touches a file.
//!
//! A directory is synced through a handle opened at its first sync (the
//! WAL's, at replay) and held for the store's life: a segment roll then
//! needs one descriptor, the new segment's, and running out of descriptors
//! can never fail a directory sync, which would poison (issue #12 item 9).
//! A roll takes the handle before it creates the file, so an open that
//! fails leaves nothing behind.
//!
//! **Architecture Invariant:** the WAL's files are touched only through
//! `Disk`; the poison flag is set here (and for catalog commits and pack
//! protocols by their callers), never by a caller of `Disk`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_fs::vfs::{Vfs, VfsDir, VfsSegment};

use crate::error::{Result, StoreError};
use crate::health::Health;

pub(crate) struct Disk {
    vfs: Arc<dyn Vfs>,
    health: Arc<Health>,
    /// Directories held open since their first sync.
    dirs: Mutex<HashMap<PathBuf, Arc<dyn VfsDir>>>,
}

impl Disk {
    pub fn new(vfs: Arc<dyn Vfs>, health: Arc<Health>) -> Self {
        Self { vfs, health, dirs: Mutex::default() }
    }

    /// The held handle of `dir`, opened now if this is its first use. A
    /// failed open is ordinary: nothing was synced, nothing lost.
    fn dir(&self, dir: &Path) -> Result<Arc<dyn VfsDir>> {
        if let Some(handle) = self.dirs.lock().expect("dirs lock").get(dir) {
            return Ok(handle.clone());
        }
        let handle: Arc<dyn VfsDir> =
            self.vfs.open_dir(dir).map_err(|e| StoreError::io(format!("open directory {}", dir.display()), e))?.into();
        self.dirs.lock().expect("dirs lock").insert(dir.to_path_buf(), handle.clone());
        Ok(handle)
    }

    #[cfg(test)]
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// Poisons the store with what failed; returns the error to answer with.
    fn poison(&self, what: String, e: std::io::Error) -> StoreError {
        let reason = format!("{what}: {e}");
        self.health.poison(reason.clone());
        StoreError::Poisoned(reason)
    }

    /// fdatasync of a segment; a failure poisons.
    pub fn sync(&self, file: &dyn VfsSegment, path: &Path) -> Result<()> {
        file.sync().map_err(|e| self.poison(format!("fdatasync {}", path.display()), e))
    }

    /// fsync of a directory (entries created, renamed or removed) through
    /// its held handle; a failed sync poisons.
    pub fn sync_dir(&self, dir: &Path) -> Result<()> {
        let handle = self.dir(dir)?;
        self.sync_dir_handle(&*handle, dir)
    }

    fn sync_dir_handle(&self, handle: &dyn VfsDir, dir: &Path) -> Result<()> {
        handle.sync().map_err(|e| self.poison(format!("fsync directory {}", dir.display()), e))
    }

    /// Cuts a segment to `len` and syncs the new length, so the bytes that
    /// follow are written over a known end; a failure poisons.
    pub fn truncate(&self, file: &dyn VfsSegment, path: &Path, len: u64) -> Result<()> {
        file.set_len(len)
            .and_then(|()| file.sync())
            .map_err(|e| self.poison(format!("truncate {} to {len} bytes", path.display()), e))
    }

    /// Writes `buf` at `offset`, the segment's synced length. On failure the
    /// segment is cut back to `offset` (synced) and the write refused.
    /// A poisoned store writes nothing more, whoever asks (an append group,
    /// or a relocation queued before the failure).
    pub fn write(&self, file: &dyn VfsSegment, path: &Path, buf: &[u8], offset: u64) -> Result<()> {
        self.health.check()?;
        match file.write_at(buf, offset) {
            Ok(()) => Ok(()),
            Err(e) => {
                self.truncate(file, path, offset)?;
                let context =
                    format!("write {} bytes at {offset} of {} (refused, cut back)", buf.len(), path.display());
                Err(StoreError::io(context, e))
            }
        }
    }

    /// Writes `buf` over bytes already in a segment: a deleted ledger's
    /// records being scrubbed (`wal::scrub`). Nothing is cut back on
    /// failure, and nothing poisons: the bytes written over belong to a
    /// ledger whose deletion is durable, and its `scrub:` key has the write
    /// redone (a retry, or recovery before the scan) before anything reads
    /// them. A poisoned store writes nothing.
    pub fn overwrite(&self, file: &dyn VfsSegment, path: &Path, buf: &[u8], offset: u64) -> Result<()> {
        self.health.check()?;
        file.write_at(buf, offset)
            .map_err(|e| StoreError::io(format!("scrub {} bytes at {offset} of {}", buf.len(), path.display()), e))
    }

    /// Creates a segment with `header`, durably: after this returns, the file
    /// and its header survive a crash, so recovery never meets a segment
    /// without one. A failure before the sync removes the new file again.
    pub fn create_segment(&self, dir: &Path, name: &str, header: &[u8]) -> Result<Arc<dyn VfsSegment>> {
        self.health.check()?;
        // Before the file exists: the directory's sync below must not need
        // a descriptor the new file may have taken.
        let dir_handle = self.dir(dir)?;
        let path = dir.join(name);
        let file =
            self.vfs.create_segment(&path).map_err(|e| StoreError::io(format!("create {}", path.display()), e))?;
        if let Err(e) = file.write_at(header, 0) {
            // Nothing in it is ours yet; a file left behind would stop the
            // next attempt (create-new), so its removal must succeed.
            self.vfs.remove_file(&path).map_err(|e| self.poison(format!("remove {}", path.display()), e))?;
            // And durably: a created entry that outlived its removal in a
            // power loss would become an empty "last" segment after the
            // one still being written.
            self.sync_dir_handle(&*dir_handle, dir)?;
            return Err(StoreError::io(format!("write the header of {}", path.display()), e));
        }
        self.sync(&*file, &path)?;
        self.sync_dir_handle(&*dir_handle, dir)?;
        Ok(file)
    }

    pub fn open_segment(&self, path: &Path) -> Result<Arc<dyn VfsSegment>> {
        self.vfs.open_segment(path).map_err(|e| StoreError::io(format!("open {}", path.display()), e))
    }

    /// Every byte of a segment.
    pub fn read_all(&self, file: &dyn VfsSegment, path: &Path) -> Result<Vec<u8>> {
        let read = || -> std::io::Result<Vec<u8>> {
            let mut bytes = vec![0; usize::try_from(file.len()?).map_err(std::io::Error::other)?];
            file.read_at(&mut bytes, 0)?;
            Ok(bytes)
        };
        read().map_err(|e| StoreError::io(format!("read {}", path.display()), e))
    }

    /// Reads `buf.len()` bytes at `offset` of a segment.
    pub fn read_at(&self, file: &dyn VfsSegment, path: &Path, offset: u64, buf: &mut [u8]) -> Result<()> {
        file.read_at(buf, offset)
            .map_err(|e| StoreError::io(format!("read {} bytes at {offset} of {}", buf.len(), path.display()), e))
    }

    /// Names in a directory, sorted.
    pub fn list_dir(&self, dir: &Path) -> Result<Vec<String>> {
        self.vfs.list_dir(dir).map_err(|e| StoreError::io(format!("list {}", dir.display()), e))
    }

    /// Unlinks a segment nothing lives in any more; the caller syncs the
    /// directory once for many. A failure poisons (the set of segments on
    /// disk would no longer be the one in memory).
    pub fn remove_segment(&self, path: &Path) -> Result<()> {
        self.vfs.remove_file(path).map_err(|e| self.poison(format!("remove {}", path.display()), e))
    }
}
