//! Where a backup reads from: a running server (its pin routes and the
//! pinned read, through `ferry-client`), or a stopped node's store opened
//! in this process (`--data-dir`, under the store's locks). Both read
//! through a snapshot pin, so both give the same lines.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use ferry_core::LedgerName;
use ferry_store::Store;

use crate::error::{BackupError, Result};

/// Entries a store-backed read takes per call.
const PAGE_ENTRIES: usize = 2_000;

#[derive(Clone)]
pub enum Source {
    /// A running server (`--server URL`).
    Server(ferry_client::Client),
    /// A store opened in this process (`--data-dir DIR`): the caller opened
    /// it (which took its locks) and shuts it down afterwards.
    Store { store: Store, data_dir: String },
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

/// A pin as the backup uses it.
#[derive(Debug, Clone)]
pub(crate) struct Cut {
    pub id: String,
    pub created_at: u64,
    /// ledger → (incarnation, first, head).
    pub ledgers: BTreeMap<String, (u64, u64, u64)>,
}

/// What the pin does not say about a ledger.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub incarnation: u64,
    pub created_at: u64,
    /// The chain hash before First; `None` for a ledger without a chain.
    pub first_prev_hash: Option<String>,
}

impl Source {
    /// For the manifest's `source`.
    pub fn describe(&self) -> String {
        match self {
            Source::Server(client) => client.base_url().to_owned(),
            Source::Store { data_dir, .. } => format!("data-dir:{data_dir}"),
        }
    }

    pub(crate) async fn take_pin(&self, ttl: Duration) -> Result<Cut> {
        match self {
            Source::Server(client) => {
                let pin = client.create_pin(ttl).await.map_err(|e| BackupError::remote("take a snapshot pin", e))?;
                let ledgers = pin
                    .heads
                    .iter()
                    .map(|(name, head)| {
                        let first = pin.firsts.get(name).copied().unwrap_or(head + 1);
                        let incarnation = pin.incarnations.get(name).copied().unwrap_or(0);
                        (name.clone(), (incarnation, first, *head))
                    })
                    .collect();
                Ok(Cut { id: pin.pin, created_at: pin.created_at, ledgers })
            }
            Source::Store { store, .. } => {
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                let (id, pin) = store
                    .create_pin(ttl_ms, usize::MAX, Some("ferry backup"))
                    .await
                    .map_err(|e| BackupError::remote("take a snapshot pin", e))?;
                let ledgers =
                    pin.ledgers.iter().map(|(name, l)| (name.to_string(), (l.incarnation, l.first, l.head))).collect();
                Ok(Cut { id: id.to_string(), created_at: pin.created_at, ledgers })
            }
        }
    }

    pub(crate) async fn renew_pin(&self, pin: &str, ttl: Duration) -> Result<()> {
        let context = || format!("renew snapshot pin {pin}");
        match self {
            Source::Server(client) => {
                client.renew_pin(pin, ttl).await.map(drop).map_err(|e| BackupError::remote(context(), e))
            }
            Source::Store { store, .. } => {
                let id = pin.parse().map_err(|e| BackupError::remote(context(), e))?;
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
                store.renew_pin(id, ttl_ms).await.map(drop).map_err(|e| BackupError::remote(context(), e))
            }
        }
    }

    /// Drops the pin; a failure only leaves it to expire.
    pub(crate) async fn release_pin(&self, pin: &str) {
        let result = match self {
            Source::Server(client) => client.delete_pin(pin).await.map_err(|e| e.to_string()),
            Source::Store { store, .. } => match pin.parse() {
                Ok(id) => store.delete_pin(id).await.map_err(|e| e.to_string()),
                Err(e) => Err(format!("{e}")),
            },
        };
        if let Err(e) = result {
            tracing::warn!(pin, error = %e, "deleting the snapshot pin failed; it expires by itself");
        }
    }

