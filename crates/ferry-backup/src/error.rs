//! The one error type of backups. A fault in a backup names the file, and
//! the line where there is one, so an operator can look at it with `sed -n`.

use std::path::PathBuf;

pub type Result<T, E = BackupError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackupError {
    /// The backup's files are not what the manifest and checksums say.
    #[error("{}{}: {reason}", file.display(), line.map(|l| format!(" line {l}")).unwrap_or_default())]
    Bad { file: PathBuf, line: Option<u64>, reason: String },
    /// A directory without a valid `MANIFEST.json`: an incomplete backup.
    #[error("{}: {reason}", dir.display())]
    Incomplete { dir: PathBuf, reason: String },
    /// How the command was asked to run cannot work (a destination that is
    /// not empty, a ledger that exists with `fail-if-exists`, …).
    #[error("{0}")]
    Refused(String),
    /// The source or target answered with an error.
    #[error("{context}: {message}")]
    Remote { context: String, message: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl BackupError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    pub(crate) fn bad(file: impl Into<PathBuf>, line: Option<u64>, reason: impl Into<String>) -> Self {
        Self::Bad { file: file.into(), line, reason: reason.into() }
    }

    pub(crate) fn remote(context: impl Into<String>, e: impl std::fmt::Display) -> Self {
        Self::Remote { context: context.into(), message: e.to_string() }
    }
}

impl From<ferry_fs::FsError> for BackupError {
    fn from(e: ferry_fs::FsError) -> Self {
        match e {
            ferry_fs::FsError::Io { context, source } => Self::Io { context, source },
            other => Self::Refused(other.to_string()),
        }
    }
}
