//! The one client driver every target uses: N workers, each calling an
//! async append in a closed loop (the next call starts when the previous
//! one was acknowledged), for a warmup and then a measured window.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hdrhistogram::Histogram;

/// How long to run: a warmup whose calls are not counted, then the window.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub window: Duration,
}

/// What a run acknowledged inside its window.
#[derive(Debug)]
pub struct Measurement {
    /// Append calls acknowledged inside the window.
    pub calls: u64,
    /// Entries of those calls.
    pub entries: u64,
    pub window: Duration,
    /// Latency of each counted call, in microseconds.
    pub latency: Histogram<u64>,
}

impl Measurement {
    /// Nothing measured yet: what `merge` starts from.
    pub fn empty() -> Measurement {
        Measurement { calls: 0, entries: 0, window: Duration::ZERO, latency: new_histogram() }
    }

    /// Adds another run of the same cell (rounds of one measurement).
    pub fn merge(&mut self, other: &Measurement) -> anyhow::Result<()> {
        self.calls += other.calls;
        self.entries += other.entries;
        self.window += other.window;
        self.latency.add(&other.latency).context("merge latency histograms")?;
        Ok(())
    }

    pub fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.window.as_secs_f64()
    }

    /// Latency at `quantile` (0..=1), or zero when nothing was counted.
    pub fn latency_at(&self, quantile: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(quantile))
    }
}

/// Runs `clients` workers; worker `w` calls `append(w)` in a loop until the
/// window ends. Each call appends `entries_per_call` entries. The first
/// failed call stops the run with its error.
pub async fn drive<F, Fut>(
    clients: usize,
    timing: Timing,
    entries_per_call: u64,
    append: F,
) -> anyhow::Result<Measurement>
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let append = Arc::new(append);
    let counted_from = Instant::now() + timing.warmup;
    let until = counted_from + timing.window;
    let workers: Vec<_> = (0..clients).map(|w| tokio::spawn(worker(w, append.clone(), counted_from, until))).collect();
    let mut total = Measurement { window: timing.window, ..Measurement::empty() };
    for w in workers {
        let latency = w.await.context("a worker panicked")??;
        total.calls += latency.len();
        total.latency.add(&latency).context("merge latency histograms")?;
    }
    total.entries = total.calls * entries_per_call;
    Ok(total)
}

/// One closed-loop client; returns the latencies of its counted calls.
async fn worker<F, Fut>(
    id: usize,
    append: Arc<F>,
    counted_from: Instant,
    until: Instant,
) -> anyhow::Result<Histogram<u64>>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut latency = new_histogram();
    loop {
        let start = Instant::now();
        if start >= until {
            return Ok(latency);
        }
        append(id).await.with_context(|| format!("client {id}: append failed"))?;
        let done = Instant::now();
        // A call counts when its acknowledgement lands in the window, so a
        // target whose calls take longer than the window still measures.
        if done > counted_from && done <= until {
            latency.saturating_record(micros(done - start));
        }
    }
}

/// Microsecond resolution, 3 significant digits, up to a minute.
pub(crate) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_only_calls_inside_the_window() {
        let timing = Timing { warmup: Duration::from_millis(50), window: Duration::from_millis(200) };
        let m = drive(4, timing, 10, |_| async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Ok(())
        })
        .await
        .unwrap();
        // About 4 workers × 200 ms / 10 ms; timers make it fuzzy.
        assert!((40..=84).contains(&m.calls), "{} calls", m.calls);
        assert_eq!(m.entries, m.calls * 10);
        assert!(m.latency_at(0.5) >= Duration::from_millis(10));
        let mut sum = Measurement::empty();
        sum.merge(&m).unwrap();
        sum.merge(&m).unwrap();
        assert_eq!((sum.calls, sum.window), (2 * m.calls, 2 * m.window));
        assert_eq!(sum.entries_per_sec(), m.entries_per_sec());
    }

    #[tokio::test]
    async fn a_failing_append_fails_the_run() {
        let timing = Timing { warmup: Duration::ZERO, window: Duration::from_millis(50) };
        let err = drive(2, timing, 1, |_| async { anyhow::bail!("disk on fire") }).await.unwrap_err();
        assert!(format!("{err:#}").contains("disk on fire"));
    }
}
