//! The exporter runtime against a real store in a temp dir, with sinks
//! written for the test (they record what arrives and misbehave on
//! purpose): parallelism bounds, partial and bogus acknowledgements, a
//! sink that fails after one batch, shutdown with a hanging sink, ledgers
//! created while running.

// Tests build, damage and inspect files on purpose, with the raw calls
// that clippy.toml keeps out of the product code.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_core::{EntryId, LedgerName, NewEntry, Payload, now_ms};
use ferry_export::sink::ChainStart;
use ferry_export::{
    Ack, Batch, CursorTable, ExporterConfig, ExporterStatus, Exporters, Holding, Page, Prepared, Secrets, Sink,
    SinkError, Target,
};
use ferry_store::{Store, StoreConfig};

/// How a test sink behaves.
#[derive(Clone, Copy)]
enum Mode {
    /// Acknowledges the whole batch after `delay`.
    Ack { delay: Duration },
    /// Acknowledges only the first two entries of each batch.
    Partial,
    /// Acknowledges an id past the batch.
    Beyond,
    /// Never answers.
    Hang,
    /// Acknowledges the first batch, then fails every delivery (retryably).
    FailAfterFirst,
    /// Fails with a message that quotes URL credentials and a secret.
    Leaky,
}

/// The value `TestSink::secrets` names.
const TEST_SECRET: &str = "leaked-token";

#[derive(Clone)]
struct TestSink {
    mode: Mode,
    /// Acknowledged ids per ledger, in order.
    acked: Arc<Mutex<BTreeMap<LedgerName, Vec<EntryId>>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
    /// Keeps its own position, like a destination with a cursor row:
    /// `prepare` reports the last id it holds instead of cutting.
    positioned: bool,
    /// While true every delivery fails (retryably), whatever the mode.
    down: Arc<AtomicBool>,
}

impl TestSink {
    fn new(mode: Mode) -> Self {
        Self {
            mode,
            acked: Default::default(),
            in_flight: Default::default(),
            max_in_flight: Default::default(),
            positioned: false,
            down: Default::default(),
        }
    }

    fn positioned(mut self) -> Self {
        self.positioned = true;
        self
    }

    fn holds(&self, ledger: &str, ids: impl IntoIterator<Item = EntryId>) {
        self.acked.lock().unwrap().insert(name(ledger), ids.into_iter().collect());
    }
}

impl Sink for TestSink {
    async fn prepare(&self, target: &Target, cursor: EntryId) -> Result<Prepared, SinkError> {
        let mut acked = self.acked.lock().unwrap();
        let ids = acked.entry(target.ledger.clone()).or_default();
        if self.positioned {
            return Ok(Prepared::DestinationThrough(ids.last().copied().unwrap_or(0)));
        }
        // Like the file sink: whatever lies past the cursor is cut.
        ids.retain(|id| *id <= cursor);
        Ok(Prepared::Cursor)
    }

    fn keeps_position(&self) -> bool {
        self.positioned
    }

    async fn check(&self, target: &Target, start: &ChainStart, cursor: EntryId) -> Result<Option<Holding>, SinkError> {
        let first = start.first;
        let acked = self.acked.lock().unwrap();
        let ids = acked.get(&target.ledger).cloned().unwrap_or_default();
        let in_range: Vec<EntryId> = ids.iter().copied().filter(|id| (first..=cursor).contains(id)).collect();
        let distinct = in_range.iter().collect::<std::collections::BTreeSet<_>>().len() as u64;
        Ok(Some(Holding {
            in_range: in_range.len() as u64,
            distinct,
            below_first: ids.iter().filter(|id| **id < first).count() as u64,
            above_cursor: ids.iter().filter(|id| **id > cursor).count() as u64,
            min: ids.iter().min().copied(),
            max: ids.iter().max().copied(),
            chain: None,
        }))
    }

