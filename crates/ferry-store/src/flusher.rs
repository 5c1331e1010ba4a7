//! The group-commit flusher: one thread that takes every pending append,
//! assigns ids and timestamps, does one write and one fdatasync for the
//! whole group, and only then makes the ids visible and acknowledges.
//! An import (`import.rs`) is a group of its own, checked and written the
//! same way with the ids, ts and hashes it carries.
//!
//! **Architecture Invariant:** an append or an import is acknowledged only
//! after the fdatasync that covers its records returned success; a failed
//! write or sync poisons the store and fails the group.

use std::collections::HashMap;
use std::sync::Arc;

use ferry_core::events::{Appended, SystemEvent};
use ferry_core::limits::GROUP_COMMIT_BYTES_MAX;
use ferry_core::{EntryId, LedgerName, NewEntry, now_ms};
use ferry_format::chain::{self, ChainHash};
use ferry_format::wal::{SEGMENT_HEADER_BYTES, WalRecord, decode_record, encode_record};
use tokio::sync::{mpsc, oneshot};

use crate::error::{Result, StoreError};
use crate::idempotency::{IdempotencyIndex, Seen, expired_below};
use crate::import::{self, LedgerView};
use crate::ledger::LedgerState;
use crate::messages::{AppendOutcome, AppendRequest, FlusherMsg, FreezerMsg, ImportOutcome, ImportRequest, Stamp};
use crate::shared::Shared;
use crate::wal::{RecordPos, SegmentWriter};

/// Encodes a new entry as the group's next record, with its chain hash
/// when the ledger has a chain; returns where it lies in the buffer
/// (offset, encoded size).
fn encode_new(
    buf: &mut Vec<u8>,
    ledger: &LedgerName,
    (id, ts, hash): (EntryId, u64, Option<ChainHash>),
    e: &NewEntry,
    more: bool,
) -> (usize, usize) {
    let record = WalRecord {
        ledger: ledger.as_str(),
        id,
        ts,
        key: e.key.as_deref(),
        idempotency_key: e.idempotency_key.as_deref(),
        batch_continues: more,
        group_start: buf.is_empty(),
        relocated: false,
        hash,
        payload: e.payload.as_str().as_bytes(),
    };
    let offset = buf.len();
    encode_record(&record, buf);
    (offset, buf.len() - offset)
}

/// Refuses a conditional append whose ledger has another head than it
/// expects. `head` counts the earlier appends of the same group, and the
/// check runs here, where ids are assigned, so no append can come between
/// it and the commit. A request whose entries are all repeats of earlier
/// appends adds nothing and is answered with the original ids whatever the
/// head; one with some new entries is checked against the head before them.
fn check_expected_head(req: &AppendRequest, originals: &[Option<EntryId>], head: EntryId) -> Result<()> {
    match req.expected_head {
        Some(expected) if expected != head && originals.iter().any(Option::is_none) => {
            Err(StoreError::HeadMismatch { ledger: req.ledger.name.clone(), expected, head })
        }
        _ => Ok(()),
    }
}

/// An idempotency key first used in a group: (ledger, key, id).
type FreshKey = (Arc<LedgerState>, String, EntryId);

/// The error every request of a failed group is answered with.
fn same_error(e: &StoreError) -> StoreError {
    match e {
        StoreError::Poisoned(reason) => StoreError::Poisoned(reason.clone()),
        StoreError::NoSpace(reason) => StoreError::NoSpace(reason.clone()),
        other => StoreError::io("append", std::io::Error::other(other.to_string())),
    }
}

pub(crate) struct Flusher {
    pub rx: mpsc::Receiver<FlusherMsg>,
    pub writer: SegmentWriter,
    pub shared: Arc<Shared>,
    pub freezer: std::sync::mpsc::Sender<FreezerMsg>,
    pub idempotency: IdempotencyIndex,
}

/// What one request of a group becomes before the sync.
struct Planned {
    reply: oneshot::Sender<Result<AppendOutcome>>,
    /// The ids to answer with, or why the request fails.
    ids: Result<Vec<EntryId>>,
    written: Written,
}

