//! `RealFs`: the [`Vfs`] of the real disk.
#![allow(clippy::disallowed_methods)] // this file is where the raw calls live

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use crate::vfs::{Vfs, VfsDir, VfsFile, VfsRead, VfsSegment};

/// The real disk, for the pack protocols (`Vfs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RealFs;

struct RealFile {
    file: std::io::BufWriter<File>,
}

impl VfsFile for RealFile {
    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.file.write_all(buf)
    }
    fn sync(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }
}

impl VfsRead for File {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.metadata()?.len())
    }
}

/// A segment file on disk.
#[derive(Debug)]
struct RealSegment {
    file: File,
}

impl VfsRead for RealSegment {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.file, buf, offset)
    }
    fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
}

impl VfsSegment for RealSegment {
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        // `return(enospc)` fails as a full disk does; plain `return` as EIO.
        fail::fail_point!("fs::segment_write", |arg: Option<String>| Err(match arg.as_deref() {
            Some("enospc") => std::io::Error::from_raw_os_error(28),
            _ => std::io::Error::other("injected by fail point fs::segment_write"),
        }));
        std::os::unix::fs::FileExt::write_all_at(&self.file, buf, offset)
    }
    fn sync(&self) -> std::io::Result<()> {
        fail::fail_point!("durable::sync_data", |_| Err(std::io::Error::other(
            "injected by fail point durable::sync_data"
        )));
        self.file.sync_data()
    }
    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }
}

/// A directory held open.
struct RealDir {
    dir: File,
}

impl VfsDir for RealDir {
    fn sync(&self) -> std::io::Result<()> {
        fail::fail_point!("fs::sync_dir", |_| Err(std::io::Error::other("injected by fail point fs::sync_dir")));
        self.dir.sync_all()
    }
}

impl Vfs for RealFs {
    fn create_dir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::create_dir(path)
    }
    fn create_new(&self, path: &Path) -> std::io::Result<Box<dyn VfsFile>> {
        let file = OpenOptions::new().write(true).create_new(true).open(path)?;
        Ok(Box::new(RealFile { file: std::io::BufWriter::with_capacity(1 << 20, file) }))
    }
    fn open_read(&self, path: &Path) -> std::io::Result<Box<dyn VfsRead>> {
        Ok(Box::new(File::open(path)?))
    }
    fn create_segment(&self, path: &Path) -> std::io::Result<Arc<dyn VfsSegment>> {
        let file = OpenOptions::new().read(true).write(true).create_new(true).open(path)?;
        Ok(Arc::new(RealSegment { file }))
    }
    fn open_segment(&self, path: &Path) -> std::io::Result<Arc<dyn VfsSegment>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(RealSegment { file }))
    }
    fn rename(&self, from: &Path, to: &Path) -> std::io::Result<()> {
        std::fs::rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> std::io::Result<()> {
        std::fs::remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> std::io::Result<()> {
        fail::fail_point!("fs::sync_dir", |_| Err(std::io::Error::other("injected by fail point fs::sync_dir")));
        File::open(path)?.sync_all()
    }
    fn open_dir(&self, path: &Path) -> std::io::Result<Box<dyn VfsDir>> {
        Ok(Box::new(RealDir { dir: File::open(path)? }))
    }
    fn list_dir(&self, path: &Path) -> std::io::Result<Vec<String>> {
        let mut names = Vec::new();
        for item in std::fs::read_dir(path)? {
            names.push(item?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }
    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }
}
