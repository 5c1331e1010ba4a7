//! `postgres-pgbench`: PostgreSQL driven by `pgbench`, its own lean load
//! generator, beside the `postgres` target's Rust client (sqlx). The same
//! table as that target (created fresh for each run), the same row: ledger
//! `bench-NN` (client `c` writes ledger `c % 16`), a bigint timestamp, the
//! cell's JSON payload as jsonb, each a bound parameter of a prepared
//! statement (`-M prepared`). A single cell is one INSERT per transaction,
//! a batch cell one INSERT of `batch` rows (`INSERT … SELECT … FROM
//! (VALUES ($3), …)`: pgbench binds at most 255 parameters per statement,
//! so batches of up to 253 rows). `synchronous_commit = on` for every
//! connection, as the sqlx client sets it.
//!
//! pgbench opens one connection per client, so cells with more clients
//! than the server lets a run hold are not run (the sqlx client shares its
//! connections instead). Each run: one unmeasured pgbench run (warm-up),
//! then the measured one with per-transaction logs (`-l`), from which the
//! latency percentiles come; tps and the transaction count come from its
//! summary. pgbench's `-T` takes whole seconds, so the warm-up and the
//! window are rounded up (at least one second).
//!
//! The server's CPU is that of every process of the cluster, read from
//! once all of the measured run's connections are up (each a new backend,
//! with its TLS handshake and authentication: on a 1 s window those cost a
//! good part of the whole, and the sqlx client opens its pool before its
//! reading too) until pgbench exits, and is divided by the transactions
//! the logs show completed after the first reading. The connections are
//! counted in `pg_stat_activity` under an application name of the run's
//! own.
#![allow(clippy::disallowed_methods)] // the benchmark writes pgbench's script into its scratch dir

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail, ensure};
use sqlx::Connection as _;

use crate::cpu;
use crate::driver::{Measurement, Timing, new_histogram};
use crate::workload::{Cell, LEDGERS, payload_json};

/// The most rows one pgbench INSERT can carry: its statements take 255
/// parameters at most, two of which are the ledger and the timestamp.
pub const BATCH_MAX: usize = 253;
// Ledger, timestamp and one parameter a row: within pgbench's 255.
const _: () = assert!(2 + BATCH_MAX <= 255);

/// Where pgbench runs, and against what.
#[derive(Debug, Clone)]
pub struct PgbenchOptions {
    pub pgbench: PathBuf,
    pub url: String,
    /// The postmaster, for the cluster's CPU (`None`: not on this machine).
    pub postmaster: Option<u32>,
}

pub async fn run(cell: &Cell, timing: Timing, parent: &Path, options: &PgbenchOptions) -> anyhow::Result<Measurement> {
    ensure!(
        cell.batch <= BATCH_MAX,
        "pgbench cannot insert {} rows in one statement (at most {BATCH_MAX})",
        cell.batch
    );
    crate::postgres::create_table(&options.url).await?;
    let dir = tempfile::Builder::new().prefix("pgbench-").tempdir_in(parent).context("create a temp dir")?;
    let script = dir.path().join("append.sql");
    std::fs::write(&script, script_text(cell.batch)).with_context(|| format!("write {}", script.display()))?;

    pgbench(options, cell, whole_seconds(timing.warmup), &script, None).await.context("pgbench warm-up run")?;
    let logs = dir.path().join("log");
    let (summary, reading) = pgbench(options, cell, whole_seconds(timing.window), &script, Some(&logs)).await?;

    let mut latency = new_histogram();
    let since_us = reading.as_ref().map_or(0, |(_, at)| *at);
    let logs = read_logs(dir.path(), &mut latency, since_us)?;
    ensure!(
        logs.transactions == summary.transactions,
        "pgbench processed {} transactions but logged {}",
        summary.transactions,
        logs.transactions
    );
    let server_cpu = reading.map(|(cpu, _)| cpu::ServerCpu { calls: logs.after, ..cpu });
    let seconds = summary.transactions as f64 / summary.tps;
    let mut measured = Measurement::external(summary.transactions, cell.batch as u64, seconds, latency);
    measured.server_cpu = server_cpu;
    Ok(measured)
}

