//! ferry's `Store` in-process: each client awaits `Store::append` before
//! sending its next call.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use ferry_core::{NewEntry, Payload};
use ferry_store::{Store, StoreConfig};

use crate::driver::{Measurement, Timing, drive};
use crate::workload::{Cell, ledger_names, payload_json};

/// `chained`: every ledger gets the hash chain; otherwise the store runs
/// with the defaults (`config`).
pub async fn run(cell: &Cell, timing: Timing, parent: &Path, chained: bool) -> anyhow::Result<Measurement> {
    let dir = tempfile::Builder::new().prefix("store-").tempdir_in(parent).context("create a temp dir")?;
    let store = open_with(config(dir.path(), chained)).await?;
    let ledgers = Arc::new(ledger_names());
    create_ledgers(&store, &ledgers).await?;
    let entries = entries(cell)?;
    let appender = store.clone();
    let measured = drive(cell.clients, timing, cell.batch as u64, move |worker| {
        let (store, ledgers, entries) = (appender.clone(), ledgers.clone(), entries.clone());
        async move {
            store.append(&ledgers[worker % ledgers.len()], entries).await?;
            Ok(())
        }
    })
    .await;
    store.shutdown().await;
    measured
}

/// The store's defaults (as `ferry serve` has them), but for the hash
/// chain on every ledger when `chained`.
fn config(dir: &Path, chained: bool) -> StoreConfig {
    let mut config = StoreConfig::new(dir);
    if chained {
        config.hash_chain = vec!["*".to_owned()];
    }
    config
}

/// Opens a fresh store under `dir` with the default settings.
pub async fn open(dir: &Path) -> anyhow::Result<Store> {
    open_with(StoreConfig::new(dir)).await
}

async fn open_with(config: StoreConfig) -> anyhow::Result<Store> {
    let dir = config.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(config)).await?;
    store.with_context(|| format!("open a store under {}", dir.display()))
}

/// Creates the ledgers up front, so no measured call pays for a creation.
async fn create_ledgers(store: &Store, ledgers: &Arc<Vec<ferry_core::LedgerName>>) -> anyhow::Result<()> {
    let (store, ledgers) = (store.clone(), ledgers.clone());
    for l in ledgers.iter() {
        store.create_ledger(l).await?;
    }
    Ok(())
}

/// The entries of one call; each call sends a clone, as a caller building
/// its request would allocate them.
fn entries(cell: &Cell) -> anyhow::Result<Vec<NewEntry>> {
    let payload = Payload::from_json(&payload_json(cell.payload_bytes))?;
    Ok(vec![NewEntry { key: None, idempotency_key: None, payload }; cell.batch])
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// `store-chained` measures ledgers with the hash chain and `store` the
    /// defaults `ferry serve` runs with (no chain), whatever the default is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_chained_target_hashes_its_entries_and_the_plain_one_runs_the_defaults() {
        for (chained, hashed) in [(true, true), (false, false)] {
            let dir = tempfile::tempdir().unwrap();
            let store = open_with(config(dir.path(), chained)).await.unwrap();
            let ledgers = Arc::new(ledger_names());
            create_ledgers(&store, &ledgers).await.unwrap();
            let entries = entries(&Cell { clients: 1, payload_bytes: 64, batch: 2 }).unwrap();
            store.append(&ledgers[0], entries).await.unwrap();
            let read = store.read(&ledgers[0], Some(1), 2).await.unwrap();
            assert_eq!(read.entries.len(), 2);
            assert!(read.entries.iter().all(|e| e.hash.is_some() == hashed), "chained {chained}: {:?}", read.entries);
            store.shutdown().await;
        }
        let defaults = StoreConfig::new(Path::new("/nonexistent"));
        assert_eq!(config(Path::new("/nonexistent"), false).hash_chain, defaults.hash_chain);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_appends_through_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let cell = Cell { clients: 4, payload_bytes: 64, batch: 3 };
        let timing = Timing { warmup: Duration::ZERO, window: Duration::from_millis(200) };
        let m = run(&cell, timing, dir.path(), true).await.unwrap();
        assert!(m.calls > 0);
        assert_eq!(m.entries, m.calls * 3);
    }
}
