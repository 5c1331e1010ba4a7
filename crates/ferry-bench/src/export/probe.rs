//! A `Sink` that hands every call to a real sink and records what came
//! back: how far each ledger is acknowledged, how long deliveries took, and
//! for entries the benchmark watches, append-call start → acknowledgement.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use ferry_core::{EntryId, LedgerName};
use ferry_export::{Ack, Batch, Prepared, Secrets, Sink, SinkError, Target};
use hdrhistogram::Histogram;
use tokio::sync::watch;

use crate::driver::{micros, new_histogram};

/// The wrapped sink; the runtime sees only this.
pub struct Probe<S> {
    inner: S,
    acks: Arc<Acks>,
}

impl<S: Sink> Probe<S> {
    pub fn new(inner: S) -> (Probe<S>, Arc<Acks>) {
        let acks = Arc::new(Acks::default());
        (Probe { inner, acks: acks.clone() }, acks)
    }
}

impl<S: Sink> Sink for Probe<S> {
    async fn prepare(&self, target: &Target, cursor: EntryId) -> Result<Prepared, SinkError> {
        self.inner.prepare(target, cursor).await
    }

    fn keeps_position(&self) -> bool {
        self.inner.keeps_position()
    }

    fn secrets(&self) -> Secrets {
        self.inner.secrets()
    }

    async fn deliver(&self, batch: &Batch) -> Result<Ack, SinkError> {
        let started = Instant::now();
        let ack = self.inner.deliver(batch).await?;
        self.acks.record(&batch.ledger, ack.through, started);
        Ok(ack)
    }
}

/// What the probe saw, shared with the benchmark.
pub struct Acks {
    /// The last acknowledged id of each ledger; a watch so a waiter wakes
    /// on every acknowledgement without polling the exporter.
    through: watch::Sender<HashMap<LedgerName, EntryId>>,
    seen: Mutex<Seen>,
}

struct Seen {
    /// Append-call start of each watched entry not yet acknowledged.
    pending: HashMap<LedgerName, BTreeMap<EntryId, Instant>>,
    /// Append-call start → acknowledgement of watched entries, in µs.
    latency: Histogram<u64>,
    /// Time spent inside the real sink's `deliver`, summed over batches.
    in_sink: Duration,
    batches: u64,
}

/// Time inside the sink, over all acknowledged batches.
#[derive(Debug, Clone, Copy)]
pub struct SinkTime {
    pub in_sink: Duration,
    pub batches: u64,
}

impl Default for Acks {
    fn default() -> Self {
        let seen = Seen { pending: HashMap::new(), latency: new_histogram(), in_sink: Duration::ZERO, batches: 0 };
        Acks { through: watch::Sender::new(HashMap::new()), seen: Mutex::new(seen) }
    }
}

impl Acks {
    /// Watches entry `id` of `ledger`, whose append call starts at `at`.
    /// Called before the append, so its acknowledgement cannot come first.
    pub fn watch(&self, ledger: &LedgerName, id: EntryId, at: Instant) {
        let mut seen = self.seen.lock().expect("probe lock");
        seen.pending.entry(ledger.clone()).or_default().insert(id, at);
    }

    fn record(&self, ledger: &LedgerName, through: EntryId, started: Instant) {
        let now = Instant::now();
        {
            let mut seen = self.seen.lock().expect("probe lock");
            let Seen { pending, latency, in_sink, batches } = &mut *seen;
            *in_sink += now - started;
            *batches += 1;
            if let Some(waiting) = pending.get_mut(ledger) {
                // Everything up to `through` is acknowledged; the rest waits.
                let later = waiting.split_off(&(through + 1));
                for at in std::mem::replace(waiting, later).into_values() {
                    latency.saturating_record(micros(now - at));
                }
            }
        }
        self.through.send_modify(|m| {
            m.insert(ledger.clone(), through);
        });
    }

    /// Waits until every ledger is acknowledged up to its head.
    pub async fn wait_for(&self, heads: &[(LedgerName, EntryId)], timeout: Duration) -> anyhow::Result<()> {
        let mut rx = self.through.subscribe();
        let done = |m: &HashMap<LedgerName, EntryId>| heads.iter().all(|(l, head)| m.get(l).is_some_and(|t| t >= head));
        tokio::time::timeout(timeout, rx.wait_for(done))
            .await
            .with_context(|| format!("the sink did not acknowledge every head within {timeout:?}"))?
            .context("the probe is gone")?;
        Ok(())
    }

    pub fn latency(&self) -> Histogram<u64> {
        self.seen.lock().expect("probe lock").latency.clone()
    }

    pub fn sink_time(&self) -> SinkTime {
        let seen = self.seen.lock().expect("probe lock");
        SinkTime { in_sink: seen.in_sink, batches: seen.batches }
    }

    /// Watched entries still waiting for their acknowledgement.
    pub fn unacknowledged(&self) -> usize {
        self.seen.lock().expect("probe lock").pending.values().map(BTreeMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use ferry_core::{Entry, Payload};

    use super::*;

    /// Acknowledges every batch whole, at once.
    struct AckAll;

    impl Sink for AckAll {
        async fn prepare(&self, _: &Target, _: EntryId) -> Result<Prepared, SinkError> {
            Ok(Prepared::Cursor)
        }

        async fn deliver(&self, batch: &Batch) -> Result<Ack, SinkError> {
            Ok(Ack { through: batch.last_id() })
        }
    }

    fn batch(ledger: &LedgerName, ids: std::ops::RangeInclusive<EntryId>) -> Batch {
        let entry = |id| Entry {
            ledger: ledger.clone(),
            id,
            ts: 1,
            key: None,
            hash: None,
            payload: Payload::from_json("{}").unwrap(),
        };
        let (exporter, ledger) = (LedgerName::parse("x").unwrap(), ledger.clone());
        Batch { exporter, ledger, incarnation: 1, entries: ids.map(entry).collect() }
    }

    #[tokio::test]
    async fn an_ack_times_the_watched_entries_it_covers_and_wakes_the_waiter() {
        let (probe, acks) = Probe::new(AckAll);
        let l = LedgerName::parse("l").unwrap();
        let at = Instant::now();
        (1..=3).for_each(|id| acks.watch(&l, id, at));
        probe.deliver(&batch(&l, 1..=2)).await.unwrap();
        assert_eq!((acks.latency().len(), acks.unacknowledged()), (2, 1));
        let heads = [(l.clone(), 3)];
        assert!(acks.wait_for(&heads, Duration::from_millis(20)).await.is_err());
        probe.deliver(&batch(&l, 3..=3)).await.unwrap();
        acks.wait_for(&heads, Duration::from_secs(1)).await.unwrap();
        assert_eq!((acks.latency().len(), acks.unacknowledged()), (3, 0));
        assert_eq!(acks.sink_time().batches, 2);
    }
}
