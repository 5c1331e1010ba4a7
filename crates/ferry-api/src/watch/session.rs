//! One watch session's state, without I/O: where it stands in each ledger,
//! the journal that rolls it back to any recent token, its branches, and
//! what a flush writes to the catalog (`ferry_store::watch_sessions`).
//!
//! Every event a session sends gets the next sequence number; its token
//! names the session, the epoch and that number. A reconnect names the last
//! token the client got: the session rolls back to it through the journal
//! (the runs of events sent, each with the ledger's position before it) and
//! starts a new epoch there, a *branch*. A token is current when no later
//! branch began before it.
//!
//! **Invariant:** a ledger with no position starts where the session's
//! start rule says (`Start`), now and after any restore, so a position
//! decided by the rule needs no journal entry and no flush to be exact.

use std::collections::{HashMap, VecDeque};

use ferry_core::limits::{WATCH_BRANCHES_MAX, WATCH_JOURNAL_RUNS_MAX};
use ferry_core::{EntryId, LedgerName};
use ferry_store::{WatchCut, WatchFrom, WatchPosition, WatchPositionRecord, WatchSessionRecord, WatchWrite};

use super::token::Token;

/// Why a token cannot resume a session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// It names a position the session never reached (400).
    Invalid(String),
    /// It names a position the session can no longer tell (410), and
    /// perhaps an earlier one it can, from which a client that drops what it
    /// already has goes on without a gap.
    Expired { why: String, resume_from: Option<Token> },
}

fn expired(why: impl Into<String>) -> Refusal {
    Refusal::Expired { why: why.into(), resume_from: None }
}

/// Where a ledger the session has no position of starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Start {
    /// Entries stamped at or after this came after the session began.
    pub cut_ts: u64,
    /// A ledger with a higher incarnation was created after it began.
    pub start_incarnation: u64,
    pub from: Option<WatchFrom>,
}

/// Consecutive events of one ledger.
#[derive(Debug, Clone)]
struct Run {
    ledger: LedgerName,
    first_seq: u64,
    count: u64,
    /// `None` for a deletion notice (always alone in its run).
    entries: Option<WatchPosition>,
    /// The ledger's position before the run.
    before: Option<WatchPosition>,
}

impl Run {
    fn last_seq(&self) -> u64 {
        self.first_seq + self.count - 1
    }
}

/// What a flush writes, and what to put back if the commit fails.
pub(crate) struct Flush {
    pub writes: Vec<WatchWrite>,
    number: u64,
    at: u64,
    before: Option<u64>,
    complete: bool,
    /// The ledgers it writes, with their positions in the catalog before.
    taken: HashMap<LedgerName, Option<WatchPosition>>,
    tombstones: Vec<LedgerName>,
    header_moved: bool,
}

#[derive(Debug)]
pub(crate) struct Session {
    pub id: u64,
    pub prefix: String,
    start: Start,
    created_at: u64,
    /// When a stream last had the session (unix ms).
    pub active_at: u64,
    /// True while a stream sends from the session.
    pub live: bool,
    epoch: u64,
    /// `(epoch, seq it began at)`, the newest `WATCH_BRANCHES_MAX`.
    branches: VecDeque<(u64, u64)>,
    /// The sequence number of the last event sent on the current branch.
    seq: u64,
    positions: HashMap<LedgerName, WatchPosition>,
    journal: VecDeque<Run>,
    /// The lowest sequence number the journal rolls back to.
    floor: u64,
    /// What the catalog holds: the flush number and where it stands.
    flush: u64,
    flushed_at: u64,
    flushed_before: Option<u64>,
    flushed_complete: bool,
    /// The lowest point a reconnect resumed from since the last flush.
    lowest_branch_since_flush: Option<u64>,
    /// Ledgers whose position moved since the last flush, with the
    /// position the catalog holds.
    moved: HashMap<LedgerName, Option<WatchPosition>>,
    header_moved: bool,
    /// Records the last flush wrote for ledgers with no position left.
    tombstones: Vec<LedgerName>,
}

impl Session {
    /// A new session at sequence number 0, whose first flush writes its
    /// header (and nothing else).
    pub fn new(id: u64, prefix: String, cut: WatchCut, from: Option<WatchFrom>, now: u64) -> Self {
        Self {
            id,
            prefix,
            start: Start { cut_ts: cut.ts, start_incarnation: cut.last_incarnation, from },
            created_at: now,
            active_at: now,
            live: true,
            epoch: 0,
            branches: VecDeque::new(),
            seq: 0,
            positions: HashMap::new(),
            journal: VecDeque::new(),
            floor: 0,
            flush: 0,
            flushed_at: 0,
            flushed_before: None,
            flushed_complete: false,
            lowest_branch_since_flush: None,
            moved: HashMap::new(),
            header_moved: true,
            tombstones: Vec::new(),
        }
    }

