//! The exporter runtime: one supervisor task per exporter owns the state
//! machines of its ledgers, wakes on appends and ledger events (never by
//! polling storage), runs at most `max_parallel_ledgers` jobs at once in a
//! round-robin ready queue, and answers control requests. `Exporters` is
//! the handle the API and `ferry serve` hold.
//!
//! **Architecture Invariant:** a supervisor is the only writer of its
//! machines; jobs report outcomes and the supervisor applies them, so each
//! (exporter, ledger) has at most one job in flight and its cursor moves
//! only after a durable cursor write, made through `cursors::commit`.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::bus::{Received, Subscription};
use ferry_core::events::{Appended, SystemEvent};
use ferry_core::limits::{EXPORT_CONTROL_QUEUE_DEPTH, EXPORT_WAKEUPS_BUFFER};
use ferry_core::metric_names as names;
use ferry_core::{EntryId, LedgerName, now_ms};
use ferry_store::{CursorUpdate, LedgerHead, Store, StoreError};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::age::Marks;
use crate::check::{CheckReport, LedgerCheck};
use crate::cursors::{self, CursorTable};
use crate::job::{Done, Job};
use crate::machine::{LedgerMachine, Next, Notice, Outcome};
use crate::redact::Secrets;
use crate::settings::{ExporterSettings, StartAt};
use crate::sink::{ChainStart, Sink, SinkError, Target};
use crate::status::{ExporterHealth, ExporterState, ExporterStatus, LedgerStatus, Page, StuckLedger};

/// What the control API can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    #[error("no exporter named {0}")]
    NotFound(String),
    #[error("exporter {exporter} does not export ledger {ledger}")]
    NotExported { exporter: LedgerName, ledger: LedgerName },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("exporter {0} is configured; only an orphaned exporter's cursors can be deleted")]
    Configured(LedgerName),
    #[error("exporter {0} is shutting down")]
    Stopping(LedgerName),
    #[error("reset of exporter {exporter} failed and changed nothing; the exporter is stopped until resumed: {source}")]
    ResetFailed { exporter: LedgerName, source: StoreError },
    #[error(transparent)]
    Store(#[from] StoreError),
}

enum Control {
    Status(Page, oneshot::Sender<ExporterStatus>),
    Health(oneshot::Sender<ExporterHealth>),
    Ledgers(Vec<LedgerName>, oneshot::Sender<Vec<LedgerStatus>>),
    Pause(oneshot::Sender<ExporterStatus>),
    Resume(oneshot::Sender<ExporterStatus>),
    Reset {
        ledger: Option<LedgerName>,
        from_id: Option<EntryId>,
        actor: Option<String>,
        reply: oneshot::Sender<Result<ExporterStatus, ExportError>>,
    },
    Shutdown {
        deadline: Instant,
        reply: oneshot::Sender<()>,
    },
    Check {
        ledger: Option<LedgerName>,
        reply: oneshot::Sender<Result<CheckReport, ExportError>>,
    },
}