    async fn deliver(&self, batch: &Batch) -> Result<Ack, SinkError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(SinkError::retryable("the destination is down"));
        }
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        let through = match self.mode {
            Mode::Ack { delay } => {
                tokio::time::sleep(delay).await;
                batch.last_id()
            }
            Mode::Partial => (batch.first_id() + 1).min(batch.last_id()),
            Mode::Beyond => batch.last_id() + 5,
            Mode::Hang => std::future::pending().await,
            Mode::FailAfterFirst
                if self.acked.lock().unwrap().get(&batch.ledger).is_some_and(|ids| !ids.is_empty()) =>
            {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                return Err(SinkError::retryable("the destination is down"));
            }
            Mode::FailAfterFirst => batch.last_id(),
            Mode::Leaky => {
                self.in_flight.fetch_sub(1, Ordering::SeqCst);
                let message =
                    format!("POST http://user:leaked-pw@127.0.0.1:9/x failed: the answer quoted {TEST_SECRET}");
                return Err(SinkError::permanent(message));
            }
        };
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        let mut acked = self.acked.lock().unwrap();
        let ids = acked.entry(batch.ledger.clone()).or_default();
        ids.extend(batch.entries.iter().map(|e| e.id).filter(|id| *id <= through));
        Ok(Ack { through })
    }

    fn secrets(&self) -> Secrets {
        let mut secrets = Secrets::default();
        secrets.add(TEST_SECRET);
        secrets
    }
}

fn name(s: &str) -> LedgerName {
    LedgerName::parse(s).unwrap()
}

fn open(dir: &std::path::Path) -> Store {
    Store::open(StoreConfig::new(dir)).unwrap()
}

async fn fill(store: &Store, ledger: &str, n: usize) {
    let entries = (0..n).map(|i| NewEntry {
        key: None,
        idempotency_key: None,
        payload: Payload::from_json(&i.to_string()).unwrap(),
    });
    store.append(&name(ledger), entries.collect()).await.unwrap();
}

async fn start(store: &Store, flag: &str, sink: TestSink) -> Exporters {
    let settings = ExporterConfig::from_flag(flag).unwrap().validate().unwrap();
    let table = Arc::new(CursorTable::new([(&settings.name, &settings.matcher)]));
    Exporters::start(store.clone(), table, vec![(settings, sink)]).await.unwrap()
}

