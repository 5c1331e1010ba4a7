//! The narrow filesystem the storage protocols run on: the pack protocols
//! (freeze, sweep, recovery) and the WAL (segment create, group write,
//! sync, replay, truncation, release). `durable::RealFs` is the disk; `sim::SimFs` keeps what is durable
//! apart from what is not yet synced, so tests can build the disk image a
//! crash would leave at every sync point — the only kind of test that
//! catches a missing fsync.

use std::io;
use std::path::Path;
use std::sync::Arc;

/// A file being written: bytes go in with `write_all`, `sync` makes them
/// durable.
pub trait VfsFile: Send {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()>;
    /// fdatasync: the file's bytes and length are durable when it returns.
    fn sync(&mut self) -> io::Result<()>;
}

/// A file opened for positional reads.
#[allow(clippy::len_without_is_empty)] // a file's length, not a collection's
pub trait VfsRead: Send + Sync {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn len(&self) -> io::Result<u64>;
}

/// A file written and read at offsets, from any thread (positional I/O has
/// no seek position): a WAL segment.
pub trait VfsSegment: VfsRead + std::fmt::Debug {
    /// Writes all of `buf` at `offset`; not durable until `sync`.
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync: the file's bytes and length are durable when it returns.
    fn sync(&self) -> io::Result<()>;
    /// Cuts (or extends) the file to `len`; durable after `sync`.
    fn set_len(&self, len: u64) -> io::Result<()>;
}

/// A directory held open: its entries (created, renamed, removed files)
/// are made durable through the handle, with no descriptor to open at the
/// moment it matters (the WAL's directory, synced at every segment roll).
pub trait VfsDir: Send + Sync {
    /// fsync: the directory's entries are durable when it returns.
    fn sync(&self) -> io::Result<()>;
}

/// The operations the storage protocols need, and no more. Directory entry
/// changes (create, rename, remove) are durable only after `sync_dir` of
/// the parent; file bytes only after `VfsFile::sync`.
pub trait Vfs: Send + Sync {
    /// Creates one directory (its parent must exist); `AlreadyExists` if it does.
    fn create_dir(&self, path: &Path) -> io::Result<()>;
    /// Creates a file that must not exist yet.
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VfsFile>>;
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn VfsRead>>;
    /// Creates a segment file that must not exist yet, for reads and writes.
    fn create_segment(&self, path: &Path) -> io::Result<Arc<dyn VfsSegment>>;
    /// Opens an existing segment file for reads and writes.
    fn open_segment(&self, path: &Path) -> io::Result<Arc<dyn VfsSegment>>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Opens a directory to sync it later through the handle.
    fn open_dir(&self, path: &Path) -> io::Result<Box<dyn VfsDir>>;
    /// Names in a directory, sorted; `NotFound` if it does not exist.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>>;
    fn exists(&self, path: &Path) -> bool;

    /// Reads a whole file.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        let file = self.open_read(path)?;
        let mut buf = vec![0; usize::try_from(file.len()?).map_err(io::Error::other)?];
        file.read_at(&mut buf, 0)?;
        Ok(buf)
    }
}