/// The running exporters. Cheap to clone.
#[derive(Clone)]
pub struct Exporters {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    table: Arc<CursorTable>,
    handles: BTreeMap<LedgerName, mpsc::Sender<Control>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Exporters {
    /// Loads the cursors into `table` (the hold retention already consults),
    /// writes the starting cursors of `start = "latest"` exporters, creates
    /// the dead-letter ledgers, and starts one supervisor per exporter.
    pub async fn start<S: Sink>(
        store: Store,
        table: Arc<CursorTable>,
        exporters: Vec<(ExporterSettings, S)>,
    ) -> Result<Exporters, ExportError> {
        for dead_letter in exporters.iter().filter_map(|(s, _)| s.dead_letter.clone()) {
            let store = store.clone();
            store.create_ledger(&dead_letter).await?;
        }
        let loaded = {
            let store = store.clone();
            store.cursors().await?
        };
        // Short batches that were in flight at the last stop, per exporter:
        // each is sent again exactly as it was.
        let mut sent_to: HashMap<LedgerName, HashMap<LedgerName, EntryId>> = HashMap::new();
        for c in &loaded {
            if let Some(to) = c.sent_to {
                sent_to.entry(c.exporter.clone()).or_default().insert(c.ledger.clone(), to);
            }
        }
        table.load(loaded.into_iter().map(|c| (c.exporter, c.ledger, c.id)));
        let ledgers = store.ledger_heads();
        let mut updates = Vec::new();
        for (settings, _) in exporters.iter().filter(|(s, _)| s.start == StartAt::Latest) {
            for info in ledgers.iter().filter(|l| settings.matcher.matches(&l.name)) {
                if table.get(&settings.name, &info.name).is_none() {
                    updates.push(CursorUpdate::Set {
                        exporter: settings.name.clone(),
                        ledger: info.name.clone(),
                        incarnation: info.incarnation,
                        id: info.head,
                        sent_to: None,
                    });
                }
            }
        }
        if !updates.is_empty() {
            cursors::commit(&store, updates.clone()).await?;
            for u in updates {
                if let CursorUpdate::Set { exporter, ledger, id, .. } = u {
                    table.set(&exporter, &ledger, id);
                }
            }
        }
        let mut handles = BTreeMap::new();
        let mut tasks = Vec::new();
        for (settings, sink) in exporters {
            let (tx, rx) = mpsc::channel(EXPORT_CONTROL_QUEUE_DEPTH);
            let name = settings.name.clone();
            let mut supervisor = Supervisor::new(store.clone(), table.clone(), settings, Arc::new(sink));
            supervisor.sent_to = sent_to.remove(&name).unwrap_or_default();
            tasks.push(tokio::spawn(supervisor.run(rx)));
            tracing::info!(exporter = %name, "exporter started");
            handles.insert(name, tx);
        }
        Ok(Exporters { inner: Arc::new(Inner { store, table, handles, tasks: Mutex::new(tasks) }) })
    }

    /// Every configured exporter, then every orphaned one, each with the
    /// first `page` of its ledgers.
    pub async fn list(&self, page: &Page) -> Vec<ExporterStatus> {
        let mut out = Vec::new();
        for name in self.inner.handles.keys() {
            if let Ok(s) = self.status(name.as_str(), page.clone()).await {
                out.push(s);
            }
        }
        for name in self.inner.table.orphans().keys() {
            if let Some(s) = self.orphan_status(name, page) {
                out.push(s);
            }
        }
        out
    }

    /// An exporter with one page of its ledgers and totals over all.
    pub async fn status(&self, name: &str, page: Page) -> Result<ExporterStatus, ExportError> {
        match self.handle(name) {
            Ok((name, tx)) => ask(name, tx, |reply| Control::Status(page, reply)).await,
            Err(e) => self.orphan_status(&parse_name(name)?, &page).ok_or(e),
        }
    }

    /// Each configured exporter's stuck ledgers (older than its `max_lag`),
    /// from memory.
    pub async fn health(&self) -> Vec<ExporterHealth> {
        let mut out = Vec::new();
        for (name, tx) in &self.inner.handles {
            if let Ok(h) = ask(name.clone(), tx, Control::Health).await {
                out.push(h);
            }
        }
        out
    }

    /// The status of each of `ledgers` that an exporter tracks (the others
    /// are left out), from memory: the per-ledger series of `/metrics`,
    /// for a few named ledgers without a walk over all of them.
    pub async fn ledgers(&self, name: &LedgerName, ledgers: Vec<LedgerName>) -> Vec<LedgerStatus> {
        match self.inner.handles.get(name) {
            Some(tx) => ask(name.clone(), tx, |reply| Control::Ledgers(ledgers, reply)).await.unwrap_or_default(),
            None => Vec::new(),
        }
    }

    /// Stops starting new batches; those in flight finish.
    pub async fn pause(&self, name: &str) -> Result<ExporterStatus, ExportError> {
        let (name, tx) = self.handle(name)?;
        ask(name, tx, Control::Pause).await
    }

    /// Ends a pause or a stop, and retries failed ledgers.
    pub async fn resume(&self, name: &str) -> Result<ExporterStatus, ExportError> {
        let (name, tx) = self.handle(name)?;
        ask(name, tx, Control::Resume).await
    }

    /// Re-exports from `from_id` (default 1, raised to each ledger's First)
    /// for one ledger or all. All cursors change in one commit or none do;
    /// a failed commit leaves the exporter stopped.
    pub async fn reset(
        &self,
        name: &str,
        ledger: Option<LedgerName>,
        from_id: Option<EntryId>,
        actor: Option<&str>,
    ) -> Result<ExporterStatus, ExportError> {
        let (name, tx) = self.handle(name)?;
        let (reply, answer) = oneshot::channel();
        let actor = actor.map(str::to_owned);
        tx.send(Control::Reset { ledger, from_id, actor, reply })
            .await
            .map_err(|_| ExportError::Stopping(name.clone()))?;
        answer.await.map_err(|_| ExportError::Stopping(name))?
    }

    /// The range check: asks the sink what the destination holds of each
    /// ledger (or one), and judges it against `First..=cursor`. Runs beside
    /// the deliveries, which go on meanwhile.
    pub async fn check(&self, name: &str, ledger: Option<LedgerName>) -> Result<CheckReport, ExportError> {
        let (name, tx) = self.handle(name)?;
        let (reply, answer) = oneshot::channel();
        tx.send(Control::Check { ledger, reply }).await.map_err(|_| ExportError::Stopping(name.clone()))?;
        answer.await.map_err(|_| ExportError::Stopping(name))?
    }

    /// Deletes the cursors of an exporter that is no longer configured.
    pub async fn delete_orphan(&self, name: &str) -> Result<(), ExportError> {
        let exporter = parse_name(name)?;
        if self.inner.handles.contains_key(&exporter) {
            return Err(ExportError::Configured(exporter));
        }
        let Some(cursors) = self.inner.table.orphans().remove(&exporter) else {
            return Err(ExportError::NotFound(name.to_owned()));
        };
        let updates: Vec<CursorUpdate> =
            cursors.into_keys().map(|ledger| CursorUpdate::Delete { exporter: exporter.clone(), ledger }).collect();
        cursors::commit(&self.inner.store, updates).await?;
        self.inner.table.forget_orphan(&exporter);
        tracing::info!(exporter = %exporter, "orphaned exporter's cursors deleted");
        Ok(())
    }

    /// Finishes in-flight batches, abandoning those still running at
    /// `timeout`, and stops every supervisor. Safe to call more than once.
    pub async fn shutdown(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut replies = Vec::new();
        for tx in self.inner.handles.values() {
            let (reply, answer) = oneshot::channel();
            if tx.send(Control::Shutdown { deadline, reply }).await.is_ok() {
                replies.push(answer);
            }
        }
        for answer in replies {
            let _ = answer.await;
        }
        let tasks = std::mem::take(&mut *self.inner.tasks.lock().expect("tasks lock"));
        for task in tasks {
            let _ = task.await;
        }
    }

    fn handle(&self, name: &str) -> Result<(LedgerName, &mpsc::Sender<Control>), ExportError> {
        let name = parse_name(name)?;
        match self.inner.handles.get(&name) {
            Some(tx) => Ok((name, tx)),
            None => Err(ExportError::NotFound(name.to_string())),
        }
    }

    fn orphan_status(&self, name: &LedgerName, page: &Page) -> Option<ExporterStatus> {
        let cursors = self.inner.table.orphans().remove(name)?;
        let ledgers_total = cursors.len();
        let lag: u64 = cursors
            .iter()
            .map(|(ledger, &cursor)| self.inner.store.ledger_head(ledger).map_or(0, |i| i.head.saturating_sub(cursor)))
            .sum();
        let (cursors, next) = page_of(cursors.into_iter().collect(), page, |(ledger, _)| ledger);
        let ledgers = cursors
            .into_iter()
            .map(|(ledger, cursor)| {
                let head = self.inner.store.ledger_head(&ledger).map_or(cursor, |i| i.head);
                LedgerStatus {
                    ledger,
                    cursor,
                    head,
                    lag: head.saturating_sub(cursor),
                    state: "orphaned".into(),
                    last_error: None,
                    attempts: 0,
                    last_success_at: None,
                    oldest_unexported_age_ms: (head <= cursor).then_some(0),
                    stuck: false,
                }
            })
            .collect();
        Some(ExporterStatus {
            name: name.clone(),
            sink: None,
            state: ExporterState::Orphaned,
            max_lag_ms: None,
            lag,
            oldest_unexported_age_ms: (lag == 0).then_some(0),
            ledgers_total,
            stuck_ledgers: 0,
            ledgers,
            next,
        })
    }
}

/// Asks the sink about each target in turn and judges the answers. The
/// sink's errors pass through its secrets like every other error.
async fn check<S: Sink>(
    sink: &S,
    secrets: &Secrets,
    exporter: LedgerName,
    kind: String,
    targets: Vec<(Target, ChainStart, EntryId)>,
) -> CheckReport {
    let mut ledgers = Vec::with_capacity(targets.len());
    for (target, start, cursor) in targets {
        let first = start.first;
        let checked = match sink.check(&target, &start, cursor).await {
            Ok(Some(holding)) => LedgerCheck::judge(target.ledger, target.incarnation, first, cursor, holding),
            Ok(None) => LedgerCheck::unknown(target.ledger, target.incarnation, first, cursor, Ok(())),
            Err(e) => {
                let error = Err(e.redacted(secrets).to_string());
                LedgerCheck::unknown(target.ledger, target.incarnation, first, cursor, error)
            }
        };
        ledgers.push(checked);
    }
    let ok = ledgers.iter().all(|l| l.faults.is_empty());
    CheckReport { exporter, sink: kind, ok, ledgers }
}

/// The items of `all` (sorted by ledger name) after `page.after`, at most
/// `page.limit`, and the last one's name when more follow.
fn page_of<T>(all: Vec<T>, page: &Page, ledger: impl Fn(&T) -> &LedgerName) -> (Vec<T>, Option<LedgerName>) {
    let start = match &page.after {
        Some(after) => all.partition_point(|t| ledger(t) <= after),
        None => 0,
    };
    let more = all.len() > start + page.limit;
    let items: Vec<T> = all.into_iter().skip(start).take(page.limit).collect();
    let next = if more { items.last().map(|t| ledger(t).clone()) } else { None };
    (items, next)
}

fn parse_name(name: &str) -> Result<LedgerName, ExportError> {
    LedgerName::parse(name).map_err(|_| ExportError::NotFound(name.to_owned()))
}

async fn ask<T>(
    name: LedgerName,
    tx: &mpsc::Sender<Control>,
    make: impl FnOnce(oneshot::Sender<T>) -> Control,
) -> Result<T, ExportError> {
    let (reply, answer) = oneshot::channel();
    tx.send(make(reply)).await.map_err(|_| ExportError::Stopping(name.clone()))?;
    answer.await.map_err(|_| ExportError::Stopping(name))
}

/// One ledger as a supervisor tracks it.
struct Tracked {
    machine: LedgerMachine,
    incarnation: u64,
    /// In the ready queue.
    queued: bool,
    /// Its entry in the timer set.
    wake: Option<Instant>,
    /// Cancels the job in flight.
    cancel: Option<CancellationToken>,
    /// The next batch's entries, read ahead by the last delivery.
    prefetched: Option<Vec<ferry_core::Entry>>,
    /// Timestamps that tell the age of the oldest unexported entry.
    marks: Marks,
}

struct Supervisor<S> {
    store: Store,
    table: Arc<CursorTable>,
    settings: Arc<ExporterSettings>,
    sink: Arc<S>,
    /// The sink's secrets: removed from every error before it is shown.
    secrets: Secrets,
    state: ExporterState,
    ledgers: HashMap<LedgerName, Tracked>,
    ready: VecDeque<LedgerName>,
    timers: BTreeSet<(Instant, LedgerName)>,
    workers: JoinSet<Done>,
    jobs: HashMap<tokio::task::Id, (LedgerName, u64)>,
    total_lag: u64,
    /// Ledgers holding entries read ahead: at most `max_parallel_ledgers`
    /// (plus the jobs running), so memory stays bounded by batch sizes.
    prefetched: usize,
    /// The `sent_to` of the catalog's cursors at start, for ledgers not yet
    /// tracked: a short batch that was in flight before the restart.
    sent_to: HashMap<LedgerName, EntryId>,
}

impl<S: Sink> Supervisor<S> {
    fn new(store: Store, table: Arc<CursorTable>, settings: ExporterSettings, sink: Arc<S>) -> Self {
        Self {
            store,
            table,
            settings: Arc::new(settings),
            secrets: sink.secrets(),
            sink,
            state: ExporterState::Running,
            ledgers: HashMap::new(),
            ready: VecDeque::new(),
            timers: BTreeSet::new(),
            workers: JoinSet::new(),
            jobs: HashMap::new(),
            total_lag: 0,
            prefetched: 0,
            sent_to: HashMap::new(),
        }
    }

