//! The one client driver every target uses: N workers, each calling an
//! async append in a closed loop (the next call starts when the previous
//! one was acknowledged), for a warmup and then a measured window.
//!
//! Each worker measures its own span: from its first acknowledgement after
//! the warmup to its last one, counting the calls completed in between, and
//! keeps calling past the window until that span holds at least one whole
//! call. So a target whose calls take longer than the window (a durable
//! JetStream batch under 256 clients takes seconds) still gets a rate, and
//! no call is counted that started in the warmup. The run's rate is the sum
//! of the workers' rates.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

// tokio's clock (the real one outside tests), so the tests can run on
// paused time and measure exactly instead of asserting timer-fuzzy ranges.
use tokio::time::Instant;

use anyhow::Context as _;
use hdrhistogram::Histogram;

use crate::cpu::ServerCpu;

/// How long to run: a warmup whose calls are not counted, then the window.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub warmup: Duration,
    pub window: Duration,
}

/// What one or more runs of a cell acknowledged.
#[derive(Debug)]
pub struct Measurement {
    /// Append calls counted.
    pub calls: u64,
    /// Entries of those calls.
    pub entries: u64,
    /// Runs merged into this one.
    runs: u32,
    /// The sum over runs of each run's entries/s.
    rate_sum: f64,
    /// Latency of each counted call, in microseconds.
    pub latency: Histogram<u64>,
    /// Every call acknowledged while the run went on, warm-up and the
    /// tail past the window included: what the server's CPU over the whole
    /// run is divided by.
    pub acked: u64,
    /// The server's CPU over the run, for a server that is a process of
    /// its own (`None` in-process, or when it could not be read).
    pub server_cpu: Option<ServerCpu>,
}

impl Measurement {
    /// Nothing measured yet: what `merge` starts from.
    pub fn empty() -> Measurement {
        Measurement {
            calls: 0,
            entries: 0,
            runs: 0,
            rate_sum: 0.0,
            latency: new_histogram(),
            acked: 0,
            server_cpu: None,
        }
    }

    /// One run measured by an external load generator (wrk, pgbench):
    /// `calls` acknowledged in `seconds`, with their latencies.
    pub fn external(calls: u64, entries_per_call: u64, seconds: f64, latency: Histogram<u64>) -> Measurement {
        let rate = if seconds > 0.0 { (calls * entries_per_call) as f64 / seconds } else { 0.0 };
        Measurement {
            calls,
            entries: calls * entries_per_call,
            runs: 1,
            rate_sum: rate,
            latency,
            acked: calls,
            server_cpu: None,
        }
    }

    /// Adds another run of the same cell (rounds of one measurement); the
    /// rate becomes the mean of the runs' rates.
    pub fn merge(&mut self, other: &Measurement) -> anyhow::Result<()> {
        let first = self.runs == 0;
        self.calls += other.calls;
        self.entries += other.entries;
        self.runs += other.runs;
        self.rate_sum += other.rate_sum;
        self.latency.add(&other.latency).context("merge latency histograms")?;
        self.acked += other.acked;
        // A server CPU figure only when every merged run has one.
        self.server_cpu = match (first, self.server_cpu, other.server_cpu) {
            (true, _, cpu) => cpu,
            (false, Some(mut mine), Some(theirs)) => {
                mine.add(theirs);
                Some(mine)
            }
            _ => None,
        };
        Ok(())
    }

    pub fn entries_per_sec(&self) -> f64 {
        if self.runs == 0 { 0.0 } else { self.rate_sum / f64::from(self.runs) }
    }

    /// Latency at `quantile` (0..=1), or zero when nothing was counted.
    pub fn latency_at(&self, quantile: f64) -> Duration {
        Duration::from_micros(self.latency.value_at_quantile(quantile))
    }
}

/// Runs `clients` workers; worker `w` calls `append(w)` in a loop until the
/// window ended and its span holds a whole call. Each call appends
/// `entries_per_call` entries. The first failed call stops the run with its
/// error.
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
    let mut total = Measurement { runs: 1, ..Measurement::empty() };
    for w in workers {
        let span = w.await.context("a worker panicked")??;
        let calls = span.latency.len();
        total.calls += calls;
        total.acked += span.acked;
        total.rate_sum += (calls * entries_per_call) as f64 / span.length.as_secs_f64();
        total.latency.add(&span.latency).context("merge latency histograms")?;
    }
    total.entries = total.calls * entries_per_call;
    Ok(total)
}