/// The new records one request adds to one ledger.
struct Written {
    ledger: Arc<LedgerState>,
    /// (id, ts, offset within the group buffer, encoded size) of new records.
    records: Vec<(EntryId, u64, usize, usize)>,
    /// The chain hash of the request's last new record (chained ledgers).
    last_hash: Option<ChainHash>,
    /// (id, hash) of its records at which a `ledger.checkpoint` is due.
    checkpoints: Vec<(EntryId, ChainHash)>,
}

impl Flusher {
    pub fn run(mut self) {
        let mut buf = Vec::with_capacity(1 << 20);
        let mut pending = None;
        loop {
            let Some(first) = pending.take().or_else(|| self.rx.blocking_recv()) else { break };
            let mut group = Vec::new();
            let mut bytes = 0;
            let mut other = None;
            match first {
                FlusherMsg::Append(r) => {
                    bytes += r.encoded_bytes;
                    group.push(r);
                }
                msg => other = Some(msg),
            }
            // Take every append already queued, up to a group's size; any
            // other message ends the group and runs after it.
            while other.is_none() && bytes < GROUP_COMMIT_BYTES_MAX {
                match self.rx.try_recv() {
                    Ok(FlusherMsg::Append(r)) => {
                        bytes += r.encoded_bytes;
                        group.push(r);
                    }
                    Ok(msg) => other = Some(msg),
                    Err(_) => break,
                }
            }
            self.commit_group(group, &mut buf);
            match other {
                None => {}
                Some(FlusherMsg::Shutdown) => break,
                Some(FlusherMsg::Barrier(done)) => {
                    let _ = done.send(());
                }
                Some(FlusherMsg::Cut(reply)) => {
                    let ledgers = self.shared.ledgers.read().expect("ledgers lock");
                    let _ = reply.send(ledgers.values().map(|s| crate::store::head_of(s)).collect());
                }
                Some(FlusherMsg::ForgetLedger(ledger)) => self.idempotency.forget(&ledger),
                Some(FlusherMsg::Import(request)) => {
                    let reply = request.reply;
                    let ImportRequest { ledger, stamps, entries, prev_hash, .. } = request;
                    let outcome = self.import(ledger, &stamps, &entries, prev_hash, &mut buf);
                    let _ = reply.send(outcome);
                }
                Some(FlusherMsg::Relocate(segment)) => {
                    // A refused relocation leaves the segment as it was; the
                    // freezer asks again later.
                    if let Err(e) = self.relocate(segment, &mut buf) {
                        tracing::warn!(segment, error = %e, "relocating a sparse segment failed");
                    }
                    self.shared.segments.relocation_done(segment);
                }
                Some(msg @ FlusherMsg::Append(_)) => pending = Some(msg),
            }
        }
        tracing::debug!("flusher stopped");
    }

