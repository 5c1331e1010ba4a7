//! `ferry backup create | verify | restore` (SPEC §7): the command line's
//! values turned into `ferry-backup` calls, and the node each one talks to
//! — a server through `ferry-client`, or a stopped node's data directory
//! opened here like `ferry serve` opens it (its locks, recovery, the
//! format policy) but serving nothing, running no exporter and pruning
//! nothing. Each command prints one JSON line on success.

use std::path::Path;

use anyhow::Context as _;
use ferry_backup::{CreateOptions, RestoreMode, Source, Target};
use ferry_store::Store;

use crate::UsageError;
use crate::cli::{BackupCommand, ChainCommand, NodeArgs, RestoreModeArg};
use crate::config::Config;

pub async fn run(command: BackupCommand) -> anyhow::Result<()> {
    match command {
        BackupCommand::Create { dest, node, ledgers, incremental_from, pin_ttl, max_file_bytes } => {
            if pin_ttl < std::time::Duration::from_secs(1) {
                return Err(UsageError("--pin-ttl must be at least 1s".into()).into());
            }
            let options = CreateOptions { dest, ledgers, incremental_from, pin_ttl, max_file_bytes };
            let node = Node::open(&node, true)?;
            let source = match &node {
                Node::Server(client) => Source::Server(client.clone()),
                Node::Store(store, dir) => Source::Store { store: store.clone(), data_dir: dir.clone() },
            };
            let report = ferry_backup::create(&source, &options).await;
            node.close().await;
            let report = report?;
            let m = &report.manifest;
            println!(
                "{}",
                serde_json::json!({
                    "backup": options.dest, "ledgers": m.ledgers.len(), "entries": report.entries,
                    "bytes": report.bytes, "manifest_sha256": m.manifest_sha256,
                })
            );
            Ok(())
        }
        BackupCommand::Verify { dirs } => {
            let verified = tokio::task::spawn_blocking(move || ferry_backup::verify_chain(&dirs)).await??;
            let ledgers: std::collections::BTreeSet<&String> =
                verified.manifests.iter().flat_map(|m| m.ledgers.keys()).collect();
            println!(
                "{}",
                serde_json::json!({
                    "ok": true, "backups": verified.manifests.len(), "ledgers": ledgers.len(),
                    "entries": verified.entries, "files": verified.files, "bytes": verified.bytes,
                })
            );
            Ok(())
        }
        BackupCommand::Restore { dirs, node, mode } => {
            let mode = match mode {
                RestoreModeArg::FailIfExists => RestoreMode::FailIfExists,
                RestoreModeArg::Merge => RestoreMode::Merge,
            };
            let verified = tokio::task::spawn_blocking(move || ferry_backup::verify_chain(&dirs)).await??;
            let node = Node::open(&node, false)?;
            let target = match &node {
                Node::Server(client) => Target::Server(client.clone()),
                Node::Store(store, _) => Target::Store(store.clone()),
            };
            let report = ferry_backup::restore(&verified, &target, mode).await;
            node.close().await;
            let report = report?;
            println!(
                "{}",
                serde_json::json!({
                    "ledgers": report.ledgers, "imported": report.imported, "present": report.present,
                })
            );
            Ok(())
        }
    }
}

/// `ferry chain verify --from-backup DIR… [--ledger L] --expect ID:HASH`.
pub async fn chain(command: ChainCommand) -> anyhow::Result<()> {
    let ChainCommand::Verify { from_backup, ledger, expect } = command;
    let Some((id, hash)) =
        expect.split_once(':').and_then(|(id, hash)| Some((id.parse::<u64>().ok()?, hash.to_owned())))
    else {
        return Err(UsageError(format!("--expect {expect:?}: give ID:HASH, e.g. 1050:9f86d0…")).into());
    };
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(UsageError(format!("--expect {expect:?}: the hash must be 64 lower-case hex digits")).into());
    }
    let verified = tokio::task::spawn_blocking(move || ferry_backup::verify_chain(&from_backup)).await??;
    let ledger = match ledger {
        Some(l) => l,
        None => {
            let names: std::collections::BTreeSet<&String> =
                verified.manifests.iter().flat_map(|m| m.ledgers.keys()).collect();
            match names.into_iter().collect::<Vec<_>>().as_slice() {
                [one] => (*one).clone(),
                _ => return Err(UsageError("the backups hold several ledgers: name one with --ledger".into()).into()),
            }
        }
    };
    let place = ferry_backup::prove_anchor(&verified, &ledger, id, &hash)?;
    println!("{}", serde_json::json!({ "ok": true, "ledger": ledger, "id": id, "hash": hash, "found": place }));
    Ok(())
}

/// The store as `ferry serve` would open it from the same `--config` and
/// `--data-dir` (roots, `chunk_entries`, `hash_chain`, limits), pruning
/// nothing: retention is off while a backup or a restore holds the node.
fn store_config(args: &NodeArgs) -> anyhow::Result<ferry_store::StoreConfig> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = &args.data_dir {
        config.data_dir = dir.clone();
    }
    let mut store = config.validate()?.store;
    store.retention = ferry_store::RetentionPolicy::default();
    Ok(store)
}

enum Node {
    Server(ferry_client::Client),
    Store(Store, String),
}

impl Node {
    /// The server, or the data directory's store; `existing`: the data
    /// directory must hold a node already (a backup never creates one).
    fn open(args: &NodeArgs, existing: bool) -> anyhow::Result<Self> {
        if args.data_dir.is_none() && args.config.is_none() {
            let server = args.server.as_deref().unwrap_or("http://127.0.0.1:7070");
            let client = crate::client::Client::new(server, args.token.clone())?;
            return Ok(Node::Server(client.api().clone()));
        }
        let config = store_config(args)?;
        let catalog = config.catalog_dir.clone().unwrap_or_else(|| config.data_dir.join("catalog"));
        if existing && !Path::new(&catalog).exists() {
            return Err(UsageError(format!(
                "{} holds no ferry node (no catalog at {})",
                config.data_dir.display(),
                catalog.display()
            ))
            .into());
        }
        let dir = config.data_dir.display().to_string();
        let store = Store::open(config).with_context(|| format!("open the node in {dir}"))?;
        Ok(Node::Store(store, dir))
    }

    async fn close(&self) {
        if let Node::Store(store, _) = self {
            store.shutdown().await;
        }
    }
}
