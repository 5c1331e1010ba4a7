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
//! window are rounded up (at least one second). The server's CPU is read
//! around the measured run over every process of the cluster.
#![allow(clippy::disallowed_methods)] // the benchmark writes pgbench's script into its scratch dir

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};

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
    let before = options.postmaster.map(cpu::Reading::take).transpose()?;
    let summary = pgbench(options, cell, whole_seconds(timing.window), &script, Some(&logs)).await?;
    let server_cpu = before.map(|b| b.finish(summary.transactions)).transpose()?;

    let mut latency = new_histogram();
    let logged = read_logs(dir.path(), &mut latency)?;
    ensure!(
        logged == summary.transactions,
        "pgbench processed {} transactions but logged {logged}",
        summary.transactions
    );
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

/// One pgbench run of `seconds`; with `logs`, per-transaction logs under
/// that prefix.
async fn pgbench(
    options: &PgbenchOptions,
    cell: &Cell,
    seconds: u64,
    script: &Path,
    logs: Option<&Path>,
) -> anyhow::Result<Summary> {
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
        .stdin(Stdio::null());
    if let Some(prefix) = logs {
        cmd.arg("-l").arg(format!("--log-prefix={}", prefix.display()));
    }
    cmd.arg(&options.url);
    let shown = format!("{} -c{} -T{seconds} -f {}", options.pgbench.display(), cell.clients, script.display());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .context("pgbench's thread panicked")?
        .with_context(|| format!("run {shown} (is pgbench installed? bench/run.sh installs it)"))?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{shown}: {}\n{stdout}{stderr}", out.status);
    }
    parse(&stdout).with_context(|| format!("{shown}\n{stdout}{stderr}"))
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

/// Records every latency of the per-transaction logs (`LOG-PREFIX.PID`,
/// `…PID.THREAD`) in `dir`; returns how many transactions they hold. Their
/// lines are `client transaction latency_us script epoch epoch_us`.
fn read_logs(dir: &Path, latency: &mut hdrhistogram::Histogram<u64>) -> anyhow::Result<u64> {
    let mut count = 0;
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if !path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("log.")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let field = line.split_whitespace().nth(2).unwrap_or_default();
            let Ok(micros) = field.parse::<u64>() else {
                bail!("pgbench logged a transaction that did not complete: {line:?} in {}", path.display());
            };
            latency.saturating_record(micros.max(1));
            count += 1;
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
        assert_eq!(read_logs(dir.path(), &mut h).unwrap(), 3);
        assert_eq!(h.max(), h.highest_equivalent(27484));
        std::fs::write(dir.path().join("log.8"), "0 2 failed 0 1796434770 739566\n").unwrap();
        assert!(read_logs(dir.path(), &mut new_histogram()).is_err());
    }
}