    fn commit_group(&mut self, group: Vec<AppendRequest>, buf: &mut Vec<u8>) {
        if group.is_empty() {
            return;
        }
        if let Err(e) = self.shared.health.check() {
            for r in group {
                let _ = r.reply.send(Err(StoreError::Poisoned(e.to_string())));
            }
            return;
        }
        buf.clear();
        // Never below a watch's cut: see `Shared::ts_floor`.
        let now = now_ms().max(self.shared.ts_floor.load(std::sync::atomic::Ordering::SeqCst));
        self.sweep_keys(now);
        let (planned, fresh_keys) = self.plan(group, now, buf);
        let started = std::time::Instant::now();
        match self.write(buf) {
            Ok(segment_base) => {
                // Only a written group's keys are remembered: a refused
                // write leaves no trace, so a retry appends anew.
                self.remember(fresh_keys, now);
                let records: usize = planned.iter().map(|p| p.written.records.len()).sum();
                metrics::histogram!(ferry_core::metric_names::FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::histogram!(ferry_core::metric_names::GROUP_COMMIT_ENTRIES).record(records as f64);
                metrics::counter!(ferry_core::metric_names::APPENDED_ENTRIES_TOTAL).increment(records as u64);
                metrics::counter!(ferry_core::metric_names::APPENDED_BYTES_TOTAL).increment(buf.len() as u64);
                self.publish(planned, segment_base)
            }
            Err(e) => {
                // `Disk` poisoned the store if the failure may have lost
                // durable state; a refused write changed nothing.
                tracing::warn!(error = %e, "a group commit failed; its appends are refused");
                for p in planned {
                    let _ = p.reply.send(Err(same_error(&e)));
                }
            }
        }
    }

    /// One import as a group commit of its own: checked against the ledger
    /// as it stands (nothing can come between: ids are assigned here),
    /// written with one fdatasync, made visible, and only then answered. A
    /// request whose entries are all present writes nothing.
    fn import(
        &mut self,
        ledger: Arc<LedgerState>,
        stamps: &[Stamp],
        entries: &[NewEntry],
        prev_hash: Option<ChainHash>,
        buf: &mut Vec<u8>,
    ) -> Result<ImportOutcome> {
        self.shared.health.check()?;
        if ledger.is_deleted() {
            return Err(StoreError::LedgerNotFound(ledger.name.clone()));
        }
        let now = now_ms().max(self.shared.ts_floor.load(std::sync::atomic::Ordering::SeqCst));
        self.sweep_keys(now);
        let view = LedgerView::of(&ledger.index.read().expect("index lock"));
        let (shared, index) = (&self.shared, &self.idempotency);
        let stored = |from, limit| shared.read_records(&ledger, from, limit);
        let original = |key: &str| {
            let stored = |id| shared.stored_key(&ledger, id);
            Ok(match index.seen(&ledger.name, ledger.incarnation, key, now, stored)? {
                Seen::Original(id) => Some(id),
                Seen::New => None,
            })
        };
        let run = import::Run { ledger: &ledger.name, stamps, entries, prev_hash };
        let checked = import::check_run(&run, &view, now, stored, original)?;
        let (stamps, entries) = (&stamps[checked.present..], &entries[checked.present..]);
        let answer = |imported: usize, head| ImportOutcome {
            imported: imported as u64,
            present: checked.present as u64,
            head,
            incarnation: ledger.incarnation,
            created: false,
        };
        if entries.is_empty() {
            return Ok(answer(0, view.head));
        }
        self.shared.admit(&ledger.name, view.chained, view.bytes, entries.iter())?;
        let new = stamps.iter().zip(entries).zip(&checked.hashes).map(|((s, e), h)| ((s.id, s.ts, *h), e));
        let mut written =
            Written { ledger: ledger.clone(), records: Vec::new(), last_hash: view.last_hash, checkpoints: Vec::new() };
        let fresh = self.encode_import(&mut written, new, now, buf);
        let started = std::time::Instant::now();
        let at = self.write(buf).inspect_err(|e| {
            tracing::warn!(ledger = %ledger.name, error = %e, "an import's commit failed; it is refused");
        })?;
        self.remember(fresh, now);
        metrics::histogram!(ferry_core::metric_names::FSYNC_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::counter!(ferry_core::metric_names::IMPORTED_ENTRIES_TOTAL).increment(entries.len() as u64);
        let head = stamps.last().map_or(view.head, |s| s.id);
        self.make_visible([&written], at);
        Ok(answer(entries.len(), head))
    }

    /// Encodes an import's new entries, each with its (id, ts, hash), into
    /// `buf` as one request; returns their idempotency keys still inside
    /// their window, to remember once durable.
    fn encode_import<'a>(
        &self,
        written: &mut Written,
        new: impl ExactSizeIterator<Item = ((EntryId, u64, Option<ChainHash>), &'a NewEntry)>,
        now: u64,
        buf: &mut Vec<u8>,
    ) -> Vec<FreshKey> {
        buf.clear();
        let count = new.len();
        let mut fresh = Vec::new();
        for (n, ((id, ts, hash), entry)) in new.enumerate() {
            let (offset, len) = encode_new(buf, &written.ledger.name, (id, ts, hash), entry, n + 1 < count);
            written.records.push((id, ts, offset, len));
            if let Some(h) = hash {
                written.last_hash = Some(h);
                if self.shared.checkpoint_every > 0 && id.is_multiple_of(self.shared.checkpoint_every) {
                    written.checkpoints.push((id, h));
                }
            }
            if let Some(key) = &entry.idempotency_key
                && import::is_live(ts, now)
            {
                fresh.push((written.ledger.clone(), key.clone(), id));
            }
        }
        fresh
    }

    /// Assigns ids and timestamps and encodes the group into `buf`; returns
    /// the plan and the idempotency keys first used in it, to remember once
    /// the group is durable.
    fn plan(&mut self, group: Vec<AppendRequest>, now: u64, buf: &mut Vec<u8>) -> (Vec<Planned>, Vec<FreshKey>) {
        // (next id, last ts, bytes, last chain hash) of each ledger touched
        // by this group.
        let mut heads: HashMap<LedgerName, (EntryId, u64, u64, Option<ChainHash>)> = HashMap::new();
        // Idempotency keys first used in this group, with their ids.
        let mut fresh: HashMap<(LedgerName, &str), (EntryId, Arc<LedgerState>)> = HashMap::new();
        let mut planned = Vec::with_capacity(group.len());
        for req in &group {
            let ledger = &req.ledger;
            if ledger.is_deleted() {
                planned.push((Err(StoreError::LedgerNotFound(ledger.name.clone())), Vec::new(), None, Vec::new()));
                continue;
            }
            // Each entry's original id, if its key was used before; a
            // failure to read an original fails the request alone.
            let originals: Result<Vec<Option<EntryId>>> = req
                .entries
                .iter()
                .map(|e| {
                    let Some(k) = e.idempotency_key.as_deref() else { return Ok(None) };
                    if let Some((id, _)) = fresh.get(&(ledger.name.clone(), k)) {
                        return Ok(Some(*id));
                    }
                    let stored = |id| self.shared.stored_key(ledger, id);
                    match self.idempotency.seen(&ledger.name, ledger.incarnation, k, now, stored)? {
                        Seen::Original(id) => Ok(Some(id)),
                        Seen::New => Ok(None),
                    }
                })
                .collect();
            let originals = match originals {
                Ok(o) => o,
                Err(e) => {
                    planned.push((Err(e), Vec::new(), None, Vec::new()));
                    continue;
                }
            };
            let (next, last_ts, bytes, last_hash) = heads.entry(ledger.name.clone()).or_insert_with(|| {
                let index = ledger.index.read().expect("index lock");
                (index.next_id(), index.last_ts, index.bytes(), index.last_hash)
            });
            if let Err(e) = check_expected_head(req, &originals, *next - 1) {
                planned.push((Err(e), Vec::new(), None, Vec::new()));
                continue;
            }
            // The quota counts new records only: a repeat is answered.
            let adding = req.entries.iter().zip(&originals).filter(|(_, o)| o.is_none()).map(|(e, _)| e);
            match self.shared.admit(&ledger.name, last_hash.is_some(), *bytes, adding) {
                Ok(added) => *bytes += added,
                Err(e) => {
                    planned.push((Err(e), Vec::new(), None, Vec::new()));
                    continue;
                }
            }
            let new_count = originals.iter().filter(|o| o.is_none()).count();
            let mut ids = Vec::with_capacity(req.entries.len());
            let mut records = Vec::with_capacity(new_count);
            let mut checkpoints = Vec::new();
            for (e, original) in req.entries.iter().zip(originals) {
                if let Some(id) = original {
                    ids.push(id);
                    continue;
                }
                let id = *next;
                let ts = now.max(*last_ts);
                (*next, *last_ts) = (id + 1, ts);
                // The chain goes on from the previous entry's hash, which
                // this group or the index holds: ids are assigned here, so
                // nothing can come between.
                let hash = last_hash
                    .as_ref()
                    .map(|prev| chain::link(prev, id, ts, e.key.as_deref(), e.payload.as_str().as_bytes()));
                if let Some(h) = hash {
                    *last_hash = Some(h);
                    if self.shared.checkpoint_every > 0 && id.is_multiple_of(self.shared.checkpoint_every) {
                        checkpoints.push((id, h));
                    }
                }
                let (offset, len) = encode_new(buf, &ledger.name, (id, ts, hash), e, records.len() + 1 < new_count);
                records.push((id, ts, offset, len));
                if let Some(k) = e.idempotency_key.as_deref() {
                    fresh.insert((ledger.name.clone(), k), (id, ledger.clone()));
                }
                ids.push(id);
            }
            planned.push((Ok(ids), records, *last_hash, checkpoints));
        }
        let fresh: Vec<FreshKey> =
            fresh.into_iter().map(|((_, key), (id, state))| (state, key.to_owned(), id)).collect();
        let planned = group
            .into_iter()
            .zip(planned)
            .map(|(req, (ids, records, last_hash, checkpoints))| Planned {
                reply: req.reply,
                ids,
                written: Written { ledger: req.ledger, records, last_hash, checkpoints },
            })
            .collect();
        (planned, fresh)
    }

    /// Remembers the keys first used in a durable group. A key that takes
    /// the fingerprint slot of another live key (a collision) keeps that
    /// one findable; reading it costs a read, but only on a collision or a
    /// key reused after its window.
    fn remember(&mut self, fresh: Vec<FreshKey>, now: u64) {
        for (state, key, id) in fresh {
            let Some(old) = self.idempotency.insert(&state.name, state.incarnation, &key, id) else { continue };
            match self.shared.stored_key(&state, old) {
                Ok(stored) => self.idempotency.displaced(&state.name, state.incarnation, &key, old, stored, now),
                Err(e) => {
                    tracing::warn!(ledger = %state.name, id = old, error = %e,
                        "reading an entry whose key shares a fingerprint failed; both keys are kept whole");
                    self.idempotency.unsettled(&state.name, state.incarnation, &key, id, old);
                }
            }
        }
    }

    /// One bounded step of dropping keys whose window has passed.
    fn sweep_keys(&mut self, now: u64) {
        let shared = &self.shared;
        self.idempotency.sweep_step(now, |name, incarnation| {
            let state = shared.ledger(name).filter(|s| s.incarnation == incarnation && !s.is_deleted())?;
            let index = state.index.read().expect("index lock");
            Some(expired_below(&index.frozen, index.hot_base, now))
        });
    }

    /// Writes the group durably; returns (segment, offset) the buffer begins at.
    fn write(&mut self, buf: &[u8]) -> Result<(u32, u64)> {
        if buf.is_empty() {
            return Ok((self.writer.seq, self.writer.len));
        }
        let has_records = self.writer.len > SEGMENT_HEADER_BYTES as u64;
        if has_records && self.writer.len + buf.len() as u64 > self.shared.wal_segment_bytes {
            let s = &self.shared;
            let next = SegmentWriter::create(&s.disk, s.segments.dir(), self.writer.seq + 1, s.format_version)?;
            s.segments.insert(next.seq, next.file.clone());
            s.segments.set_current(next.seq);
            self.writer = next;
        }
        let base = (self.writer.seq, self.writer.len);
        self.writer.append_durably(&self.shared.disk, buf)?;
        self.shared.set_durable_end(self.writer.seq, self.writer.len);
        Ok(base)
    }

    /// Makes the group's ids visible, then acknowledges.
    fn publish(&self, planned: Vec<Planned>, at: (u32, u64)) {
        self.make_visible(planned.iter().map(|p| &p.written), at);
        for p in planned {
            let created = !p.written.records.is_empty();
            let _ = p.reply.send(p.ids.map(|ids| AppendOutcome { ids, created }));
        }
    }

    /// Puts durable records written at `(segment, base)` into their
    /// ledgers' indexes, then says so: `Appended`, `ledger.checkpoint`, and
    /// the freezer when a chunk is full.
    fn make_visible<'a>(&self, written: impl IntoIterator<Item = &'a Written> + Clone, (segment, base): (u32, u64)) {
        let pos =
            |offset: usize, len: usize| RecordPos { segment, offset: (base + offset as u64) as u32, len: len as u32 };
        // Counted live before any becomes visible: the freezer may freeze
        // (and count dead) a record the moment the index holds it.
        let records =
            written.clone().into_iter().flat_map(|w| w.records.iter().map(|&(_, _, offset, len)| pos(offset, len)));
        self.shared.segments.account(records, true);
        // Before any becomes visible too: a deletion scrubs the segments
        // noted here, once it has passed the flusher.
        let writers = written.clone().into_iter().filter(|w| !w.records.is_empty()).map(|w| w.ledger.incarnation);
        self.shared.segments.note_holders(segment, writers);
        for w in written {
            if !w.records.is_empty() {
                let full = {
                    let mut index = w.ledger.index.write().expect("index lock");
                    for &(id, ts, offset, len) in &w.records {
                        index.push(id, ts, pos(offset, len));
                    }
                    if index.chained {
                        index.last_hash = w.last_hash;
                    }
                    index.next_chunk_to_freeze().is_some()
                };
                if full && !w.ledger.freeze_queued.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    let _ = self.freezer.send(FreezerMsg::Check(w.ledger.clone()));
                }
            }
            if let (Some(&(first_id, first_ts, ..)), Some(&(last_id, ..))) = (w.records.first(), w.records.last()) {
                let event = Appended {
                    ledger: w.ledger.name.clone(),
                    incarnation: w.ledger.incarnation,
                    first_id,
                    first_ts,
                    last_id,
                };
                self.shared.appends.publish(w.ledger.name.as_str(), &event);
            }
            for (id, hash) in &w.checkpoints {
                let event = SystemEvent::ledger_checkpoint(&w.ledger.name, *id, &chain::to_hex(hash));
                self.shared.events.publish(&event.key, &event);
            }
        }
    }