    fn subscribe(&self) -> (Subscription<Appended>, Subscription<SystemEvent>) {
        (self.store.appends().subscribe("", EXPORT_WAKEUPS_BUFFER), self.store.events().subscribe("ledger.", 1024))
    }

    async fn run(mut self, mut control: mpsc::Receiver<Control>) {
        // Subscribe before reading the heads, so no append falls between.
        let (mut appends, mut events) = self.subscribe();
        self.resync();
        loop {
            self.schedule();
            let timer = self.timers.first().map(|(t, _)| *t);
            tokio::select! {
                command = control.recv() => match command {
                    Some(Control::Shutdown { deadline, reply }) => {
                        self.drain(deadline).await;
                        let _ = reply.send(());
                        break;
                    }
                    Some(command) => {
                        // An append the store acknowledged before the
                        // question was asked is in the answer.
                        self.take_waiting(&mut appends, &mut events);
                        self.control(command).await
                    }
                    None => {
                        self.drain(Instant::now()).await;
                        break;
                    }
                },
                Some(done) = self.workers.join_next_with_id(), if !self.workers.is_empty() => self.finished(done),
                wake = appends.recv() => match wake {
                    Some(Received::Message(a)) => self.appended(&a),
                    Some(Received::Lagged) => {
                        (appends, events) = self.subscribe();
                        self.resync();
                    }
                    None => break,
                },
                event = events.recv() => match event {
                    Some(Received::Message(e)) => self.ledger_event(&e),
                    Some(Received::Lagged) => {
                        (appends, events) = self.subscribe();
                        self.resync();
                    }
                    None => break,
                },
                () = tokio::time::sleep_until(timer.unwrap_or_else(Instant::now)), if timer.is_some() => self.fire_timers(),
            }
        }
        tracing::info!(exporter = %self.settings.name, "exporter stopped");
    }