    /// The ledger now; `None` when it no longer exists.
    pub(crate) async fn facts(&self, ledger: &str) -> Result<Option<Facts>> {
        match self {
            Source::Server(client) => match client.ledger(ledger).await {
                Ok(l) => Ok(Some(Facts {
                    incarnation: l.incarnation,
                    created_at: l.created_at,
                    first_prev_hash: l.extra.get("first_prev_hash").and_then(|v| v.as_str()).map(str::to_owned),
                })),
                Err(e) if e.code() == Some("ledger_not_found") => Ok(None),
                Err(e) => Err(BackupError::remote(format!("read ledger {ledger}"), e)),
            },
            Source::Store { store, .. } => {
                let name = ledger_name(ledger)?;
                Ok(store.ledger_info(&name).map(|i| Facts {
                    incarnation: i.incarnation,
                    created_at: i.created_at,
                    first_prev_hash: i.first_prev_hash,
                }))
            }
        }
    }

    /// The lines of `ledger` from `from` to the pinned head.
    pub(crate) async fn lines(&self, pin: &str, ledger: &str, from: u64, head: u64) -> Result<Lines> {
        match self {
            Source::Server(client) => {
                let lines = client
                    .read_pinned_lines(pin, ledger, Some(from))
                    .await
                    .map_err(|e| BackupError::remote(format!("read ledger {ledger} through pin {pin}"), e))?;
                Ok(Lines::Server(lines))
            }
            Source::Store { store, .. } => Ok(Lines::Store {
                store: store.clone(),
                pin: pin.parse().map_err(|e| BackupError::remote("pin id", e))?,
                ledger: ledger_name(ledger)?,
                next: from,
                head,
                page: VecDeque::new(),
            }),
        }
    }

    /// Every exporter cursor, as `[{"exporter","ledger","cursor"}]`.
    pub(crate) async fn cursors(&self) -> Result<Vec<serde_json::Value>> {
        match self {
            Source::Server(client) => {
                let exporters = client.exporters().await.map_err(|e| BackupError::remote("read exporters", e))?;
                Ok(exporters
                    .iter()
                    .flat_map(|x| {
                        x.ledgers
                            .iter()
                            .map(|l| serde_json::json!({"exporter": x.name, "ledger": l.ledger, "cursor": l.cursor}))
                    })
                    .collect())
            }
            Source::Store { store, .. } => {
                let cursors = store.cursors().await.map_err(|e| BackupError::remote("read exporter cursors", e))?;
                Ok(cursors
                    .iter()
                    .map(|c| serde_json::json!({"exporter": c.exporter.as_str(), "ledger": c.ledger.as_str(), "cursor": c.id}))
                    .collect())
            }
        }
    }
}

fn ledger_name(ledger: &str) -> Result<LedgerName> {
    LedgerName::parse(ledger).map_err(|e| BackupError::Refused(e.to_string()))
}

/// A ledger's lines, read through the pin.
pub(crate) enum Lines {
    Server(ferry_client::PinnedLines),
    Store { store: Store, pin: u64, ledger: LedgerName, next: u64, head: u64, page: VecDeque<Vec<u8>> },
}

impl Lines {
    /// The next line, without its newline; `None` after the pinned head.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>> {
        match self {
            Lines::Server(lines) => {
                let line = lines.next_line().await.map_err(|e| BackupError::remote("read through the pin", e))?;
                Ok(line.map(|l| {
                    let mut l = l.to_vec();
                    if l.last() == Some(&b'\n') {
                        l.pop();
                    }
                    l
                }))
            }
            Lines::Store { store, pin, ledger, next, head, page } => {
                if page.is_empty() && *next <= *head {
                    let read = store
                        .read_pinned(*pin, ledger, Some(*next), PAGE_ENTRIES)
                        .await
                        .map_err(|e| BackupError::remote(format!("read ledger {ledger} through pin {pin}"), e))?;
                    for e in &read.entries {
                        let mut line = Vec::with_capacity(e.entry.payload.len() + 160);
                        e.entry.write_json_with(&mut line, e.idempotency_key.as_deref());
                        page.push_back(line);
                    }
                    *next = read.next;
                }
                Ok(page.pop_front())
            }
        }
    }
}