    /// Copies every live record of a sealed segment to the end of the WAL
    /// (flagged relocated), durably, then points the indexes at the copies:
    /// the old segment is then dead and the freezer releases it.
    ///
    /// The live records are found in the indexes of the ledgers that wrote
    /// to the segment, and only they are read (nearby ones in one read), each
    /// checked against its checksum: a segment is relocated when it is
    /// mostly dead, and reading all of it cost the flusher, which
    /// acknowledges appends meanwhile, a third of its time in a batch
    /// benchmark (docs/performance.md).
    fn relocate(&mut self, segment: u32, buf: &mut Vec<u8>) -> Result<()> {
        let s = self.shared.clone();
        let Some(file) = s.segments.file(segment) else { return Ok(()) };
        let path = s.segments.path(segment);
        let live = live_records_in(&s, segment);
        buf.clear();
        // (ledger, id, old position, offset in buf, encoded size)
        let mut moved = Vec::new();
        let mut bytes = Vec::new();
        for run in read_runs(&live, |(_, pos, _)| *pos) {
            let start = run[0].1.offset;
            let end = run.iter().map(|(_, pos, _)| pos.offset + pos.len).max().unwrap_or(start);
            bytes.resize((end - start) as usize, 0);
            // Read through the handle taken above, not by segment number:
            // the freezer may release the segment (every record frozen)
            // meanwhile, and its open file still reads; nothing in it is
            // live then.
            s.disk.read_at(&*file, &path, u64::from(start), &mut bytes)?;
            for (state, old, id) in run {
                let at_in_run = (old.offset - start) as usize;
                let record = &bytes[at_in_run..at_in_run + old.len as usize];
                let Ok((r, used)) = decode_record(record) else { continue };
                if used != old.len as usize || r.id != *id || r.ledger != state.name.as_str() {
                    continue;
                }
                if state.is_deleted() || state.index.read().expect("index lock").hot_pos(r.id) != Some(*old) {
                    continue;
                }
                let at = buf.len();
                let copy = WalRecord { batch_continues: false, group_start: at == 0, relocated: true, ..r };
                encode_record(&copy, buf);
                moved.push((state.clone(), r.id, *old, at, buf.len() - at));
            }
        }
        if moved.is_empty() {
            return Ok(());
        }
        let (new_segment, base) = self.write(buf)?;
        let new_pos = |at: usize, len: usize| RecordPos {
            segment: new_segment,
            offset: (base + at as u64) as u32,
            len: len as u32,
        };
        // Copies count as live before the index points at them (see publish).
        s.segments.account(moved.iter().map(|&(_, _, _, at, len)| new_pos(at, len)), true);
        s.segments.note_holders(new_segment, moved.iter().map(|(state, ..)| state.incarnation));
        let mut dead = Vec::new();
        for (state, id, old, at, len) in moved {
            let new = new_pos(at, len);
            let mut index = state.index.write().expect("index lock");
            if index.hot_pos(id) == Some(old) {
                let i = (id - index.hot_base) as usize;
                index.positions[i] = new;
                dead.push(old);
            } else {
                dead.push(new); // frozen or deleted meanwhile: the copy is dead on arrival
            }
        }
        tracing::debug!(segment, records = dead.len(), "relocated live records of a sparse segment");
        s.segments.account(dead, false);
        Ok(())
    }
}

