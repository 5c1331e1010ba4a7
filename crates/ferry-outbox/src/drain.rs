//! One source's task: connect, take the lock (or wait in standby), drain
//! batches until told to stop, and keep the status up to date.
//!
//! A batch runs in one source-database transaction on the connection
//! that holds the source's lock: select unexported rows `FOR UPDATE SKIP
//! LOCKED`, append them durably (each with the idempotency key
//! `outbox:{source}:{row id}`), mark them `exported_at`, commit; anything
//! else rolls back. Why that is exactly once: the crate's docs (`lib.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_core::events::SystemEvent;
use ferry_core::limits::{APPEND_BYTES_MAX, BATCH_ENTRIES_MAX, ENTRY_KEY_BYTES_MAX};
use ferry_core::metric_names as names;
use ferry_core::redact::redact_userinfo;
use ferry_core::{LedgerName, NewEntry, Payload};
use ferry_store::{Store, StoreError};
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::db::{Conn, Row, Statements};
use crate::settings::{Driver, LedgerFrom, SourceSettings};
use crate::status::{SourceState, SourceStatus};

/// Backoff after a connection or store error: doubling, with jitter.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A source failed on a row retries this often (someone may fix the row).
pub const FAILED_RETRY: Duration = Duration::from_secs(5);
/// The backlog is counted at most this often.
pub const BACKLOG_EVERY: Duration = Duration::from_secs(2);
/// A lost PostgreSQL listener is set up again at most this often (the
/// source polls meanwhile).
pub const RELISTEN_EVERY: Duration = Duration::from_secs(30);
/// Marked rows are purged at most this often.
pub const PURGE_EVERY: Duration = Duration::from_secs(60);
/// One append carries at most this many payload bytes.
const APPEND_CHUNK_BYTES: usize = APPEND_BYTES_MAX / 2;

/// Why a batch did not commit.
#[derive(Debug)]
enum BatchError {
    /// The database refused a statement or the connection broke.
    Db(sqlx::Error),
    /// The store refused the append (full, quota, poisoned, shutting down).
    Store(StoreError),
    /// The first row of the batch cannot be appended, and there is no
    /// dead-letter ledger.
    Row { id: i64, reason: String },
    /// A fail point.
    #[cfg_attr(not(feature = "failpoints"), allow(dead_code))]
    Injected(&'static str),
}

impl From<sqlx::Error> for BatchError {
    fn from(e: sqlx::Error) -> Self {
        BatchError::Db(e)
    }
}

/// What a committed batch did.
#[derive(Debug, Default)]
struct Outcome {
    drained: u64,
    dead_lettered: u64,
    /// More rows may be waiting: go again at once.
    more: bool,
}

/// How a lock session ended.
enum Ended {
    Stop,
    Db(sqlx::Error),
}

pub(crate) struct Drainer {
    store: Store,
    s: SourceSettings,
    st: Statements,
    status: Arc<Mutex<SourceStatus>>,
    stop: watch::Receiver<bool>,
    /// Failed or backing off since the last success (events on the edges).
    failing: bool,
    backoff: Duration,
    last_backlog: Option<Instant>,
    last_purge: Option<Instant>,
}

impl Drainer {
    pub(crate) fn new(
        store: Store,
        s: SourceSettings,
        status: Arc<Mutex<SourceStatus>>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let st = Statements::new(&s);
        Self {
            store,
            s,
            st,
            status,
            stop,
            failing: false,
            backoff: BACKOFF_INITIAL,
            last_backlog: None,
            last_purge: None,
        }
    }

    pub(crate) async fn run(mut self) {
        while !self.stopping() {
            let mut conn = match Conn::connect(&self.s, &self.st).await {
                Ok(conn) => conn,
                Err(e) => {
                    self.trouble(SourceState::BackingOff, format!("connecting: {e}"));
                    let wait = self.next_backoff();
                    self.pause(wait).await;
                    continue;
                }
            };
            match self.session(&mut conn).await {
                Ended::Stop => {
                    conn.close().await;
                    break;
                }
                Ended::Db(e) => {
                    // The connection (and with it the lock) is dropped.
                    drop(conn);
                    self.trouble(SourceState::BackingOff, e.to_string());
                    let wait = self.next_backoff();
                    self.pause(wait).await;
                }
            }
        }
        self.update(|st| {
            st.state = SourceState::Stopped;
            st.lock_holder = None;
        });
    }

