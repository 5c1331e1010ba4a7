//! The decisions of one (exporter, ledger) pair, free of I/O: when the next
//! batch goes out, how long to back off, when a batch is dead-lettered or
//! the ledger stops as failed, and what a pause, resume or reset does. The
//! runtime feeds it inputs (new head, job outcomes, commands, the clock) and
//! carries out what `next` returns.
//!
//! **Invariants:** the cursor only moves forward (except by `reset`), never
//! past the head, and only on an acknowledged delivery, a dead-lettered
//! batch, or entries retention pruned before they could be exported. At
//! most one job per ledger is in flight. A batch the sink was given and did
//! not acknowledge is sent again exactly as it was (same ids, so the same
//! `Idempotency-Key` and body) until it is acknowledged, dead-lettered or
//! a reset moves the cursor: batches of one process are identical or
//! disjoint; with the cursor record's `sent_to` (`restore_unacked`), so
//! are those of a process and the one restarted after it (see
//! `docs/decisions/2026-12-04-stable-export-batches.md`).

use std::time::{Duration, Instant};

use ferry_core::EntryId;
use ferry_core::limits::RETRY_WAIT_MS_MAX;
use serde::Serialize;

use crate::settings::{BatchPolicy, RetryPolicy};
use crate::sink::SinkError;

/// What the API reports for a ledger of an exporter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LedgerState {
    Running,
    BackingOff,
    Paused,
    Failed,
    DeadLettered,
}

/// What the runtime should do next for this ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing until a new input.
    Idle,
    /// Ask again at this instant.
    WakeAt(Instant),
    /// Deliver the entries after `cursor` (takes a parallelism slot); with
    /// `resend_to`, exactly ids `cursor + 1..=resend_to` again, the batch
    /// the sink was given and did not acknowledge.
    Deliver { cursor: EntryId, prepare: bool, resend_to: Option<EntryId> },
    /// Append ids `from..=to` to the dead-letter ledger and move the cursor
    /// to `to` (takes a slot).
    DeadLetter { from: EntryId, to: EntryId, error: String },
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The sink acknowledged through `through` and the cursor is written.
    Delivered { through: EntryId },
    /// The delivery of ids `from..=to` (or its preparation) failed; `sent`
    /// when the sink was given the batch `from..=to` (it may have arrived),
    /// or its range may be in the cursor record as `sent_to`.
    Failed { from: EntryId, to: EntryId, error: SinkError, sent: bool },
    /// The job was dropped before an acknowledgement (shutdown, reset);
    /// `sent_to` is the last id of the batch the sink was being given (it
    /// may have arrived), if it got that far.
    Cancelled { sent_to: Option<EntryId> },
    /// The ledger is being deleted: nothing more to do until it is
    /// forgotten.
    Gone,
    /// `..=through` is in the dead-letter ledger and the cursor is written.
    DeadLettered { through: EntryId },
    /// Ids up to `to` were pruned before export; the cursor is written.
    Skipped { to: EntryId },
    /// `prepare` found the destination's own position at `cursor`, above or
    /// below the machine's, and the cursor is written there.
    Resumed { cursor: EntryId },
    /// The store cannot read the entries from the cursor on (damaged
    /// storage, SPEC §2.3): the ledger stops in `failed` at once, whatever
    /// the retry budget, and nothing is skipped or dead-lettered (what
    /// cannot be read cannot be moved); a reset or a restart tries again.
    Unreadable { error: String },
}

/// A state change worth an event (`exporter.failed`, `exporter.recovered`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// The ledger started failing (first failure after a success).
    Failed { error: String, attempts: u32 },
    /// A ledger that was failing delivered again.
    Recovered,
    /// A batch was moved to the dead-letter ledger.
    DeadLettered { from: EntryId, to: EntryId, error: String },
    /// Entries were pruned before export (only without `respect_exporters`).
    Skipped { from: EntryId, to: EntryId },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// No job; lag waits for linger, a slot, or nothing.
    Waiting,
    /// A delivery is out; `since` is when its oldest entry started waiting.
    Delivering {
        since: Option<Instant>,
    },
    /// Retry after `until`.
    BackingOff {
        until: Instant,
    },
    /// Gave up on a batch and there is no dead-letter ledger: waits for a
    /// resume or reset.
    Failed,
    /// The ledger is being deleted.
    Gone,
    /// A batch must go to the dead-letter ledger (not before `not_before`).
    DeadLetterDue {
        from: EntryId,
        to: EntryId,
        error: String,
        not_before: Instant,
    },
    DeadLettering {
        from: EntryId,
        to: EntryId,
        error: String,
    },
}

