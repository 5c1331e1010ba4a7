//! Test support: a simulated filesystem and the crash clock it shares with
//! other simulated sync points (the store's in-memory catalog). `SimFs` keeps the durable image (file bytes after `sync`,
//! directory entries after `sync_dir` of their parent) apart from the live
//! one, so a test can stop the world at the N-th sync point and run
//! recovery on exactly what a power loss would have left.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::vfs::{Vfs, VfsDir, VfsFile, VfsRead, VfsSegment};

/// Counts sync points (file syncs, directory syncs, catalog commits) and
/// crashes at a chosen one: that sync does not happen, and every later
/// operation fails.
#[derive(Debug, Default)]
pub struct CrashClock {
    syncs: AtomicU64,
    crash_at: AtomicU64,
    crashed: AtomicBool,
}

impl CrashClock {
    /// A clock that never crashes.
    pub fn new() -> Arc<Self> {
        let c = Self::default();
        c.crash_at.store(u64::MAX, Ordering::SeqCst);
        Arc::new(c)
    }

    /// Crash at the `n`-th sync point from now on (1 = the next one).
    pub fn crash_at(&self, n: u64) {
        let now = self.syncs.load(Ordering::SeqCst);
        self.crash_at.store(now + n, Ordering::SeqCst);
    }

    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    pub fn crashed(&self) -> bool {
        self.crashed.load(Ordering::SeqCst)
    }

    fn alive(&self) -> io::Result<()> {
        if self.crashed() { Err(io::Error::other("simulated crash")) } else { Ok(()) }
    }

    /// One sync point: fails (and stays failed) from the chosen one on.
    pub fn sync_point(&self) -> io::Result<()> {
        self.alive()?;
        let n = self.syncs.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.crash_at.load(Ordering::SeqCst) {
            self.crashed.store(true, Ordering::SeqCst);
            return Err(io::Error::other("simulated crash"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default)]
struct View {
    dirs: BTreeSet<PathBuf>,
    files: BTreeMap<PathBuf, u64>,
}

#[derive(Debug, Default)]
struct State {
    live: View,
    durable: View,
    live_data: HashMap<u64, Vec<u8>>,
    durable_data: HashMap<u64, Vec<u8>>,
    next_inode: u64,
}

/// A simulated filesystem (see the module docs).
#[derive(Debug, Clone)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
    clock: Arc<CrashClock>,
}

fn not_found(p: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{} not found", p.display()))
}

impl SimFs {
    /// A filesystem whose `roots` (and their ancestors) exist durably.
    pub fn new(roots: &[&Path], clock: Arc<CrashClock>) -> Self {
        let mut state = State::default();
        for root in roots {
            for a in root.ancestors() {
                state.live.dirs.insert(a.to_path_buf());
            }
        }
        state.durable = state.live.clone();
        Self { state: Arc::new(Mutex::new(state)), clock }
    }

    pub fn clock(&self) -> &Arc<CrashClock> {
        &self.clock
    }

    /// The filesystem after a power loss now. `pessimistic`: only what was
    /// synced (unsynced bytes of a durable entry read as empty); otherwise
    /// everything live, as if every write had reached the disk.
    pub fn crash_image(&self, pessimistic: bool) -> SimFs {
        let s = self.state.lock().expect("sim lock");
        let (view, data) = if pessimistic { (&s.durable, &s.durable_data) } else { (&s.live, &s.live_data) };
        let mut image = State { next_inode: s.next_inode, ..State::default() };
        let reachable = |p: &Path| p.ancestors().skip(1).all(|a| view.dirs.contains(a) || a.as_os_str().is_empty());
        image.live.dirs = view.dirs.iter().filter(|d| reachable(d)).cloned().collect();
        for (path, inode) in &view.files {
            if path.parent().is_some_and(|p| image.live.dirs.contains(p)) {
                image.live.files.insert(path.clone(), *inode);
                image.live_data.insert(*inode, data.get(inode).cloned().unwrap_or_default());
            }
        }
        image.durable = image.live.clone();
        image.durable_data = image.live_data.clone();
        SimFs { state: Arc::new(Mutex::new(image)), clock: CrashClock::new() }
    }

    /// The filesystem after the process was killed (`kill -9`) now, with
    /// the machine still up: every write is visible (the page cache keeps
    /// it) but only what was synced is durable, so a later
    /// `crash_image(true)` (a power loss) still drops the rest. What a
    /// restarted process must not serve before it has synced it.
    pub fn process_crash(&self) -> SimFs {
        let s = self.state.lock().expect("sim lock");
        let state = State {
            live: s.live.clone(),
            durable: s.durable.clone(),
            live_data: s.live_data.clone(),
            durable_data: s.durable_data.clone(),
            next_inode: s.next_inode,
        };
        SimFs { state: Arc::new(Mutex::new(state)), clock: CrashClock::new() }
    }

    /// Every file path, for orphan checks.
    pub fn files(&self) -> Vec<PathBuf> {
        self.state.lock().expect("sim lock").live.files.keys().cloned().collect()
    }

    /// Creates an empty file that must not exist yet (live, not durable
    /// until its directory is synced); returns its inode.
    fn create_file(&self, path: &Path) -> io::Result<u64> {
        self.clock.alive()?;
        let mut s = self.state.lock().expect("sim lock");
        Self::parent_exists(&s, path)?;
        if s.live.files.contains_key(path) || s.live.dirs.contains(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, path.display().to_string()));
        }
        s.next_inode += 1;
        let inode = s.next_inode;
        s.live.files.insert(path.to_path_buf(), inode);
        s.live_data.insert(inode, Vec::new());
        Ok(inode)
    }