/// A live record of a segment: its ledger, where it lies, its id.
type LiveRecord = (Arc<LedgerState>, RecordPos, EntryId);

/// The records of `segment` the indexes point at, by offset: those of
/// every ledger that wrote to it and is not deleted. One pass over the
/// ledgers (a set lookup each) and over the holders' hot positions.
fn live_records_in(s: &Shared, segment: u32) -> Vec<LiveRecord> {
    let holders = s.segments.holders(segment);
    let ledgers: Vec<Arc<LedgerState>> = {
        let ledgers = s.ledgers.read().expect("ledgers lock");
        ledgers.values().filter(|l| holders.contains(&l.incarnation) && !l.is_deleted()).cloned().collect()
    };
    let mut live = Vec::new();
    for state in ledgers {
        let index = state.index.read().expect("index lock");
        let base = index.hot_base;
        for (i, pos) in index.positions.iter().enumerate() {
            if pos.segment == segment {
                live.push((state.clone(), *pos, base + i as u64));
            }
        }
    }
    live.sort_unstable_by_key(|(_, pos, _)| pos.offset);
    live
}

/// Gaps up to this many bytes between live records are read through
/// rather than split into another read.
const RELOCATION_READ_GAP_BYTES: u32 = 64 * 1024;
/// A read of live records stops growing past this many bytes.
const RELOCATION_READ_BYTES: u32 = 4 * 1024 * 1024;

