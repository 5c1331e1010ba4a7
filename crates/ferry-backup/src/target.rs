//! Where a restore writes: a running server's import route (through
//! `ferry-client`; admin token when tokens are configured), or a store
//! opened in this process (`--data-dir`). Both apply a request all or
//! nothing and answer entries already there, identical, as present.

use bytes::Bytes;
use ferry_core::{LedgerName, Payload};
use ferry_format::chain;
use ferry_store::{ImportEntry, Store, StoreError};

use crate::error::{BackupError, Result};
use crate::line::BackupLine;

#[derive(Clone)]
pub enum Target {
    Server(ferry_client::Client),
    Store(Store),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Server(c) => write!(f, "server {}", c.base_url()),
            Target::Store(_) => f.write_str("store"),
        }
    }
}

/// How one import request ended.
#[derive(Debug)]
pub(crate) enum Imported {
    Done {
        imported: u64,
        present: u64,
    },
    /// Refused at `id` (a conflict): the target's message.
    Conflict {
        id: Option<u64>,
        message: String,
    },
    /// The request was too large for the target: send fewer lines.
    TooLarge,
}

impl Target {
    /// Whether the ledger exists, and its head.
    pub(crate) async fn head(&self, ledger: &str) -> Result<Option<u64>> {
        match self {
            Target::Server(client) => match client.ledger(ledger).await {
                Ok(l) => Ok(Some(l.head)),
                Err(e) if e.code() == Some("ledger_not_found") => Ok(None),
                Err(e) => Err(BackupError::remote(format!("read ledger {ledger}"), e)),
            },
            Target::Store(store) => Ok(store.ledger_info(&name(ledger)?).map(|i| i.head)),
        }
    }

    /// Creates an empty ledger (a backup of a ledger without entries).
    pub(crate) async fn create(&self, ledger: &str) -> Result<()> {
        let context = || format!("create ledger {ledger}");
        match self {
            Target::Server(client) => {
                client.create_ledger(ledger).await.map(drop).map_err(|e| BackupError::remote(context(), e))
            }
            Target::Store(store) => {
                store.create_ledger(&name(ledger)?).await.map(drop).map_err(|e| BackupError::remote(context(), e))
            }
        }
    }

    /// Imports `lines` (backup lines of `ledger`, contiguous) chained from
    /// `prev_hash`.
    pub(crate) async fn import(&self, ledger: &str, lines: &[Vec<u8>], prev_hash: Option<&str>) -> Result<Imported> {
        let context = || format!("import into ledger {ledger}");
        match self {
            Target::Server(client) => {
                let mut body = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
                for line in lines {
                    body.extend_from_slice(line);
                    body.push(b'\n');
                }
                match client.import(ledger, Bytes::from(body), prev_hash).await {
                    Ok(done) => Ok(Imported::Done { imported: done.imported, present: done.present }),
                    Err(e) if e.code() == Some("import_conflict") => {
                        let id = e.api().and_then(|a| a.extra.get("id")).and_then(serde_json::Value::as_u64);
                        let message = e.api().map_or_else(|| e.to_string(), |a| a.message.clone());
                        Ok(Imported::Conflict { id, message })
                    }
                    Err(e) if e.status().is_some_and(|s| s.as_u16() == 413) => Ok(Imported::TooLarge),
                    Err(e) => Err(BackupError::remote(context(), e)),
                }
            }
            Target::Store(store) => {
                let ledger_name = name(ledger)?;
                let mut entries = Vec::with_capacity(lines.len());
                for line in lines {
                    let l = BackupLine::parse(line).map_err(|e| BackupError::Refused(format!("{}: {e}", context())))?;
                    let payload = Payload::from_raw_json(l.payload.get())
                        .map_err(|e| BackupError::Refused(format!("{}: id {}: payload: {e}", context(), l.id)))?;
                    let hash =
                        l.chain_hash().map_err(|e| BackupError::Refused(format!("{}: id {}: {e}", context(), l.id)))?;
                    entries.push(ImportEntry {
                        id: l.id,
                        ts: l.ts,
                        key: l.key,
                        idempotency_key: l.idempotency_key,
                        hash,
                        payload,
                    });
                }
                let prev = prev_hash
                    .map(|h| chain::from_hex(h).ok_or_else(|| BackupError::Refused(format!("prev_hash {h:?}"))))
                    .transpose()?;
                match store.import(&ledger_name, entries, prev).await {
                    Ok(done) => Ok(Imported::Done { imported: done.imported, present: done.present }),
                    Err(e @ StoreError::ImportConflict { id, .. }) => {
                        Ok(Imported::Conflict { id: Some(id), message: e.to_string() })
                    }
                    Err(StoreError::AppendTooLarge { .. } | StoreError::BatchTooLarge { .. }) => Ok(Imported::TooLarge),
                    Err(e) => Err(BackupError::remote(context(), e)),
                }
            }
        }
    }
}

fn name(ledger: &str) -> Result<LedgerName> {
    LedgerName::parse(ledger).map_err(|e| BackupError::Refused(e.to_string()))
}