    fn parent_exists(s: &State, path: &Path) -> io::Result<()> {
        match path.parent() {
            Some(p) if s.live.dirs.contains(p) => Ok(()),
            _ => Err(not_found(path)),
        }
    }
}

struct SimFile {
    state: Arc<Mutex<State>>,
    clock: Arc<CrashClock>,
    inode: u64,
}

impl VfsFile for SimFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.clock.alive()?;
        let mut s = self.state.lock().expect("sim lock");
        s.live_data.entry(self.inode).or_default().extend_from_slice(buf);
        Ok(())
    }

    fn sync(&mut self) -> io::Result<()> {
        self.clock.sync_point()?;
        let mut s = self.state.lock().expect("sim lock");
        let data = s.live_data.get(&self.inode).cloned().unwrap_or_default();
        s.durable_data.insert(self.inode, data);
        Ok(())
    }
}

struct SimRead(Vec<u8>);

impl VfsRead for SimRead {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        let src = self.0.get(start..start + buf.len()).ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.len() as u64)
    }
}

/// A segment file of the simulated disk: reads and writes go to the live
/// image; `sync` copies the file's live bytes to the durable image.
#[derive(Debug)]
struct SimSegment {
    state: Arc<Mutex<State>>,
    clock: Arc<CrashClock>,
    inode: u64,
}

impl VfsRead for SimSegment {
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let s = self.state.lock().expect("sim lock");
        let data = s.live_data.get(&self.inode).map(Vec::as_slice).unwrap_or_default();
        SimRead(data.to_vec()).read_at(buf, offset)
    }
    fn len(&self) -> io::Result<u64> {
        let s = self.state.lock().expect("sim lock");
        Ok(s.live_data.get(&self.inode).map_or(0, |d| d.len() as u64))
    }
}