    /// Applies the wake-ups and ledger events already waiting, without
    /// waiting for more. The store publishes them before it answers an
    /// append, so after this every acknowledged append is counted.
    fn take_waiting(&mut self, appends: &mut Subscription<Appended>, events: &mut Subscription<SystemEvent>) {
        let lagged = take_all(appends, |a| self.appended(a)) || take_all(events, |e| self.ledger_event(e));
        if lagged {
            (*appends, *events) = self.subscribe();
            self.resync();
        }
    }

    /// Brings every tracked ledger up to the store's heads, tracks new
    /// ledgers and forgets deleted ones. Reads memory only.
    fn resync(&mut self) {
        let infos = self.store.ledger_heads();
        let live: HashMap<&LedgerName, u64> = infos.iter().map(|i| (&i.name, i.incarnation)).collect();
        let gone: Vec<LedgerName> = self
            .ledgers
            .iter()
            .filter(|(name, t)| live.get(name) != Some(&t.incarnation))
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.forget(&name);
        }
        for info in &infos {
            if self.ledgers.contains_key(&info.name) {
                self.on_head(&info.name, info.incarnation, info.head, None);
            } else {
                self.track(info);
            }
        }
    }

    fn appended(&mut self, a: &Appended) {
        self.on_head(&a.ledger, a.incarnation, a.last_id, Some((a.first_id, a.first_ts)));
    }

    /// The ledger's head is `head`; `mark` is an entry's (id, ts) when known.
    fn on_head(&mut self, ledger: &LedgerName, incarnation: u64, head: EntryId, mark: Option<(EntryId, u64)>) {
        match self.ledgers.get(ledger).map(|t| t.incarnation.cmp(&incarnation)) {
            // A late wake-up of a ledger deleted since: nothing to do.
            Some(std::cmp::Ordering::Greater) => return,
            // The name holds a new ledger (incarnations only grow): the
            // tracked one and its cursor are gone; follow the new one from
            // its own cursor.
            Some(std::cmp::Ordering::Less) => self.forget(ledger),
            _ => {}
        }
        if let Some(t) = self.ledgers.get_mut(ledger) {
            if let Some((id, ts)) = mark
                && id > t.machine.cursor()
            {
                t.marks.note(id, ts);
            }
            let before = t.machine.lag();
            t.machine.on_head(head, Instant::now().into_std());
            let after = t.machine.lag();
            self.adjust_lag(before, after);
            self.evaluate(ledger);
        } else if self.settings.matcher.matches(ledger)
            && let Some(info) = self.store.ledger_head(ledger)
        {
            self.track(&info);
        }
    }

    fn ledger_event(&mut self, event: &SystemEvent) {
        let Some(name) = event.data.get("ledger").and_then(|l| l.as_str()).and_then(|l| LedgerName::parse(l).ok())
        else {
            return;
        };
        match event.kind {
            "ledger.deleted" => {
                // A late event of an older ledger: the one tracked now lives.
                let current = self.store.ledger_head(&name).map(|h| h.incarnation);
                if current.is_none() || current != self.ledgers.get(&name).map(|t| t.incarnation) {
                    self.forget(&name);
                }
            }
            "ledger.created" => {
                if let Some(info) = self.store.ledger_head(&name) {
                    if self.ledgers.get(&name).is_some_and(|t| t.incarnation != info.incarnation) {
                        self.forget(&name);
                    }
                    if !self.ledgers.contains_key(&name) {
                        self.track(&info);
                    }
                }
            }
            _ => {}
        }
    }

