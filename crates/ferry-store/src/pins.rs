//! Snapshot pins (format 6): a consistent cut of every ledger — its
//! incarnation, First and head at one instant — kept in the catalog under
//! `pin:{id:020}` until a deadline, and a retention hold on each ledger from
//! the cut's First while it lives. A backup reads `First..=head` of every
//! ledger of its pin and renews the pin as it goes.
//!
//! **The cut.** While a pin is being taken, the table holds every ledger
//! whole (`taking`); a freezer barrier then lets any retention pass that
//! started before the hold finish, so First no longer moves under the hold;
//! and the heads are read on the flusher thread between two group commits,
//! so they are the heads at one instant: an entry acknowledged before
//! another one of any ledger is in the cut if the later one is.
//!
//! **Expiry.** A pin whose deadline passed holds nothing any more (the hold
//! checks the clock), cannot be renewed, and is deleted from the catalog by
//! the next `expire_pins` (the server runs it every second), which
//! publishes `pin.expired`.

use std::collections::BTreeMap;
use std::sync::RwLock;

use ferry_core::events::SystemEvent;
use ferry_core::{EntryId, LedgerName, now_ms};
use ferry_format::keys::CatalogKey;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::catalog::{Catalog, CatalogOp};
use crate::config::RetentionHold;
use crate::messages::{FlusherMsg, FreezerMsg};
use crate::{LedgerHead, Result, Store, StoreError};

/// One ledger in a pin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedLedger {
    pub incarnation: u64,
    pub first: EntryId,
    /// `first - 1` for a ledger that had no entries.
    pub head: EntryId,
}

/// `pin:{id:020}`: a snapshot pin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pin {
    /// Unix milliseconds.
    pub created_at: u64,
    /// Unix milliseconds; the pin holds nothing from then on.
    pub expires_at: u64,
    /// Who took it (a token's name), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    pub ledgers: BTreeMap<LedgerName, PinnedLedger>,
}

impl Pin {
    pub fn live_at(&self, now: u64) -> bool {
        now < self.expires_at
    }

    pub(crate) fn decode(key: &CatalogKey, value: &[u8]) -> Result<Self> {
        serde_json::from_slice(value).map_err(|e| StoreError::CatalogCorrupted(format!("{key}: {e}")))
    }

    fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a pin serialises")
    }
}

/// The live pins, as retention sees them.
#[derive(Debug, Default)]
pub(crate) struct PinTable {
    state: RwLock<PinState>,
}

#[derive(Debug, Default)]
struct PinState {
    pins: BTreeMap<u64, Pin>,
    /// Pins being taken: while any is, every ledger is held whole.
    taking: usize,
}

impl PinTable {
    /// The pins in the catalog (expired ones too: the next expiry pass
    /// deletes them and says so).
    pub(crate) fn load(catalog: &dyn Catalog) -> Result<Self> {
        let mut pins = BTreeMap::new();
        for (key, value) in catalog.scan(CatalogKey::PIN_PREFIX)? {
            let CatalogKey::Pin(id) = key else { continue };
            pins.insert(id, Pin::decode(&key, &value)?);
        }
        Ok(Self { state: RwLock::new(PinState { pins, taking: 0 }) })
    }

    fn live(&self, now: u64) -> usize {
        self.state.read().expect("pins lock").pins.values().filter(|p| p.live_at(now)).count()
    }
}

impl RetentionHold for PinTable {
    fn needs_from(&self, ledger: &LedgerName) -> Option<EntryId> {
        let state = self.state.read().expect("pins lock");
        if state.taking > 0 {
            return Some(0);
        }
        let now = now_ms();
        state.pins.values().filter(|p| p.live_at(now)).filter_map(|p| p.ledgers.get(ledger)).map(|l| l.first).min()
    }
}

/// Ends a `taking` hold however the pin's creation ends.
struct Taking<'a>(&'a PinTable);

impl Drop for Taking<'_> {
    fn drop(&mut self) {
        self.0.state.write().expect("pins lock").taking -= 1;
    }
}

