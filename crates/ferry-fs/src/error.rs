//! The crate's one error type: what failed, on which path, and the OS error.

use std::path::PathBuf;

pub type Result<T, E = FsError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FsError {
    /// Another process holds the root's lock (SPEC §2.7).
    #[error("storage root {root} is locked by another ferry process (lock file {lock})")]
    Locked { root: PathBuf, lock: PathBuf },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl FsError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        FsError::Io { context: context.into(), source }
    }

    /// The OS error, when there is one.
    pub fn io_error(&self) -> Option<&std::io::Error> {
        match self {
            FsError::Io { source, .. } => Some(source),
            FsError::Locked { .. } => None,
        }
    }

    /// True when the step failed because no descriptor was left to open a
    /// file with (see [`crate::descriptors`]): it did not happen, and may be
    /// retried once descriptors are free.
    pub fn descriptors_exhausted(&self) -> bool {
        self.io_error().is_some_and(crate::descriptors::exhausted)
    }
}

/// Adds a context line to I/O results.
pub(crate) trait IoContext<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| FsError::io(what(), e))
    }
}
