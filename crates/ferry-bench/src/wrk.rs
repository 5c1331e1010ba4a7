//! `http-wrk`: the real `ferry serve` binary as a child process, driven by
//! wrk, a lean external load generator, so the HTTP numbers do not hang on
//! our own Rust client. Each run starts a fresh server (its own data dir
//! under the harness's `--data-dir`, a free loopback port), waits for
//! `/readyz`, creates the ledgers, runs wrk once unmeasured (the warm-up)
//! and once measured, with the server's CPU read around the measured run.
//!
//! The request bodies are the `http` target's (`workload::http_body`),
//! built by `bench/wrk/append.lua`, which is compiled into this binary so
//! it runs from anywhere; its `done()` prints one JSON line that is parsed
//! here. Any error wrk counts (an answer >= 400, a socket error, a timeout)
//! fails the run. wrk takes whole seconds, so the warm-up and the window
//! are rounded up to whole seconds (at least one).
//!
//! wrk's latency percentiles include its own coordinated-omission
//! correction (it adds the samples a stalled connection would have taken),
//! so at the tail they read higher than our driver's raw per-call
//! latencies.
#![allow(clippy::disallowed_methods)] // the benchmark writes its wrk script into its scratch dir

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail, ensure};
use serde::Deserialize;

use crate::cpu;
use crate::driver::{Measurement, Timing, new_histogram};
use crate::ferry_child::FerryServer;
use crate::workload::{Cell, LEDGERS};

/// The wrk script, as in the repository.
const SCRIPT: &str = include_str!("../../../bench/wrk/append.lua");
/// A request wrk waits for longer than this counts as a timeout error,
/// which fails the run (wrk's default, 2 s, is shorter than a 256-client
/// batch can take on a loaded machine).
const REQUEST_TIMEOUT: &str = "60s";

/// The programs the target runs.
#[derive(Debug, Clone)]
pub struct WrkOptions {
    pub wrk: PathBuf,
    /// The `ferry` binary served.
    pub ferry: PathBuf,
}

pub async fn run(cell: &Cell, timing: Timing, parent: &Path, options: &WrkOptions) -> anyhow::Result<Measurement> {
    let dir = tempfile::Builder::new().prefix("http-wrk-").tempdir_in(parent).context("create a temp dir")?;
    let script = dir.path().join("append.lua");
    std::fs::write(&script, SCRIPT).with_context(|| format!("write {}", script.display()))?;
    let server = FerryServer::start(&options.ferry, &dir.path().join("data"), &dir.path().join("serve.log")).await?;
    let client = crate::http::client(1, None)?;
    crate::http::create_ledgers(&client, &server.url).await?;
    drop(client);
    let url = server.url.as_str().trim_end_matches('/').to_owned();

    wrk(options, cell, whole_seconds(timing.warmup), &script, &url).await.context("wrk warm-up run")?;
    let before = cpu::Reading::take(server.pid())?;
    let summary = wrk(options, cell, whole_seconds(timing.window), &script, &url).await?;
    let server_cpu = before.finish(summary.requests)?;
    server.stop();

    let mut latency = new_histogram();
    for &(micros, count) in &summary.histogram {
        latency.saturating_record_n(micros.max(1), count);
    }
    let seconds = summary.duration_us as f64 / 1e6;
    let mut measured = Measurement::external(summary.requests, cell.batch as u64, seconds, latency);
    measured.server_cpu = Some(server_cpu);
    Ok(measured)
}

/// wrk's `-d`/`--timeout` take whole seconds.
fn whole_seconds(d: Duration) -> u64 {
    d.as_secs_f64().ceil().max(1.0) as u64
}

/// What `append.lua`'s `done()` prints.
#[derive(Debug, Deserialize)]
struct Summary {
    requests: u64,
    duration_us: u64,
    errors: Errors,
    latency_us: Percentiles,
    /// (µs, count) of every latency recorded.
    histogram: Vec<(u64, u64)>,
}

#[derive(Debug, Deserialize)]
struct Errors {
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
}

#[derive(Debug, Deserialize)]
struct Percentiles {
    p50: u64,
    p99: u64,
}

