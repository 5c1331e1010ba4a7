//! `sink = "file"`: `dir` (required) and `max_file_bytes` ("64MiB").

use std::path::PathBuf;

use ferry_core::units::Size;
use serde::Deserialize;

use crate::ConfigError;

/// Files are rolled past this size unless configured.
pub const MAX_FILE_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;
/// The smallest `max_file_bytes` (tests roll often; nobody wants less).
pub const MAX_FILE_BYTES_MIN: u64 = 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    dir: Option<PathBuf>,
    max_file_bytes: Option<Size>,
}

#[derive(Debug, Clone)]
pub struct FileConfig {
    pub dir: PathBuf,
    pub max_file_bytes: u64,
}

impl FileConfig {
    pub fn validate(value: serde_json::Value) -> Result<Self, ConfigError> {
        let raw: Raw = crate::parse(value)?;
        let dir = raw.dir.filter(|d| !d.as_os_str().is_empty()).ok_or(ConfigError::Missing {
            field: "config.dir",
            fix: "set it to the directory the JSONL files go to",
        })?;
        let max_file_bytes = raw.max_file_bytes.map_or(MAX_FILE_BYTES_DEFAULT, |s| s.0);
        if max_file_bytes < MAX_FILE_BYTES_MIN {
            return Err(ConfigError::Invalid {
                field: "config.max_file_bytes".into(),
                problem: format!("{max_file_bytes} is below {MAX_FILE_BYTES_MIN}"),
                fix: "set it to at least 1KiB (the default is 64MiB)",
            });
        }
        Ok(Self { dir, max_file_bytes })
    }
}
