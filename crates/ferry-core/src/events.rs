//! What goes out on the buses: appends (to wake watchers and exporters) and
//! system events (`GET /v1/events`).

use crate::{EntryId, LedgerName};

/// New entries of a ledger are durable and visible up to `last_id`.
/// Published under the ledger's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub ledger: LedgerName,
    /// The ledger's durable incarnation: a wake-up for a re-created ledger
    /// is never taken for the old one.
    pub incarnation: u64,
    /// The first id this wake-up announces, and its timestamp: an exporter
    /// keeps them to tell the age of its oldest unexported entry without a
    /// read.
    pub first_id: EntryId,
    pub first_ts: u64,
    pub last_id: EntryId,
}

/// A state change of the system, published under its `key`.
#[derive(Debug, Clone, PartialEq)]
pub struct SystemEvent {
    /// `ledger.created`, `ledger.deleted`, `ledger.checkpoint`, `chunk.frozen`, `chunk.pruned`,
    /// `chunk.keys_lost`,
    /// `exporter.failed`, `exporter.recovered`, `exporter.reset`, `pin.created`,
    /// `pin.expired`.
    pub kind: &'static str,
    /// A stable key to match prefixes on, e.g. `chunk.frozen/audit/00000003`.
    pub key: String,
    /// Unix milliseconds.
    pub at: u64,
    pub data: serde_json::Value,
    /// The name of the token that caused it, for actions taken through
    /// the API with auth on (a deletion, an exporter reset); never a
    /// secret.
    pub actor: Option<String>,
}

impl SystemEvent {
    pub fn new(kind: &'static str, key_rest: &str, data: serde_json::Value) -> Self {
        Self { kind, key: format!("{kind}/{key_rest}"), at: crate::now_ms(), data, actor: None }
    }

    /// The same event, naming who caused it.
    pub fn by(mut self, actor: Option<&str>) -> Self {
        self.actor = actor.map(str::to_owned);
        self
    }

    pub fn ledger_created(ledger: &LedgerName) -> Self {
        Self::new("ledger.created", ledger.as_str(), serde_json::json!({ "ledger": ledger }))
    }

    pub fn ledger_deleted(ledger: &LedgerName) -> Self {
        Self::new("ledger.deleted", ledger.as_str(), serde_json::json!({ "ledger": ledger }))
    }

    /// `ledger.checkpoint`: a chained ledger's hash at `id`, to anchor
    /// outside ferry (`[storage] checkpoint_every`).
    pub fn ledger_checkpoint(ledger: &LedgerName, id: EntryId, hash: &str) -> Self {
        let data = serde_json::json!({ "ledger": ledger, "id": id, "hash": hash });
        Self::new("ledger.checkpoint", &format!("{ledger}/{id:020}"), data)
    }

    pub fn chunk(kind: &'static str, ledger: &LedgerName, chunk: u64, first_id: EntryId, last_id: EntryId) -> Self {
        let data = serde_json::json!({ "ledger": ledger, "chunk": chunk, "first_id": first_id, "last_id": last_id });
        Self::new(kind, &format!("{ledger}/{chunk:08}"), data)
    }

    /// `exporter.failed`, `exporter.recovered`, `exporter.reset`: keyed
    /// `{kind}/{exporter}/{ledger}` (`{kind}/{exporter}` for a whole-exporter
    /// reset).
    pub fn exporter(kind: &'static str, exporter: &str, ledger: Option<&LedgerName>, data: serde_json::Value) -> Self {
        let mut data = data;
        data["exporter"] = exporter.into();
        match ledger {
            Some(l) => {
                data["ledger"] = l.as_str().into();
                Self::new(kind, &format!("{exporter}/{l}"), data)
            }
            None => Self::new(kind, exporter, data),
        }
    }

    /// The JSON body of the SSE event.
    pub fn to_json(&self) -> String {
        let mut json = serde_json::json!({ "kind": self.kind, "key": self.key, "at": self.at, "data": self.data });
        if let Some(actor) = &self.actor {
            json["actor"] = actor.as_str().into();
        }
        json.to_string()
    }
}
