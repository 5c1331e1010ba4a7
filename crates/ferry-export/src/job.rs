//! One unit of exporter work, run as its own task: deliver the batch after
//! a cursor, or move a failed batch to the dead-letter ledger. A job reads
//! from the store, talks to the sink, and writes the cursor only after the
//! sink's acknowledgement; it reports an `Outcome` and decides nothing.

use std::sync::Arc;

use ferry_core::limits::BATCH_ENTRIES_MAX;
use ferry_core::{Entry, EntryId, LedgerName, NewEntry, Payload};
use ferry_store::{CursorUpdate, Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::cursors;
use crate::machine::Outcome;
use crate::settings::BatchPolicy;
use crate::sink::{Ack, Batch, Prepared, Sink, SinkError, Target};

/// Bytes of JSON an entry adds to a batch beyond its payload and key.
const ENTRY_JSON_OVERHEAD_BYTES: usize = 64;
/// Dead-letter entries go out in appends of at most this many bytes.
const DEAD_LETTER_APPEND_BYTES_MAX: usize = 8 * 1024 * 1024;

pub(crate) struct Job<S> {
    pub store: Store,
    pub sink: Arc<S>,
    pub exporter: LedgerName,
    pub ledger: LedgerName,
    /// The ledger's incarnation: reads must be of it, and batch keys and
    /// dead-letter idempotency keys name it.
    pub incarnation: u64,
    pub batch: BatchPolicy,
    pub dead_letter: Option<LedgerName>,
    pub cancel: CancellationToken,
    /// The ledger's head when the job started.
    pub head: EntryId,
    /// Entries read ahead by the previous delivery, used when they start
    /// right after the cursor.
    pub prefetched: Option<Vec<Entry>>,
    /// Whether to read the next batch while the sink works on this one.
    pub read_ahead: bool,
}

/// How a job ended, how many entries it moved, and the entries after them
/// when it read ahead.
pub(crate) struct Done {
    pub outcome: Outcome,
    pub entries: u64,
    pub prefetched: Option<Vec<Entry>>,
    /// The first entry's (id, ts) of the batch this job read: what tells
    /// the age of the oldest unexported entry (`age.rs`).
    pub first_read: Option<(EntryId, u64)>,
}

impl Done {
    fn only(outcome: Outcome) -> Self {
        Self { outcome, entries: 0, prefetched: None, first_read: None }
    }
}

impl<S: Sink> Job<S> {
    /// Prepares the sink if asked, forms the batch after `cursor` (exactly
    /// `cursor + 1..=resend_to` when the sink was given that batch and did
    /// not acknowledge it), writes its range durably when the cursor alone
    /// would not form it again (`pin`), delivers it while reading the next
    /// batch ahead, and writes the acknowledged cursor.
    pub async fn deliver(mut self, cursor: EntryId, prepare: bool, resend_to: Option<EntryId>) -> Done {
        let from = cursor + 1;
        if prepare {
            let target =
                Target { exporter: self.exporter.clone(), ledger: self.ledger.clone(), incarnation: self.incarnation };
            let prepared = tokio::select! {
                r = self.sink.prepare(&target, cursor) => r,
                () = self.cancel.cancelled() => return Done::only(Outcome::Cancelled { sent_to: None }),
            };
            match prepared {
                Ok(Prepared::Cursor) => {}
                Ok(Prepared::DestinationThrough(id)) if id == cursor => {}
                Ok(Prepared::DestinationThrough(id)) => return self.resume(cursor, id, resend_to).await,
                Err(error) => return not_sent(from, error),
            }
        }
        if from > self.head {
            // A probe of the destination's position (or a retry of one):
            // prepared, and nothing to send.
            return Done::only(Outcome::Resumed { cursor });
        }
        let (entries, rest) = match self.batch(from, resend_to).await {
            Ok(batch) => batch,
            Err(done) => return done,
        };
        let first_read = entries.first().map(|e| (e.id, e.ts));
        let with_read = |mut done: Done| {
            done.first_read = first_read;
            done
        };
        let to = entries.last().map_or(from, |e| e.id);
        if let Err(done) = self.pin(cursor, to, &entries, &rest, resend_to).await {
            return with_read(done);
        }
        // Read the next batch while the sink works: reading and delivering
        // overlap, and the next job starts with its entries in hand. Only
        // while the supervisor's budget of held batches allows.
        let ahead = match rest {
            _ if !self.read_ahead => Ahead::None,
            Some(rest) => Ahead::Ready(rest),
            None if self.head > to => Ahead::Reading(self.spawn_read(to + 1)),
            None => Ahead::None,
        };
        let batch = Batch {
            exporter: self.exporter.clone(),
            ledger: self.ledger.clone(),
            incarnation: self.incarnation,
            entries,
        };
        let acked = tokio::select! {
            r = self.sink.deliver(&batch) => r,
            // The batch may have arrived: it is the one to send again.
            () = self.cancel.cancelled() => return Done::only(Outcome::Cancelled { sent_to: Some(to) }),
        };
        // From here on the sink has had the batch: a failure sends it again
        // as it is.
        let sent = |error| with_read(Done::only(Outcome::Failed { from, to, error, sent: true }));
        let through = match acked {
            Ok(Ack { through }) if through > cursor && through <= to => through,
            Ok(Ack { through }) => {
                let message = format!("the sink acknowledged id {through}, outside the batch {from}..={to}");
                return sent(SinkError::retryable(message));
            }
            Err(error) => return sent(error),
        };
        match self.commit(through).await {
            Ok(()) => {
                // After a partial acknowledgement the entries read ahead do
                // not follow the cursor.
                let prefetched = if through == to { ahead.take().await } else { None };
                Done { outcome: Outcome::Delivered { through }, entries: through - cursor, prefetched, first_read }
            }
            Err(StoreError::LedgerNotFound(_)) => Done::only(Outcome::Gone),
            Err(e) => sent(store_error("write the cursor", &e)),
        }
    }

    /// Before a batch the head cut short goes out, writes its range to the
    /// cursor record (`sent_to`, one synced catalog commit), so that after a
    /// crash the next process sends exactly it again rather than a longer
    /// batch from the same id under another key. A batch of `max_entries`,
    /// or one `max_bytes` cut (entries were left over), is a function of the
    /// durable cursor and needs none. A batch sent again writes it again
    /// when it is short (it cannot tell a `max_bytes` cut from a head cut
    /// without another read): an earlier write may have failed, and only a
    /// range that is durable may be sent.
    ///
    /// A failed write ends the job before the sink has the batch, but pins
    /// it (`sent: true`): the commit may have reached the disk, and the next
    /// attempt must not send another batch from the same id while the
    /// record may name this one.
    async fn pin(
        &self,
        cursor: EntryId,
        to: EntryId,
        entries: &[Entry],
        rest: &Rest,
        resend_to: Option<EntryId>,
    ) -> Result<(), Done> {
        let reproducible = entries.len() >= self.batch.max_entries || (resend_to.is_none() && rest.is_some());
        if reproducible {
            return Ok(());
        }
        let update = CursorUpdate::Set {
            exporter: self.exporter.clone(),
            ledger: self.ledger.clone(),
            incarnation: self.incarnation,
            id: cursor,
            sent_to: Some(to),
        };
        match cursors::commit(&self.store, vec![update]).await {
            Ok(()) => Ok(()),
            Err(StoreError::LedgerNotFound(_)) => Err(Done::only(Outcome::Gone)),
            Err(e) => {
                let error = store_error("write the range of the batch before sending it", &e);
                Err(Done::only(Outcome::Failed { from: cursor + 1, to, error, sent: true }))
            }
        }
    }

    /// The entries of the batch from `from`, and those after it that the
    /// byte limit left out; or how the job ends when there is none.
    async fn batch(&mut self, from: EntryId, resend_to: Option<EntryId>) -> Result<(Vec<Entry>, Rest), Done> {
        let read = match resend_to {
            Some(to) => self.read(from, (to + 1 - from) as usize).await.map(|entries| (entries, None)),
            None => self.form(from).await,
        };
        let (entries, rest) = match read {
            Ok(read) => read,
            Err(StoreError::BelowFirst { first, .. }) => return Err(self.skip(first - 1).await),
            Err(StoreError::LedgerNotFound(_)) => return Err(Done::only(Outcome::Gone)),
            Err(e) if is_damage(&e) => return Err(Done::only(Outcome::Unreadable { error: format!("read: {e}") })),
            Err(e) => return Err(not_sent(from, store_error("read", &e))),
        };
        match (entries.last().map(|e| e.id), resend_to) {
            (None, _) => Err(not_sent(from, SinkError::retryable("read returned nothing"))),
            (Some(last), Some(to)) if last != to => {
                let message = format!("the batch {from}..={to} to send again read back as {from}..={last}");
                Err(not_sent(from, SinkError::retryable(message)))
            }
            _ => Ok((entries, rest)),
        }
    }

    /// A new batch from `from`: `max_entries` entries, or fewer when
    /// `max_bytes` cuts it first, or fewer still only when the ledger had no
    /// more. A batch that the head did not cut short is so a function of
    /// the cursor and the (immutable) entries: a process restarted at the
    /// same cursor forms the same batch. Entries read ahead stop where the
    /// head was when they were read, so they are topped up first.
    async fn form(&mut self, from: EntryId) -> Result<(Vec<Entry>, Rest), StoreError> {
        let entries = match self.prefetched.take().filter(|p| p.first().map(|e| e.id) == Some(from)) {
            Some(entries) => self.top_up(entries).await?,
            None => self.read(from, self.batch.max_entries).await?,
        };
        Ok(trim(entries, self.batch.max_bytes))
    }

    /// Entries read ahead, extended to what a read from their first id would
    /// return now: up to `max_entries`, while they fit in `max_bytes` and
    /// the head is beyond them.
    async fn top_up(&self, mut entries: Vec<Entry>) -> Result<Vec<Entry>, StoreError> {
        let last = entries.last().map_or(0, |e| e.id);
        let room = self.batch.max_entries.saturating_sub(entries.len());
        let fits = entries.iter().map(json_bytes).sum::<usize>() <= self.batch.max_bytes;
        if room > 0 && fits && self.head > last {
            entries.extend(self.read(last + 1, room).await?);
        }
        Ok(entries)
    }

    fn spawn_read(&self, from: EntryId) -> tokio::task::JoinHandle<Result<Vec<Entry>, StoreError>> {
        let (store, ledger, limit) = (self.store.clone(), self.ledger.clone(), self.batch.max_entries);
        let incarnation = self.incarnation;
        tokio::spawn(async move { read_incarnation(&store, &ledger, incarnation, from, limit).await })
    }

    /// Appends ids `from..=to` to the dead-letter ledger, each with the
    /// error, then moves the cursor to `to`. Each dead-letter entry carries
    /// the idempotency key `{exporter}/{ledger}/{incarnation}/{id}`, so a
    /// crash between the append and the cursor write does not record an
    /// entry twice, and a later ledger of the same name (a new incarnation;
    /// `created_at` could be the same) is not mistaken for this one.
    pub async fn dead_letter(self, from: EntryId, to: EntryId, error: String) -> Done {
        let Some(dead_letter) = self.dead_letter.clone() else {
            return Done::only(Outcome::Failed {
                from,
                to,
                error: SinkError::permanent("no dead-letter ledger"),
                sent: false,
            });
        };
        let mut id = from;
        while id <= to {
            let want = ((to - id + 1) as usize).min(BATCH_ENTRIES_MAX);
            let entries = match self.read(id, want).await {
                Ok(e) if !e.is_empty() => e,
                Ok(_) => break,
                Err(e) if is_damage(&e) => return Done::only(Outcome::Unreadable { error: format!("read: {e}") }),
                Err(e) => return Done::only(Outcome::Failed { from, to, error: store_error("read", &e), sent: false }),
            };
            let last = entries.last().map_or(id, |e| e.id);
            let records: Vec<NewEntry> = entries.iter().map(|e| self.dead_letter_entry(e, &error)).collect();
            for chunk in chunk_by_bytes(records, DEAD_LETTER_APPEND_BYTES_MAX) {
                let appended = tokio::select! {
                    r = self.store.append(&dead_letter, chunk) => r,
                    () = self.cancel.cancelled() => return Done::only(Outcome::Cancelled { sent_to: None }),
                };
                if let Err(e) = appended {
                    return Done::only(Outcome::Failed {
                        from,
                        to,
                        error: store_error("append to the dead-letter ledger", &e),
                        sent: false,
                    });
                }
            }
            id = last + 1;
        }
        match self.commit(to).await {
            Ok(()) => Done {
                outcome: Outcome::DeadLettered { through: to },
                entries: to + 1 - from,
                prefetched: None,
                first_read: None,
            },
            Err(StoreError::LedgerNotFound(_)) => Done::only(Outcome::Gone),
            Err(e) => Done::only(Outcome::Failed { from, to, error: store_error("write the cursor", &e), sent: false }),
        }
    }

    fn dead_letter_entry(&self, entry: &Entry, error: &str) -> NewEntry {
        let mut record = serde_json::json!({
            "exporter": self.exporter,
            "ledger": self.ledger,
            "id": entry.id,
            "ts": entry.ts,
            "error": error,
        });
        if let Some(key) = &entry.key {
            record["key"] = key.as_str().into();
        }
        let mut text = record.to_string();
        // `{…,"payload":<payload>}` unless that would exceed the entry limit.
        if text.len() + entry.payload.len() + 12 <= self.store.max_entry_bytes() {
            text.pop();
            text.push_str(r#","payload":"#);
            text.push_str(entry.payload.as_str());
            text.push('}');
        } else {
            text.pop();
            text.push_str(r#","payload_omitted":true}"#);
        }
        NewEntry {
            key: Some(format!("{}/{}", self.exporter, self.ledger)),
            idempotency_key: Some(format!("{}/{}/{}/{}", self.exporter, self.ledger, self.incarnation, entry.id)),
            // Compact JSON built from serde_json's output and a stored
            // payload, which may predate the rule for what ferry takes in
            // (issue #13 item 10): kept as stored, not checked again.
            payload: Payload::from_stored_text(text),
        }
    }

    /// The destination keeps its own position and it is not the cursor:
    /// writes it as the cursor (the destination is the truth of what it
    /// holds) and ends the job; the next one delivers after it. A batch the
    /// sink was given and did not acknowledge stays named in the record
    /// while the destination holds only part of it.
    async fn resume(&self, cursor: EntryId, id: EntryId, resend_to: Option<EntryId>) -> Done {
        let (exporter, ledger) = (self.exporter.as_str(), self.ledger.as_str());
        if id > self.head {
            let message = format!(
                "the destination holds ids of this ledger through {id}, past its head {}: it was written by \
                 something else (another data directory, or a ledger of the same name deleted and created \
                 again there); clear it or reset the exporter",
                self.head
            );
            return not_sent(cursor + 1, SinkError::permanent(message));
        }
        if id < cursor {
            tracing::warn!(
                exporter,
                ledger,
                cursor,
                destination = id,
                "the destination holds fewer entries than the cursor says (restored from an older copy?): sending again from after what it holds"
            );
        } else {
            tracing::info!(
                exporter,
                ledger,
                cursor,
                destination = id,
                "the destination already holds entries past the cursor (an acknowledgement lost to a stop): going on after them"
            );
        }
        let sent_to = resend_to.filter(|to| *to > id);
        let update = CursorUpdate::Set {
            exporter: self.exporter.clone(),
            ledger: self.ledger.clone(),
            incarnation: self.incarnation,
            id,
            sent_to,
        };
        match cursors::commit(&self.store, vec![update]).await {
            Ok(()) => Done::only(Outcome::Resumed { cursor: id }),
            Err(StoreError::LedgerNotFound(_)) => Done::only(Outcome::Gone),
            Err(e) => not_sent(cursor + 1, store_error("write the destination's position as the cursor", &e)),
        }
    }

    /// Entries up to `to` were pruned before they could be exported (only
    /// possible with `respect_exporters = false`): record the jump.
    async fn skip(&self, to: EntryId) -> Done {
        match self.commit(to).await {
            Ok(()) => Done::only(Outcome::Skipped { to }),
            Err(StoreError::LedgerNotFound(_)) => Done::only(Outcome::Gone),
            Err(e) => {
                Done::only(Outcome::Failed { from: to, to, error: store_error("write the cursor", &e), sent: false })
            }
        }
    }

    async fn read(&self, from: EntryId, limit: usize) -> Result<Vec<Entry>, StoreError> {
        read_incarnation(&self.store, &self.ledger, self.incarnation, from, limit).await
    }

    /// Writes this ledger's cursor durably through the one cursor writer;
    /// the record's `sent_to` goes with it (the batch it named is
    /// acknowledged, dead-lettered or pruned).
    async fn commit(&self, id: EntryId) -> Result<(), StoreError> {
        let update = CursorUpdate::Set {
            exporter: self.exporter.clone(),
            ledger: self.ledger.clone(),
            incarnation: self.incarnation,
            id,
            sent_to: None,
        };
        cursors::commit(&self.store, vec![update]).await
    }
}

/// Entries after a batch that its byte limit left out.
type Rest = Option<Vec<Entry>>;

/// A job that ends before the sink was given a batch: the next attempt
/// forms the batch again (or sends again the one it was given before).
fn not_sent(from: EntryId, error: SinkError) -> Done {
    Done::only(Outcome::Failed { from, to: from, error, sent: false })
}

/// The batch after the one being delivered.
enum Ahead {
    None,
    /// Entries the byte limit left out of this batch.
    Ready(Vec<Entry>),
    Reading(tokio::task::JoinHandle<Result<Vec<Entry>, StoreError>>),
}

impl Ahead {
    /// The entries, if there are any and the read worked (a failed read
    /// ahead is simply done again by the next job).
    async fn take(self) -> Option<Vec<Entry>> {
        match self {
            Ahead::None => None,
            Ahead::Ready(entries) => Some(entries),
            Ahead::Reading(read) => read.await.ok()?.ok().filter(|e| !e.is_empty()),
        }
    }
}

/// Damaged storage: reading again will not help.
fn is_damage(e: &StoreError) -> bool {
    matches!(e, StoreError::CorruptedPack { .. } | StoreError::Corrupted { .. } | StoreError::MissingEntries { .. })
}

fn store_error(what: &str, e: &StoreError) -> SinkError {
    SinkError::retryable(format!("{what}: {e}"))
}

/// What an entry counts for against `max_bytes`: about its JSON form.
fn json_bytes(e: &Entry) -> usize {
    e.payload.len() + e.key.as_ref().map_or(0, String::len) + ENTRY_JSON_OVERHEAD_BYTES
}

/// Splits off the leading entries whose JSON fits in `max_bytes` (at least
/// one); the rest, if any, is the start of the next batch.
fn trim(mut entries: Vec<Entry>, max_bytes: usize) -> (Vec<Entry>, Rest) {
    let mut bytes = 0;
    let keep = entries
        .iter()
        .take_while(|e| {
            bytes += json_bytes(e);
            bytes <= max_bytes
        })
        .count()
        .max(1);
    let rest = (keep < entries.len()).then(|| entries.split_off(keep));
    (entries, rest)
}

/// Splits entries into appends of at most `max_bytes` of payload (at least
/// one entry each) and `BATCH_ENTRIES_MAX` entries.
fn chunk_by_bytes(entries: Vec<NewEntry>, max_bytes: usize) -> Vec<Vec<NewEntry>> {
    let mut out: Vec<Vec<NewEntry>> = Vec::new();
    let mut bytes = 0;
    for e in entries {
        let size = e.payload.len();
        match out.last_mut() {
            Some(last) if bytes + size <= max_bytes && last.len() < BATCH_ENTRIES_MAX => {
                bytes += size;
                last.push(e);
            }
            _ => {
                bytes = size;
                out.push(vec![e]);
            }
        }
    }
    out
}

/// Reads entries of the incarnation the cursor belongs to: when the name
/// now holds another ledger (deleted and created again), its entries are
/// not this cursor's to deliver, and the ledger this job follows is gone.
async fn read_incarnation(
    store: &Store,
    ledger: &LedgerName,
    incarnation: u64,
    from: EntryId,
    limit: usize,
) -> Result<Vec<Entry>, StoreError> {
    let batch = store.read(ledger, Some(from), limit).await?;
    if batch.incarnation != incarnation {
        return Err(StoreError::LedgerNotFound(ledger.clone()));
    }
    Ok(batch.entries)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    use super::*;

    fn entry(id: EntryId, payload_bytes: usize) -> Entry {
        Entry {
            ledger: LedgerName::parse("l").unwrap(),
            id,
            ts: 1,
            key: None,
            hash: None,
            payload: Payload::from_json(&format!("\"{}\"", "x".repeat(payload_bytes))).unwrap(),
        }
    }

    #[test]
    fn trim_keeps_at_least_one_entry_and_stops_at_max_bytes() {
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 100)).collect();
        let (kept, rest) = trim(entries.clone(), 1);
        assert_eq!((kept.len(), rest.map(|r| r[0].id)), (1, Some(2)));
        assert_eq!(trim(entries.clone(), 3 * (102 + ENTRY_JSON_OVERHEAD_BYTES)).0.len(), 3);
        let (kept, rest) = trim(entries, usize::MAX);
        assert_eq!((kept.len(), rest.is_none()), (10, true));
    }

    #[test]
    fn chunks_respect_bytes_and_never_come_out_empty() {
        let e = |n: usize| NewEntry { key: None, idempotency_key: None, payload: entry(1, n).payload };
        let chunks = chunk_by_bytes(vec![e(10), e(10), e(100), e(5)], 30);
        let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![2, 1, 1]);
    }

    /// A sink that records every batch it is given.
    #[derive(Default)]
    struct Recording(std::sync::Mutex<Vec<Vec<EntryId>>>);

    impl Sink for Recording {
        async fn prepare(&self, _: &Target, _: EntryId) -> Result<Prepared, SinkError> {
            Ok(Prepared::Cursor)
        }
        async fn deliver(&self, batch: &Batch) -> Result<Ack, SinkError> {
            self.0.lock().unwrap().push(batch.entries.iter().map(|e| e.id).collect());
            Ok(Ack { through: batch.last_id() })
        }
    }

    /// A store holding ids 1..=n of ledger `audit`.
    async fn filled(n: u64) -> (tempfile::TempDir, Store, LedgerName) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(ferry_store::StoreConfig::new(dir.path())).unwrap();
        let l = LedgerName::parse("audit").unwrap();
        let entries = (1..=n)
            .map(|i| NewEntry {
                key: None,
                idempotency_key: None,
                payload: Payload::from_json(&i.to_string()).unwrap(),
            })
            .collect();
        store.append(&l, entries).await.unwrap();
        (dir, store, l)
    }

    /// A job on the ledger as it is now, with batches of `max_entries`.
    fn job<S>(store: &Store, sink: &Arc<S>, ledger: &LedgerName, max_entries: usize) -> Job<S> {
        let head = store.ledger_head(ledger).unwrap();
        Job {
            store: store.clone(),
            sink: sink.clone(),
            exporter: LedgerName::parse("x").unwrap(),
            ledger: ledger.clone(),
            incarnation: head.incarnation,
            batch: BatchPolicy { max_entries, max_bytes: 1 << 20, linger: std::time::Duration::ZERO },
            dead_letter: None,
            cancel: CancellationToken::new(),
            head: head.head,
            prefetched: None,
            read_ahead: false,
        }
    }

    /// Issue #12 item 5: entries read ahead end where the head was then; the
    /// batch they start is the one a read from the cursor forms now, as it
    /// would be after a restart.
    #[tokio::test(flavor = "multi_thread")]
    async fn entries_read_ahead_are_topped_up_to_the_batch_a_read_from_the_cursor_forms() {
        let (_dir, store, l) = filled(12).await;
        let sink = Arc::new(Recording::default());
        let mut job = job(&store, &sink, &l, 5);
        job.prefetched = Some(store.read(&l, Some(5), 1).await.unwrap().entries);
        let done = job.deliver(4, false, None).await;
        assert_eq!(done.outcome, Outcome::Delivered { through: 9 });
        assert_eq!(*sink.0.lock().unwrap(), [(5..=9).collect::<Vec<_>>()]);
        store.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_batch_sent_again_is_exactly_the_one_that_failed() {
        let (_dir, store, l) = filled(12).await;
        let sink = Arc::new(Recording::default());
        let done = job(&store, &sink, &l, 5).deliver(0, true, Some(3)).await;
        assert_eq!(done.outcome, Outcome::Delivered { through: 3 });
        assert_eq!(*sink.0.lock().unwrap(), [vec![1, 2, 3]]);
        store.shutdown().await;
    }

    /// A sink that records, for every batch it is given, the ledger's
    /// cursor record at that moment (`(id, sent_to)`), and fails the
    /// delivery numbered `fail` (from 1).
    struct Peeking {
        store: Store,
        fail: std::sync::atomic::AtomicUsize,
        seen: std::sync::Mutex<Vec<(Vec<EntryId>, Option<Record>)>>,
    }

    /// A cursor record: `(id, sent_to)`.
    type Record = (EntryId, Option<EntryId>);

    impl Peeking {
        fn new(store: &Store, fail: usize) -> Arc<Self> {
            Arc::new(Self { store: store.clone(), fail: fail.into(), seen: Default::default() })
        }
    }

    impl Sink for Peeking {
        async fn prepare(&self, _: &Target, _: EntryId) -> Result<Prepared, SinkError> {
            Ok(Prepared::Cursor)
        }
        async fn deliver(&self, batch: &Batch) -> Result<Ack, SinkError> {
            let record = self.store.cursors().await.unwrap().first().map(|c| (c.id, c.sent_to));
            let mut seen = self.seen.lock().unwrap();
            seen.push((batch.entries.iter().map(|e| e.id).collect(), record));
            if seen.len() == self.fail.load(Ordering::SeqCst) {
                Err(SinkError::retryable("500"))
            } else {
                Ok(Ack { through: batch.last_id() })
            }
        }
    }

    /// Issue #12 item 5: a batch the head cut short is not a function of
    /// the cursor, so its range is durable (`sent_to`) before the sink gets
    /// it, stays so while it fails, and the acknowledgement clears it; a
    /// batch of `max_entries` needs no such write.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_short_batch_is_named_in_the_cursor_record_before_it_is_sent() {
        let (_dir, store, l) = filled(8).await;
        let sink = Peeking::new(&store, 2);
        let done = job(&store, &sink, &l, 5).deliver(0, false, None).await;
        assert_eq!(done.outcome, Outcome::Delivered { through: 5 });
        let done = job(&store, &sink, &l, 5).deliver(5, false, None).await;
        assert!(matches!(done.outcome, Outcome::Failed { from: 6, to: 8, sent: true, .. }), "{:?}", done.outcome);
        let done = job(&store, &sink, &l, 5).deliver(5, true, Some(8)).await;
        assert_eq!(done.outcome, Outcome::Delivered { through: 8 });
        let seen = sink.seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [(vec![1, 2, 3, 4, 5], None), (vec![6, 7, 8], Some((5, Some(8)))), (vec![6, 7, 8], Some((5, Some(8)))),],
            "a full batch writes nothing before it is sent; a short one names its range"
        );
        let cursors = store.cursors().await.unwrap();
        assert_eq!((cursors[0].id, cursors[0].sent_to), (8, None), "the acknowledgement clears sent_to");
        store.shutdown().await;
    }

    /// Issue #12 item 5: the dead-letter idempotency key tells two ledgers
    /// of one name apart by their incarnation. Two incarnations may share
    /// a `created_at` (created in one millisecond, or after the clock
    /// stepped back); the key used to be built on it, and the store dropped
    /// the second ledger's dead letters as repeats while the cursor moved
    /// past them.
    #[tokio::test(flavor = "multi_thread")]
    async fn dead_letters_of_a_ledger_created_again_are_recorded_under_its_own_keys() {
        let (_dir, store, l) = filled(2).await;
        let dlq = LedgerName::parse("dlq").unwrap();
        store.create_ledger(&dlq).await.unwrap();
        let sink = Arc::new(Recording::default());
        let dead_letter = |job: Job<Recording>| Job { dead_letter: Some(dlq.clone()), ..job };

        let first = dead_letter(job(&store, &sink, &l, 5));
        let incarnation = first.incarnation;
        assert_eq!(first.dead_letter(1, 2, "400".into()).await.outcome, Outcome::DeadLettered { through: 2 });
        store.delete_ledger(&l).await.unwrap();
        let entries = (1..=2)
            .map(|i| NewEntry {
                key: None,
                idempotency_key: None,
                payload: Payload::from_json(&format!("{i}")).unwrap(),
            })
            .collect();
        store.append(&l, entries).await.unwrap();
        let again = dead_letter(job(&store, &sink, &l, 5));
        assert_ne!(again.incarnation, incarnation);
        // The key does not depend on `created_at`, which the two may share.
        let entry = &store.read(&l, Some(1), 1).await.unwrap().entries[0];
        let key = again.dead_letter_entry(entry, "400").idempotency_key;
        assert_eq!(key, Some(format!("x/audit/{}/1", again.incarnation)));
        assert_eq!(again.dead_letter(1, 2, "400".into()).await.outcome, Outcome::DeadLettered { through: 2 });

        let recorded = store.read(&dlq, Some(1), 100).await.unwrap().entries;
        assert_eq!(recorded.len(), 4, "two dead letters of each ledger: {recorded:#?}");
        store.shutdown().await;
    }

    /// Issue #12 item 4: a job of a deleted ledger whose name now holds a
    /// new one (deleted and created again, with entries past the old
    /// cursor) must deliver nothing of the new ledger under the old cursor.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_job_never_delivers_a_re_created_ledgers_entries_under_the_old_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(ferry_store::StoreConfig::new(dir.path())).unwrap();
        let l = LedgerName::parse("audit").unwrap();
        let new_entry = |n: u64| NewEntry {
            key: None,
            idempotency_key: None,
            payload: Payload::from_json(&n.to_string()).unwrap(),
        };
        store.append(&l, (1..=3).map(new_entry).collect()).await.unwrap();
        let old = store.ledger_head(&l).unwrap();
        store.delete_ledger(&l).await.unwrap();
        store.append(&l, (1..=8).map(new_entry).collect()).await.unwrap();

        let sink = Arc::new(Recording::default());
        let job = Job {
            store: store.clone(),
            sink: sink.clone(),
            exporter: LedgerName::parse("x").unwrap(),
            ledger: l.clone(),
            incarnation: old.incarnation,
            batch: BatchPolicy { max_entries: 4, max_bytes: 1 << 20, linger: std::time::Duration::ZERO },
            dead_letter: None,
            cancel: CancellationToken::new(),
            head: 8,
            prefetched: None,
            read_ahead: true,
        };
        let done = job.deliver(3, false, None).await;
        assert!(matches!(done.outcome, Outcome::Gone), "{:?}", done.outcome);
        assert!(sink.0.lock().unwrap().is_empty(), "the sink got {:?}", sink.0.lock().unwrap());
        assert!(store.cursors().await.unwrap().is_empty());
        store.shutdown().await;
    }
}