impl VfsSegment for SimSegment {
    fn write_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.clock.alive()?;
        let mut s = self.state.lock().expect("sim lock");
        let data = s.live_data.entry(self.inode).or_default();
        let start = usize::try_from(offset).map_err(io::Error::other)?;
        if data.len() < start + buf.len() {
            data.resize(start + buf.len(), 0);
        }
        data[start..start + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn sync(&self) -> io::Result<()> {
        self.clock.sync_point()?;
        let mut s = self.state.lock().expect("sim lock");
        let data = s.live_data.get(&self.inode).cloned().unwrap_or_default();
        s.durable_data.insert(self.inode, data);
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.clock.alive()?;
        let mut s = self.state.lock().expect("sim lock");
        let len = usize::try_from(len).map_err(io::Error::other)?;
        s.live_data.entry(self.inode).or_default().resize(len, 0);
        Ok(())
    }
}

/// A directory held open: its sync is `sync_dir` of its path, a sync point
/// like any other.
struct SimDir {
    fs: SimFs,
    path: PathBuf,
}

impl VfsDir for SimDir {
    fn sync(&self) -> io::Result<()> {
        self.fs.sync_dir(&self.path)
    }
}

impl Vfs for SimFs {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.clock.alive()?;
        let mut s = self.state.lock().expect("sim lock");
        Self::parent_exists(&s, path)?;
        if s.live.dirs.contains(path) || s.live.files.contains_key(path) {
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, path.display().to_string()));
        }
        s.live.dirs.insert(path.to_path_buf());
        Ok(())
    }

    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        let inode = self.create_file(path)?;
        Ok(Box::new(SimFile { state: self.state.clone(), clock: self.clock.clone(), inode }))
    }

    fn create_segment(&self, path: &Path) -> io::Result<Arc<dyn VfsSegment>> {
        let inode = self.create_file(path)?;
        Ok(Arc::new(SimSegment { state: self.state.clone(), clock: self.clock.clone(), inode }))
    }

    fn open_segment(&self, path: &Path) -> io::Result<Arc<dyn VfsSegment>> {
        self.clock.alive()?;
        let s = self.state.lock().expect("sim lock");
        let inode = *s.live.files.get(path).ok_or_else(|| not_found(path))?;
        Ok(Arc::new(SimSegment { state: self.state.clone(), clock: self.clock.clone(), inode }))
    }

    fn open_read(&self, path: &Path) -> io::Result<Box<dyn VfsRead>> {
        let s = self.state.lock().expect("sim lock");
        let inode = s.live.files.get(path).ok_or_else(|| not_found(path))?;
        Ok(Box::new(SimRead(s.live_data.get(inode).cloned().unwrap_or_default())))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.clock.alive()?;
        let mut s = self.state.lock().expect("sim lock");
        Self::parent_exists(&s, to)?;
        let inode = s.live.files.remove(from).ok_or_else(|| not_found(from))?;
        s.live.files.insert(to.to_path_buf(), inode);
        Ok(())
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.clock.alive()?;
        let mut s = self.state.lock().expect("sim lock");
        s.live.files.remove(path).map(|_| ()).ok_or_else(|| not_found(path))
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.clock.alive()?;
        let mut s = self.state.lock().expect("sim lock");
        let busy = s.live.files.keys().chain(s.live.dirs.iter()).any(|p| p.parent() == Some(path));
        if busy {
            return Err(io::Error::other(format!("{} is not empty", path.display())));
        }
        if s.live.dirs.remove(path) { Ok(()) } else { Err(not_found(path)) }
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.clock.sync_point()?;
        let mut s = self.state.lock().expect("sim lock");
        if !s.live.dirs.contains(path) {
            return Err(not_found(path));
        }
        let child = |p: &Path| p.parent() == Some(path);
        let State { live, durable, .. } = &mut *s;
        durable.files.retain(|p, _| !child(p));
        durable.files.extend(live.files.iter().filter(|(p, _)| child(p)).map(|(p, i)| (p.clone(), *i)));
        durable.dirs.retain(|p| !child(p));
        durable.dirs.extend(live.dirs.iter().filter(|p| child(p)).cloned());
        Ok(())
    }

    fn open_dir(&self, path: &Path) -> io::Result<Box<dyn VfsDir>> {
        self.clock.alive()?;
        if !self.state.lock().expect("sim lock").live.dirs.contains(path) {
            return Err(not_found(path));
        }
        Ok(Box::new(SimDir { fs: self.clone(), path: path.to_path_buf() }))
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        let s = self.state.lock().expect("sim lock");
        if !s.live.dirs.contains(path) {
            return Err(not_found(path));
        }
        let names = s.live.files.keys().chain(s.live.dirs.iter()).filter(|p| p.parent() == Some(path));
        let mut out: Vec<String> =
            names.filter_map(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).collect();
        out.sort();
        Ok(out)
    }

    fn exists(&self, path: &Path) -> bool {
        let s = self.state.lock().expect("sim lock");
        s.live.dirs.contains(path) || s.live.files.contains_key(path)
    }
}