/// Splits records sorted by offset (`pos` tells where each lies) into runs
/// each read with one `pread`.
fn read_runs<T>(records: &[T], pos: impl Fn(&T) -> RecordPos) -> impl Iterator<Item = &[T]> {
    let mut rest = records;
    std::iter::from_fn(move || {
        let first = pos(rest.first()?);
        let mut end = first.offset + first.len;
        let mut n = 1;
        while let Some(pos) = rest.get(n).map(&pos) {
            let joined = pos.offset + pos.len - first.offset;
            if pos.offset > end + RELOCATION_READ_GAP_BYTES || joined > RELOCATION_READ_BYTES {
                break;
            }
            end = end.max(pos.offset + pos.len);
            n += 1;
        }
        let (run, after) = rest.split_at(n);
        rest = after;
        Some(run)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(offset: u32, len: u32) -> RecordPos {
        RecordPos { segment: 7, offset, len }
    }

    #[test]
    fn live_records_are_read_in_runs_split_by_wide_gaps_and_size() {
        let records = [
            at(16, 100),
            at(116, 100),
            at(216 + RELOCATION_READ_GAP_BYTES, 50), // a gap read through
            at(266 + RELOCATION_READ_GAP_BYTES + RELOCATION_READ_GAP_BYTES + 1, 10), // one too wide: a new run
            at(10_000_000, RELOCATION_READ_BYTES + 1), // larger than a read: a run of its own
            at(10_000_000 + RELOCATION_READ_BYTES + 1, 10),
        ];
        let runs: Vec<Vec<u32>> =
            read_runs(&records, |p| *p).map(|run| run.iter().map(|p| p.offset).collect()).collect();
        assert_eq!(
            runs,
            vec![
                vec![16, 116, 216 + RELOCATION_READ_GAP_BYTES],
                vec![266 + 2 * RELOCATION_READ_GAP_BYTES + 1],
                vec![10_000_000],
                vec![10_000_000 + RELOCATION_READ_BYTES + 1],
            ]
        );
        assert_eq!(read_runs(&[] as &[RecordPos], |p| *p).count(), 0);
    }
}
