//! Every fsync, rename, unlink, truncation and lock of ferry's storage
//! happens here, each with the reason it is needed. `clippy.toml` bans the
//! raw calls everywhere else.
//!
//! **Architecture Invariant:** a function here either completes its step
//! durably or returns an error; a caller never retries a failed sync (the
//! store poisons itself on one).
#![allow(clippy::disallowed_methods)]

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{FsError, IoContext as _, Result};

/// The lock file of the data directory (SPEC §3).
pub const LOCK_FILE: &str = "ferry.lock";
/// The lock file of the catalog, hot and ledgers roots: a name no ledger can
/// have (ledger names never start with '.'), so a ledger called
/// `ferry.lock` never meets it.
pub const ROOT_LOCK_FILE: &str = ".ferry.lock";

/// Creates `dir` and any missing parents, fsyncing each parent whose entry
/// list changed so the new directories survive a power loss.
pub fn create_dir_all(dir: &Path) -> Result<()> {
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur {
        if d.as_os_str().is_empty() || d.exists() {
            break;
        }
        missing.push(d.to_path_buf());
        cur = d.parent();
    }
    for d in missing.iter().rev() {
        match std::fs::create_dir(d) {
            Ok(()) => {}
            // Created by someone else meanwhile, maybe not durably yet.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(FsError::io(format!("create directory {}", d.display()), e)),
        }
        // The new entry lives in the parent's directory file.
        sync_dir(parent_of(d))?;
    }
    if missing.is_empty() {
        // It exists, but a crash may have come between its creation and
        // the sync of its parent (ours, in an earlier run): sync it now.
        sync_dir(parent_of(dir))?;
    }
    Ok(())
}

fn parent_of(dir: &Path) -> &Path {
    dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Takes the exclusive kernel lock (`flock`) of a storage root. The lock
/// lives as long as the returned file and is released by the kernel on any
/// exit, so a crash never leaves a stale lock.
pub fn lock_root(root: &Path, name: &str) -> Result<File> {
    let lock = root.join(name);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .context(|| format!("open lock file {}", lock.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(FsError::Locked { root: root.to_path_buf(), lock }),
        Err(std::fs::TryLockError::Error(e)) => Err(FsError::io(format!("lock {}", lock.display()), e)),
    }
}

/// Makes a file's written bytes (and its size) durable. The step every
/// acknowledgement waits for.
pub fn sync_data(file: &File, path: &Path) -> Result<()> {
    fail::fail_point!("durable::sync_data", |_| Err(FsError::io(
        format!("fdatasync {}", path.display()),
        std::io::Error::other("injected by fail point durable::sync_data")
    )));
    file.sync_data().context(|| format!("fdatasync {}", path.display()))
}

/// Makes a directory's entries (created, renamed, removed files) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    fail::fail_point!("durable::sync_dir");
    File::open(dir).and_then(|d| d.sync_all()).context(|| format!("fsync directory {}", dir.display()))
}

/// Creates a new file that must not exist yet, writes `header`, syncs it and
/// its directory: after this returns, the file and its header survive a
/// crash, so recovery never meets a segment without a header.
pub fn create_file_with_header(dir: &Path, name: &str, header: &[u8]) -> Result<(File, PathBuf)> {
    let path = dir.join(name);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .context(|| format!("create {}", path.display()))?;
    file.write_all(header).context(|| format!("write header of {}", path.display()))?;
    sync_data(&file, &path)?;
    sync_dir(dir)?;
    Ok((file, path))
}

/// Cuts a torn tail off a file and syncs the new length, so the bytes that
/// follow the cut are written over a known end.
pub fn truncate(file: &File, path: &Path, len: u64) -> Result<()> {
    file.set_len(len).context(|| format!("truncate {} to {len} bytes", path.display()))?;
    file.sync_all().context(|| format!("fsync {} after truncation", path.display()))
}

/// Gives a file written and synced under a temporary name its final name
/// in the same directory (a backup's `MANIFEST.json`); the caller then
/// syncs the directory, which makes the new name durable.
pub fn rename(from: &Path, to: &Path) -> Result<()> {
    std::fs::rename(from, to).context(|| format!("rename {} to {}", from.display(), to.display()))
}

/// Unlinks a file whose every byte is dead (a released WAL segment). The
/// caller syncs the directory afterwards, once for many files.
pub fn remove_file(path: &Path) -> Result<()> {
    std::fs::remove_file(path).context(|| format!("remove {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_on_a_root_fails_and_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let _held = lock_root(dir.path(), LOCK_FILE).unwrap();
        let err = lock_root(dir.path(), LOCK_FILE).unwrap_err();
        assert!(matches!(err, FsError::Locked { .. }));
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn lock_is_released_when_the_file_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        drop(lock_root(dir.path(), LOCK_FILE).unwrap());
        lock_root(dir.path(), LOCK_FILE).unwrap();
    }

    /// Issue #12 item 11: a directory left by a crash between its creation
    /// and its parent's fsync must have its parent synced on the next run.
    #[cfg(feature = "failpoints")]
    #[test]
    fn create_dir_all_syncs_the_parent_of_a_directory_that_already_exists() {
        let scenario = fail::FailScenario::setup();
        let syncs = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counter = syncs.clone();
        fail::cfg_callback("durable::sync_dir", move || {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let left = dir.path().join("left-by-a-crash");
        std::fs::create_dir(&left).unwrap(); // never synced
        create_dir_all(&left).unwrap();
        assert!(syncs.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the parent of an existing dir is synced");
        scenario.teardown();
    }

    #[test]
    fn create_dir_all_creates_nested_dirs() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("a/b/c");
        create_dir_all(&nested).unwrap();
        assert!(nested.is_dir());
        create_dir_all(&nested).unwrap();
    }
}