    /// The token of the last event sent.
    pub fn token(&self) -> Token {
        Token { session: self.id, epoch: self.epoch, seq: self.seq }
    }

    pub fn start(&self) -> &Start {
        &self.start
    }

    /// The ledgers the session has a position of.
    pub fn ledgers(&self) -> impl Iterator<Item = &LedgerName> {
        self.positions.keys()
    }

    pub fn position(&self, ledger: &LedgerName) -> Option<WatchPosition> {
        self.positions.get(ledger).copied()
    }

    fn set_position(&mut self, ledger: &LedgerName, position: Option<WatchPosition>) {
        let old = self.positions.get(ledger).copied();
        self.moved.entry(ledger.clone()).or_insert(old);
        match position {
            Some(p) => self.positions.insert(ledger.clone(), p),
            None => self.positions.remove(ledger),
        };
    }

    /// Sets the position the start rule gave a ledger; records which
    /// incarnation `from` applies to once it is known.
    pub fn set_start(&mut self, ledger: &LedgerName, position: WatchPosition) {
        if let Some(from) = &mut self.start.from
            && from.ledger == *ledger
            && from.incarnation.is_none()
        {
            from.incarnation = Some(position.incarnation);
            self.header_moved = true;
        }
        self.set_position(ledger, Some(position));
    }

    /// Moves past ids retention pruned before they were sent.
    pub fn skip_to(&mut self, ledger: &LedgerName, position: WatchPosition) {
        self.set_position(ledger, Some(position));
    }

    /// Records that entry `id` of `ledger` (that incarnation) is sent;
    /// returns its token.
    pub fn send_entry(&mut self, ledger: &LedgerName, incarnation: u64, id: EntryId) -> Token {
        let before = self.position(ledger);
        self.set_position(ledger, Some(WatchPosition { incarnation, next: id + 1 }));
        self.seq += 1;
        match self.journal.back_mut() {
            Some(run)
                if run.ledger == *ledger
                    && run.entries.is_some_and(|e| e.incarnation == incarnation && e.next + run.count == id) =>
            {
                run.count += 1;
            }
            _ => self.push_run(Run {
                ledger: ledger.clone(),
                first_seq: self.seq,
                count: 1,
                entries: Some(WatchPosition { incarnation, next: id }),
                before,
            }),
        }
        self.token()
    }

    /// Records that the deletion of the ledger's incarnation the session
    /// followed is announced; it has no position from then on.
    pub fn send_deleted(&mut self, ledger: &LedgerName) -> Token {
        let before = self.position(ledger);
        self.set_position(ledger, None);
        self.seq += 1;
        self.push_run(Run { ledger: ledger.clone(), first_seq: self.seq, count: 1, entries: None, before });
        self.token()
    }

    fn push_run(&mut self, run: Run) {
        self.journal.push_back(run);
        if self.journal.len() > WATCH_JOURNAL_RUNS_MAX
            && let Some(oldest) = self.journal.pop_front()
        {
            self.floor = oldest.last_seq();
        }
    }

    /// The sequence number a token of this (loaded) session resumes from.
    pub fn locate(&self, token: Token) -> Result<u64, Refusal> {
        if token.epoch > self.epoch {
            return Err(Refusal::Invalid(format!("epoch {} was never reached (it is {})", token.epoch, self.epoch)));
        }
        on_branch(&self.branches, token)?;
        if token.seq > self.seq {
            return Err(Refusal::Invalid(format!("event {} was never sent (the last is {})", token.seq, self.seq)));
        }
        if token.seq < self.floor {
            return Err(expired(format!(
                "event {} is more than {WATCH_JOURNAL_RUNS_MAX} ledger switches behind the newest",
                token.seq
            )));
        }
        Ok(token.seq)
    }

