//! The `Sink` trait: what a destination driver promises the runtime, and
//! what the runtime promises it.
//!
//! # Contract
//!
//! - The runtime calls [`Sink::prepare`] for a ledger before its first
//!   delivery in this process, and again after any failed, cancelled or
//!   abandoned delivery and after a reset, passing the durable cursor (the
//!   last id the sink acknowledged, 0 for none). A sink that keeps state at
//!   the destination (the file sink) cuts it back to the cursor here.
//! - A sink that keeps its own durable position at the destination (a
//!   cursor row written in the batch's transaction, the last message on a
//!   subject) answers [`Prepared::DestinationThrough`]: the runtime writes
//!   that id as the cursor and goes on after it. Above the cursor it is an
//!   acknowledgement a crash lost; below it the destination was restored
//!   from an older copy, and it wins (with a warning): the entries it lacks
//!   are sent again. Past the ledger's head it is refused (the destination
//!   holds what this ledger never had). Such a sink must name only ids it
//!   holds, of this incarnation.
//! - [`Sink::deliver`] gets one batch of consecutive entries of one ledger,
//!   starting right after the cursor. At most one batch per (exporter,
//!   ledger) is in flight at a time; batches of different ledgers may be.
//! - `Ok(Ack { through })` means every entry up to `through` (the last id of
//!   the batch, or fewer) is durable at the destination: the runtime writes
//!   `through` as the cursor and never sends those entries again unless a
//!   reset asks for it. A sink must not acknowledge before that point.
//! - `Err(SinkError::Retryable)` means nothing of the batch may be assumed
//!   delivered; the runtime backs off (at least `retry_after` when given)
//!   and sends the same batch again (the same entries, however many were
//!   appended meanwhile). Any part that did arrive arrives again: the
//!   sink's dedup (see `docs/sinks.md`) makes that harmless.
//! - `Err(SinkError::Permanent)` means retrying the same batch will fail the
//!   same way (bad request, schema mismatch). The runtime dead-letters the
//!   batch when the exporter has a `dead_letter` ledger, and otherwise stops
//!   the ledger in the `failed` state until it is resumed or reset.
//!
//! # Cancel safety
//!
//! `deliver` and `prepare` futures may be dropped at any await point (at
//! shutdown, pause-for-reset, or ledger deletion). A dropped delivery counts
//! as unacknowledged, and the runtime calls `prepare` before the next one,
//! so a sink must only ensure that state left by a dropped future is either
//! harmless to repeat or undone by `prepare`.
//!
//! # Secrets
//!
//! An error's message is shown in exporter status, events, logs and
//! dead-letter entries: it must not carry a URL's userinfo, a password, a
//! token or a configured header value. [`Sink::secrets`] names the values
//! to remove; the runtime removes them (and userinfo) again as a backstop.

use std::future::Future;
use std::time::Duration;

use ferry_core::{Entry, EntryId, LedgerName};

use crate::redact::Secrets;

/// Consecutive entries of one ledger, first id right after the cursor.
#[derive(Debug, Clone)]
pub struct Batch {
    pub exporter: LedgerName,
    pub ledger: LedgerName,
    /// The ledger's incarnation: durable and never reused for the name, so
    /// a ledger deleted and created again (ids from 1 again) has another.
    pub incarnation: u64,
    /// Never empty; ids consecutive.
    pub entries: Vec<Entry>,
}

impl Batch {
    pub fn first_id(&self) -> EntryId {
        self.entries.first().map_or(0, |e| e.id)
    }

    pub fn last_id(&self) -> EntryId {
        self.entries.last().map_or(0, |e| e.id)
    }

    /// `{exporter}/{ledger}/{incarnation}/{first_id}-{last_id}`: names this
    /// batch the same way on every retry (a retry sends the same ids), and
    /// never a batch of another ledger that had the name, for receivers
    /// that deduplicate.
    pub fn idempotency_key(&self) -> String {
        let (exporter, ledger, incarnation) = (&self.exporter, &self.ledger, self.incarnation);
        format!("{exporter}/{ledger}/{incarnation}/{}-{}", self.first_id(), self.last_id())
    }
}

/// Which ledger, of which exporter, a `prepare` or `check` is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub exporter: LedgerName,
    pub ledger: LedgerName,
    /// The ledger's incarnation (see [`Batch::incarnation`]).
    pub incarnation: u64,
}

/// What `prepare` found at the destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// The destination agrees with the runtime's cursor, or keeps no
    /// position of its own: deliveries go on after the cursor.
    Cursor,
    /// The destination durably holds this incarnation's entries through
    /// this id (0: none): deliveries go on after it, whatever the cursor.
    DestinationThrough(EntryId),
}