impl Store {
    /// Takes a snapshot pin of every ledger, alive for `ttl_ms`. At most
    /// `max` live pins: beyond, `TooManyPins` and nothing changes.
    pub async fn create_pin(&self, ttl_ms: u64, max: usize, by: Option<&str>) -> Result<(u64, Pin)> {
        let table = &self.shared().pins;
        {
            let mut state = table.state.write().expect("pins lock");
            let now = now_ms();
            if state.pins.values().filter(|p| p.live_at(now)).count() + state.taking >= max {
                return Err(StoreError::TooManyPins { max });
            }
            state.taking += 1;
        }
        let _taking = Taking(table);
        // Any retention pass that began before the hold ends first.
        let (done, passed) = oneshot::channel();
        self.freezer_tx().send(FreezerMsg::Barrier(done)).map_err(|_| StoreError::ShuttingDown)?;
        passed.await.map_err(|_| StoreError::ShuttingDown)?;
        let (reply, heads) = oneshot::channel();
        self.flusher().send(FlusherMsg::Cut(reply)).await.map_err(|_| StoreError::ShuttingDown)?;
        let heads: Vec<LedgerHead> = heads.await.map_err(|_| StoreError::ShuttingDown)?;
        let created_at = now_ms();
        let pin = Pin {
            created_at,
            expires_at: created_at.saturating_add(ttl_ms),
            by: by.map(str::to_owned),
            ledgers: heads
                .into_iter()
                .map(|h| (h.name, PinnedLedger { incarnation: h.incarnation, first: h.first, head: h.head }))
                .collect(),
        };
        let id = loop {
            let id = rand::random::<u64>() >> 1;
            if id != 0 && !table.state.read().expect("pins lock").pins.contains_key(&id) {
                break id;
            }
        };
        self.commit_pins(vec![CatalogOp::Put(CatalogKey::Pin(id), pin.encode())]).await?;
        table.state.write().expect("pins lock").pins.insert(id, pin.clone());
        let data =
            serde_json::json!({ "pin": id.to_string(), "ledgers": pin.ledgers.len(), "expires_at": pin.expires_at });
        let event = SystemEvent::new("pin.created", &id.to_string(), data).by(by);
        self.events().publish(&event.key, &event);
        Ok((id, pin))
    }

    /// Moves a live pin's deadline to `ttl_ms` from now. An expired or
    /// unknown pin is `PinNotFound`: what it held may be gone.
    pub async fn renew_pin(&self, id: u64, ttl_ms: u64) -> Result<Pin> {
        let table = &self.shared().pins;
        let mut pin = match table.state.read().expect("pins lock").pins.get(&id) {
            Some(p) if p.live_at(now_ms()) => p.clone(),
            _ => return Err(StoreError::PinNotFound(id)),
        };
        pin.expires_at = now_ms().saturating_add(ttl_ms).max(pin.expires_at);
        self.commit_pins(vec![CatalogOp::Put(CatalogKey::Pin(id), pin.encode())]).await?;
        let mut state = table.state.write().expect("pins lock");
        match state.pins.get_mut(&id) {
            // Deleted meanwhile: the deletion stands.
            None => return Err(StoreError::PinNotFound(id)),
            Some(p) => p.expires_at = pin.expires_at,
        }
        Ok(pin)
    }

    /// Deletes a pin (expired or not); `PinNotFound` when there is none.
    pub async fn delete_pin(&self, id: u64) -> Result<()> {
        let table = &self.shared().pins;
        if !table.state.read().expect("pins lock").pins.contains_key(&id) {
            return Err(StoreError::PinNotFound(id));
        }
        self.commit_pins(vec![CatalogOp::Delete(CatalogKey::Pin(id))]).await?;
        table.state.write().expect("pins lock").pins.remove(&id);
        Ok(())
    }

    /// Every pin the store keeps, by id; expired ones until the next
    /// `expire_pins`.
    pub fn pins(&self) -> Vec<(u64, Pin)> {
        self.shared().pins.state.read().expect("pins lock").pins.iter().map(|(id, p)| (*id, p.clone())).collect()
    }

    /// Live pins.
    pub fn live_pins(&self) -> usize {
        self.shared().pins.live(now_ms())
    }

    /// Deletes every pin whose deadline passed, in one catalog commit, and
    /// publishes `pin.expired` for each. Returns how many.
    pub async fn expire_pins(&self) -> Result<usize> {
        let table = &self.shared().pins;
        let now = now_ms();
        let expired: Vec<(u64, Pin)> = table
            .state
            .read()
            .expect("pins lock")
            .pins
            .iter()
            .filter(|(_, p)| !p.live_at(now))
            .map(|(id, p)| (*id, p.clone()))
            .collect();
        if expired.is_empty() {
            return Ok(0);
        }
        let ops = expired.iter().map(|(id, _)| CatalogOp::Delete(CatalogKey::Pin(*id))).collect();
        self.commit_pins(ops).await?;
        let mut state = table.state.write().expect("pins lock");
        for (id, pin) in &expired {
            // Renewed meanwhile? A renewal needs a live pin, so it cannot
            // have been: the deadline had passed.
            state.pins.remove(id);
            let data = serde_json::json!({ "pin": id.to_string(), "expired_at": pin.expires_at });
            let event = SystemEvent::new("pin.expired", &id.to_string(), data);
            self.events().publish(&event.key, &event);
            tracing::info!(pin = id, "snapshot pin expired");
        }
        Ok(expired.len())
    }

