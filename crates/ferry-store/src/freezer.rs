//! The freezer thread: freezes full chunks into packs, prunes chunks past
//! their retention, deletes ledgers, and releases WAL segments nothing
//! needs (asking the flusher to move the last live records of sparse
//! segments forward). One thread does all of these, so they never race
//! each other on the same ledger's keys.
//!
//! Freezing is background work: while the full chunks waiting are few, a
//! chunk is written by a helper thread at the lowest scheduling priority,
//! so it runs on the CPU the acknowledging path (the flusher and the
//! callers) leaves idle; past `BACKGROUND_BACKLOG_CHUNKS` waiting, the
//! freezer thread writes them itself at the normal priority until the
//! backlog is back under, so the hot tier stays bounded however busy the
//! host is (`docs/decisions/2026-12-05-freezer-priority.md`).
//!
//! A storage fault here poisons the store, except running out of file
//! descriptors (issue #12 item 9): that can only fail an open, so the step
//! did not happen and nothing durable was lost. A freeze that failed so is
//! tried again a tick later (its `freezing` key, and any file it left, is
//! what a retry or recovery redoes anyway); a retention sweep that failed
//! so after its `pruning` key was committed is finished a tick later.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use ferry_core::events::SystemEvent;
use ferry_core::limits::IDEMPOTENCY_WINDOW_MS;
use ferry_core::{LedgerName, now_ms};
use ferry_format::keys::CatalogKey;
use tokio::sync::{mpsc, oneshot};

use crate::catalog::{CatalogOp, LedgerMeta};
use crate::error::{Result, StoreError};
use crate::ledger::LedgerState;
use crate::messages::{FlusherMsg, FreezerMsg};
use crate::pack_protocols::{self, ChunkState, PackInfo};
use crate::shared::Shared;
use crate::wal;

/// How often the freezer looks at retention and sparse segments.
const TICK: Duration = Duration::from_millis(500);
/// How often retention is applied.
const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// Hot records read per page while writing a pack.
const FREEZE_PAGE_ENTRIES: usize = 4096;
/// Chunks one ledger freezes before the next ledger's turn.
const FREEZE_TURN_CHUNKS: usize = 8;
/// Full chunks waiting to freeze, over all ledgers, up to which a chunk is
/// frozen at `BACKGROUND_NICE`. One wave of ledgers filling their chunks
/// together stays under it; a backlog past it is frozen at the normal
/// priority, so the hot tier holds at most this many full chunks (plus each
/// ledger's filling one) plus what fills while one chunk freezes.
const BACKGROUND_BACKLOG_CHUNKS: u64 = 16;
/// The nice value of background freezing. The scheduler gives a nice-19
/// thread 15/1024 of a nice-0 thread's share when both want the CPU, so
/// freezing takes what the acknowledging path leaves idle. Priority can only
/// be lowered without privileges, hence a helper thread per chunk rather
/// than the freezer thread itself (which must get its normal priority back
/// when behind).
const BACKGROUND_NICE: i32 = 19;

/// True when `e` is a step refused for want of a resource that comes back:
/// an open that failed for want of a descriptor, or a write or commit
/// refused for lack of space. Nothing durable was lost; the step is tried
/// again a tick later (issue #12 items 9 and 12).
fn refused_for_now(e: &StoreError) -> bool {
    e.is_no_space() || matches!(e, StoreError::Io { source, .. } if ferry_fs::descriptors::exhausted(source))
}

/// The ledger's oldest frozen chunk if retention may prune it: no hold
/// needs an id in it (`floor`, the lowest id any hold needs), it holds no
/// idempotency key younger than the window (so a retried append is still
/// recognised, whatever retention says), and the ledger is not being
/// deleted. Chunks go oldest first, so a kept front keeps the ledger's rest.
fn prunable_front(state: &LedgerState, floor: Option<u64>, now: u64) -> Option<(u64, PackInfo)> {
    let (chunk, info) =
        state.index.read().expect("index lock").frozen.first_key_value().map(|(c, i)| (*c, i.clone()))?;
    let keys_live = info.idempotency_keys > 0 && info.last_ts + IDEMPOTENCY_WINDOW_MS >= now;
    let held = floor.is_some_and(|f| info.last_id() >= f);
    (!keys_live && !held && !state.is_deleted()).then_some((chunk, info))
}