    /// Rolls back to just after event `seq` (checked by `locate`).
    pub fn rollback_to(&mut self, seq: u64) {
        assert!(self.floor <= seq && seq <= self.seq, "rollback to {seq} outside {}..={}", self.floor, self.seq);
        while let Some(run) = self.journal.back_mut() {
            if run.last_seq() <= seq {
                break;
            }
            if run.first_seq > seq {
                let run = self.journal.pop_back().expect("a last run");
                self.set_position(&run.ledger, run.before);
                continue;
            }
            let first = run.entries.expect("a deletion notice is a run of one");
            run.count = seq - run.first_seq + 1;
            let position = WatchPosition { incarnation: first.incarnation, next: first.next + run.count };
            let ledger = run.ledger.clone();
            self.set_position(&ledger, Some(position));
            break;
        }
        self.seq = seq;
    }

    /// Starts a new epoch at `seq` (a reconnect resumed from there).
    pub fn begin_epoch(&mut self, seq: u64) {
        self.epoch += 1;
        self.branches.push_back((self.epoch, seq));
        if self.branches.len() > WATCH_BRANCHES_MAX {
            self.branches.pop_front();
        }
        self.lowest_branch_since_flush = Some(self.lowest_branch_since_flush.map_or(seq, |b| b.min(seq)));
        self.header_moved = true;
    }

    /// True when the catalog holds everything: an idle session that a
    /// flush wrote as complete.
    pub fn is_written(&self) -> bool {
        !self.live && self.flushed_complete && self.nothing_moved()
    }

    fn nothing_moved(&self) -> bool {
        self.moved.is_empty() && !self.header_moved && self.seq == self.flushed_at && self.tombstones.is_empty()
    }

    /// The writes of the next flush, if anything changed: positions that
    /// moved (with their previous value), the removal of the last flush's
    /// tombstones, and the header. `complete` when no stream is sending.
    pub fn prepare_flush(&mut self, now: u64) -> Option<Flush> {
        let complete = !self.live;
        if self.nothing_moved() && complete == self.flushed_complete {
            return None;
        }
        let number = self.flush + 1;
        let taken = std::mem::take(&mut self.moved);
        let mut writes = Vec::with_capacity(taken.len() + self.tombstones.len() + 1);
        let mut tombstones = Vec::new();
        for (ledger, old) in &taken {
            let at = self.positions.get(ledger).copied();
            match (at, old) {
                (Some(_), _) if at == *old => {} // moved and back: the record is right
                (None, None) => writes.push(WatchWrite::RemovePosition(self.id, ledger.clone())),
                _ => {
                    if at.is_none() {
                        tombstones.push(ledger.clone());
                    }
                    let record = WatchPositionRecord { at, flush: number, before: *old };
                    writes.push(WatchWrite::Position(self.id, ledger.clone(), record));
                }
            }
        }
        for ledger in self.tombstones.iter().filter(|l| !taken.contains_key(*l)) {
            writes.push(WatchWrite::RemovePosition(self.id, ledger.clone()));
        }
        // The previous point stays readable while no reconnect went below it.
        let before = self.lowest_branch_since_flush.is_none_or(|b| self.flushed_at <= b).then_some(self.flushed_at);
        if self.live {
            self.active_at = now;
        }
        let header = self.record(number, self.seq, before, complete);
        writes.push(WatchWrite::Session(self.id, header));
        let header_moved = std::mem::take(&mut self.header_moved);
        Some(Flush { writes, number, at: self.seq, before, complete, taken, tombstones, header_moved })
    }

    /// Takes note of how the flush's commit went.
    pub fn flushed(&mut self, flush: Flush, committed: bool) {
        if committed {
            self.flush = flush.number;
            self.flushed_at = flush.at;
            self.flushed_before = flush.before;
            self.flushed_complete = flush.complete;
            self.lowest_branch_since_flush = None;
            self.tombstones = flush.tombstones;
        } else {
            // What moved during the commit was taken against the values
            // the flush would have written: the catalog's are older.
            for (ledger, old) in flush.taken {
                self.moved.insert(ledger, old);
            }
            self.header_moved |= flush.header_moved;
        }
    }

    /// The header as flush `number` writes it.
    fn record(&self, number: u64, at: u64, before: Option<u64>, complete: bool) -> WatchSessionRecord {
        WatchSessionRecord {
            prefix: self.prefix.clone(),
            cut_ts: self.start.cut_ts,
            start_incarnation: self.start.start_incarnation,
            from: self.start.from.clone(),
            created_at: self.created_at,
            active_at: self.active_at,
            epoch: self.epoch,
            branches: self.branches.iter().copied().collect(),
            flush: number,
            at,
            before,
            complete,
        }
    }