/// The state machine of one (exporter, ledger).
#[derive(Debug, Clone)]
pub struct LedgerMachine {
    batch: BatchPolicy,
    retry: RetryPolicy,
    dead_letter: bool,
    cursor: EntryId,
    head: EntryId,
    phase: Phase,
    /// When the oldest entry not yet in a batch was first seen; `None` with
    /// a lag means the entries predate this machine (due at once).
    pending_since: Option<Instant>,
    paused: bool,
    needs_prepare: bool,
    /// The last id of the batch after the cursor that the sink was given
    /// and did not acknowledge: the next delivery sends exactly that batch.
    unacked_to: Option<EntryId>,
    attempts: u32,
    last_error: Option<String>,
    last_success_at: Option<u64>,
    /// The last thing that happened was a dead-lettered batch.
    dead_lettered: bool,
    /// Prepare once even with nothing to send: the sink keeps its own
    /// position, which may be anywhere (see `probe_destination`).
    probe: bool,
}

impl LedgerMachine {
    pub fn new(batch: BatchPolicy, retry: RetryPolicy, dead_letter: bool, cursor: EntryId, head: EntryId) -> Self {
        Self {
            batch,
            retry,
            dead_letter,
            cursor,
            head: head.max(cursor),
            phase: Phase::Waiting,
            pending_since: None,
            paused: false,
            needs_prepare: true,
            unacked_to: None,
            attempts: 0,
            last_error: None,
            last_success_at: None,
            dead_lettered: false,
            probe: false,
        }
    }

    /// The sink keeps its own position at the destination: the first
    /// delivery prepares even when the cursor is at the head, so a
    /// destination restored from an older copy is refilled without
    /// waiting for the next append.
    pub fn probe_destination(&mut self) {
        self.probe = true;
    }

    /// A batch `cursor + 1..=to` the sink may have been given before a
    /// restart (the cursor record's `sent_to`): the first delivery sends
    /// exactly it. False (and nothing changes) unless `cursor < to <= head`.
    pub fn restore_unacked(&mut self, to: EntryId) -> bool {
        let valid = self.cursor < to && to <= self.head;
        if valid {
            self.unacked_to = Some(to);
        }
        valid
    }

    pub fn cursor(&self) -> EntryId {
        self.cursor
    }

    pub fn head(&self) -> EntryId {
        self.head
    }

    pub fn lag(&self) -> u64 {
        self.head - self.cursor
    }

    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn last_success_at(&self) -> Option<u64> {
        self.last_success_at
    }

    pub fn in_flight(&self) -> bool {
        matches!(self.phase, Phase::Delivering { .. } | Phase::DeadLettering { .. })
    }

    pub fn state(&self) -> LedgerState {
        match self.phase {
            Phase::Failed => LedgerState::Failed,
            _ if self.paused => LedgerState::Paused,
            Phase::DeadLetterDue { .. } | Phase::DeadLettering { .. } => LedgerState::DeadLettered,
            _ if self.attempts > 0 => LedgerState::BackingOff,
            _ if self.dead_lettered => LedgerState::DeadLettered,
            _ => LedgerState::Running,
        }
    }

    /// The ledger's head moved (entries became durable).
    pub fn on_head(&mut self, head: EntryId, now: Instant) {
        if head > self.head {
            // Entries already waiting (no `pending_since` outside a job)
            // keep counting as old.
            if self.in_flight() || self.cursor == self.head {
                self.pending_since.get_or_insert(now);
            }
            self.head = head;
        }
    }

    /// What to do now.
    pub fn next(&self, now: Instant) -> Next {
        if self.paused || self.in_flight() {
            return Next::Idle;
        }
        let deliver = Next::Deliver { cursor: self.cursor, prepare: self.needs_prepare, resend_to: self.unacked_to };
        match &self.phase {
            Phase::Failed | Phase::Gone | Phase::Delivering { .. } | Phase::DeadLettering { .. } => Next::Idle,
            Phase::DeadLetterDue { from, to, error, not_before } => {
                if now < *not_before {
                    Next::WakeAt(*not_before)
                } else {
                    Next::DeadLetter { from: *from, to: *to, error: error.clone() }
                }
            }
            Phase::BackingOff { until } if now < *until => Next::WakeAt(*until),
            Phase::BackingOff { .. } => deliver,
            Phase::Waiting if self.cursor >= self.head && !self.probe => Next::Idle,
            Phase::Waiting => {
                let full = self.lag() >= self.batch.max_entries as u64;
                // No `pending_since`: the entries were there before us.
                match self.pending_since.map(|since| since + self.batch.linger) {
                    Some(due) if !full && now < due => Next::WakeAt(due),
                    _ => deliver,
                }
            }
        }
    }