/// pgbench's `-T` takes whole seconds.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// The transaction script: `:client_id` picks the ledger, `:ts` and
/// `:payload` are set with `-D`.
fn script_text(batch: usize) -> String {
    let ledger = format!(r"\set l :client_id % {LEDGERS}");
    let columns = "INSERT INTO ferry_bench_entries (ledger, ts, payload)";
    let ledger_name = "'bench-' || lpad(:l::text, 2, '0')";
    if batch == 1 {
        return format!("{ledger}\n{columns} VALUES ({ledger_name}, :ts, :payload::jsonb);\n");
    }
    let rows = vec!["(:payload)"; batch].join(", ");
    format!("{ledger}\n{columns}\n  SELECT {ledger_name}, :ts, p::jsonb FROM (VALUES {rows}) AS v(p);\n")
}

/// What pgbench's summary says.
#[derive(Debug, PartialEq)]
struct Summary {
    transactions: u64,
    tps: f64,
}

/// How long the connections of a run may take to come up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// One pgbench run of `seconds`. With `logs`: per-transaction logs under
/// that prefix, and, when the postmaster is known, the cluster's CPU from
/// once every connection was up to pgbench's exit, with the wall-clock
/// time (µs since the epoch) of the first reading. Its calls are left at
/// zero: the logs tell how many transactions completed after it.
async fn pgbench(
    options: &PgbenchOptions,
    cell: &Cell,
    seconds: u64,
    script: &Path,
    logs: Option<&Path>,
) -> anyhow::Result<(Summary, Option<(cpu::ServerCpu, u64)>)> {
    // The run's connections are told apart from every other by their name.
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let app_name = format!("ferry-bench-pgbench-{}-{run}", std::process::id());
    let mut cmd = Command::new(&options.pgbench);
    cmd.args(["-n", "-M", "prepared"])
        .arg("-f")
        .arg(script)
        .arg(format!("-c{}", cell.clients))
        .arg(format!("-j{}", cell.clients.min(2)))
        .arg(format!("-T{seconds}"))
        .arg("-D")
        .arg(format!("ts={}", ferry_core::now_ms()))
        .arg("-D")
        .arg(format!("payload={}", payload_json(cell.payload_bytes)))
        // Every connection commits with its WAL flushed, as the sqlx client's.
        .env("PGOPTIONS", "-c synchronous_commit=on")
        .env("PGAPPNAME", &app_name)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(prefix) = logs {
        cmd.arg("-l").arg(format!("--log-prefix={}", prefix.display()));
    }
    cmd.arg(&options.url);
    let shown = format!("{} -c{} -T{seconds} -f {}", options.pgbench.display(), cell.clients, script.display());
    let mut child =
        cmd.spawn().with_context(|| format!("run {shown} (is pgbench installed? bench/run.sh installs it)"))?;
    let before = match (logs, options.postmaster) {
        (Some(_), Some(postmaster)) => {
            let connected = all_connected(&options.url, &app_name, cell.clients, &mut child).await;
            match connected {
                Ok(true) => Some((cpu::Reading::take(postmaster)?, epoch_us())),
                // pgbench exited first: its output says why.
                Ok(false) => None,
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e.context(format!("wait for the connections of {shown}")));
                }
            }
        }
        _ => None,
    };
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .context("pgbench's thread panicked")?
        .with_context(|| format!("run {shown}"))?;
    let reading = before.map(|(b, at)| b.finish(0).map(|cpu| (cpu, at))).transpose()?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{shown}: {}\n{stdout}{stderr}", out.status);
    }
    let summary = parse(&stdout).with_context(|| format!("{shown}\n{stdout}{stderr}"))?;
    ensure!(logs.is_none() || options.postmaster.is_none() || reading.is_some(), "{shown}: no CPU reading was taken");
    Ok((summary, reading))
}