    /// The header the catalog holds now (for a session that `is_written`).
    pub fn written_record(&self) -> WatchSessionRecord {
        self.record(self.flush, self.flushed_at, self.flushed_before, self.flushed_complete)
    }

    /// Rebuilds a session from the catalog at `seq`, its `at` or its
    /// `before` (`locate_stored` chose it), with no stream yet.
    pub fn restore(
        id: u64,
        header: WatchSessionRecord,
        rows: Vec<(LedgerName, WatchPositionRecord)>,
        seq: u64,
    ) -> Self {
        let at_point = seq == header.at;
        let mut positions = HashMap::new();
        let mut moved = HashMap::new();
        let mut tombstones = Vec::new();
        for (ledger, row) in rows {
            let before = if row.flush == header.flush { row.before } else { row.at };
            let value = if at_point { row.at } else { before };
            if let Some(p) = value {
                positions.insert(ledger.clone(), p);
            }
            if value != row.at {
                moved.insert(ledger, row.at);
            } else if row.at.is_none() {
                tombstones.push(ledger);
            }
        }
        Self {
            id,
            prefix: header.prefix,
            start: Start { cut_ts: header.cut_ts, start_incarnation: header.start_incarnation, from: header.from },
            created_at: header.created_at,
            active_at: header.active_at,
            live: false,
            epoch: header.epoch,
            branches: header.branches.into_iter().collect(),
            seq,
            positions,
            journal: VecDeque::new(),
            floor: seq,
            flush: header.flush,
            flushed_at: header.at,
            flushed_before: header.before,
            flushed_complete: header.complete,
            lowest_branch_since_flush: None,
            moved,
            header_moved: false,
            tombstones,
        }
    }
}

/// The sequence number a token resumes a session that is in the catalog
/// only from: its `at` or its `before`, the only points whose positions
/// are written.
pub(crate) fn locate_stored(id: u64, header: &WatchSessionRecord, token: Token) -> Result<u64, Refusal> {
    if token.epoch > header.epoch {
        return Err(Refusal::Invalid(format!("epoch {} was never reached (it is {})", token.epoch, header.epoch)));
    }
    let branches: VecDeque<(u64, u64)> = header.branches.iter().copied().collect();
    on_branch(&branches, token)?;
    let s = token.seq;
    if s == header.at || Some(s) == header.before {
        return Ok(s);
    }
    if s > header.at && header.complete {
        return Err(Refusal::Invalid(format!("event {s} was never sent (the last is {})", header.at)));
    }
    let kept = [Some(header.at), header.before].into_iter().flatten().filter(|k| *k <= s).max();
    Err(Refusal::Expired {
        why: format!(
            "the position after event {s} was not written before the server stopped or the session went idle; \
             the newest written position before it is named in resume_from"
        ),
        resume_from: kept.map(|seq| Token { session: id, epoch: header.epoch, seq }),
    })
}