    /// One durable catalog commit of pin changes. Refused for lack of
    /// space, it changed nothing and the store goes on; any other failure
    /// poisons it, as every catalog commit does.
    async fn commit_pins(&self, ops: Vec<CatalogOp>) -> Result<()> {
        self.blocking(move |store| {
            let shared = store.shared();
            shared.health.check()?;
            shared.commit_or_poison(&ops)
        })
        .await
    }
}

/// An entry read through a pin, with its idempotency key while the key is
/// inside its window (a restored node then still answers retries).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedEntry {
    pub entry: ferry_core::Entry,
    pub idempotency_key: Option<String>,
}

/// One read through a pin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedRead {
    /// In id order, none past the pinned head.
    pub entries: Vec<PinnedEntry>,
    /// The id to read from next (`pinned head + 1` when done).
    pub next: EntryId,
}

impl Store {
    /// Reads up to `limit` entries of `ledger` from `from` (default: the
    /// pinned First) through pin `pin`: never past the pinned head, and
    /// only from the incarnation the pin cut. `PinNotFound` for an expired
    /// or unknown pin, `NotInPin` for a ledger the pin does not hold,
    /// `PinnedLedgerGone` when the ledger was deleted (or deleted and
    /// created again) since the pin was taken, `BelowFirst` below the
    /// pinned First.
    pub async fn read_pinned(
        &self,
        pin: u64,
        ledger: &LedgerName,
        from: Option<EntryId>,
        limit: usize,
    ) -> Result<PinnedRead> {
        let ledger = ledger.clone();
        self.blocking(move |store| store.read_pinned_blocking(pin, &ledger, from, limit)).await
    }

    /// `read_pinned` for threads and tools.
    pub fn read_pinned_blocking(
        &self,
        pin: u64,
        ledger: &LedgerName,
        from: Option<EntryId>,
        limit: usize,
    ) -> Result<PinnedRead> {
        let shared = self.shared();
        let pinned = {
            let state = shared.pins.state.read().expect("pins lock");
            match state.pins.get(&pin) {
                Some(p) if p.live_at(now_ms()) => p.ledgers.get(ledger).copied(),
                _ => return Err(StoreError::PinNotFound(pin)),
            }
        };
        let pinned = pinned.ok_or_else(|| StoreError::NotInPin { pin, ledger: ledger.clone() })?;
        let gone = || StoreError::PinnedLedgerGone { pin, ledger: ledger.clone(), incarnation: pinned.incarnation };
        // The incarnation the pin cut, and still there: checked before the
        // read and again after it (a deletion may begin meanwhile).
        let current = || shared.ledger(ledger).filter(|s| s.incarnation == pinned.incarnation && !s.is_deleted());
        let state = current().ok_or_else(gone)?;
        let from = from.unwrap_or(pinned.first);
        if from < pinned.first {
            return Err(StoreError::BelowFirst { ledger: ledger.clone(), from, first: pinned.first });
        }
        // Never past the pinned head, whatever was appended since.
        let left = (pinned.head + 1).saturating_sub(from);
        let limit = limit.min(usize::try_from(left).unwrap_or(usize::MAX));
        let records = match shared.read_records(&state, from, limit) {
            Ok(records) => records,
            Err(StoreError::LedgerNotFound(_)) => return Err(gone()),
            // Retention pruned under the read: the pin expired meanwhile.
            Err(e @ StoreError::BelowFirst { .. }) => {
                let live =
                    shared.pins.state.read().expect("pins lock").pins.get(&pin).is_some_and(|p| p.live_at(now_ms()));
                return Err(if live { e } else { StoreError::PinNotFound(pin) });
            }
            Err(e) => return Err(e),
        };
        if current().is_none() {
            return Err(gone());
        }
        let now = now_ms();
        let entries: Vec<PinnedEntry> = records
            .into_iter()
            .map(|r| PinnedEntry {
                idempotency_key: r.idempotency_key.filter(|_| crate::import::is_live(r.ts, now)),
                entry: ferry_core::Entry {
                    ledger: ledger.clone(),
                    id: r.id,
                    ts: r.ts,
                    key: r.key,
                    hash: r.hash,
                    payload: ferry_core::Payload::from_stored_text(r.payload),
                },
            })
            .collect();
        let next = from + entries.len() as u64;
        Ok(PinnedRead { entries, next })
    }
}