    /// The runtime started the job `next` returned.
    pub fn begin(&mut self, job: &Next) {
        match job {
            Next::Deliver { .. } => {
                self.probe = false;
                self.phase = Phase::Delivering { since: self.pending_since.take() };
            }
            Next::DeadLetter { from, to, error } => {
                self.phase = Phase::DeadLettering { from: *from, to: *to, error: error.clone() };
            }
            Next::Idle | Next::WakeAt(_) => {}
        }
    }

    /// A job ended. `jitter` in `[0, 1)` spreads retries; `now_ms` is the
    /// wall clock for `last_success_at`.
    pub fn on_outcome(&mut self, outcome: Outcome, now: Instant, now_ms: u64, jitter: f64) -> Option<Notice> {
        let since = match &self.phase {
            Phase::Delivering { since } => *since,
            _ => None,
        };
        match outcome {
            Outcome::Delivered { through } => {
                self.advance(through);
                self.needs_prepare = false;
                // Also after a partial acknowledgement: the sink said the
                // rest did not arrive, so the next batch is a new one.
                self.unacked_to = None;
                let recovered = self.attempts > 0;
                self.attempts = 0;
                self.last_error = None;
                self.last_success_at = Some(now_ms);
                self.dead_lettered = false;
                self.phase = Phase::Waiting;
                self.keep_waiting(since);
                recovered.then_some(Notice::Recovered)
            }
            Outcome::Failed { from, to, error, sent } => {
                if sent && from == self.cursor + 1 && to >= from {
                    self.unacked_to = Some(to);
                }
                self.failed(from, to, error, since, now, jitter)
            }
            Outcome::Cancelled { sent_to } => {
                if let Some(to) = sent_to.filter(|to| *to > self.cursor) {
                    self.unacked_to = Some(to);
                }
                self.needs_prepare = true;
                self.phase = match std::mem::replace(&mut self.phase, Phase::Waiting) {
                    Phase::DeadLettering { from, to, error } => {
                        Phase::DeadLetterDue { from, to, error, not_before: now }
                    }
                    _ => Phase::Waiting,
                };
                self.keep_waiting(since);
                None
            }
            Outcome::Gone => {
                self.phase = Phase::Gone;
                None
            }
            Outcome::DeadLettered { through } => {
                let (from, error) = match &self.phase {
                    Phase::DeadLettering { from, error, .. } => (*from, error.clone()),
                    _ => (self.cursor + 1, String::new()),
                };
                self.advance(through);
                self.unacked_to = None;
                self.attempts = 0;
                self.dead_lettered = true;
                self.phase = Phase::Waiting;
                self.keep_waiting(None);
                Some(Notice::DeadLettered { from, to: through, error })
            }
            Outcome::Unreadable { error } => {
                self.attempts = self.attempts.saturating_add(1);
                self.last_error = Some(error.clone());
                self.needs_prepare = true;
                self.phase = Phase::Failed;
                Some(Notice::Failed { error, attempts: self.attempts })
            }
            Outcome::Resumed { cursor } => {
                assert!(cursor <= self.head, "resume at {cursor} beyond head {}", self.head);
                self.cursor = cursor;
                self.unacked_to = self.unacked_to.filter(|to| *to > cursor);
                self.needs_prepare = false;
                self.phase = Phase::Waiting;
                self.keep_waiting(since);
                None
            }
            Outcome::Skipped { to } => {
                let from = self.cursor + 1;
                self.advance(to);
                self.unacked_to = None;
                self.needs_prepare = true;
                self.phase = Phase::Waiting;
                self.keep_waiting(since);
                Some(Notice::Skipped { from, to })
            }
        }
    }