    /// Waits for the lock, then drains until stopped or the connection fails.
    async fn session(&mut self, conn: &mut Conn) -> Ended {
        loop {
            match conn.try_lock(&self.st).await {
                Ok(true) => break,
                Ok(false) => {
                    let holder = match conn.lock_holder(&self.st).await {
                        Ok(h) => h,
                        Err(e) => return Ended::Db(e),
                    };
                    self.update(|st| {
                        st.state = SourceState::Standby;
                        st.lock_holder = holder;
                    });
                    if !self.pause(self.s.poll).await {
                        return Ended::Stop;
                    }
                }
                Err(e) => return Ended::Db(e),
            }
        }
        let holder = conn.lock_holder(&self.st).await.ok().flatten();
        tracing::info!(source = %self.s.name, "outbox source holds its lock; draining");
        self.update(|st| {
            st.state = SourceState::Running;
            st.lock_holder = holder;
        });
        let mut listener = self.listen().await;
        let mut listened = Instant::now();
        loop {
            if self.stopping() {
                return Ended::Stop;
            }
            if listener.is_none() && self.s.driver == Driver::Postgres && listened.elapsed() >= RELISTEN_EVERY {
                listener = self.listen().await;
                listened = Instant::now();
            }
            if let Err(e) = self.housekeeping(conn).await {
                return Ended::Db(e);
            }
            let wait = match self.batch(conn).await {
                Ok(outcome) => {
                    self.succeeded(&outcome);
                    if outcome.more {
                        continue;
                    }
                    self.s.poll
                }
                Err(BatchError::Db(e)) => return Ended::Db(e),
                Err(BatchError::Store(StoreError::ShuttingDown)) => return Ended::Stop,
                Err(BatchError::Store(e)) => {
                    self.trouble(SourceState::BackingOff, format!("appending to the store: {e}"));
                    self.next_backoff()
                }
                Err(BatchError::Row { id, reason }) => {
                    self.trouble(
                        SourceState::Failed,
                        format!("row {id}: {reason}; fix or remove the row, or set dead_letter"),
                    );
                    FAILED_RETRY
                }
                Err(BatchError::Injected(point)) => {
                    self.trouble(SourceState::BackingOff, format!("fail point {point}"));
                    self.next_backoff()
                }
            };
            if !self.wait(wait, &mut listener).await {
                return Ended::Stop;
            }
        }
    }