/// One wrk run of `seconds` against `url`; fails on any error it counted.
async fn wrk(options: &WrkOptions, cell: &Cell, seconds: u64, script: &Path, url: &str) -> anyhow::Result<Summary> {
    let mut cmd = Command::new(&options.wrk);
    cmd.arg("-t1")
        .arg(format!("-c{}", cell.clients))
        .arg(format!("-d{seconds}s"))
        .arg("--latency")
        .args(["--timeout", REQUEST_TIMEOUT])
        .arg("-s")
        .arg(script)
        .arg(url)
        .env("FERRY_WRK_PAYLOAD", cell.payload_bytes.to_string())
        .env("FERRY_WRK_BATCH", cell.batch.to_string())
        .env("FERRY_WRK_LEDGERS", LEDGERS.to_string())
        .env_remove("FERRY_WRK_TOKEN")
        .stdin(Stdio::null());
    let shown = format!("{} -t1 -c{} -d{seconds}s … {url}", options.wrk.display(), cell.clients);
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .context("wrk's thread panicked")?
        .with_context(|| format!("run {shown} (is wrk installed? bench/run.sh installs it)"))?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(out.status.success(), "{shown}: {}\n{stdout}{stderr}", out.status);
    parse(&stdout).with_context(|| format!("{shown}\n{stderr}"))
}

/// The JSON line of wrk's output, checked: no errors, some requests.
fn parse(stdout: &str) -> anyhow::Result<Summary> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with('{'))
        .with_context(|| format!("wrk printed no JSON line (is the script's done() run?):\n{stdout}"))?;
    let summary: Summary = serde_json::from_str(line).context("parse wrk's JSON line")?;
    let e = &summary.errors;
    if e.connect + e.read + e.write + e.status + e.timeout > 0 {
        bail!(
            "wrk counted errors: {} connect, {} read, {} write, {} answers >= 400, {} timeouts",
            e.connect,
            e.read,
            e.write,
            e.status,
            e.timeout
        );
    }
    ensure!(summary.requests > 0 && summary.duration_us > 0, "wrk completed no request:\n{stdout}");
    ensure!(
        summary.latency_us.p50 <= summary.latency_us.p99 && !summary.histogram.is_empty(),
        "wrk's latencies make no sense: {line}"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: &str = r#"Running 1s test @ http://127.0.0.1:1
  1 threads and 16 connections
{"requests":4816,"duration_us":1084004,"bytes":605090,"errors":{"connect":0,"read":0,"write":0,"status":0,"timeout":0},"latency_us":{"p50":981,"p99":101217,"p999":112056,"max":113858},"histogram":[[334,1],[981,3],[113858,1]]}
"#;

    #[test]
    fn the_json_line_is_found_and_checked() {
        let s = parse(OK).unwrap();
        assert_eq!((s.requests, s.duration_us, s.histogram.len()), (4816, 1_084_004, 3));
        let refused = OK.replace(r#""status":0"#, r#""status":7"#);
        let err = parse(&refused).unwrap_err().to_string();
        assert!(err.contains("7 answers >= 400"), "{err}");
        let timeouts = OK.replace(r#""timeout":0"#, r#""timeout":1"#);
        assert!(parse(&timeouts).is_err());
        assert!(parse("Running 1s test\n").unwrap_err().to_string().contains("no JSON line"));
        let none = OK.replace(r#""requests":4816"#, r#""requests":0"#);
        assert!(parse(&none).is_err());
    }

    #[test]
    fn durations_round_up_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(200)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(1)), 1);
        assert_eq!(whole_seconds(Duration::from_millis(1500)), 2);
        assert_eq!(whole_seconds(Duration::ZERO), 1);
    }

    #[test]
    fn the_script_builds_the_http_targets_bodies() {
        // The Lua builds its bodies by hand; these are the strings it must
        // produce, checked against the Rust client's.
        assert!(SCRIPT.contains(r#"'{"d":"' .. string.rep("x", math.max(0, bytes - 8)) .. '"}'"#));
        assert!(SCRIPT.contains(r#"'{"entries":[' .. table.concat(all, ",") .. ']}'"#));
        assert!(SCRIPT.contains(r#"string.format("/v1/ledgers/bench-%02d/entries", i)"#));
        let one = crate::workload::http_body(&Cell { clients: 1, payload_bytes: 64, batch: 1 });
        assert_eq!(String::from_utf8(one).unwrap(), format!(r#"{{"payload":{{"d":"{}"}}}}"#, "x".repeat(56)));
    }
}
