//! The bound: ferry's group-commit shape with none of ferry's work. Clients
//! hand pre-encoded records to one flusher thread through the same kind of
//! queue; the thread takes every waiting request, does one write and one
//! fdatasync for the group on one file, then acknowledges each request.
//! No ids, no checksums, no index, no segment rolling.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use anyhow::{Context as _, anyhow};
use ferry_core::limits::{APPEND_QUEUE_DEPTH, GROUP_COMMIT_BYTES_MAX};
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
    let log = RawLog::start(&dir.path().join("raw.log"))?;
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
    fn start(path: &Path) -> anyhow::Result<RawLog> {
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("create {}", path.display()))?;
        let (tx, rx) = mpsc::channel(APPEND_QUEUE_DEPTH);
        let path = path.to_path_buf();
        let flusher = std::thread::Builder::new()
            .name("raw-flusher".into())
            .spawn(move || flush_groups(file, path, rx))
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

/// The flusher loop: one group per wake-up, as large as what is waiting.
fn flush_groups(file: File, path: PathBuf, mut rx: mpsc::Receiver<Request>) {
    let mut group = Vec::with_capacity(1 << 20);
    let mut replies = Vec::new();
    let mut end = 0u64;
    while let Some(first) = rx.blocking_recv() {
        let mut next = Some(first);
        while let Some(request) = next {
            group.extend_from_slice(&request.records);
            replies.push(request.reply);
            next = if group.len() < GROUP_COMMIT_BYTES_MAX { rx.try_recv().ok() } else { None };
        }
        let ack = write_durably(&file, &path, &group, end);
        end += group.len() as u64;
        for reply in replies.drain(..) {
            let _ = reply.send(ack.clone());
        }
        group.clear();
    }
}

fn write_durably(file: &File, path: &Path, bytes: &[u8], at: u64) -> Ack {
    file.write_all_at(bytes, at).map_err(|e| format!("write {}: {e}", path.display()))?;
    ferry_store::durable::sync_data(file, path).map_err(|e| e.to_string())
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
}