    /// PostgreSQL: a listener on the notify channel (its own connection).
    /// Without one (MySQL, or it failed) the source polls.
    async fn listen(&self) -> Option<PgListener> {
        if self.s.driver != Driver::Postgres {
            return None;
        }
        let attempt = async {
            let mut listener = PgListener::connect(&self.s.url).await?;
            listener.listen(self.s.notify_channel.as_str()).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        match attempt.await {
            Ok(l) => Some(l),
            Err(e) => {
                let error = redact_userinfo(&e.to_string());
                tracing::warn!(source = %self.s.name, error, "LISTEN failed; polling only");
                None
            }
        }
    }

    /// Sleeps `d`, or less if a notification comes; false when stopping.
    async fn wait(&mut self, d: Duration, listener: &mut Option<PgListener>) -> bool {
        let notified = async {
            match listener.as_mut() {
                Some(l) => l.recv().await.map(drop),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = self.stop.changed() => return false,
            _ = tokio::time::sleep(d) => {}
            r = notified => {
                if r.is_err() {
                    *listener = None;
                }
            }
        }
        if let Some(l) = listener.as_mut() {
            while l.next_buffered().is_some() {}
        }
        !self.stopping()
    }

    /// Sleeps `d` unless stopping; false when stopping.
    async fn pause(&mut self, d: Duration) -> bool {
        if self.stopping() {
            return false;
        }
        tokio::select! {
            _ = self.stop.changed() => false,
            _ = tokio::time::sleep(d) => !self.stopping(),
        }
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    fn next_backoff(&mut self) -> Duration {
        let base = self.backoff;
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        base.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// The backlog every few seconds, and the purge every minute.
    async fn housekeeping(&mut self, conn: &mut Conn) -> Result<(), sqlx::Error> {
        if let Some(older) = self.s.purge_after
            && self.last_purge.is_none_or(|t| t.elapsed() >= PURGE_EVERY)
        {
            let mut purged = 0;
            loop {
                let n = conn.purge_chunk(&self.st, older).await?;
                purged += n;
                if n < crate::db::PURGE_CHUNK || self.stopping() {
                    break;
                }
            }
            if purged > 0 {
                tracing::info!(source = %self.s.name, purged, "purged exported outbox rows");
            }
            self.last_purge = Some(Instant::now());
        }
        if self.last_backlog.is_none_or(|t| t.elapsed() >= BACKLOG_EVERY) {
            let (count, age) = conn.backlog(&self.st).await?;
            self.last_backlog = Some(Instant::now());
            metrics::gauge!(names::OUTBOX_BACKLOG_ROWS, names::LABEL_SOURCE => self.s.name.to_string())
                .set(count as f64);
            let stuck = match (self.s.max_lag, age) {
                (Some(max), Some(age)) => Duration::from_millis(age) > max,
                _ => false,
            };
            self.update(|st| {
                st.backlog = Some(count);
                st.oldest_pending_age_ms = if count == 0 { None } else { age };
                st.stuck = stuck;
            });
        }
        Ok(())
    }

    /// One batch in one transaction: committed, or rolled back.
    async fn batch(&mut self, conn: &mut Conn) -> Result<Outcome, BatchError> {
        conn.begin().await?;
        match self.batch_in_transaction(conn).await {
            Ok(outcome) => {
                conn.commit().await?;
                Ok(outcome)
            }
            Err(BatchError::Db(e)) => Err(BatchError::Db(e)),
            Err(e) => {
                conn.rollback().await?;
                Err(e)
            }
        }
    }

    async fn batch_in_transaction(&mut self, conn: &mut Conn) -> Result<Outcome, BatchError> {
        let rows = conn.select(&self.st, self.s.batch).await?;
        let fetched = rows.len();
        // Cut at batch_max_bytes of payload (at least one row).
        let mut bytes = 0u64;
        let mut take = 0;
        for row in &rows {
            let b = row.payload.as_ref().map_or(0, |p| p.len()) as u64;
            if take > 0 && bytes + b > self.s.batch_max_bytes {
                break;
            }
            bytes += b;
            take += 1;
        }
        let mut outcome = Outcome { more: fetched == self.s.batch || take < fetched, ..Outcome::default() };
        let mut groups: Vec<(LedgerName, Vec<NewEntry>)> = Vec::new();
        let mut index: HashMap<LedgerName, usize> = HashMap::new();
        let mut push = |ledger: LedgerName, entry: NewEntry| {
            let at = *index.entry(ledger.clone()).or_insert_with(|| {
                groups.push((ledger, Vec::new()));
                groups.len() - 1
            });
            groups[at].1.push(entry);
        };
        let mut ids = Vec::with_capacity(take);
        for row in rows.into_iter().take(take) {
            match self.entry(&row) {
                Ok((ledger, entry)) => {
                    push(ledger, entry);
                    outcome.drained += 1;
                }
                Err(reason) => match &self.s.dead_letter {
                    Some(dead_letter) => {
                        push(dead_letter.clone(), self.dead_entry(&row, &reason)?);
                        outcome.dead_lettered += 1;
                    }
                    // The rows before it are drained; the next batch starts
                    // with it and fails.
                    None if !ids.is_empty() => {
                        outcome.more = true;
                        break;
                    }
                    None => return Err(BatchError::Row { id: row.id, reason }),
                },
            }
            ids.push(row.id);
        }
        if ids.is_empty() {
            return Ok(outcome);
        }
        for (ledger, entries) in groups {
            for chunk in chunks(entries) {
                self.store.append(&ledger, chunk).await.map_err(BatchError::Store)?;
            }
        }
        fail::fail_point!("outbox::after_append", |_| Err(BatchError::Injected("outbox::after_append")));
        conn.mark(&self.st, &ids).await?;
        fail::fail_point!("outbox::before_commit", |_| Err(BatchError::Injected("outbox::before_commit")));
        Ok(outcome)
    }

    /// The row as an entry of its ledger, or why it cannot be one.
    fn entry(&self, row: &Row) -> Result<(LedgerName, NewEntry), String> {
        let ledger = match &self.s.ledger {
            LedgerFrom::Fixed(l) => l.clone(),
            LedgerFrom::Column(col) => match &row.ledger {
                None => return Err(format!("{col} is NULL: it must name the row's ledger")),
                Some(name) => {
                    LedgerName::parse(name).map_err(|e| format!("{col} {name:?} is not a ledger name: {e}"))?
                }
            },
        };
        if let Some(key) = &row.key
            && key.len() > ENTRY_KEY_BYTES_MAX
        {
            return Err(format!("key is {} bytes; the limit is {ENTRY_KEY_BYTES_MAX}", key.len()));
        }
        let text = row.payload.as_deref().ok_or_else(|| format!("{} is NULL", self.s.columns.payload))?;
        let payload = Payload::from_json(text).map_err(|e| e.to_string())?;
        let max = self.store.max_entry_bytes();
        if payload.len() > max {
            return Err(format!("payload is {} bytes; the limit (max_entry_bytes) is {max}", payload.len()));
        }
        let entry = NewEntry { key: row.key.clone(), idempotency_key: Some(self.s.idempotency_key(row.id)), payload };
        Ok((ledger, entry))
    }

    /// The dead-letter entry of a row that cannot be appended.
    fn dead_entry(&self, row: &Row, reason: &str) -> Result<NewEntry, BatchError> {
        // Escaping may grow text up to six times: keep the entry under the limit.
        let keep = self.store.max_entry_bytes() / 8;
        let text = row.payload.as_deref().map(|t| {
            let mut end = t.len().min(keep);
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            &t[..end]
        });
        let truncated = row.payload.as_ref().is_some_and(|t| t.len() > keep);
        let mut value = serde_json::json!({
            "source": self.s.name.as_str(),
            "row_id": row.id,
            "reason": reason,
            "payload_text": text,
        });
        if truncated {
            value["payload_truncated"] = true.into();
        }
        let payload = Payload::from_json(&value.to_string())
            .map_err(|e| BatchError::Row { id: row.id, reason: format!("{reason}; its dead-letter entry: {e}") })?;
        Ok(NewEntry { key: None, idempotency_key: Some(format!("outbox:{}:{}:dead", self.s.name, row.id)), payload })
    }

    fn succeeded(&mut self, outcome: &Outcome) {
        self.backoff = BACKOFF_INITIAL;
        let name = self.s.name.to_string();
        if outcome.drained > 0 {
            metrics::counter!(names::OUTBOX_ROWS_TOTAL, names::LABEL_SOURCE => name.clone()).increment(outcome.drained);
        }
        if outcome.dead_lettered > 0 {
            metrics::counter!(names::OUTBOX_DEAD_LETTERED_TOTAL, names::LABEL_SOURCE => name.clone())
                .increment(outcome.dead_lettered);
        }
        self.update(|st| {
            st.state = SourceState::Running;
            st.drained += outcome.drained;
            st.dead_lettered += outcome.dead_lettered;
            st.last_error = None;
            if outcome.drained + outcome.dead_lettered > 0 {
                st.last_success_at = Some(ferry_core::now_ms());
            }
        });
        if self.failing {
            self.failing = false;
            tracing::info!(source = %name, "outbox source recovered");
            let event = SystemEvent::new("source.recovered", &name, serde_json::json!({}));
            self.store.events().publish(&event.key, &event);
        }
    }

    /// Records a failure (redacted), and publishes `source.failed` on the
    /// first one since the last success.
    fn trouble(&mut self, state: SourceState, error: String) {
        let error = redact_userinfo(&error);
        let name = self.s.name.to_string();
        metrics::counter!(names::OUTBOX_ERRORS_TOTAL, names::LABEL_SOURCE => name.clone()).increment(1);
        tracing::warn!(source = %name, error, state = ?state, "outbox source failing");
        self.update(|st| {
            st.state = state;
            st.last_error = Some(error.clone());
        });
        if !self.failing {
            self.failing = true;
            let kind = if state == SourceState::Failed { "failed" } else { "backing_off" };
            let event = SystemEvent::new("source.failed", &name, serde_json::json!({ "error": error, "state": kind }));
            self.store.events().publish(&event.key, &event);
        }
    }

    fn update(&self, f: impl FnOnce(&mut SourceStatus)) {
        let mut st = self.status.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut st);
    }
}

/// Splits a ledger's entries into appends the store takes (count and bytes).
fn chunks(entries: Vec<NewEntry>) -> Vec<Vec<NewEntry>> {
    let mut out = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let b = entry.payload.len() + entry.key.as_ref().map_or(0, String::len) + 128;
        if !current.is_empty() && (current.len() == BATCH_ENTRIES_MAX || bytes + b > APPEND_CHUNK_BYTES) {
            out.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += b;
        current.push(entry);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}