/// Waits until the exporter tracks `ledgers` ledgers, all caught up and
/// with `entries` acknowledged in all.
async fn wait_caught_up(exporters: &Exporters, exporter: &str, ledgers: usize, entries: u64) -> ExporterStatus {
    for _ in 0..3000 {
        let s = exporters.status(exporter, Page::default()).await.unwrap();
        let acked: u64 = s.ledgers.iter().map(|l| l.cursor).sum();
        if s.ledgers.len() == ledgers && s.ledgers.iter().all(|l| l.lag == 0) && acked == entries {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{exporter} did not catch up: {:?}", exporters.status(exporter, Page::default()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_max_parallel_ledgers_deliver_at_once_and_all_arrive_once_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..10 {
        fill(&store, &format!("l{i}"), 50).await;
    }
    let sink = TestSink::new(Mode::Ack { delay: Duration::from_millis(5) });
    let exporters =
        start(&store, r#"x=t:{"max_parallel_ledgers":3,"batch":{"max_entries":10,"linger":"0ms"}}"#, sink.clone())
            .await;
    wait_caught_up(&exporters, "x", 10, 500).await;
    assert_eq!(sink.max_in_flight.load(Ordering::SeqCst), 3, "three at once, never more");
    for (ledger, ids) in sink.acked.lock().unwrap().iter() {
        assert_eq!(ids, &(1..=50).collect::<Vec<_>>(), "{ledger}");
    }
    // A ledger created while running is picked up.
    fill(&store, "later", 4).await;
    wait_caught_up(&exporters, "x", 11, 504).await;
    assert_eq!(sink.acked.lock().unwrap()[&name("later")], vec![1, 2, 3, 4]);
    exporters.shutdown(Duration::from_secs(5)).await;
    let cursors = store.cursors_blocking().unwrap();
    assert_eq!(cursors.len(), 11);
    assert!(cursors.iter().all(|c| c.id == if c.ledger.as_str() == "later" { 4 } else { 50 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_acknowledgement_moves_the_cursor_only_that_far() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, "a", 9).await;
    let sink = TestSink::new(Mode::Partial);
    let exporters = start(&store, r#"x=t:{"batch":{"max_entries":5,"linger":"0ms"}}"#, sink.clone()).await;
    wait_caught_up(&exporters, "x", 1, 9).await;
    assert_eq!(sink.acked.lock().unwrap()[&name("a")], (1..=9).collect::<Vec<_>>());
    exporters.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acknowledgement_beyond_the_batch_is_not_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, "a", 3).await;
    let exporters =
        start(&store, r#"x=t:{"retry":{"initial":"10ms","max":"20ms"}}"#, TestSink::new(Mode::Beyond)).await;
    let mut status = exporters.status("x", Page::default()).await.unwrap();
    for _ in 0..500 {
        if status.ledgers.first().is_some_and(|l| l.attempts >= 2) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = exporters.status("x", Page::default()).await.unwrap();
    }
    let l = &status.ledgers[0];
    assert_eq!((l.cursor, l.state.as_str()), (0, "backing_off"), "{l:?}");
    assert!(l.last_error.as_deref().unwrap().contains("outside the batch"), "{l:?}");
    exporters.shutdown(Duration::from_secs(5)).await;
    // Nothing acknowledged: the record holds only the short batch's range,
    // written before it was sent (`sent_to`), at the cursor before it.
    let cursors: Vec<_> = store.cursors_blocking().unwrap().iter().map(|c| (c.id, c.sent_to)).collect();
    assert_eq!(cursors, [(0, Some(3))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durable_cursor_stays_at_the_last_acknowledged_id_while_the_sink_fails() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, "a", 9).await;
    let sink = TestSink::new(Mode::FailAfterFirst);
    let flag = r#"x=t:{"batch":{"max_entries":5,"linger":"0ms"},"retry":{"initial":"10ms","max":"20ms"}}"#;
    let exporters = start(&store, flag, sink).await;
    let mut status = exporters.status("x", Page::default()).await.unwrap();
    for _ in 0..500 {
        if status.ledgers.first().is_some_and(|l| l.attempts >= 3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = exporters.status("x", Page::default()).await.unwrap();
    }
    let l = &status.ledgers[0];
    assert_eq!((l.cursor, l.state.as_str()), (5, "backing_off"), "{l:?}");
    exporters.shutdown(Duration::from_secs(5)).await;
    let cursors: Vec<EntryId> = store.cursors_blocking().unwrap().iter().map(|c| c.id).collect();
    assert_eq!(cursors, vec![5], "only the acknowledged batch reached the catalog");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_abandons_a_hanging_delivery_at_the_timeout_and_is_safe_to_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, "a", 3).await;
    let sink = TestSink::new(Mode::Hang);
    let exporters = start(&store, r#"x=t:{"batch":{"linger":"0ms"}}"#, sink.clone()).await;
    while sink.max_in_flight.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let bounded = tokio::time::timeout(Duration::from_secs(20), exporters.shutdown(Duration::from_millis(100))).await;
    assert!(bounded.is_ok(), "shutdown waited on the hanging sink");
    exporters.shutdown(Duration::from_millis(100)).await;
    assert!(exporters.status("x", Page::default()).await.is_err(), "the exporter is gone");
    // The record names the short batch the sink was given (`sent_to`), at
    // the cursor before it: an abandoned batch is not acknowledged.
    let cursors: Vec<_> = store.cursors_blocking().unwrap().iter().map(|c| (c.id, c.sent_to)).collect();
    assert_eq!(cursors, [(0, Some(3))], "an abandoned batch is not acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_error_reaches_status_without_userinfo_or_the_sinks_secrets() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, "a", 3).await;
    let exporters = start(&store, "x=t:{}", TestSink::new(Mode::Leaky)).await;
    let mut status = exporters.status("x", Page::default()).await.unwrap();
    for _ in 0..500 {
        if status.ledgers.first().is_some_and(|l| l.state == "failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = exporters.status("x", Page::default()).await.unwrap();
    }
    let error = status.ledgers[0].last_error.clone().unwrap_or_default();
    assert_eq!(error, "POST http://***@127.0.0.1:9/x failed: the answer quoted ***", "{status:?}");
    exporters.shutdown(Duration::from_secs(5)).await;
}

/// A destination that keeps its own position and holds more than the
/// cursor says (an acknowledgement lost to a crash): the runtime takes its
/// position as the cursor and never sends those ids again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_position_past_the_cursor_is_taken_and_nothing_is_sent_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, "a", 20).await;
    let sink = TestSink::new(Mode::Ack { delay: Duration::ZERO }).positioned();
    sink.holds("a", 1..=7);
    let exporters = start(&store, r#"x=t:{"batch":{"max_entries":5,"linger":"0ms"}}"#, sink.clone()).await;
    wait_caught_up(&exporters, "x", 1, 20).await;
    assert_eq!(sink.acked.lock().unwrap()[&name("a")], (1..=20).collect::<Vec<_>>(), "ids 1..=7 not sent again");
    let report = exporters.check("x", None).await.unwrap();
    assert!(report.ok, "{report:?}");
    assert_eq!(report.ledgers[0].holding.as_ref().unwrap().distinct, 20);
    exporters.shutdown(Duration::from_secs(5)).await;
}

/// A destination restored from an older copy holds less than the cursor:
/// it wins, and what it lacks is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_position_below_the_cursor_wins_and_the_rest_is_sent_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, "a", 12).await;
    let sink = TestSink::new(Mode::Ack { delay: Duration::ZERO }).positioned();
    let flag = r#"x=t:{"batch":{"max_entries":5,"linger":"0ms"}}"#;
    let exporters = start(&store, flag, sink.clone()).await;
    wait_caught_up(&exporters, "x", 1, 12).await;
    exporters.shutdown(Duration::from_secs(5)).await;
    // The destination is "restored" to hold ids 1..=4 only.
    sink.holds("a", 1..=4);
    // Nothing waits to be sent, yet the destination is asked at start.
    let exporters = start(&store, flag, sink.clone()).await;
    for _ in 0..500 {
        if sink.acked.lock().unwrap()[&name("a")].len() == 12 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    wait_caught_up(&exporters, "x", 1, 12).await;
    assert_eq!(sink.acked.lock().unwrap()[&name("a")], (1..=12).collect::<Vec<_>>());
    exporters.shutdown(Duration::from_secs(5)).await;
    assert_eq!(store.cursors_blocking().unwrap()[0].id, 12);
}

/// A destination that claims ids the ledger never had is not believed: the
/// ledger fails, naming the head, and the cursor stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_position_past_the_head_fails_the_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, "a", 3).await;
    let sink = TestSink::new(Mode::Ack { delay: Duration::ZERO }).positioned();
    sink.holds("a", 1..=9);
    let exporters = start(&store, "x=t:{}", sink).await;
    let mut status = exporters.status("x", Page::default()).await.unwrap();
    for _ in 0..500 {
        if status.ledgers.first().is_some_and(|l| l.state == "failed") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        status = exporters.status("x", Page::default()).await.unwrap();
    }
    let l = &status.ledgers[0];
    assert_eq!((l.cursor, l.state.as_str()), (0, "failed"), "{l:?}");
    assert!(l.last_error.as_deref().unwrap().contains("past its head 3"), "{l:?}");
    exporters.shutdown(Duration::from_secs(5)).await;
}

/// The range check reports a gap and a repeat inside First..=cursor as
/// faults, for the one ledger asked about or all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_range_check_names_a_gap_and_a_repeat() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, "a", 6).await;
    fill(&store, "b", 6).await;
    let sink = TestSink::new(Mode::Ack { delay: Duration::ZERO });
    let exporters = start(&store, r#"x=t:{"batch":{"linger":"0ms"}}"#, sink.clone()).await;
    wait_caught_up(&exporters, "x", 2, 12).await;
    assert!(exporters.check("x", None).await.unwrap().ok);
    sink.holds("a", [1, 2, 4, 5, 6]);
    sink.holds("b", [1, 2, 3, 3, 4, 5, 6]);
    let report = exporters.check("x", None).await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.ledgers[0].faults, ["1 of ids 1..=6 missing (holds 5 of 6)"]);
    assert_eq!(report.ledgers[1].faults, ["1 repeated rows among ids 1..=6"]);
    let one = exporters.check("x", Some(name("b"))).await.unwrap();
    assert_eq!(one.ledgers.len(), 1);
    assert!(exporters.check("x", Some(name("nope"))).await.is_err(), "a ledger it does not export");
    exporters.shutdown(Duration::from_secs(5)).await;
}

/// Polls the exporter's status until `done` holds (10 s at most).
async fn status_until(exporters: &Exporters, done: impl Fn(&ExporterStatus) -> bool) -> ExporterStatus {
    for _ in 0..1000 {
        let status = exporters.status("x", Page::default()).await.unwrap();
        if done(&status) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never reached: {:?}", exporters.status("x", Page::default()).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oldest_unexported_age_grows_while_the_sink_is_down_and_is_zero_once_caught_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let sink = TestSink::new(Mode::Ack { delay: Duration::ZERO });
    sink.down.store(true, Ordering::SeqCst);
    let (before_fill, _) = (now_ms(), fill(&store, "a", 3).await);
    let after_fill = now_ms();
    let flag = r#"x=t:{"max_lag":"200ms","retry":{"initial":"10ms","max":"20ms"}}"#;
    let exporters = start(&store, flag, sink.clone()).await;

    let status = status_until(&exporters, |s| s.stuck_ledgers == 1).await;
    let l = &status.ledgers[0];
    let age = l.oldest_unexported_age_ms.expect("the failed batch's read tells the age");
    // Entry 1 was stamped between before_fill and after_fill.
    assert!(age <= now_ms() - before_fill && age > 200, "{l:?}");
    assert!(l.stuck && l.lag == 3 && l.state == "backing_off", "{l:?}");
    assert_eq!((status.max_lag_ms, status.lag, status.ledgers_total), (Some(200), 3, 1));
    assert!(status.oldest_unexported_age_ms >= Some(age), "{status:?}");

    let asked = now_ms();
    let health = exporters.health().await;
    assert_eq!(health.len(), 1);
    let h = &health[0];
    assert_eq!((h.stuck_ledgers, h.stuck.len(), h.lag), (1, 1, 3), "{h:?}");
    assert_eq!(h.stuck[0].ledger.as_str(), "a");
    assert!(h.stuck[0].age_ms >= asked - after_fill, "{h:?}");
    assert!(h.stuck[0].last_error.as_deref().is_some_and(|e| e.contains("down")), "{h:?}");

    sink.down.store(false, Ordering::SeqCst);
    let status = status_until(&exporters, |s| s.lag == 0).await;
    let l = &status.ledgers[0];
    assert_eq!((l.oldest_unexported_age_ms, l.stuck), (Some(0), false), "{l:?}");
    assert_eq!((status.oldest_unexported_age_ms, status.stuck_ledgers), (Some(0), 0));
    assert!(exporters.health().await[0].stuck.is_empty());
    exporters.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_exporter_tells_the_age_of_entries_it_never_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, "a", 2).await;
    let exporters =
        start(&store, r#"x=t:{"batch":{"linger":"0ms"}}"#, TestSink::new(Mode::Ack { delay: Duration::ZERO })).await;
    status_until(&exporters, |s| s.lag == 0 && s.ledgers_total == 1).await;
    exporters.pause("x").await.unwrap();
    let before_fill = now_ms();
    fill(&store, "a", 4).await;
    let after_fill = now_ms();
    // No job reads while paused: the age comes from the append's wake-up.
    let status = status_until(&exporters, |s| s.lag == 4).await;
    let asked_after = now_ms();
    let l = &status.ledgers[0];
    let age = l.oldest_unexported_age_ms.expect("the wake-up's timestamp tells the age");
    assert!(age <= asked_after - before_fill, "{l:?} (filled {before_fill}..{after_fill})");
    assert_eq!((l.cursor, l.head, l.stuck), (2, 6, false), "no max_lag: never stuck");
    exporters.resume("x").await.unwrap();
    let status = status_until(&exporters, |s| s.lag == 0).await;
    assert_eq!(status.ledgers[0].oldest_unexported_age_ms, Some(0));
    exporters.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exporters_ledgers_come_in_pages_with_totals_over_all() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    for i in 0..25 {
        fill(&store, &format!("l{i:02}"), 1).await;
    }
    let exporters =
        start(&store, r#"x=t:{"batch":{"linger":"0ms"}}"#, TestSink::new(Mode::Ack { delay: Duration::ZERO })).await;
    status_until(&exporters, |s| s.ledgers_total == 25 && s.lag == 0).await;
    let mut seen = Vec::new();
    let mut after = None;
    loop {
        let page = exporters.status("x", Page { after: after.clone(), limit: 10 }).await.unwrap();
        assert!(page.ledgers.len() <= 10);
        assert_eq!(page.ledgers_total, 25, "totals count every page");
        seen.extend(page.ledgers.iter().map(|l| l.ledger.to_string()));
        match page.next {
            Some(next) => {
                assert_eq!(Some(&next), page.ledgers.last().map(|l| &l.ledger), "next is the page's last name");
                after = Some(next);
            }
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("l{i:02}")).collect();
    assert_eq!(seen, expected, "every ledger once, in name order");
    let listed = exporters.list(&Page { after: None, limit: 3 }).await;
    assert_eq!(listed[0].ledgers.len(), 3);
    assert_eq!(listed[0].next.as_ref().map(|n| n.as_str()), Some("l02"));
    exporters.shutdown(Duration::from_secs(5)).await;
}

/// A status asked after an append returned shows that append: the head a
/// status reports is never behind what the store acknowledged before the
/// question (else "lag 0, cursor = head" could be read as caught up while
/// the new entry waits). Paused, so the cursor stays put; the question
/// races the append's wake-up on every round.
#[tokio::test(flavor = "current_thread")]
async fn a_status_asked_after_an_append_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    fill(&store, "a", 1).await;
    let exporters = start(&store, "x=t", TestSink::new(Mode::Ack { delay: Duration::ZERO })).await;
    // Caught up first: a pause does not stop a delivery already out, which
    // would move the cursor between two questions.
    status_until(&exporters, |s| s.lag == 0 && s.ledgers_total == 1).await;
    exporters.pause("x").await.unwrap();
    for round in 2..=200u64 {
        fill(&store, "a", 1).await;
        let status = exporters.status("x", Page::default()).await.unwrap();
        let a = status.ledgers.iter().find(|l| l.ledger.as_str() == "a").expect("a is tracked");
        assert_eq!((a.cursor, a.head, a.lag), (1, round, round - 1), "round {round}: {a:?}");
        let health = exporters.health().await;
        assert_eq!(health[0].lag, status.lag, "round {round}");
    }
    exporters.shutdown(Duration::from_secs(5)).await;
}