    fn failed(
        &mut self,
        from: EntryId,
        to: EntryId,
        error: SinkError,
        since: Option<Instant>,
        now: Instant,
        jitter: f64,
    ) -> Option<Notice> {
        self.needs_prepare = true;
        self.attempts = self.attempts.saturating_add(1);
        let message = error.to_string();
        self.last_error = Some(message.clone());
        let first_failure = self.attempts == 1;
        // A dead-letter append that failed is retried after a backoff.
        if let Phase::DeadLettering { from, to, error } = std::mem::replace(&mut self.phase, Phase::Waiting) {
            let not_before = now + self.backoff(None, jitter);
            self.phase = Phase::DeadLetterDue { from, to, error, not_before };
            return None;
        }
        self.pending_since = since.or(self.pending_since);
        let exhausted = self.retry.max_attempts > 0 && self.attempts >= self.retry.max_attempts;
        if error.is_permanent() || exhausted {
            self.phase = if self.dead_letter {
                Phase::DeadLetterDue { from, to: to.max(from), error: message.clone(), not_before: now }
            } else {
                Phase::Failed
            };
        } else {
            let retry_after = match &error {
                SinkError::Retryable { retry_after, .. } => *retry_after,
                SinkError::Permanent { .. } => None,
            };
            self.phase = Phase::BackingOff { until: now + self.backoff(retry_after, jitter) };
        }
        first_failure.then_some(Notice::Failed { error: message, attempts: self.attempts })
    }