    /// Starts tracking a ledger at its stored cursor, or (a ledger with
    /// none) before its First.
    fn track(&mut self, info: &LedgerHead) {
        if !self.settings.matcher.matches(&info.name) {
            return;
        }
        let s = &self.settings;
        let cursor = self.table.get(&s.name, &info.name).unwrap_or(info.first.saturating_sub(1));
        if cursor > info.head {
            tracing::warn!(exporter = %s.name, ledger = %info.name, cursor, head = info.head, "cursor is beyond the head");
        }
        self.table.set(&s.name, &info.name, cursor);
        let mut machine = LedgerMachine::new(s.batch, s.retry, s.dead_letter.is_some(), cursor, info.head);
        if let Some(to) = self.sent_to.remove(&info.name)
            && !machine.restore_unacked(to)
        {
            tracing::warn!(exporter = %s.name, ledger = %info.name, cursor, sent_to = to, head = info.head, "sent_to is not after the cursor and within the head; ignored");
        }
        if self.sink.keeps_position() {
            machine.probe_destination();
        }
        if self.state == ExporterState::Paused {
            machine.pause();
        }
        self.adjust_lag(0, machine.lag());
        let tracked = Tracked {
            machine,
            incarnation: info.incarnation,
            queued: false,
            wake: None,
            cancel: None,
            prefetched: None,
            marks: Marks::default(),
        };
        self.ledgers.insert(info.name.clone(), tracked);
        self.evaluate(&info.name);
    }

    /// Stops tracking a deleted ledger; its job (if any) is cancelled and
    /// its outcome ignored.
    fn forget(&mut self, ledger: &LedgerName) {
        if let Some(t) = self.ledgers.remove(ledger) {
            if let Some(cancel) = t.cancel {
                cancel.cancel();
            }
            if let Some(w) = t.wake {
                self.timers.remove(&(w, ledger.clone()));
            }
            self.prefetched -= t.prefetched.is_some() as usize;
            self.adjust_lag(t.machine.lag(), 0);
        }
        self.sent_to.remove(ledger);
        self.table.forget_ledger(ledger);
    }

