//! The bound: ferry's group-commit shape with none of ferry's work. Clients
//! hand pre-encoded records to one flusher thread through the same kind of
//! queue; the thread takes every waiting request, does one write and one
//! fdatasync for the group, then acknowledges each request. Like ferry's
//! WAL it rolls to a new file before a group would take the current one
//! past 64 MiB (a file that grows for the whole run syncs slower on ext4),
//! and unlinks the file it leaves, as ferry releases a sealed segment once
//! its entries are frozen. No ids, no checksums, no index, no reads.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::{Context as _, anyhow};
use ferry_core::limits::{APPEND_QUEUE_DEPTH, GROUP_COMMIT_BYTES_MAX, WAL_SEGMENT_BYTES_MAX};
use tokio::sync::{mpsc, oneshot};

use crate::driver::{Measurement, Timing, drive};
use crate::workload::Cell;

/// Bytes a ferry WAL record adds to its payload (length, CRC, flags, a
/// `bench-NN` ledger name, id, ts), so both targets write the same bytes.
const RECORD_FRAMING_BYTES: usize = 4 + 4 + 1 + 1 + 8 + 8 + 8;

type Ack = Result<(), String>;

struct Request {
    records: Vec<u8>,
    reply: oneshot::Sender<Ack>,
}

pub async fn run(cell: &Cell, timing: Timing, parent: &Path) -> anyhow::Result<Measurement> {
    let dir = tempfile::Builder::new().prefix("raw-").tempdir_in(parent).context("create a temp dir")?;
    let log = RawLog::start(dir.path())?;
    let records = vec![b'x'; cell.batch * (cell.payload_bytes + RECORD_FRAMING_BYTES)];
    let tx = log.tx.clone();
    let measured = drive(cell.clients, timing, cell.batch as u64, move |_| append(tx.clone(), records.clone())).await;
    log.stop().await?;
    measured
}

/// Hands one request's records to the flusher and waits for its ack.
async fn append(tx: mpsc::Sender<Request>, records: Vec<u8>) -> anyhow::Result<()> {
    let (reply, ack) = oneshot::channel();
    tx.send(Request { records, reply }).await.map_err(|_| anyhow!("the raw flusher stopped"))?;
    ack.await.context("the raw flusher dropped a request")?.map_err(|e| anyhow!(e))
}

struct RawLog {
    tx: mpsc::Sender<Request>,
    flusher: JoinHandle<()>,
}

impl RawLog {
    fn start(dir: &Path) -> anyhow::Result<RawLog> {
        let log = LogFile::create(dir, 0)?;
        let (tx, rx) = mpsc::channel(APPEND_QUEUE_DEPTH);
        let dir = dir.to_path_buf();
        let flusher = std::thread::Builder::new()
            .name("raw-flusher".into())
            .spawn(move || flush_groups(dir, log, rx))
            .context("start the raw flusher")?;
        Ok(RawLog { tx, flusher })
    }

    /// Stops the flusher once every sender is gone.
    async fn stop(self) -> anyhow::Result<()> {
        drop(self.tx);
        let flusher = self.flusher;
        tokio::task::spawn_blocking(move || flusher.join()).await?.map_err(|_| anyhow!("the raw flusher panicked"))
    }
}

/// The file being appended to.
struct LogFile {
    seq: u32,
    file: File,
    path: PathBuf,
    len: u64,
}

impl LogFile {
    /// Creates file `seq` durably (its directory entry synced), as ferry
    /// creates a segment.
    fn create(dir: &Path, seq: u32) -> anyhow::Result<LogFile> {
        let (file, path) = ferry_fs::durable::create_file_with_header(dir, &format!("{seq:08}.log"), &[])?;
        Ok(LogFile { seq, file, path, len: 0 })
    }
}

/// The flusher loop: one group per wake-up, as large as what is waiting.
fn flush_groups(dir: PathBuf, mut log: LogFile, mut rx: mpsc::Receiver<Request>) {
    let mut group = Vec::with_capacity(1 << 20);
    let mut replies = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(request) = next {
            group.extend_from_slice(&request.records);
            replies.push(request.reply);
            next = if group.len() < GROUP_COMMIT_BYTES_MAX { rx.try_recv().ok() } else { None };
        }
        let ack = roll_if_full(&dir, &mut log, group.len()).and_then(|()| write_durably(&mut log, &group));
        for reply in replies.drain(..) {
            let _ = reply.send(ack.clone());
        }
        group.clear();
    }
}

/// Starts the next file when `bytes` would take a non-empty one past the
/// segment size, and unlinks the full one.
fn roll_if_full(dir: &Path, log: &mut LogFile, bytes: usize) -> Ack {
    if log.len == 0 || log.len + bytes as u64 <= WAL_SEGMENT_BYTES_MAX {
        return Ok(());
    }
    let next = LogFile::create(dir, log.seq + 1).map_err(|e| format!("{e:#}"))?;
    let full = std::mem::replace(log, next);
    ferry_fs::durable::remove_file(&full.path).map_err(|e| e.to_string())
}

fn write_durably(log: &mut LogFile, bytes: &[u8]) -> Ack {
    log.file.write_all_at(bytes, log.len).map_err(|e| format!("write {}: {e}", log.path.display()))?;
    ferry_fs::durable::sync_data(&log.file, &log.path).map_err(|e| e.to_string())?;
    log.len += bytes.len() as u64;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_counts_acknowledged_calls_and_cleans_up() {
        let dir = tempfile::tempdir().unwrap();
        let cell = Cell { clients: 4, payload_bytes: 100, batch: 2 };
        let timing = Timing { warmup: Duration::ZERO, window: Duration::from_millis(200) };
        let m = run(&cell, timing, dir.path()).await.unwrap();
        assert!(m.calls > 0);
        assert_eq!(m.entries, m.calls * 2);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_full_file_rolls_to_the_next_and_is_unlinked() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogFile::create(dir.path(), 0).unwrap();
        write_durably(&mut log, b"first").unwrap();
        roll_if_full(dir.path(), &mut log, 1024).unwrap();
        assert_eq!(log.seq, 0, "room left: no roll");
        log.len = WAL_SEGMENT_BYTES_MAX - 100;
        roll_if_full(dir.path(), &mut log, 1024).unwrap();
        assert_eq!((log.seq, log.len), (1, 0));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["00000001.log"]);
    }
}