/// Whether a token lies on the session's current branch: no later epoch
/// began before it.
fn on_branch(branches: &VecDeque<(u64, u64)>, token: Token) -> Result<(), Refusal> {
    if let Some(&(oldest, _)) = branches.front()
        && oldest > 1
        && token.epoch + 1 < oldest
    {
        return Err(expired(format!("more than {WATCH_BRANCHES_MAX} reconnects happened since this token")));
    }
    match branches.iter().find(|(epoch, at)| *epoch > token.epoch && token.seq > *at) {
        Some((epoch, at)) => Err(expired(format!(
            "a later reconnect (epoch {epoch}) resumed from event {at}, before this token: it names an abandoned branch"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ln(s: &str) -> LedgerName {
        LedgerName::parse(s).unwrap()
    }

    fn pos(incarnation: u64, next: u64) -> WatchPosition {
        WatchPosition { incarnation, next }
    }

    fn session() -> Session {
        Session::new(7, "w.".into(), WatchCut { ts: 1000, last_incarnation: 2 }, None, 5)
    }

    /// (ledger, position) of every ledger, in name order.
    fn table(s: &Session) -> Vec<(String, WatchPosition)> {
        let mut t: Vec<_> = s.positions.iter().map(|(l, p)| (l.to_string(), *p)).collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    }

    #[test]
    fn a_rollback_restores_every_position_as_it_was_after_that_event() {
        let (a, b) = (ln("w.a"), ln("w.b"));
        let mut s = session();
        s.set_start(&a, pos(1, 1));
        let mut snapshots = vec![(0, table(&s))];
        for (l, inc, id) in [(&a, 1, 1), (&a, 1, 2), (&b, 3, 1), (&a, 1, 3), (&b, 3, 2), (&b, 3, 3)] {
            let t = s.send_entry(l, inc, id);
            snapshots.push((t.seq, table(&s)));
        }
        let t = s.send_deleted(&b);
        snapshots.push((t.seq, table(&s)));
        let t = s.send_entry(&b, 9, 1);
        snapshots.push((t.seq, table(&s)));
        for (seq, want) in snapshots.iter().rev() {
            assert_eq!(s.locate(Token { session: 7, epoch: 0, seq: *seq }), Ok(*seq));
            s.rollback_to(*seq);
            assert_eq!(table(&s), *want, "after event {seq}");
        }
        assert_eq!(s.journal.len(), 0);
    }

    #[test]
    fn consecutive_entries_of_a_ledger_share_a_run_and_the_journal_is_bounded() {
        let mut s = session();
        let (a, b) = (ln("w.a"), ln("w.b"));
        for id in 1..=100 {
            s.send_entry(&a, 1, id);
        }
        assert_eq!(s.journal.len(), 1);
        s.send_entry(&a, 1, 150); // retention skipped 101..149: a new run
        assert_eq!(s.journal.len(), 2);
        for i in 0..WATCH_JOURNAL_RUNS_MAX as u64 {
            s.send_entry(if i % 2 == 0 { &b } else { &a }, 1, 1000 + i);
        }
        assert_eq!(s.journal.len(), WATCH_JOURNAL_RUNS_MAX);
        assert!(s.floor > 0);
        let old = Token { session: 7, epoch: 0, seq: s.floor - 1 };
        assert!(matches!(s.locate(old), Err(Refusal::Expired { resume_from: None, .. })));
        assert_eq!(s.locate(Token { seq: s.floor, ..old }), Ok(s.floor));
    }

    #[test]
    fn a_token_of_an_abandoned_branch_or_beyond_the_last_event_is_refused() {
        let mut s = session();
        let a = ln("w.a");
        for id in 1..=10 {
            s.send_entry(&a, 1, id);
        }
        let t = |epoch, seq| Token { session: 7, epoch, seq };
        assert!(matches!(s.locate(t(0, 11)), Err(Refusal::Invalid(_))));
        assert!(matches!(s.locate(t(1, 5)), Err(Refusal::Invalid(_))));
        s.rollback_to(6);
        s.begin_epoch(6);
        s.send_entry(&a, 1, 7);
        assert_eq!(s.locate(t(0, 6)), Ok(6), "the shared part of the old branch");
        assert!(matches!(s.locate(t(0, 7)), Err(Refusal::Expired { .. })), "event 7 of epoch 0 was abandoned");
        assert_eq!(s.locate(t(1, 7)), Ok(7));
        for _ in 0..WATCH_BRANCHES_MAX {
            let at = s.seq;
            s.begin_epoch(at);
        }
        assert!(matches!(s.locate(t(0, 6)), Err(Refusal::Expired { .. })), "too many reconnects ago to tell");
    }

    /// Runs the flush's writes against a map standing for the catalog.
    fn apply(catalog: &mut HashMap<String, WatchPositionRecord>, header: &mut Option<WatchSessionRecord>, f: &Flush) {
        for w in &f.writes {
            match w {
                WatchWrite::Session(_, h) => *header = Some(h.clone()),
                WatchWrite::Position(_, l, r) => {
                    catalog.insert(l.to_string(), r.clone());
                }
                WatchWrite::RemovePosition(_, l) => {
                    catalog.remove(l.as_str());
                }
                WatchWrite::Forget(_) => unreachable!(),
            }
        }
    }

    fn rows(catalog: &HashMap<String, WatchPositionRecord>) -> Vec<(LedgerName, WatchPositionRecord)> {
        catalog.iter().map(|(l, r)| (ln(l), r.clone())).collect()
    }

    #[test]
    fn the_catalog_holds_the_positions_at_the_last_two_flushes() {
        let (a, b, c) = (ln("w.a"), ln("w.b"), ln("w.c"));
        let mut s = session();
        let (mut catalog, mut header) = (HashMap::new(), None);
        let flush = |s: &mut Session, catalog: &mut HashMap<_, _>, header: &mut Option<_>| {
            let f = s.prepare_flush(9).expect("something to flush");
            apply(catalog, header, &f);
            s.flushed(f, true);
        };
        flush(&mut s, &mut catalog, &mut header);
        s.send_entry(&a, 1, 1);
        s.send_entry(&b, 2, 1);
        s.send_entry(&c, 3, 1);
        flush(&mut s, &mut catalog, &mut header);
        let at_3 = table(&s);
        s.send_entry(&a, 1, 2);
        s.send_deleted(&b);
        flush(&mut s, &mut catalog, &mut header);
        let at_5 = table(&s);
        let h = header.clone().unwrap();
        assert_eq!((h.at, h.before, h.complete), (5, Some(3), false));
        assert_eq!(table(&Session::restore(7, h.clone(), rows(&catalog), 5)), at_5);
        assert_eq!(table(&Session::restore(7, h.clone(), rows(&catalog), 3)), at_3);
        assert_eq!(catalog["w.b"].at, None, "a tombstone keeps b's position at `before`");
        // The next flush drops the tombstone; an idle session is complete.
        s.send_entry(&c, 3, 2);
        s.live = false;
        flush(&mut s, &mut catalog, &mut header);
        assert!(!catalog.contains_key("w.b"));
        let h = header.clone().unwrap();
        assert_eq!((h.at, h.before, h.complete), (6, Some(5), true));
        assert!(s.is_written() && s.prepare_flush(10).is_none());
        assert_eq!(table(&Session::restore(7, h.clone(), rows(&catalog), 6)), table(&s));
        assert_eq!(table(&Session::restore(7, h, rows(&catalog), 5)), at_5);
    }

    #[test]
    fn a_failed_flush_is_written_again_by_the_next() {
        let a = ln("w.a");
        let mut s = session();
        let (mut catalog, mut header) = (HashMap::new(), None);
        let f = s.prepare_flush(1).unwrap();
        apply(&mut catalog, &mut header, &f);
        s.flushed(f, true);
        s.send_entry(&a, 1, 1);
        let lost = s.prepare_flush(2).unwrap();
        s.send_entry(&a, 1, 2); // moves during the commit
        s.flushed(lost, false);
        let f = s.prepare_flush(3).unwrap();
        apply(&mut catalog, &mut header, &f);
        s.flushed(f, true);
        let h = header.unwrap();
        assert_eq!((h.at, h.before), (2, Some(0)));
        assert_eq!(catalog["w.a"].before, None, "before is the catalog's value, not the lost flush's");
        assert_eq!(table(&Session::restore(7, h.clone(), rows(&catalog), 0)), vec![]);
        assert_eq!(table(&Session::restore(7, h, rows(&catalog), 2)), vec![("w.a".into(), pos(1, 3))]);
    }

    #[test]
    fn a_stored_session_resumes_only_from_a_written_point() {
        let h = WatchSessionRecord {
            prefix: "w.".into(),
            cut_ts: 1,
            start_incarnation: 0,
            from: None,
            created_at: 1,
            active_at: 1,
            epoch: 2,
            branches: vec![(1, 4), (2, 10)],
            flush: 5,
            at: 20,
            before: Some(12),
            complete: false,
        };
        let t = |epoch, seq| Token { session: 7, epoch, seq };
        assert_eq!(locate_stored(7, &h, t(2, 20)), Ok(20));
        assert_eq!(locate_stored(7, &h, t(2, 12)), Ok(12));
        let lost = locate_stored(7, &h, t(2, 25));
        assert_eq!(lost.unwrap_err(), Refusal::Expired { why: lost_why(25), resume_from: Some(t(2, 20)) });
        let between = locate_stored(7, &h, t(2, 15)).unwrap_err();
        assert!(matches!(between, Refusal::Expired { resume_from: Some(r), .. } if r == t(2, 12)));
        assert!(matches!(locate_stored(7, &h, t(2, 11)), Err(Refusal::Expired { resume_from: None, .. })));
        assert!(matches!(locate_stored(7, &h, t(0, 5)), Err(Refusal::Expired { .. })), "abandoned at 4");
        assert!(matches!(locate_stored(7, &h, t(3, 20)), Err(Refusal::Invalid(_))));
        let complete = WatchSessionRecord { complete: true, ..h };
        assert!(matches!(locate_stored(7, &complete, t(2, 25)), Err(Refusal::Invalid(_))));
    }

    fn lost_why(s: u64) -> String {
        format!(
            "the position after event {s} was not written before the server stopped or the session went idle; \
             the newest written position before it is named in resume_from"
        )
    }
}