/// Waits until `clients` connections named `app_name` are up (true), or
/// pgbench has exited (false).
async fn all_connected(
    url: &str,
    app_name: &str,
    clients: usize,
    child: &mut std::process::Child,
) -> anyhow::Result<bool> {
    let mut conn = sqlx::PgConnection::connect(url).await.with_context(|| format!("connect to {url}"))?;
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let up: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
            .bind(app_name)
            .fetch_one(&mut conn)
            .await?;
        if up as usize >= clients {
            conn.close().await?;
            return Ok(true);
        }
        if child.try_wait()?.is_some() {
            return Ok(false);
        }
        ensure!(Instant::now() < deadline, "only {up} of {clients} connections after {CONNECT_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn epoch_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// The transaction count and tps of pgbench's summary; fails on failed
/// transactions.
fn parse(stdout: &str) -> anyhow::Result<Summary> {
    let value = |prefix: &str| stdout.lines().find_map(|l| l.trim().strip_prefix(prefix)).map(str::trim);
    let transactions = value("number of transactions actually processed:")
        .and_then(|v| v.split('/').next()?.trim().parse::<u64>().ok())
        .context("pgbench printed no transaction count")?;
    if let Some(failed) = value("number of failed transactions:") {
        let count = failed.split_whitespace().next().unwrap_or_default();
        ensure!(count == "0", "pgbench had failed transactions: {failed}");
    }
    let tps = value("tps =")
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .context("pgbench printed no tps")?;
    ensure!(transactions > 0 && tps > 0.0, "pgbench completed no transaction");
    Ok(Summary { transactions, tps })
}

/// What the per-transaction logs hold.
#[derive(Debug, PartialEq)]
struct Logged {
    transactions: u64,
    /// Of those, completed at or after the time asked for.
    after: u64,
}

/// Records every latency of the per-transaction logs (`LOG-PREFIX.PID`,
/// `…PID.THREAD`) in `dir`, and counts the transactions, all and those
/// completed at or after `since_us` (µs since the epoch). Their lines are
/// `client transaction latency_us script epoch_s µs` (the last two: when
/// the transaction completed).
fn read_logs(dir: &Path, latency: &mut hdrhistogram::Histogram<u64>, since_us: u64) -> anyhow::Result<Logged> {
    let mut count = Logged { transactions: 0, after: 0 };
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("log.")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let number = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
            let (Some(micros), Some(secs), Some(frac)) = (number(2), number(4), number(5)) else {
                bail!("pgbench logged a transaction that did not complete: {line:?} in {}", path.display());
            };
            latency.saturating_record(micros.max(1));
            count.transactions += 1;
            if secs * 1_000_000 + frac >= since_us {
                count.after += 1;
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "pgbench (15.20 (Debian 15.20-0+deb12u1))
transaction type: append.sql
query mode: prepared
number of clients: 4
number of transactions actually processed: 504
number of failed transactions: 0 (0.000%)
latency average = 7.146 ms
initial connection time = 130.101 ms
tps = 559.756195 (without initial connection time)
";

    #[test]
    fn the_summary_is_parsed_and_failures_refused() {
        assert_eq!(parse(OUT).unwrap(), Summary { transactions: 504, tps: 559.756195 });
        let failed = OUT.replace("failed transactions: 0 (0.000%)", "failed transactions: 3 (0.5%)");
        assert!(parse(&failed).unwrap_err().to_string().contains("failed transactions: 3"));
        assert!(parse("pgbench (15)\n").is_err());
        assert!(parse(&OUT.replace("processed: 504", "processed: 0")).is_err());
    }

    #[test]
    fn scripts_insert_one_row_or_a_batch_in_one_statement() {
        let single = script_text(1);
        assert_eq!(single.matches(":payload").count(), 1);
        assert!(single.contains(r"\set l :client_id % 16"));
        let batch = script_text(100);
        assert_eq!(batch.matches("(:payload)").count(), 100);
        assert_eq!(batch.matches("INSERT").count(), 1);
    }

    #[test]
    fn logs_give_every_latency_and_refuse_failures() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("log.7"), "0 1 27484 0 1796434770 739566\n1 1 15763 0 1796434770 739580\n")
            .unwrap();
        std::fs::write(dir.path().join("log.7.1"), "2 1 12464 0 1796434770 723342\n").unwrap();
        std::fs::write(dir.path().join("append.sql"), "not a log\n").unwrap();
        let mut h = new_histogram();
        let since = 1_796_434_770_730_000;
        assert_eq!(read_logs(dir.path(), &mut h, since).unwrap(), Logged { transactions: 3, after: 2 });
        assert_eq!(h.max(), h.highest_equivalent(27484));
        std::fs::write(dir.path().join("log.8"), "0 2 failed 0 1796434770 739566\n").unwrap();
        assert!(read_logs(dir.path(), &mut new_histogram(), 0).is_err());
    }
}
