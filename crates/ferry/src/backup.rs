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
use crate::cli::{BackupCommand, NodeArgs, RestoreModeArg};
use crate::tools::Storage;

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
        let storage = Storage { data_dir: args.data_dir.as_deref(), config: args.config.as_deref() };
        let config = storage.store_config()?;
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