    /// Asks the machine what is next and files the ledger accordingly.
    fn evaluate(&mut self, ledger: &LedgerName) {
        let Some(t) = self.ledgers.get_mut(ledger) else { return };
        let next = t.machine.next(Instant::now().into_std());
        if let Some(w) = t.wake.take() {
            self.timers.remove(&(w, ledger.clone()));
        }
        match next {
            Next::Idle => {}
            Next::WakeAt(w) => {
                let w = Instant::from_std(w);
                t.wake = Some(w);
                self.timers.insert((w, ledger.clone()));
            }
            Next::Deliver { .. } | Next::DeadLetter { .. } => {
                if !t.queued {
                    t.queued = true;
                    self.ready.push_back(ledger.clone());
                }
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = Instant::now();
        while let Some((w, ledger)) = self.timers.first().cloned() {
            if w > now {
                break;
            }
            self.timers.remove(&(w, ledger.clone()));
            if let Some(t) = self.ledgers.get_mut(&ledger) {
                t.wake = None;
            }
            self.evaluate(&ledger);
        }
    }

    /// Starts jobs from the ready queue while slots are free.
    fn schedule(&mut self) {
        while self.state == ExporterState::Running && self.workers.len() < self.settings.max_parallel_ledgers {
            let Some(ledger) = self.ready.pop_front() else { break };
            let Some(t) = self.ledgers.get_mut(&ledger) else { continue };
            t.queued = false;
            let next = t.machine.next(Instant::now().into_std());
            if !matches!(next, Next::Deliver { .. } | Next::DeadLetter { .. }) {
                self.evaluate(&ledger);
                continue;
            }
            t.machine.begin(&next);
            let cancel = CancellationToken::new();
            t.cancel = Some(cancel.clone());
            if t.machine.attempts() > 0 {
                let exporter = self.settings.name.to_string();
                metrics::counter!(names::EXPORTER_RETRIES_TOTAL, names::LABEL_EXPORTER => exporter).increment(1);
            }
            let prefetched = t.prefetched.take();
            self.prefetched -= prefetched.is_some() as usize;
            let job = Job {
                head: t.machine.head(),
                prefetched,
                read_ahead: self.prefetched < self.settings.max_parallel_ledgers,
                store: self.store.clone(),
                sink: self.sink.clone(),
                exporter: self.settings.name.clone(),
                ledger: ledger.clone(),
                incarnation: t.incarnation,
                batch: self.settings.batch,
                dead_letter: self.settings.dead_letter.clone(),
                cancel,
            };
            let handle = match next {
                Next::Deliver { cursor, prepare, resend_to } => {
                    self.workers.spawn(job.deliver(cursor, prepare, resend_to))
                }
                Next::DeadLetter { from, to, error } => self.workers.spawn(job.dead_letter(from, to, error)),
                Next::Idle | Next::WakeAt(_) => unreachable!("checked above"),
            };
            self.jobs.insert(handle.id(), (ledger, t.incarnation));
        }
    }

    /// Applies a finished job's outcome to its machine.
    fn finished(&mut self, done: Result<(tokio::task::Id, Done), tokio::task::JoinError>) {
        let (id, done) = match done {
            Ok((id, done)) => (id, done),
            Err(e) => {
                let shown = self.secrets.redact(&e.to_string());
                tracing::error!(exporter = %self.settings.name, error = %shown, "export job panicked");
                let error = SinkError::retryable(format!("export job failed: {shown}"));
                let outcome = Outcome::Failed { from: 0, to: 0, error, sent: false };
                (e.id(), Done { outcome, entries: 0, prefetched: None, first_read: None })
            }
        };
        let Some((ledger, incarnation)) = self.jobs.remove(&id) else { return };
        let Some(t) = self.ledgers.get_mut(&ledger).filter(|t| t.incarnation == incarnation) else { return };
        t.cancel = None;
        if let Some((id, ts)) = done.first_read {
            t.marks.note(id, ts);
        }
        if let Some(entries) = done.prefetched {
            if let Some(e) = entries.first() {
                t.marks.note(e.id, e.ts);
            }
            self.prefetched += t.prefetched.is_none() as usize;
            t.prefetched = Some(entries);
        }
        let outcome = match done.outcome {
            // A panicked job's range is unknown: retry from the cursor.
            Outcome::Failed { from: 0, to: 0, error, .. } => {
                let from = t.machine.cursor() + 1;
                Outcome::Failed { from, to: from, error: error.redacted(&self.secrets), sent: false }
            }
            // The backstop: whatever the sink put in its message, no secret
            // goes on to last_error, events, logs or dead-letter entries.
            Outcome::Failed { from, to, error, sent } => {
                Outcome::Failed { from, to, error: error.redacted(&self.secrets), sent }
            }
            Outcome::Unreadable { error } => Outcome::Unreadable { error: self.secrets.redact(&error) },
            o => o,
        };
        let exporter = self.settings.name.to_string();
        match &outcome {
            Outcome::Delivered { .. } => {
                metrics::counter!(names::EXPORTER_BATCHES_TOTAL, names::LABEL_EXPORTER => exporter.clone())
                    .increment(1);
                metrics::counter!(names::EXPORTER_ENTRIES_TOTAL, names::LABEL_EXPORTER => exporter.clone())
                    .increment(done.entries);
            }
            Outcome::Failed { .. } | Outcome::Unreadable { .. } => {
                metrics::counter!(names::EXPORTER_ERRORS_TOTAL, names::LABEL_EXPORTER => exporter.clone()).increment(1);
            }
            Outcome::DeadLettered { .. } => {
                metrics::counter!(names::EXPORTER_DEAD_LETTERED_TOTAL, names::LABEL_EXPORTER => exporter.clone())
                    .increment(done.entries);
            }
            Outcome::Cancelled { .. } | Outcome::Gone | Outcome::Skipped { .. } | Outcome::Resumed { .. } => {}
        }
        let before = t.machine.lag();
        // The store checked the id against its head when the cursor was
        // written; the append notification may simply not have arrived yet.
        if let Outcome::Delivered { through }
        | Outcome::DeadLettered { through }
        | Outcome::Skipped { to: through }
        | Outcome::Resumed { cursor: through } = &outcome
        {
            t.machine.on_head(*through, Instant::now().into_std());
        }
        let notice = t.machine.on_outcome(outcome, Instant::now().into_std(), now_ms(), rand::random::<f64>());
        let (after, cursor) = (t.machine.lag(), t.machine.cursor());
        t.marks.exported_through(cursor);
        self.table.set(&self.settings.name, &ledger, cursor);
        self.adjust_lag(before, after);
        if let Some(notice) = notice {
            self.publish(&ledger, notice);
        }
        self.evaluate(&ledger);
    }

    fn publish(&self, ledger: &LedgerName, notice: Notice) {
        let exporter = self.settings.name.as_str();
        let (kind, data) = match notice {
            Notice::Failed { error, attempts } => {
                tracing::warn!(exporter, ledger = %ledger, error = %error, "export failing");
                ("exporter.failed", serde_json::json!({ "error": error, "attempts": attempts }))
            }
            Notice::Recovered => {
                tracing::info!(exporter, ledger = %ledger, "export recovered");
                ("exporter.recovered", serde_json::json!({}))
            }
            Notice::DeadLettered { from, to, error } => {
                let dead_letter = self.settings.dead_letter.as_ref().map(|d| d.as_str());
                tracing::warn!(exporter, ledger = %ledger, from, to, error = %error, "batch moved to the dead-letter ledger");
                let data = serde_json::json!({ "error": error, "dead_lettered": { "from": from, "to": to, "dead_letter": dead_letter } });
                ("exporter.failed", data)
            }
            Notice::Skipped { from, to } => {
                tracing::error!(exporter, ledger = %ledger, from, to, "entries were pruned before they were exported");
                let error = format!("ids {from}..={to} were pruned by retention before export");
                ("exporter.failed", serde_json::json!({ "error": error, "skipped": { "from": from, "to": to } }))
            }
        };
        let event = SystemEvent::exporter(kind, exporter, Some(ledger), data);
        self.store.events().publish(&event.key, &event);
    }

    fn adjust_lag(&mut self, before: u64, after: u64) {
        self.total_lag = self.total_lag - before + after;
        metrics::gauge!(names::EXPORTER_LAG_ENTRIES, names::LABEL_EXPORTER => self.settings.name.to_string())
            .set(self.total_lag as f64);
    }

    async fn control(&mut self, command: Control) {
        match command {
            Control::Status(page, reply) => {
                let _ = reply.send(self.status(&page));
            }
            Control::Health(reply) => {
                let _ = reply.send(self.health());
            }
            Control::Ledgers(names, reply) => {
                let now = now_ms();
                let tracked = names.iter().filter_map(|n| self.ledgers.get_key_value(n));
                let _ = reply.send(tracked.map(|(n, t)| self.ledger_status(n, t, now)).collect());
            }
            Control::Pause(reply) => {
                self.state = ExporterState::Paused;
                self.ledgers.values_mut().for_each(|t| t.machine.pause());
                tracing::info!(exporter = %self.settings.name, "exporter paused");
                let _ = reply.send(self.status(&Page::default()));
            }
            Control::Resume(reply) => {
                self.state = ExporterState::Running;
                self.ledgers.values_mut().for_each(|t| t.machine.resume());
                self.evaluate_all();
                tracing::info!(exporter = %self.settings.name, "exporter resumed");
                let _ = reply.send(self.status(&Page::default()));
            }
            Control::Reset { ledger, from_id, actor, reply } => {
                let _ = reply.send(self.reset(ledger, from_id, actor.as_deref()).await);
            }
            Control::Shutdown { reply, .. } => {
                let _ = reply.send(());
            }
            Control::Check { ledger, reply } => match self.check_targets(ledger) {
                Ok(targets) => {
                    let (sink, secrets) = (self.sink.clone(), self.secrets.clone());
                    let (exporter, kind) = (self.settings.name.clone(), self.settings.sink.clone());
                    tokio::spawn(async move {
                        let report = check(&*sink, &secrets, exporter, kind, targets).await;
                        let _ = reply.send(Ok(report));
                    });
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                }
            },
        }
    }

    /// What a range check asks about: each ledger's target, where its
    /// chain starts (First and the hash before it, read together) and
    /// cursor, sorted by name.
    fn check_targets(&self, ledger: Option<LedgerName>) -> Result<Vec<(Target, ChainStart, EntryId)>, ExportError> {
        let names = self.reset_targets(ledger)?;
        let mut targets: Vec<_> = names
            .into_iter()
            .filter_map(|name| {
                let t = self.ledgers.get(&name)?;
                let info = self.store.ledger_info(&name).filter(|i| i.incarnation == t.incarnation)?;
                // Always lower-case hex from the store: anything else would
                // be a store bug, and only costs the chain part of the check.
                let prev_hash = info.first_prev_hash.as_deref().and_then(ferry_format::chain::from_hex);
                let start = ChainStart { first: info.first, prev_hash };
                let target = Target { exporter: self.settings.name.clone(), ledger: name, incarnation: t.incarnation };
                Some((target, start, t.machine.cursor()))
            })
            .collect();
        targets.sort_by(|a, b| a.0.ledger.cmp(&b.0.ledger));
        Ok(targets)
    }

    fn evaluate_all(&mut self) {
        let names: Vec<LedgerName> = self.ledgers.keys().cloned().collect();
        for name in names {
            self.evaluate(&name);
        }
    }

    /// Stops the exporter, waits out its jobs, and moves the cursors back
    /// in one catalog commit. On failure the exporter stays stopped.
    async fn reset(
        &mut self,
        ledger: Option<LedgerName>,
        from_id: Option<EntryId>,
        actor: Option<&str>,
    ) -> Result<ExporterStatus, ExportError> {
        let from_id = from_id.unwrap_or(1);
        if from_id == 0 {
            return Err(ExportError::InvalidRequest("from_id must be at least 1".into()));
        }
        let targets = self.reset_targets(ledger)?;
        let resumed = if self.state == ExporterState::Paused { ExporterState::Paused } else { ExporterState::Running };
        self.state = ExporterState::Stopped;
        self.cancel_jobs().await;
        let (mut updates, mut heads) = self.reset_cursors(&targets, from_id);
        self.write_reset(&mut updates, &mut heads).await?;
        self.apply_reset(updates, &heads);
        self.state = resumed;
        if resumed == ExporterState::Running {
            // Ends the pause, nothing else: other failed ledgers stay failed.
            self.ledgers.values_mut().for_each(|t| t.machine.unpause());
        }
        self.evaluate_all();
        self.publish_reset(&targets, from_id, actor);
        Ok(self.status(&Page::default()))
    }

    /// The ledgers a reset moves: the one asked for, or every tracked one.
    fn reset_targets(&self, ledger: Option<LedgerName>) -> Result<Vec<LedgerName>, ExportError> {
        match ledger {
            Some(l) if self.ledgers.contains_key(&l) => Ok(vec![l]),
            Some(l) => Err(ExportError::NotExported { exporter: self.settings.name.clone(), ledger: l }),
            None => Ok(self.ledgers.keys().cloned().collect()),
        }
    }

    /// Where each target's cursor goes (`from_id - 1`, raised to before the
    /// ledger's First and capped at its head), and each target's head.
    fn reset_cursors(
        &self,
        targets: &[LedgerName],
        from_id: EntryId,
    ) -> (Vec<CursorUpdate>, HashMap<LedgerName, EntryId>) {
        let mut updates = Vec::new();
        let mut heads = HashMap::new();
        for ledger in targets {
            let (Some(t), Some(info)) = (self.ledgers.get(ledger), self.store.ledger_head(ledger)) else { continue };
            let id = (from_id.max(info.first) - 1).min(info.head);
            heads.insert(ledger.clone(), info.head);
            updates.push(CursorUpdate::Set {
                exporter: self.settings.name.clone(),
                ledger: ledger.clone(),
                incarnation: t.incarnation,
                id,
                sent_to: None,
            });
        }
        (updates, heads)
    }

    /// Commits a reset's cursors, dropping those of ledgers deleted
    /// meanwhile (their cursors went with them) and committing the rest.
    async fn write_reset(
        &self,
        updates: &mut Vec<CursorUpdate>,
        heads: &mut HashMap<LedgerName, EntryId>,
    ) -> Result<(), ExportError> {
        loop {
            match self.commit_reset(updates).await {
                Ok(()) => return Ok(()),
                Err(StoreError::LedgerNotFound(gone)) if heads.remove(&gone).is_some() => {
                    updates.retain(|u| !matches!(u, CursorUpdate::Set { ledger, .. } if *ledger == gone));
                }
                Err(source) => {
                    let exporter = self.settings.name.clone();
                    tracing::error!(exporter = %exporter, error = %source, "reset failed; the exporter stays stopped");
                    return Err(ExportError::ResetFailed { exporter, source });
                }
            }
        }
    }

    /// Moves the machines and the retention hold to the committed cursors.
    fn apply_reset(&mut self, updates: Vec<CursorUpdate>, heads: &HashMap<LedgerName, EntryId>) {
        let now = Instant::now().into_std();
        // Entries read ahead follow the old cursors.
        self.ledgers.values_mut().for_each(|t| t.prefetched = None);
        self.prefetched = 0;
        for update in updates {
            let CursorUpdate::Set { ledger, id, .. } = update else { continue };
            let head = heads.get(&ledger).copied().unwrap_or(id);
            if let Some(t) = self.ledgers.get_mut(&ledger) {
                let before = t.machine.lag();
                t.machine.on_head(head, now);
                t.machine.reset(id);
                let after = t.machine.lag();
                self.table.set(&self.settings.name, &ledger, id);
                self.adjust_lag(before, after);
            }
        }
    }

    fn publish_reset(&self, targets: &[LedgerName], from_id: EntryId, actor: Option<&str>) {
        let name = &self.settings.name;
        tracing::info!(exporter = %name, ledgers = targets.len(), from_id, actor, "exporter reset");
        let ledger_field = (targets.len() == 1).then(|| targets[0].clone());
        let data = serde_json::json!({ "from_id": from_id, "ledgers": targets.len() });
        let event = SystemEvent::exporter("exporter.reset", name.as_str(), ledger_field.as_ref(), data).by(actor);
        self.store.events().publish(&event.key, &event);
    }

    /// Writes a reset's cursors in one commit (the fail point stands in for
    /// a catalog that cannot be written).
    async fn commit_reset(&self, updates: &[CursorUpdate]) -> Result<(), StoreError> {
        fail::fail_point!("export::reset", |_| Err(StoreError::Catalog("injected by fail point export::reset".into())));
        cursors::commit(&self.store, updates.to_vec()).await
    }

    /// Cancels every job and applies their outcomes.
    async fn cancel_jobs(&mut self) {
        for t in self.ledgers.values() {
            if let Some(c) = &t.cancel {
                c.cancel();
            }
        }
        while let Some(done) = self.workers.join_next_with_id().await {
            self.finished(done);
        }
    }

    /// Shutdown: no new jobs; jobs still running at `deadline` are
    /// cancelled (their batches count as unacknowledged).
    async fn drain(&mut self, deadline: Instant) {
        self.state = ExporterState::Stopped;
        while !self.workers.is_empty() {
            match tokio::time::timeout_at(deadline, self.workers.join_next_with_id()).await {
                Ok(Some(done)) => self.finished(done),
                Ok(None) => break,
                Err(_) => {
                    tracing::warn!(exporter = %self.settings.name, jobs = self.workers.len(), "shutdown_timeout: abandoning in-flight batches");
                    self.cancel_jobs().await;
                }
            }
        }
    }

    fn max_lag_ms(&self) -> Option<u64> {
        self.settings.max_lag.map(|d| d.as_millis() as u64)
    }

    /// One ledger's status at `now` (Unix ms).
    fn ledger_status(&self, name: &LedgerName, t: &Tracked, now: u64) -> LedgerStatus {
        let m = &t.machine;
        let age = t.marks.age_ms(m.cursor(), m.head(), now);
        LedgerStatus {
            ledger: name.clone(),
            cursor: m.cursor(),
            head: m.head(),
            lag: m.lag(),
            state: serde_json::to_value(m.state()).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default(),
            last_error: m.last_error().map(str::to_owned),
            attempts: m.attempts(),
            last_success_at: m.last_success_at(),
            oldest_unexported_age_ms: age,
            stuck: is_stuck(age, self.max_lag_ms()),
        }
    }

    /// Totals over every ledger: (oldest age, if known for every ledger
    /// behind; stuck ledgers oldest first).
    fn ages(&self, now: u64) -> (Option<u64>, Vec<(u64, &LedgerName, &Tracked)>) {
        let max_lag = self.max_lag_ms();
        let mut oldest = Some(0);
        let mut stuck = Vec::new();
        for (name, t) in &self.ledgers {
            let age = t.marks.age_ms(t.machine.cursor(), t.machine.head(), now);
            oldest = match (oldest, age) {
                (Some(a), Some(b)) => Some(a.max(b)),
                _ => None,
            };
            if let Some(age) = age.filter(|&a| is_stuck(Some(a), max_lag)) {
                stuck.push((age, name, t));
            }
        }
        stuck.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1)));
        (oldest, stuck)
    }

    fn status(&self, page: &Page) -> ExporterStatus {
        let now = now_ms();
        let mut names: Vec<&LedgerName> = self.ledgers.keys().collect();
        names.sort();
        let (names, next) = page_of(names, page, |n| n);
        let ledgers = names.into_iter().map(|n| self.ledger_status(n, &self.ledgers[n], now)).collect();
        let (oldest, stuck) = self.ages(now);
        ExporterStatus {
            name: self.settings.name.clone(),
            sink: Some(self.settings.sink.clone()),
            state: self.state,
            max_lag_ms: self.max_lag_ms(),
            lag: self.total_lag,
            oldest_unexported_age_ms: oldest,
            ledgers_total: self.ledgers.len(),
            stuck_ledgers: stuck.len(),
            ledgers,
            next,
        }
    }

    fn health(&self) -> ExporterHealth {
        let now = now_ms();
        let (oldest, stuck) = self.ages(now);
        let stuck_ledgers = stuck.len();
        let stuck = stuck
            .into_iter()
            .take(ferry_core::limits::HEALTH_STUCK_SHOWN)
            .map(|(age_ms, name, t)| {
                let s = self.ledger_status(name, t, now);
                StuckLedger { ledger: name.clone(), age_ms, lag: s.lag, state: s.state, last_error: s.last_error }
            })
            .collect();
        ExporterHealth {
            name: self.settings.name.clone(),
            max_lag_ms: self.max_lag_ms(),
            stuck_ledgers,
            stuck,
            oldest_unexported_age_ms: oldest,
            lag: self.total_lag,
        }
    }
}

/// Hands each message waiting in `sub` to `apply`; true if some were
/// dropped (the subscriber lagged), and then the rest is left.
fn take_all<T>(sub: &mut Subscription<T>, mut apply: impl FnMut(&T)) -> bool {
    loop {
        match sub.try_recv() {
            Some(Received::Message(m)) => apply(&m),
            Some(Received::Lagged) => return true,
            None => return false,
        }
    }
}

/// Older than `max_lag` (never, without one).
fn is_stuck(age_ms: Option<u64>, max_lag_ms: Option<u64>) -> bool {
    matches!((age_ms, max_lag_ms), (Some(age), Some(max)) if age > max)
}
