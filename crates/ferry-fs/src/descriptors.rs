//! File descriptors: the process's open-file limit (`RLIMIT_NOFILE`) and
//! the errors that say it ran out.
//!
//! Running out of descriptors (EMFILE for the process, ENFILE for the
//! system) is never a disk fault: it can only come from a call that opens
//! something, so that step did not happen, nothing was written or synced,
//! and the same call succeeds once descriptors are free again. Callers
//! refuse or retry such a failure; they never poison on it.

use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// True when `e` says no descriptor was left to open a file with (EMFILE,
/// ENFILE).
pub fn exhausted(e: &io::Error) -> bool {
    let raw = e.raw_os_error();
    raw == Some(rustix::io::Errno::MFILE.raw_os_error()) || raw == Some(rustix::io::Errno::NFILE.raw_os_error())
}

/// The open-file limit: how many descriptors this process may hold now
/// (the soft limit) and how far it may raise that (the hard limit); `None`
/// is unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// The process's open-file limit now.
pub fn limit() -> Limit {
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    Limit { soft: current, hard: maximum }
}

/// Raises the soft open-file limit to the hard one (the most an
/// unprivileged process may hold), so a daemon with many ledgers and file
/// exporters does not run out at a shell's default of 1,024. Returns the
/// limit before and after.
pub fn raise_to_hard() -> io::Result<(Limit, Limit)> {
    let before = limit();
    if before.soft != before.hard {
        setrlimit(Resource::Nofile, Rlimit { current: before.hard, maximum: before.hard })?;
    }
    Ok((before, limit()))
}

/// Descriptors kept for the store, the exporters and the process itself
/// under an open-file limit of `soft`: half of it, at least 64 and at most
/// 1,024 (the WAL, the catalog, pack reads, freezes and each file
/// exporter's bounded set of open files fit in that many).
pub fn reserved_for_storage(soft: Option<u64>) -> u64 {
    soft.map_or(1_024, |soft| (soft / 2).clamp(64, 1_024))
}

/// How many connections may be open at once under an open-file limit of
/// `soft` without eating the descriptors `reserved_for_storage` keeps:
/// `wanted`, or fewer when the limit is low, but at least one.
pub fn for_connections(soft: Option<u64>, wanted: usize) -> usize {
    let Some(soft) = soft else { return wanted };
    let spare = soft.saturating_sub(reserved_for_storage(Some(soft)));
    usize::try_from(spare).unwrap_or(usize::MAX).min(wanted).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_leave_the_store_its_reserve() {
        assert_eq!(reserved_for_storage(Some(200)), 100);
        assert_eq!(for_connections(Some(200), 4_096), 100);
        assert_eq!(for_connections(Some(1_024), 4_096), 512);
        assert_eq!(for_connections(Some(65_536), 4_096), 4_096);
        assert_eq!(for_connections(Some(100), 4_096), 36, "at least 64 are kept");
        assert_eq!(for_connections(Some(32), 4_096), 1, "never zero");
        assert_eq!(for_connections(None, 4_096), 4_096);
    }

    #[test]
    fn emfile_and_enfile_are_exhaustion_and_other_errors_are_not() {
        for errno in [rustix::io::Errno::MFILE, rustix::io::Errno::NFILE] {
            assert!(exhausted(&io::Error::from_raw_os_error(errno.raw_os_error())));
        }
        for errno in [rustix::io::Errno::IO, rustix::io::Errno::NOSPC, rustix::io::Errno::NOENT] {
            assert!(!exhausted(&io::Error::from_raw_os_error(errno.raw_os_error())));
        }
        assert!(!exhausted(&io::Error::other("Too many open files")), "only the OS error counts");
    }

    #[test]
    fn the_soft_limit_never_exceeds_the_hard_one() {
        let Limit { soft, hard } = limit();
        assert!(soft.unwrap_or(u64::MAX) <= hard.unwrap_or(u64::MAX), "{soft:?} > {hard:?}");
    }
}
