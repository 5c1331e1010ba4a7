//! The file sink's bounded set of open files: between deliveries each
//! ledger's current file may stay open, but only the most recently used
//! ones do; the others are closed and reopened by their next batch. With
//! 10,000 ledgers a sink would otherwise hold 10,000 descriptors and run
//! the process out of them (issue #12 item 9).
//!
//! **Why closing loses nothing.** A handle goes into the set only after
//! every byte written through it was `fdatasync`'d (the delivery's sync, or
//! `prepare`'s synced truncation), so closing it drops no unsynced data and
//! a close-time write-back error cannot hide a lost batch. A delivery takes
//! its ledger's handle out of the set while it writes, so eviction never
//! closes a file in use: the process holds at most the bound of idle files
//! plus one per delivery in flight.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferry_core::LedgerName;
use hashlink::LruCache;

/// The most files one file sink keeps open between deliveries.
pub const OPEN_FILES_MAX: usize = 256;
/// ... and never more than this fraction of the process's open-file limit
/// (1/8: two file exporters take a quarter, the store and the connections
/// keep the rest).
const LIMIT_SHARE_DIVISOR: u64 = 8;
/// ... but at least this many, however low the limit.
const OPEN_FILES_MIN: usize = 8;

/// The bound for a process whose soft open-file limit is `limit` (`None`:
/// unlimited).
pub(super) fn bound_for(limit: Option<u64>) -> usize {
    let share = limit.map_or(u64::MAX, |l| l / LIMIT_SHARE_DIVISOR);
    usize::try_from(share).unwrap_or(usize::MAX).clamp(OPEN_FILES_MIN, OPEN_FILES_MAX)
}

/// Idle handles by ledger, least recently used first.
pub(super) struct OpenFiles {
    idle: Mutex<LruCache<LedgerName, Idle>>,
}

struct Idle {
    path: PathBuf,
    file: File,
}

impl OpenFiles {
    pub fn new(bound: usize) -> Self {
        Self { idle: Mutex::new(LruCache::new(bound.max(1))) }
    }

    pub fn bound(&self) -> usize {
        self.lock().capacity()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<LedgerName, Idle>> {
        self.idle.lock().expect("open files lock")
    }

    /// Takes the ledger's idle handle on `path` out of the set, if there
    /// is one (a handle on another file of the ledger is closed).
    pub fn take(&self, ledger: &LedgerName, path: &Path) -> Option<File> {
        let idle = self.lock().remove(ledger)?;
        (idle.path == path).then_some(idle.file)
    }

    /// Puts back the ledger's handle on `path`. The caller has synced every
    /// byte written through it. Closes the least recently used handle when
    /// the set is full (outside the lock).
    pub fn put(&self, ledger: &LedgerName, path: PathBuf, file: File) {
        let evicted = {
            let mut idle = self.lock();
            let evicted =
                if idle.len() >= idle.capacity() && !idle.contains_key(ledger) { idle.remove_lru() } else { None };
            idle.insert(ledger.clone(), Idle { path, file });
            evicted
        };
        drop(evicted);
    }

    /// Closes the ledger's idle handle, if any (`prepare` may remove or cut
    /// the file it is on).
    pub fn forget(&self, ledger: &LedgerName) {
        let idle = self.lock().remove(ledger);
        drop(idle);
    }

    /// Closes every idle handle (the process ran out of descriptors);
    /// returns how many.
    pub fn close_all(&self) -> usize {
        let closed: Vec<(LedgerName, Idle)> = self.lock().drain().collect();
        closed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bound_is_256_or_an_eighth_of_the_limit_and_never_below_8() {
        assert_eq!(bound_for(None), OPEN_FILES_MAX);
        assert_eq!(bound_for(Some(1 << 20)), 256);
        assert_eq!(bound_for(Some(20_000)), 256);
        assert_eq!(bound_for(Some(1024)), 128);
        assert_eq!(bound_for(Some(256)), 32);
        assert_eq!(bound_for(Some(16)), 8);
        assert_eq!(bound_for(Some(0)), 8);
    }
}