/// What one worker measured: the calls completed within `length`, and
/// all it had acknowledged by its end.
struct Span {
    length: Duration,
    latency: Histogram<u64>,
    acked: u64,
}

/// One closed-loop client.
async fn worker<F, Fut>(id: usize, append: Arc<F>, counted_from: Instant, until: Instant) -> anyhow::Result<Span>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let mut latency = new_histogram();
    // The first acknowledgement after the warmup: the span starts there.
    let mut span_start = None;
    let mut acked = 0;
    loop {
        let start = Instant::now();
        append(id).await.with_context(|| format!("client {id}: append failed"))?;
        acked += 1;
        let done = Instant::now();
        if done <= counted_from {
            continue;
        }
        match span_start {
            None => span_start = Some(done),
            Some(_) => latency.saturating_record(micros(done - start)),
        }
        if let Some(from) = span_start.filter(|_| done >= until && !latency.is_empty()) {
            return Ok(Span { length: done - from, latency, acked });
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

    /// A run whose every call sleeps for `call`.
    async fn sleeping_calls(clients: usize, timing: Timing, entries_per_call: u64, call: Duration) -> Measurement {
        drive(clients, timing, entries_per_call, move |_| async move {
            tokio::time::sleep(call).await;
            Ok(())
        })
        .await
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn counts_only_calls_inside_the_window() {
        let timing = Timing { warmup: Duration::from_millis(50), window: Duration::from_millis(200) };
        let m = sleeping_calls(4, timing, 10, Duration::from_millis(10)).await;
        // Each worker's span starts at its first ack after the warmup
        // (60 ms) and ends at the first ack at or after 250 ms: 19 calls.
        assert_eq!(m.calls, 4 * 19);
        assert_eq!(m.entries, m.calls * 10);
        // Exactly 10 ms, within the histogram's 3 significant digits.
        let p50 = m.latency_at(0.5);
        assert!(p50 >= Duration::from_millis(10) && p50 < Duration::from_micros(10_010), "{p50:?}");
        assert_eq!(m.entries_per_sec(), 4.0 * 1_000.0);
        // Every ack counts towards server CPU: 5 in the warm-up, the one
        // that starts the span, and the 19 counted.
        assert_eq!(m.acked, 4 * (5 + 1 + 19));
        let mut sum = Measurement::empty();
        sum.merge(&m).unwrap();
        sum.merge(&m).unwrap();
        assert_eq!(sum.calls, 2 * m.calls);
        assert_eq!(sum.acked, 2 * m.acked);
        assert_eq!(sum.entries_per_sec(), m.entries_per_sec());
    }

    #[test]
    fn server_cpu_adds_up_over_runs_that_all_have_it() {
        let run = |cpu_us| Measurement {
            server_cpu: Some(ServerCpu { cpu_us, calls: 10 }),
            ..Measurement::external(10, 1, 1.0, new_histogram())
        };
        let mut sum = Measurement::empty();
        sum.merge(&run(100.0)).unwrap();
        sum.merge(&run(300.0)).unwrap();
        assert_eq!(sum.server_cpu, Some(ServerCpu { cpu_us: 400.0, calls: 20 }));
        assert_eq!(sum.entries_per_sec(), 10.0);
        sum.merge(&Measurement::external(10, 1, 1.0, new_histogram())).unwrap();
        assert_eq!(sum.server_cpu, None, "a run without a reading leaves no figure");
    }

    #[tokio::test(start_paused = true)]
    async fn calls_longer_than_the_window_still_measure() {
        let timing = Timing { warmup: Duration::from_millis(10), window: Duration::from_millis(20) };
        let m = sleeping_calls(3, timing, 100, Duration::from_millis(100)).await;
        // Each worker ran until its span held one whole 100 ms call.
        assert_eq!(m.calls, 3);
        // 3 workers × 100 entries per 100 ms.
        assert_eq!(m.entries_per_sec(), 3_000.0);
    }

    #[tokio::test]
    async fn a_failing_append_fails_the_run() {
        let timing = Timing { warmup: Duration::ZERO, window: Duration::from_millis(50) };
        let err = drive(2, timing, 1, |_| async { anyhow::bail!("disk on fire") }).await.unwrap_err();
        assert!(format!("{err:#}").contains("disk on fire"));
    }
}