/// Where the ledger starts in the store, for the range check: its First,
/// and the chain hash of the entry before First (`first_prev_hash`: the
/// chain's `h_0` while First is 1; `None` for a ledger without a chain).
/// The row at First must chain from `prev_hash`; rows below First (pruned
/// in the store since) chain among themselves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainStart {
    pub first: EntryId,
    pub prev_hash: Option<[u8; 32]>,
}

impl ChainStart {
    /// A ledger without a chain: only the counts are checked.
    pub fn unchained(first: EntryId) -> Self {
        Self { first, prev_hash: None }
    }
}

/// The hash chain recomputed over what a destination holds of a chained
/// ledger, in id order (`crate::check::ChainWalk`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum ChainCheck {
    /// Every row held chains from the one before it (the row at First from
    /// the store's hash before First).
    Intact {
        /// Rows walked.
        rows: u64,
    },
    /// The first id where the chain breaks: a row changed there, a row
    /// missing there, or a row without a hash or with another hash.
    Broken {
        #[schema(value_type = u64)]
        id: EntryId,
        /// A sentence: what was found at `id`.
        reason: String,
    },
    /// The destination does not keep what the chain hashed (a PostgreSQL
    /// `jsonb` payload column): not a fault, said in the report's notes.
    Uncheckable {
        /// A sentence: why, and what to change to have it checked.
        why: String,
    },
}

/// What a destination holds of one ledger's incarnation, as the sink
/// counts it in its exactly-once view (after dedup: `FINAL` for
/// ClickHouse), for the range check. `first..=cursor` is what it should
/// hold exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Holding {
    /// Rows (lines, messages) with ids in `first..=cursor`, repeats counted.
    pub in_range: u64,
    /// Distinct ids in `first..=cursor`.
    pub distinct: u64,
    /// Rows with ids below `first` (exported, then pruned by retention).
    pub below_first: u64,
    /// Rows with ids above `cursor` (delivered, not yet acknowledged).
    pub above_cursor: u64,
    /// The least and greatest id held, at all.
    #[schema(value_type = Option<u64>)]
    pub min: Option<EntryId>,
    #[schema(value_type = Option<u64>)]
    pub max: Option<EntryId>,
    /// The hash chain recomputed over the rows held; `None` for a ledger
    /// without a chain, or a sink that does not walk its rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<ChainCheck>,
}

/// A sink's acknowledgement: entries up to `through` are durable there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    pub through: EntryId,
}

/// Why a delivery (or `prepare`) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Transient: try again later (at least `retry_after` later when set).
    #[error("{message}")]
    Retryable { message: String, retry_after: Option<Duration> },
    /// The same batch will keep failing.
    #[error("{message}")]
    Permanent { message: String },
}

impl SinkError {
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable { message: message.into(), retry_after: None }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent { message: message.into() }
    }

    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent { .. })
    }

    /// The same error with its message run through [`Secrets::redact`].
    pub fn redacted(self, secrets: &Secrets) -> Self {
        match self {
            Self::Retryable { message, retry_after } => {
                Self::Retryable { message: secrets.redact(&message), retry_after }
            }
            Self::Permanent { message } => Self::Permanent { message: secrets.redact(&message) },
        }
    }
}

/// A destination driver. See the module documentation for the contract.
pub trait Sink: Send + Sync + 'static {
    /// Makes the destination's view of the ledger agree with `cursor`
    /// before deliveries (re)start, or reports the destination's own
    /// position.
    fn prepare(&self, target: &Target, cursor: EntryId) -> impl Future<Output = Result<Prepared, SinkError>> + Send;

    /// Delivers one batch; `Ok` only once it is durable at the destination.
    fn deliver(&self, batch: &Batch) -> impl Future<Output = Result<Ack, SinkError>> + Send;

    /// The configured values this sink's errors must never show (passwords,
    /// tokens, header values). A sink redacts its own messages; the runtime
    /// also removes these, and any URL userinfo, from every error before it
    /// reaches status, events, logs or a dead-letter entry.
    fn secrets(&self) -> Secrets {
        Secrets::default()
    }

    /// True for a sink whose `prepare` can answer
    /// [`Prepared::DestinationThrough`]: the runtime then prepares each
    /// ledger once at start even when nothing waits, so a destination
    /// restored from an older copy is refilled without waiting for the
    /// next append.
    fn keeps_position(&self) -> bool {
        false
    }

    /// Counts what the destination holds of the ledger (the range check):
    /// the ids around `start.first..=cursor`, and, for a chained ledger
    /// (`start.prev_hash` set) of a sink that can read its rows back in id
    /// order, the chain recomputed over them (`Holding::chain`, walked
    /// with `crate::check::ChainWalk`, streamed: never every row in
    /// memory). `None`: this sink cannot be asked (stdout, a webhook).
    fn check(
        &self,
        target: &Target,
        start: &ChainStart,
        cursor: EntryId,
    ) -> impl Future<Output = Result<Option<Holding>, SinkError>> + Send {
        let _ = (target, start, cursor);
        async { Ok(None) }
    }
}
