//! Where the benchmark's files go. fdatasync on a memory filesystem
//! (tmpfs, often `/tmp`) costs nothing, which would make every number
//! meaningless, so the default avoids one and a chosen one is flagged.
#![allow(clippy::disallowed_methods)] // the benchmark creates its scratch directories

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// Used when the system temp dir is in memory (relative to the cwd).
const FALLBACK_DIR: &str = "target/ferry-bench";

/// The parent of every run's temp dir: `chosen`, or the system temp dir
/// unless it is in memory. Created if missing.
pub fn data_parent(chosen: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let dir = chosen.unwrap_or_else(|| {
        let tmp = std::env::temp_dir();
        if is_in_memory(&tmp) { PathBuf::from(FALLBACK_DIR) } else { tmp }
    });
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    dir.canonicalize().with_context(|| format!("resolve {}", dir.display()))
}

pub fn is_in_memory(path: &Path) -> bool {
    filesystem_type(path).is_some_and(|fs| matches!(fs.as_str(), "tmpfs" | "ramfs"))
}

/// The type of the filesystem holding `path` (from `/proc/self/mounts`:
/// the mount point that is the longest prefix of the path).
pub fn filesystem_type(path: &Path) -> Option<String> {
    let path = path.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_device, mount_point, fs) = (fields.next()?, fields.next()?, fields.next()?);
            path.starts_with(mount_point).then(|| (mount_point.len(), fs.to_owned()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, fs)| fs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_has_a_filesystem_type() {
        assert!(filesystem_type(Path::new("/")).is_some());
    }

    #[test]
    fn a_chosen_dir_is_created_and_made_absolute() {
        let dir = tempfile::tempdir().unwrap();
        let chosen = dir.path().join("a/b");
        let parent = data_parent(Some(chosen.clone())).unwrap();
        assert!(parent.is_absolute() && parent.is_dir());
    }
}