    /// Exponential backoff with jitter: `initial · 2^(attempts-1)` capped at
    /// `max`, then scaled into `[½, 1)` of itself, and never shorter than a
    /// sink's `retry_after` (itself capped at `RETRY_WAIT_MS_MAX`).
    fn backoff(&self, retry_after: Option<Duration>, jitter: f64) -> Duration {
        let exp = self.attempts.saturating_sub(1).min(32);
        let base = self.retry.initial.saturating_mul(1u32 << exp.min(31)).min(self.retry.max);
        let jittered = base.mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0));
        let cap = Duration::from_millis(RETRY_WAIT_MS_MAX);
        jittered.max(retry_after.unwrap_or_default().min(cap))
    }

    fn advance(&mut self, through: EntryId) {
        assert!(
            through >= self.cursor && through <= self.head,
            "cursor would move from {} to {through} (head {})",
            self.cursor,
            self.head
        );
        self.cursor = through;
    }

    /// After a job, entries that are still waiting keep their age (none
    /// known: they are old, and due at once).
    fn keep_waiting(&mut self, since: Option<Instant>) {
        self.pending_since =
            if self.cursor >= self.head { None } else { [since, self.pending_since].into_iter().flatten().min() };
    }

    pub fn pause(&mut self) {
        self.paused = true;
    }

    /// Ends a pause, leaving a failed ledger failed.
    pub fn unpause(&mut self) {
        self.paused = false;
    }

    /// Ends a pause; a failed ledger tries its batch again with a fresh
    /// attempt budget.
    pub fn resume(&mut self) {
        self.paused = false;
        if self.phase == Phase::Failed {
            self.phase = Phase::Waiting;
            self.attempts = 0;
            self.keep_waiting(None);
        }
    }

    /// Re-exports from `cursor + 1`. Only with no job in flight.
    pub fn reset(&mut self, cursor: EntryId) {
        assert!(!self.in_flight(), "reset with a job in flight");
        assert!(cursor <= self.head, "reset cursor {cursor} beyond head {}", self.head);
        self.cursor = cursor;
        self.unacked_to = None;
        self.phase = Phase::Waiting;
        self.attempts = 0;
        self.last_error = None;
        self.dead_lettered = false;
        self.needs_prepare = true;
        self.pending_since = None;
        self.keep_waiting(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BATCH: BatchPolicy = BatchPolicy { max_entries: 10, max_bytes: 1 << 20, linger: Duration::from_millis(50) };
    const RETRY: RetryPolicy =
        RetryPolicy { initial: Duration::from_millis(100), max: Duration::from_secs(30), max_attempts: 0 };

    fn machine(cursor: EntryId, head: EntryId) -> LedgerMachine {
        LedgerMachine::new(BATCH, RETRY, false, cursor, head)
    }

    fn deliver(m: &mut LedgerMachine, now: Instant) -> EntryId {
        let next = m.next(now);
        let Next::Deliver { cursor, .. } = next else { panic!("expected a delivery, got {next:?}") };
        m.begin(&next);
        cursor
    }

    fn fail(retry_after: Option<Duration>) -> SinkError {
        SinkError::Retryable { message: "boom".into(), retry_after }
    }

    #[test]
    fn a_full_batch_goes_at_once_and_a_partial_one_after_linger() {
        let t = Instant::now();
        let mut m = machine(0, 0);
        assert_eq!(m.next(t), Next::Idle);
        m.on_head(3, t);
        assert_eq!(m.next(t), Next::WakeAt(t + BATCH.linger));
        assert!(matches!(m.next(t + BATCH.linger), Next::Deliver { cursor: 0, prepare: true, resend_to: None }));
        m.on_head(10, t + Duration::from_millis(1));
        assert!(matches!(m.next(t + Duration::from_millis(1)), Next::Deliver { .. }), "10 entries fill a batch");
    }

    #[test]
    fn one_batch_in_flight_and_the_cursor_follows_acks_only() {
        let t = Instant::now();
        let mut m = machine(0, 25);
        assert_eq!(deliver(&mut m, t), 0);
        m.on_head(30, t);
        assert_eq!(m.next(t), Next::Idle, "a second batch waits for the first");
        assert_eq!(m.cursor(), 0);
        assert_eq!(m.on_outcome(Outcome::Delivered { through: 10 }, t, 1, 0.0), None);
        assert_eq!(m.cursor(), 10);
        assert_eq!(deliver(&mut m, t), 10, "the rest is older than linger: no wait");
        assert!(matches!(m.next(t), Next::Idle));
    }

    #[test]
    #[should_panic(expected = "cursor would move")]
    fn an_ack_beyond_the_head_is_a_bug() {
        let t = Instant::now();
        let mut m = machine(0, 5);
        deliver(&mut m, t);
        m.on_outcome(Outcome::Delivered { through: 6 }, t, 1, 0.0);
    }

    #[test]
    fn failures_back_off_exponentially_with_jitter_and_retry_after() {
        let t = Instant::now();
        let mut m = machine(0, 20);
        deliver(&mut m, t);
        let notice = m.on_outcome(Outcome::Failed { from: 1, to: 10, error: fail(None), sent: true }, t, 1, 0.0);
        assert!(matches!(notice, Some(Notice::Failed { attempts: 1, .. })));
        assert_eq!(m.state(), LedgerState::BackingOff);
        assert_eq!(m.next(t), Next::WakeAt(t + Duration::from_millis(50)), "½ of 100 ms at jitter 0");
        let t2 = t + Duration::from_millis(50);
        assert!(
            matches!(m.next(t2), Next::Deliver { cursor: 0, prepare: true, resend_to: Some(10) }),
            "retries re-prepare"
        );
        deliver(&mut m, t2);
        assert_eq!(
            m.on_outcome(Outcome::Failed { from: 1, to: 10, error: fail(None), sent: true }, t2, 1, 0.999),
            None
        );
        let Next::WakeAt(w) = m.next(t2) else { panic!() };
        assert!(w - t2 > Duration::from_millis(190) && w - t2 <= Duration::from_millis(200));
        deliver(&mut m, w);
        m.on_outcome(
            Outcome::Failed { from: 1, to: 10, error: fail(Some(Duration::from_secs(7))), sent: true },
            w,
            1,
            0.0,
        );
        assert_eq!(m.next(w), Next::WakeAt(w + Duration::from_secs(7)), "Retry-After wins when longer");
        deliver(&mut m, w + Duration::from_secs(7));
        let notice = m.on_outcome(Outcome::Delivered { through: 10 }, w, 9, 0.0);
        assert_eq!(notice, Some(Notice::Recovered));
        assert_eq!(
            (m.state(), m.attempts(), m.last_error(), m.last_success_at()),
            (LedgerState::Running, 0, None, Some(9))
        );
    }

    /// Issue #12 item 5: a retry sends the batch that failed, not a longer
    /// one that entries appended during the backoff would make.
    #[test]
    fn a_batch_the_sink_was_given_is_sent_again_exactly_until_acknowledged() {
        let t = Instant::now();
        let mut m = machine(0, 3);
        assert_eq!(m.next(t + BATCH.linger), Next::Deliver { cursor: 0, prepare: true, resend_to: None });
        deliver(&mut m, t);
        m.on_outcome(Outcome::Failed { from: 1, to: 3, error: fail(None), sent: true }, t, 1, 0.0);
        m.on_head(25, t);
        let Next::WakeAt(w) = m.next(t) else { panic!("{:?}", m.next(t)) };
        assert_eq!(m.next(w), Next::Deliver { cursor: 0, prepare: true, resend_to: Some(3) });
        deliver(&mut m, w);
        let permanent = SinkError::permanent("400");
        m.on_outcome(Outcome::Failed { from: 1, to: 3, error: permanent, sent: true }, w, 1, 0.0);
        m.resume();
        assert_eq!(m.next(w), Next::Deliver { cursor: 0, prepare: true, resend_to: Some(3) }, "after a resume too");
        deliver(&mut m, w);
        m.on_outcome(Outcome::Cancelled { sent_to: None }, w, 1, 0.0);
        assert_eq!(m.next(w), Next::Deliver { cursor: 0, prepare: true, resend_to: Some(3) }, "after a cancel too");
        deliver(&mut m, w);
        m.on_outcome(Outcome::Delivered { through: 3 }, w, 1, 0.0);
        assert_eq!(m.next(w), Next::Deliver { cursor: 3, prepare: false, resend_to: None }, "then a new batch");
    }

    /// Issue #12 item 5 across a restart: the cursor record's `sent_to`
    /// names a short batch the last process may have sent; the first
    /// delivery sends exactly it, however far the head moved.
    #[test]
    fn a_batch_in_flight_before_a_restart_is_the_first_one_sent_again() {
        let t = Instant::now();
        let mut m = machine(2, 13);
        for invalid in [0, 2, 14] {
            assert!(!m.restore_unacked(invalid), "sent_to {invalid} with cursor 2 and head 13");
        }
        assert_eq!(m.next(t), Next::Deliver { cursor: 2, prepare: true, resend_to: None });
        assert!(m.restore_unacked(5));
        assert_eq!(m.next(t), Next::Deliver { cursor: 2, prepare: true, resend_to: Some(5) });
        deliver(&mut m, t);
        m.on_outcome(Outcome::Delivered { through: 5 }, t, 1, 0.0);
        assert_eq!(m.next(t), Next::Deliver { cursor: 5, prepare: false, resend_to: None });
    }

    #[test]
    fn a_failure_before_the_sink_had_the_batch_pins_nothing_and_keeps_what_was_pinned() {
        let t = Instant::now();
        let mut m = machine(0, 20);
        deliver(&mut m, t);
        m.on_outcome(Outcome::Failed { from: 1, to: 1, error: fail(None), sent: false }, t, 1, 0.0);
        let Next::WakeAt(w) = m.next(t) else { panic!() };
        assert_eq!(m.next(w), Next::Deliver { cursor: 0, prepare: true, resend_to: None }, "prepare failed");
        deliver(&mut m, w);
        m.on_outcome(Outcome::Failed { from: 1, to: 10, error: fail(None), sent: true }, w, 1, 0.0);
        let Next::WakeAt(w) = m.next(w) else { panic!() };
        deliver(&mut m, w);
        m.on_outcome(Outcome::Failed { from: 1, to: 1, error: fail(None), sent: false }, w, 1, 0.0);
        let Next::WakeAt(w) = m.next(w) else { panic!() };
        assert_eq!(m.next(w), Next::Deliver { cursor: 0, prepare: true, resend_to: Some(10) });
    }

    #[test]
    fn a_reset_a_dead_letter_or_a_partial_ack_ends_the_resending() {
        let t = Instant::now();
        let failed = |m: &mut LedgerMachine, to: EntryId, error: SinkError| {
            let from = m.cursor() + 1;
            deliver(m, t);
            m.on_outcome(Outcome::Failed { from, to, error, sent: true }, t, 1, 0.0);
        };
        let mut m = machine(0, 20);
        failed(&mut m, 10, fail(None));
        m.reset(5);
        assert_eq!(m.next(t), Next::Deliver { cursor: 5, prepare: true, resend_to: None });

        let mut m = LedgerMachine::new(BATCH, RETRY, true, 0, 20);
        failed(&mut m, 10, SinkError::permanent("400"));
        let next = m.next(t);
        m.begin(&next);
        m.on_outcome(Outcome::DeadLettered { through: 10 }, t, 1, 0.0);
        assert_eq!(m.next(t), Next::Deliver { cursor: 10, prepare: true, resend_to: None });

        let mut m = machine(0, 20);
        failed(&mut m, 10, fail(None));
        let Next::WakeAt(w) = m.next(t) else { panic!() };
        deliver(&mut m, w);
        m.on_outcome(Outcome::Delivered { through: 4 }, w, 1, 0.0);
        assert_eq!(m.next(w), Next::Deliver { cursor: 4, prepare: false, resend_to: None });
    }

    #[test]
    fn backoff_is_capped_at_max() {
        let t = Instant::now();
        let mut m = machine(0, 5);
        for _ in 0..40 {
            let now = match m.next(t) {
                Next::WakeAt(w) => w,
                _ => t,
            };
            deliver(&mut m, now);
            m.on_outcome(Outcome::Failed { from: 1, to: 5, error: fail(None), sent: true }, t, 1, 0.999);
        }
        let Next::WakeAt(w) = m.next(t) else { panic!() };
        assert!(w - t <= RETRY.max);
        assert_eq!(m.cursor(), 0, "a failing ledger is never skipped");
    }

    #[test]
    fn permanent_errors_fail_the_ledger_until_resumed_and_never_skip() {
        let t = Instant::now();
        let mut m = machine(0, 5);
        deliver(&mut m, t);
        m.on_outcome(Outcome::Failed { from: 1, to: 5, error: SinkError::permanent("400"), sent: true }, t, 1, 0.5);
        assert_eq!(m.state(), LedgerState::Failed);
        assert_eq!(m.next(t + Duration::from_secs(3600)), Next::Idle);
        assert_eq!(m.cursor(), 0);
        m.resume();
        assert_eq!(m.attempts(), 0);
        assert!(matches!(m.next(t), Next::Deliver { cursor: 0, .. }));
    }

    #[test]
    fn entries_the_store_cannot_read_stop_the_ledger_without_a_dead_letter_or_a_skip() {
        let t = Instant::now();
        let mut m = LedgerMachine::new(BATCH, RETRY, true, 0, 15);
        deliver(&mut m, t);
        let notice = m.on_outcome(Outcome::Unreadable { error: "corrupted pack".into() }, t, 1, 0.0);
        assert!(matches!(notice, Some(Notice::Failed { attempts: 1, .. })), "{notice:?}");
        assert_eq!(m.state(), LedgerState::Failed);
        assert_eq!(m.cursor(), 0);
        assert_eq!(m.next(t + Duration::from_secs(3600)), Next::Idle, "no retry, no dead letter until a reset");
    }

    #[test]
    fn exhausted_attempts_go_to_the_dead_letter_ledger_then_continue() {
        let t = Instant::now();
        let retry = RetryPolicy { max_attempts: 2, ..RETRY };
        let mut m = LedgerMachine::new(BATCH, retry, true, 0, 15);
        deliver(&mut m, t);
        m.on_outcome(Outcome::Failed { from: 1, to: 10, error: fail(None), sent: true }, t, 1, 0.0);
        let Next::WakeAt(w) = m.next(t) else { panic!() };
        deliver(&mut m, w);
        m.on_outcome(Outcome::Failed { from: 1, to: 10, error: fail(None), sent: true }, w, 1, 0.0);
        let next = m.next(w);
        assert_eq!(next, Next::DeadLetter { from: 1, to: 10, error: "boom".into() });
        assert_eq!(m.state(), LedgerState::DeadLettered);
        m.begin(&next);
        let notice = m.on_outcome(Outcome::DeadLettered { through: 10 }, w, 2, 0.0);
        assert_eq!(notice, Some(Notice::DeadLettered { from: 1, to: 10, error: "boom".into() }));
        assert_eq!((m.cursor(), m.state()), (10, LedgerState::DeadLettered));
        assert!(matches!(m.next(w), Next::Deliver { cursor: 10, prepare: true, resend_to: None }));
    }

    #[test]
    fn without_a_dead_letter_ledger_exhausted_attempts_fail() {
        let t = Instant::now();
        let retry = RetryPolicy { max_attempts: 1, ..RETRY };
        let mut m = LedgerMachine::new(BATCH, retry, false, 0, 3);
        deliver(&mut m, t);
        m.on_outcome(Outcome::Failed { from: 1, to: 3, error: fail(None), sent: true }, t, 1, 0.0);
        assert_eq!(m.state(), LedgerState::Failed);
        assert_eq!(m.next(t + Duration::from_secs(60)), Next::Idle);
    }

    #[test]
    fn a_failed_dead_letter_append_is_retried_not_skipped() {
        let t = Instant::now();
        let mut m = LedgerMachine::new(BATCH, RETRY, true, 0, 3);
        deliver(&mut m, t);
        m.on_outcome(Outcome::Failed { from: 1, to: 3, error: SinkError::permanent("no"), sent: true }, t, 1, 0.0);
        let next = m.next(t);
        m.begin(&next);
        m.on_outcome(Outcome::Failed { from: 1, to: 3, error: SinkError::retryable("disk"), sent: true }, t, 1, 0.0);
        let Next::WakeAt(w) = m.next(t) else { panic!("{:?}", m.next(t)) };
        assert!(matches!(m.next(w), Next::DeadLetter { from: 1, to: 3, .. }));
        assert_eq!(m.cursor(), 0);
    }

    #[test]
    fn pause_holds_new_batches_and_lets_the_one_in_flight_finish() {
        let t = Instant::now();
        let mut m = machine(0, 20);
        deliver(&mut m, t);
        m.pause();
        assert_eq!(m.state(), LedgerState::Paused);
        m.on_outcome(Outcome::Delivered { through: 10 }, t, 1, 0.0);
        assert_eq!(m.cursor(), 10);
        assert_eq!(m.next(t), Next::Idle);
        m.resume();
        assert!(matches!(m.next(t), Next::Deliver { cursor: 10, .. }));
    }

    #[test]
    fn reset_moves_the_cursor_back_and_prepares_again() {
        let t = Instant::now();
        let mut m = machine(0, 5);
        deliver(&mut m, t);
        m.on_outcome(Outcome::Delivered { through: 5 }, t, 1, 0.0);
        assert_eq!(m.next(t), Next::Idle);
        m.reset(2);
        assert_eq!((m.cursor(), m.lag()), (2, 3));
        assert!(
            matches!(m.next(t), Next::Deliver { cursor: 2, prepare: true, resend_to: None }),
            "re-exported entries are old"
        );
    }

    #[test]
    fn a_cancelled_delivery_is_sent_again_after_preparing() {
        let t = Instant::now();
        let mut m = machine(0, 20);
        deliver(&mut m, t);
        m.on_outcome(Outcome::Delivered { through: 10 }, t, 1, 0.0);
        deliver(&mut m, t);
        m.on_outcome(Outcome::Cancelled { sent_to: None }, t, 1, 0.0);
        assert_eq!(m.next(t), Next::Deliver { cursor: 10, prepare: true, resend_to: None });
    }

    /// A reset of another ledger cancels this ledger's delivery too; the
    /// sink may have had the batch, so it is the one sent next.
    #[test]
    fn a_delivery_cancelled_while_the_sink_had_the_batch_is_sent_again_as_it_was() {
        let t = Instant::now();
        let mut m = machine(0, 3);
        deliver(&mut m, t);
        m.on_head(20, t);
        m.on_outcome(Outcome::Cancelled { sent_to: Some(3) }, t, 1, 0.0);
        assert_eq!(m.next(t), Next::Deliver { cursor: 0, prepare: true, resend_to: Some(3) });
    }

    #[test]
    fn skipped_entries_move_the_cursor_and_are_reported() {
        let t = Instant::now();
        let mut m = machine(0, 20);
        deliver(&mut m, t);
        assert_eq!(m.on_outcome(Outcome::Skipped { to: 7 }, t, 1, 0.0), Some(Notice::Skipped { from: 1, to: 7 }));
        assert_eq!(m.cursor(), 7);
    }

    #[test]
    fn a_ledger_being_deleted_is_not_retried() {
        let t = Instant::now();
        let mut m = machine(0, 5);
        deliver(&mut m, t);
        assert_eq!(m.on_outcome(Outcome::Gone, t, 1, 0.0), None);
        assert_eq!(m.next(t + Duration::from_secs(60)), Next::Idle);
        assert_eq!(m.cursor(), 0);
    }

    #[test]
    fn reset_of_one_ledger_does_not_retry_another_failed_one() {
        let t = Instant::now();
        let mut m = machine(0, 5);
        deliver(&mut m, t);
        m.on_outcome(Outcome::Failed { from: 1, to: 5, error: SinkError::permanent("400"), sent: true }, t, 1, 0.0);
        m.pause();
        m.unpause();
        assert_eq!(m.state(), LedgerState::Failed, "unpause leaves a failed ledger failed");
    }
}