/// Work that failed for want of a descriptor, tried again a tick later.
#[derive(Default)]
struct Deferred {
    /// Ledgers whose freeze failed.
    freezes: Vec<Arc<LedgerState>>,
    /// Chunks demoted to `pruning` whose file is not yet swept.
    sweeps: Vec<(LedgerName, u64)>,
    /// Deleted ledgers whose records a refused write left in the WAL.
    scrubs: Vec<LedgerName>,
    since: Option<Instant>,
}

impl Deferred {
    fn note(&mut self) {
        self.since.get_or_insert_with(Instant::now);
    }

    fn due(&self) -> bool {
        self.since.is_some_and(|t| t.elapsed() >= TICK)
    }
}

pub(crate) struct Freezer {
    pub rx: Receiver<FreezerMsg>,
    pub shared: Arc<Shared>,
    pub flusher: mpsc::Sender<FlusherMsg>,
    /// The last retention pass left the store over `[retention]
    /// max_bytes` (warned once until it is under again).
    pub store_over_limit: Cell<bool>,
}

impl Freezer {
    pub fn run(self) {
        // Retention runs once right after start, then every RETENTION_EVERY.
        let mut last_retention: Option<Instant> = None;
        // Ledgers with more full chunks than one turn freezes; taken in
        // turns so one ledger's backlog never starves the others or retention.
        let mut backlog: VecDeque<Arc<LedgerState>> = VecDeque::new();
        let mut deferred = Deferred::default();
        loop {
            if deferred.due() && self.shared.health.check().is_ok() {
                deferred.since = None;
                backlog.extend(deferred.freezes.drain(..));
                let sweeps = std::mem::take(&mut deferred.sweeps);
                self.contain(self.finish_sweeps(sweeps, &mut deferred));
                for ledger in std::mem::take(&mut deferred.scrubs) {
                    self.contain(self.scrub(&ledger, &mut deferred));
                }
            }
            let wait = if backlog.is_empty() { TICK } else { Duration::ZERO };
            match self.rx.recv_timeout(wait) {
                Ok(FreezerMsg::Check(state)) => backlog.push_back(state),
                Ok(FreezerMsg::Delete(state, actor, reply)) => {
                    let result = self.delete(&state, actor.as_deref(), &mut deferred);
                    // A storage fault while deleting poisons like any other.
                    if let Err(e) = &result
                        && !refused_for_now(e)
                        && !matches!(
                            e,
                            StoreError::Poisoned(_) | StoreError::ShuttingDown | StoreError::LedgerNotFound(_)
                        )
                    {
                        self.shared.health.poison(e.to_string());
                    }
                    let _ = reply.send(result);
                }
                Ok(FreezerMsg::Barrier(done)) => {
                    let _ = done.send(());
                }
                Ok(FreezerMsg::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {}
            }
            if self.shared.health.check().is_err() || self.stopping() {
                continue;
            }
            if let Some(state) = backlog.pop_front() {
                match self.freeze_some(&state) {
                    Ok(true) => backlog.push_back(state),
                    Ok(false) => {}
                    Err(e) if refused_for_now(&e) => {
                        tracing::warn!(ledger = %state.name, error = %e, "freezing waits for a descriptor or space");
                        // Queued here: the flusher need not ask again.
                        state.freeze_queued.store(true, std::sync::atomic::Ordering::SeqCst);
                        deferred.freezes.push(state);
                        deferred.note();
                    }
                    Err(e) => self.contain(Err(e)),
                }
            }
            if last_retention.is_none_or(|t| t.elapsed() >= RETENTION_EVERY) {
                last_retention = Some(Instant::now());
                self.contain(self.apply_retention(&mut deferred));
                self.contain(self.expire_key_lists());
            }
            self.contain(self.reclaim());
        }
        tracing::debug!("freezer stopped");
    }

    fn stopping(&self) -> bool {
        self.shared.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A storage fault here poisons the store; the thread carries on
    /// answering (deletions fail) until shutdown.
    fn contain(&self, result: Result<()>) {
        if let Err(e) = result
            && !matches!(e, StoreError::Poisoned(_))
        {
            self.shared.health.poison(e.to_string());
        }
    }

    /// Freezes up to `FREEZE_TURN_CHUNKS` full chunks at the front of the
    /// ledger's hot tier; true when more are waiting.
    fn freeze_some(&self, state: &Arc<LedgerState>) -> Result<bool> {
        state.freeze_queued.store(false, std::sync::atomic::Ordering::SeqCst);
        for _ in 0..FREEZE_TURN_CHUNKS {
            self.shared.health.check()?;
            let chunk = state.index.read().expect("index lock").next_chunk_to_freeze();
            let Some(chunk) = chunk else { return Ok(false) };
            if state.is_deleted() || self.stopping() {
                return Ok(false);
            }
            if full_chunks_waiting(&self.shared) <= BACKGROUND_BACKLOG_CHUNKS {
                freeze_in_background(&self.shared, state, chunk)?;
            } else {
                Self::freeze_chunk(&self.shared, state, chunk)?;
            }
        }
        let more = state.index.read().expect("index lock").next_chunk_to_freeze().is_some();
        Ok(more && !state.freeze_queued.swap(true, std::sync::atomic::Ordering::SeqCst))
    }

    /// Writes one full chunk as a pack from its hot records and moves it
    /// out of the hot tier. Needs only `Shared`, so a helper thread can run it.
    fn freeze_chunk(s: &Shared, state: &Arc<LedgerState>, chunk: u64) -> Result<()> {
        fail::fail_point!("freezer::freeze_chunk");
        let n = s.chunk_entries;
        let first = chunk * n + 1;
        let mut next = first;
        let mut page = Vec::new().into_iter();
        let mut records = std::iter::from_fn(|| {
            if next > first + n - 1 {
                return None;
            }
            if page.len() == 0 {
                let want = (first + n - next).min(FREEZE_PAGE_ENTRIES as u64) as usize;
                match s.read_records(state, next, want) {
                    Ok(p) if !p.is_empty() => page = p.into_iter(),
                    Ok(_) => {
                        return Some(Err(StoreError::MissingEntries {
                            ledger: state.name.clone(),
                            from: next,
                            to: first + n - 1,
                        }));
                    }
                    Err(e) => return Some(Err(e)),
                }
            }
            next += 1;
            page.next().map(Ok)
        });
        let info = pack_protocols::freeze(
            &s.vfs,
            &*s.catalog,
            &s.layout,
            &state.name,
            chunk,
            &pack_protocols::Pinned {
                chunk_entries: n,
                format_version: s.format_version,
                fingerprint_key: s.fingerprint_key,
            },
            &mut records,
        )?;
        let event = SystemEvent::chunk("chunk.frozen", &state.name, chunk, info.first_id, info.last_id());
        let left = state.index.write().expect("index lock").freeze_front(chunk, info);
        s.segments.account(left, false);
        s.events.publish(&event.key, &event);
        tracing::debug!(ledger = %state.name, chunk, "chunk frozen");
        metrics::counter!(ferry_core::metric_names::CHUNKS_FROZEN_TOTAL).increment(1);
        s.release_dead_segments()
    }

    /// Applies retention through the sweep, oldest chunks first: first
    /// each ledger's own `max_age` and `max_bytes`, then the store's
    /// `max_bytes` (the oldest chunk of all goes first, whichever ledger
    /// holds it). Never a chunk a hold still needs, nor one holding an
    /// idempotency key younger than its window (`prunable_front`).
    fn apply_retention(&self, deferred: &mut Deferred) -> Result<()> {
        let s = &self.shared;
        let ledgers: Vec<Arc<LedgerState>> = s.ledgers.read().expect("ledgers lock").values().cloned().collect();
        let now = now_ms();
        for state in &ledgers {
            let horizon = s.retention.max_age(&state.name).map(|age| now.saturating_sub(age.as_millis() as u64));
            let max_bytes = s.retention.ledger_max_bytes(&state.name);
            if horizon.is_none() && max_bytes.is_none() {
                continue;
            }
            let floor = s.hold_floor(&state.name);
            while !self.stopping() {
                let Some((chunk, info)) = prunable_front(state, floor, now) else { break };
                let reason = if horizon.is_some_and(|h| info.last_ts < h) {
                    "max_age"
                } else if max_bytes.is_some_and(|max| state.index.read().expect("index lock").bytes() > max) {
                    "the ledger's max_bytes"
                } else {
                    break;
                };
                if !self.prune(state, chunk, &info, reason, deferred)? {
                    return Ok(());
                }
            }
        }
        match s.retention.max_bytes {
            Some(max) => self.prune_store_to(max, &ledgers, now, deferred),
            None => Ok(()),
        }
    }

    /// Prunes the oldest frozen chunks of all ledgers (by their newest
    /// entry, then ledger name) until the ledgers' bytes together are at
    /// most `max`, or nothing prunable is left: one heap entry per ledger,
    /// its oldest chunk, so a pass costs O(ledgers) when under the limit.
    fn prune_store_to(&self, max: u64, ledgers: &[Arc<LedgerState>], now: u64, deferred: &mut Deferred) -> Result<()> {
        let bytes = |l: &LedgerState| l.index.read().expect("index lock").bytes();
        let mut total: u64 = ledgers.iter().map(|l| bytes(l)).sum();
        if total <= max {
            self.store_over_limit.set(false);
            return Ok(());
        }
        let floors: Vec<Option<u64>> = ledgers.iter().map(|l| self.shared.hold_floor(&l.name)).collect();
        // (newest entry's ts, ledger, chunk) of each ledger's oldest prunable chunk.
        let front =
            |i: usize| prunable_front(&ledgers[i], floors[i], now).map(|(c, info)| Reverse((info.last_ts, i, c)));
        let mut oldest: BinaryHeap<_> = (0..ledgers.len()).filter_map(front).collect();
        while total > max && !self.stopping() {
            let Some(Reverse((_, i, chunk))) = oldest.pop() else { break };
            // Only this thread prunes, so the ledger's front is still `chunk`.
            let Some((_, info)) = prunable_front(&ledgers[i], floors[i], now).filter(|(c, _)| *c == chunk) else {
                continue;
            };
            if !self.prune(&ledgers[i], chunk, &info, "the store's max_bytes", deferred)? {
                return Ok(());
            }
            total = total.saturating_sub(info.len);
            oldest.extend(front(i));
        }
        let over = total > max;
        if over && !self.store_over_limit.get() {
            tracing::warn!(
                bytes = total,
                max_bytes = max,
                "the ledgers hold more than retention max_bytes; what is left is held by exporters, young \
                 idempotency keys or the hot tier"
            );
        }
        self.store_over_limit.set(over);
        Ok(())
    }

    /// Prunes one ledger's oldest frozen chunk: the demotion to `pruning`
    /// with the ledger's new First in one commit, then the sweep. False
    /// when the commit was refused for lack of space (nothing changed; the
    /// pass stops and the next one tries again).
    fn prune(
        &self,
        state: &LedgerState,
        chunk: u64,
        info: &PackInfo,
        reason: &str,
        deferred: &mut Deferred,
    ) -> Result<bool> {
        let s = &self.shared;
        // A chained ledger keeps the hash of the entry before its new First
        // (the pruned chunk's last), so what is left verifies from First.
        let first_prev_hash = if state.meta.chain { info.last_hash.clone() } else { None };
        let meta = LedgerMeta { first: info.last_id() + 1, first_prev_hash, ..state.meta.clone() };
        let ledger_key = CatalogKey::Ledger(state.name.clone());
        let with = vec![CatalogOp::Put(ledger_key, meta.encode())];
        match pack_protocols::demote(&*s.catalog, &state.name, chunk, info, with) {
            Ok(()) => {}
            // Refused, nothing changed: retention tries again later.
            Err(e) if e.is_no_space() => {
                tracing::warn!(ledger = %state.name, chunk, error = %e, "retention waits for space");
                return Ok(false);
            }
            Err(e) => return Err(e),
        }
        // Readers see the new First before the file goes.
        state.index.write().expect("index lock").prune_front(chunk);
        s.packs.forget(&state.name, Some(chunk));
        match pack_protocols::sweep_demoted(&s.vfs, &*s.catalog, &s.layout, &state.name, chunk) {
            Ok(()) => {}
            // The `pruning` key and the new First are durable (the
            // commit opens nothing); the file's sweep is left.
            Err(e) if refused_for_now(&e) => {
                tracing::warn!(ledger = %state.name, chunk, error = %e, "sweeping waits for a descriptor or space");
                deferred.sweeps.push((state.name.clone(), chunk));
                deferred.note();
            }
            Err(e) => return Err(e),
        }
        tracing::info!(ledger = %state.name, chunk, first = meta.first, by = reason, "chunk pruned by retention");
        let event = SystemEvent::chunk("chunk.pruned", &state.name, chunk, info.first_id, info.last_id());
        s.events.publish(&event.key, &event);
        metrics::counter!(ferry_core::metric_names::CHUNKS_PRUNED_TOTAL).increment(1);
        Ok(true)
    }

    /// Deletes the `keys:` values of chunks whose idempotency window has
    /// passed (their keys are no longer answered, so a restart need not
    /// reload them), in one commit per pass; a pass refused for lack of
    /// space is tried again at the next.
    fn expire_key_lists(&self) -> Result<()> {
        let s = &self.shared;
        let now = now_ms();
        let ledgers: Vec<Arc<LedgerState>> = s.ledgers.read().expect("ledgers lock").values().cloned().collect();
        let (mut ops, mut advanced) = (Vec::new(), Vec::new());
        for state in ledgers {
            if state.is_deleted() {
                continue;
            }
            let index = state.index.read().expect("index lock");
            let mut next = index.keys_kept_from;
            for (&chunk, info) in index.frozen.range(index.keys_kept_from..) {
                if info.last_ts + IDEMPOTENCY_WINDOW_MS >= now {
                    break;
                }
                // Chunks frozen before format 3 never had a value.
                if info.idempotency_keys > 0 && info.format_version >= 3 {
                    ops.push(CatalogOp::Delete(CatalogKey::Keys(state.name.clone(), chunk)));
                }
                next = chunk + 1;
            }
            if next != index.keys_kept_from {
                drop(index);
                advanced.push((state, next));
            }
        }
        if !ops.is_empty() {
            match s.catalog.commit(&ops) {
                Ok(()) => tracing::debug!(values = ops.len(), "deleted expired idempotency key lists"),
                Err(e) if e.is_no_space() => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        for (state, next) in advanced {
            state.index.write().expect("index lock").keys_kept_from = next;
        }
        Ok(())
    }

    /// Finishes sweeps that failed for want of a descriptor after their
    /// chunk was demoted; those that fail so again wait another tick.
    fn finish_sweeps(&self, sweeps: Vec<(LedgerName, u64)>, deferred: &mut Deferred) -> Result<()> {
        let s = &self.shared;
        for (ledger, chunk) in sweeps {
            let key = CatalogKey::Chunk(ledger.clone(), chunk);
            // Gone, or another incarnation's key by now (the ledger deleted
            // and created again): nothing of this sweep is left to do.
            let state = s.catalog.get(&key)?.map(|v| ChunkState::decode(&key, &v)).transpose()?;
            if !matches!(state, Some(ChunkState::Pruning(_))) {
                continue;
            }
            match pack_protocols::sweep_demoted(&s.vfs, &*s.catalog, &s.layout, &ledger, chunk) {
                Ok(()) => tracing::info!(%ledger, chunk, "finished a sweep that waited for a descriptor or space"),
                Err(e) if refused_for_now(&e) => {
                    deferred.sweeps.push((ledger, chunk));
                    deferred.note();
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Deletes a ledger: no more appends, then one catalog commit removes its
    /// key and cursors and demotes its chunks, then the sweep removes files.
    ///
    /// Running out of space or descriptors never poisons here (issue #12
    /// items 9 and 12): refused at the commit, nothing durable changed and
    /// the ledger takes appends again (the caller may retry the DELETE);
    /// refused in a sweep after it, the ledger is deleted and the sweeps
    /// left are finished a tick later, like retention's (a chunk frozen by a
    /// ledger created again under the name meanwhile replaces the `pruning`
    /// key first, and the file, so the late sweep finds nothing of its own).
    fn delete(&self, state: &Arc<LedgerState>, actor: Option<&str>, deferred: &mut Deferred) -> Result<()> {
        fail::fail_point!("freezer::delete");
        let s = &self.shared;
        s.health.check()?;
        // A retried DELETE queued behind the first finds its ledger already
        // deleted, and perhaps its name taken by a new incarnation: it must
        // touch neither.
        let current = s.ledger(&state.name).is_some_and(|l| Arc::ptr_eq(&l, state));
        if state.is_deleted() || !current {
            return Err(StoreError::LedgerNotFound(state.name.clone()));
        }
        state.mark_deleted();
        let (tx, rx) = oneshot::channel();
        self.flusher.blocking_send(FlusherMsg::Barrier(tx)).map_err(|_| StoreError::ShuttingDown)?;
        rx.blocking_recv().map_err(|_| StoreError::ShuttingDown)?;

        let name = &state.name;
        let frozen: Vec<_> = state.index.read().expect("index lock").frozen.clone().into_iter().collect();
        let scrub = wal::scrub::intent_op(s, state)?;
        if let Err(e) = self.commit_deletion(name, &frozen, scrub) {
            if refused_for_now(&e) {
                state.unmark_deleted();
            }
            return Err(e);
        }
        self.flusher.blocking_send(FlusherMsg::ForgetLedger(name.clone())).map_err(|_| StoreError::ShuttingDown)?;
        s.packs.forget(name, None);
        let mut left = Vec::new();
        for (chunk, _) in &frozen {
            if !left.is_empty() {
                left.push(*chunk);
                continue;
            }
            match pack_protocols::sweep_demoted(&s.vfs, &*s.catalog, &s.layout, name, *chunk) {
                Ok(()) => {}
                Err(e) if refused_for_now(&e) => {
                    tracing::warn!(ledger = %name, chunk, error = %e, "the deleted ledger's sweep waits for a descriptor or space");
                    left.push(*chunk);
                }
                Err(e) => return Err(e),
            }
        }
        // Again after the unlinks: a read racing the deletion may have opened
        // (and cached) an old pack meanwhile; drop its descriptor now.
        s.packs.forget(name, None);
        if left.is_empty() {
            match pack_protocols::remove_ledger_dirs(&s.vfs, &s.layout, name) {
                Ok(strays) => {
                    for path in strays {
                        tracing::warn!(ledger = %name, file = %path.display(), "left a file that is not ferry's in the deleted ledger's directory");
                    }
                }
                // Empty directories left behind cost nothing.
                Err(e) if refused_for_now(&e) => {
                    tracing::warn!(ledger = %name, error = %e, "the deleted ledger's directories stay for now");
                }
                Err(e) => return Err(e),
            }
        } else {
            deferred.sweeps.extend(left.into_iter().map(|chunk| (name.clone(), chunk)));
            deferred.note();
        }
        let hot = {
            let mut ledgers = s.ledgers.write().expect("ledgers lock");
            if ledgers.get(name).is_some_and(|l| Arc::ptr_eq(l, state)) {
                ledgers.remove(name);
            }
            metrics::gauge!(ferry_core::metric_names::LEDGERS).set(ledgers.len() as f64);
            std::mem::take(&mut state.index.write().expect("index lock").positions)
        };
        s.segments.account(hot, false);
        tracing::info!(ledger = %name, actor, "ledger deleted");
        let event = SystemEvent::ledger_deleted(name).by(actor);
        s.events.publish(&event.key, &event);
        s.release_dead_segments()?;
        self.scrub(name, deferred)
    }

    /// Erases a deleted ledger's records from the WAL segments that remain
    /// (`wal::scrub`). A refused write, or damage met on the way, leaves its
    /// `scrub:` key: a refused write is tried again a tick later, and the
    /// next start finishes either (or reports the damage, as its scan would).
    fn scrub(&self, name: &LedgerName, deferred: &mut Deferred) -> Result<()> {
        match wal::scrub::finish(&self.shared, name) {
            Ok(()) => Ok(()),
            Err(e @ StoreError::Corrupted { .. }) => {
                tracing::error!(ledger = %name, error = %e, "the deleted ledger's records stay in the WAL until the damage is repaired");
                Ok(())
            }
            Err(e) if refused_for_now(&e) || matches!(e, StoreError::Io { .. }) => {
                tracing::warn!(ledger = %name, error = %e, "scrubbing the deleted ledger's records waits");
                deferred.scrubs.push(name.clone());
                deferred.note();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The deletion's one commit: the ledger's key and cursors go, its
    /// chunks become `pruning`, and its `scrub:` key (if any) comes.
    fn commit_deletion(&self, name: &LedgerName, frozen: &[(u64, PackInfo)], scrub: Option<CatalogOp>) -> Result<()> {
        let s = &self.shared;
        let mut ops = vec![CatalogOp::Delete(CatalogKey::Ledger(name.clone()))];
        ops.extend(scrub);
        for (chunk, info) in frozen {
            ops.push(CatalogOp::Put(
                CatalogKey::Chunk(name.clone(), *chunk),
                ChunkState::Pruning(info.clone()).encode(),
            ));
        }
        let _cursors = s.cursor_lock.lock().expect("cursor lock");
        for (key, _) in s.catalog.scan(CatalogKey::CURSOR_PREFIX)? {
            if matches!(&key, CatalogKey::Cursor(_, l) if l == name) {
                ops.push(CatalogOp::Delete(key));
            }
        }
        s.catalog.commit(&ops)
    }

    /// Releases dead segments and asks the flusher to move the live records
    /// of sparse ones forward, so a slow ledger never pins old segments.
    fn reclaim(&self) -> Result<()> {
        self.shared.release_dead_segments()?;
        for segment in self.shared.segments.take_sparse() {
            if self.flusher.blocking_send(FlusherMsg::Relocate(segment)).is_err() {
                return Ok(()); // shutting down
            }
        }
        Ok(())
    }
}

/// Full chunks waiting to freeze, over all ledgers.
fn full_chunks_waiting(s: &Shared) -> u64 {
    let ledgers = s.ledgers.read().expect("ledgers lock");
    ledgers
        .values()
        .map(|l| {
            let index = l.index.read().expect("index lock");
            index.positions.len() as u64 / index.chunk_entries
        })
        .sum()
}

/// Freezes one chunk on a helper thread at `BACKGROUND_NICE`, waiting for
/// it: the freezer thread does nothing else meanwhile, so this is still the
/// one thread that freezes, prunes and deletes. A helper that cannot be
/// started (no thread to spare) leaves the chunk to the freezer thread; a
/// panic on it goes on on the freezer thread, which poisons the store.
fn freeze_in_background(s: &Shared, state: &Arc<LedgerState>, chunk: u64) -> Result<()> {
    std::thread::scope(|scope| {
        let helper = std::thread::Builder::new().name("ferry-freeze-bg".into()).spawn_scoped(scope, || {
            lower_priority();
            Freezer::freeze_chunk(s, state, chunk)
        });
        match helper {
            Ok(helper) => helper.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
            Err(e) => {
                tracing::debug!(error = %e, "no helper thread; freezing at the normal priority");
                Freezer::freeze_chunk(s, state, chunk)
            }
        }
    })
}

/// Lowers the calling thread's priority to `BACKGROUND_NICE`. On Linux a
/// nice value belongs to one thread (`setpriority(PRIO_PROCESS, 0)` names
/// the caller alone); elsewhere it would lower the whole process, so there
/// freezing keeps the normal priority. A refusal (a sandbox, say) only
/// costs the priority.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(None, BACKGROUND_NICE) {
        tracing::debug!(error = %e, "cannot lower the background freezer's priority");
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use ferry_core::{LedgerName, NewEntry, Payload};

    use super::*;
    use crate::{Store, StoreConfig};

    /// The helper's priority is its own: the thread that started it keeps
    /// the normal one (Linux names one thread with `PRIO_PROCESS, 0`).
    #[cfg(target_os = "linux")]
    #[test]
    fn background_freezing_runs_at_the_lowest_priority_and_only_there() {
        let before = rustix::process::getpriority_process(None).unwrap();
        let helper = std::thread::spawn(|| {
            lower_priority();
            rustix::process::getpriority_process(None).unwrap()
        });
        assert_eq!(helper.join().unwrap(), BACKGROUND_NICE);
        assert_eq!(rustix::process::getpriority_process(None).unwrap(), before);
    }

    /// More full chunks than the background bound, at once: those past it
    /// freeze on the freezer thread, the rest on helpers, all in order, and
    /// the hot tier is left with nothing but the filling chunk.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_backlog_past_the_bound_freezes_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = StoreConfig::new(dir.path());
        config.chunk_entries = Some(4);
        let store = Store::open(config).unwrap();
        let ledger = LedgerName::parse("audit").unwrap();
        let full = BACKGROUND_BACKLOG_CHUNKS + 4;
        let entries: Vec<NewEntry> = (0..full * 4 + 1)
            .map(|i| NewEntry {
                key: None,
                idempotency_key: None,
                payload: Payload::from_json(&format!(r#"{{"n":{i}}}"#)).unwrap(),
            })
            .collect();
        store.append(&ledger, entries).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while store.chunk_counts().frozen < full {
            assert!(Instant::now() < deadline, "{:?} of {full} frozen", store.chunk_counts());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!((store.chunk_counts().hot, store.chunk_counts().frozen), (1, full));
        let read = store.read_blocking(&ledger, Some(1), 1000).unwrap();
        let ids: Vec<u64> = read.entries.iter().map(|e| e.id).collect();
        assert_eq!(ids, (1..=full * 4 + 1).collect::<Vec<_>>());
        assert_eq!(full_chunks_waiting(store.shared()), 0);
        store.shutdown().await;
    }
}
