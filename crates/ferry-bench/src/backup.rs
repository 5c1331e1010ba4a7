//! Backup: how fast `ferry backup create` writes a copy of a stopped node
//! (`--data-dir`) and of a running one (`--server`), next to `sha256sum`
//! reading the very files it wrote, and how fast `ferry backup restore`
//! puts that copy into a fresh server, next to batch appends of the same
//! payloads into another fresh server — all in one run, on one disk.
//!
//! Everything runs the real binary (`--ferry-bin`, by default the `ferry`
//! built next to `ferry-bench`) as a user would: the backup and restore
//! commands as child processes, each timed from spawn to exit, and the
//! servers as `ferry serve` children on loopback ports.
//!
//! The peers are chosen so a ratio means one thing. `sha256sum` hashes
//! exactly the files a create wrote (every file under the backup but
//! `MANIFEST.json`), right after it, so both see the files warm in the
//! page cache; a create reads every byte of the node and writes and hashes
//! every byte of the backup, so `sha256sum` is the floor a person would
//! reach for. `openssl dgst -sha256` over the same files is shown as a
//! reference: where the CPU has SHA extensions it uses them, as the `sha2`
//! crate ferry hashes with does, and coreutils' `sha256sum` does not.
//! A restore imports one ledger at a time, one request at a time, so its
//! peer is one HTTP client appending batches of 1,000 entries (the append
//! bench's batch cell, through `http::run`); the same cell with 16 clients
//! is shown beside it as what the server takes with parallel writers.

#![allow(clippy::disallowed_methods)] // the benchmark makes its scratch dirs and writes ferry's logs, not ferry data

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use ferry_core::LedgerName;
use serde::Serialize;
use serde_json::Value;

use crate::driver::Timing;
use crate::ferry_child::{FerryServer, ferry_command};
use crate::http::HttpOptions;
use crate::report::thousands;
use crate::workload::Cell;

/// The project's goal for `backup create`, as a share of `sha256sum`'s
/// rate over the same files.
const GOAL_RATIO: f64 = 0.50;
/// Entries per call of the append peer (the append bench's batch cell).
const APPEND_BATCH: usize = 1000;
/// Clients of the append peer: one, as restore sends one request at a
/// time; sixteen, as the append bench's larger batch cell.
const APPEND_CLIENTS: [usize; 2] = [1, 16];
/// The file a create writes last and `sha256sum` is not run over.
const MANIFEST: &str = "MANIFEST.json";

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// In all ledgers together.
    pub entries: u64,
    pub ledgers: usize,
    /// Of each entry (about: the payloads vary).
    pub payload_bytes: usize,
    /// The `ferry` binary run for every command and server.
    pub ferry: PathBuf,
    /// Of each append peer's run.
    pub append_timing: Timing,
    /// Rounds of every step after the fill; each step's best is reported.
    pub rounds: u32,
}

/// One measured step of the run: a command timed from spawn to exit, or
/// an append peer's closed-loop rate.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: String,
    /// Entries the step handled (none for `sha256sum`).
    pub entries: Option<u64>,
    /// Bytes it wrote or read: the backup's files, or the appended payloads.
    pub bytes: Option<u64>,
    /// Wall time of a command (none for the append peer, whose rate is
    /// its clients' spans, `driver.rs`).
    pub seconds: Option<f64>,
    pub entries_per_sec: Option<f64>,
    pub mb_per_sec: Option<f64>,
}

impl Step {
    /// Wall time, or zero for a rate.
    fn secs(&self) -> f64 {
        self.seconds.unwrap_or(0.0)
    }

    fn rate(&self) -> f64 {
        self.entries_per_sec.unwrap_or(0.0)
    }

    /// The better run of one step: the shorter command, or the higher
    /// append rate.
    fn better(self, other: Step) -> Step {
        let other_wins = match (self.seconds, other.seconds) {
            (Some(a), Some(b)) => b < a,
            _ => other.rate() > self.rate(),
        };
        if other_wins { other } else { self }
    }

    fn timed(name: &str, entries: Option<u64>, bytes: u64, took: Duration) -> Step {
        let secs = took.as_secs_f64().max(1e-9);
        Step {
            name: name.to_owned(),
            entries,
            bytes: Some(bytes),
            seconds: Some(secs),
            entries_per_sec: entries.map(|n| n as f64 / secs),
            mb_per_sec: Some(bytes as f64 / 1e6 / secs),
        }
    }
}

/// Everything one run measured. The create ratios are of MB/s over the
/// same bytes (so of times), the restore ratios of entries/s.
#[derive(Debug, Serialize)]
pub struct BackupReport {
    pub entries: u64,
    pub ledgers: usize,
    pub payload_bytes: usize,
    /// Each step's best round is reported.
    pub rounds: u32,
    pub ferry: String,
    pub steps: Vec<Step>,
    pub ratio_create_data_dir_to_sha256sum: f64,
    pub ratio_create_server_to_sha256sum: f64,
    /// The same against `openssl dgst -sha256` (a reference: no goal).
    pub ratio_create_data_dir_to_openssl: Option<f64>,
    /// `(clients, ratio)`: restore's entries/s over the append peer's with
    /// that many clients, one per `APPEND_CLIENTS`.
    pub ratio_restore_to_append: Vec<(usize, f64)>,
}

/// Fills a node, then runs `options.rounds` rounds of: back it up (both
/// ways), hash, verify, restore and append; each step's best round is
/// reported. Everything lives in one temp dir under `parent`.
pub async fn run(parent: &Path, options: &Options) -> anyhow::Result<BackupReport> {
    let dir = tempfile::Builder::new().prefix("backup-").tempdir_in(parent).context("create a temp dir")?;
    let node = dir.path().join("node");
    eprintln!("filling {} entries into {} ledgers", options.entries, options.ledgers);
    fill(&node, options).await?;
    let mut best: Option<Round> = None;
    for r in 1..=options.rounds {
        let scratch = dir.path().join(format!("round-{r}"));
        let round = round(parent, &node, &scratch, options).await.with_context(|| format!("round {r}"))?;
        eprintln!(
            "round {r}: create --data-dir {:.2}s, sha256sum {:.2}s, create --server {:.2}s, sha256sum {:.2}s, \
             restore {:.2}s, append {}",
            round.create_dir.secs(),
            round.sum_dir.secs(),
            round.create_server.secs(),
            round.sum_server.secs(),
            round.restore.secs(),
            round.appends.iter().map(|a| format!("{:.0}/s", a.rate())).collect::<Vec<_>>().join(" "),
        );
        best = Some(match best {
            Some(b) => b.best(round),
            None => round,
        });
    }
    let best = best.context("--backup needs at least one round")?;
    let mb = |s: &Step| s.mb_per_sec.unwrap_or(0.0);
    let restore_rate = best.restore.rate();
    Ok(BackupReport {
        entries: options.entries,
        ledgers: options.ledgers,
        payload_bytes: options.payload_bytes,
        rounds: options.rounds,
        ferry: options.ferry.display().to_string(),
        ratio_create_data_dir_to_sha256sum: mb(&best.create_dir) / mb(&best.sum_dir),
        ratio_create_server_to_sha256sum: mb(&best.create_server) / mb(&best.sum_server),
        ratio_create_data_dir_to_openssl: best.openssl.as_ref().map(|o| mb(&best.create_dir) / mb(o)),
        ratio_restore_to_append: APPEND_CLIENTS
            .iter()
            .zip(&best.appends)
            .map(|(&c, a)| (c, restore_rate / a.rate()))
            .collect(),
        steps: best.steps(),
    })
}

/// What one round measured.
#[derive(Debug, Clone)]
struct Round {
    create_dir: Step,
    sum_dir: Step,
    openssl: Option<Step>,
    create_server: Step,
    sum_server: Step,
    restore: Step,
    verify: Step,
    /// One per `APPEND_CLIENTS`.
    appends: Vec<Step>,
}

impl Round {
    /// Each step's better run of the two.
    fn best(self, other: Round) -> Round {
        Round {
            create_dir: self.create_dir.better(other.create_dir),
            sum_dir: self.sum_dir.better(other.sum_dir),
            openssl: match (self.openssl, other.openssl) {
                (Some(a), Some(b)) => Some(a.better(b)),
                (a, b) => a.or(b),
            },
            create_server: self.create_server.better(other.create_server),
            sum_server: self.sum_server.better(other.sum_server),
            restore: self.restore.better(other.restore),
            verify: self.verify.better(other.verify),
            appends: self.appends.into_iter().zip(other.appends).map(|(a, b)| a.better(b)).collect(),
        }
    }

    /// In the order printed.
    fn steps(&self) -> Vec<Step> {
        let mut steps = vec![self.create_dir.clone(), self.sum_dir.clone()];
        steps.extend(self.openssl.clone());
        steps.extend([self.create_server.clone(), self.sum_server.clone(), self.restore.clone(), self.verify.clone()]);
        steps.extend(self.appends.iter().cloned());
        steps
    }
}

/// One round over the filled (stopped) node, its files under `scratch`.
async fn round(parent: &Path, node: &Path, scratch: &Path, options: &Options) -> anyhow::Result<Round> {
    let (ferry, entries) = (&options.ferry, options.entries);
    std::fs::create_dir_all(scratch).with_context(|| format!("create {}", scratch.display()))?;

    // A stopped node, then sha256sum over exactly what the backup wrote.
    let d1 = scratch.join("backup-data-dir");
    let create = ferry_json(ferry, &[os("backup"), os("create"), os(&d1), os("--data-dir"), os(node)])
        .await
        .context("ferry backup create --data-dir")?;
    expect_count(&create.json, "entries", entries, "backup create --data-dir")?;
    let (files, bytes) = backup_files(&d1)?;
    let create_dir = Step::timed("backup create --data-dir", Some(entries), bytes, create.took);
    let sum_dir = Step::timed("sha256sum, same files", None, bytes, sha256sum(&d1, &files).await?);
    let openssl =
        openssl_sha256(&d1, &files).await?.map(|t| Step::timed("openssl dgst -sha256, same files", None, bytes, t));

    // The same node served, backed up over HTTP.
    let d2 = scratch.join("backup-server");
    let server = FerryServer::start(ferry, node, &scratch.join("serve-source.log")).await?;
    let create =
        ferry_json(ferry, &[os("backup"), os("create"), os(&d2), os("--server"), os(server.url.as_str())]).await;
    server.stop();
    let create = create.context("ferry backup create --server")?;
    expect_count(&create.json, "entries", entries, "backup create --server")?;
    let (files2, bytes2) = backup_files(&d2)?;
    let create_server = Step::timed("backup create --server", Some(entries), bytes2, create.took);
    let sum_server = Step::timed("sha256sum, same files", None, bytes2, sha256sum(&d2, &files2).await?);

    // The first backup into a fresh server. Restore verifies before it
    // writes; the verify alone, timed first, shows that share of it.
    let verify = ferry_json(ferry, &[os("backup"), os("verify"), os(&d1)]).await.context("ferry backup verify")?;
    expect_count(&verify.json, "entries", entries, "backup verify")?;
    let verify = Step::timed("  of which verify", Some(entries), bytes, verify.took);
    let server = FerryServer::start(ferry, &scratch.join("restored"), &scratch.join("serve-restore.log")).await?;
    let restore =
        ferry_json(ferry, &[os("backup"), os("restore"), os(&d1), os("--server"), os(server.url.as_str())]).await;
    server.stop();
    let restore = restore.context("ferry backup restore --server")?;
    expect_count(&restore.json, "imported", entries, "backup restore --server")?;
    let restore = Step::timed("backup restore --server", Some(entries), bytes, restore.took);

    // The append peer: batches through HTTP into a fresh server each.
    let mut appends = Vec::new();
    for clients in APPEND_CLIENTS {
        appends.push(append_peer(parent, scratch, options, clients).await?);
    }
    Ok(Round { create_dir, sum_dir, openssl, create_server, sum_server, restore, verify, appends })
}

impl BackupReport {
    /// The table and the ratios, as printed.
    pub fn text(&self) -> String {
        let mut out = format!(
            "\n{:<34} {:>11} {:>9} {:>9} {:>9} {:>12}\n",
            "step", "entries", "MB", "seconds", "MB/s", "entries/s"
        );
        let opt = |v: Option<String>| v.unwrap_or_else(|| "—".into());
        for s in &self.steps {
            out.push_str(&format!(
                "{:<34} {:>11} {:>9} {:>9} {:>9} {:>12}\n",
                s.name,
                opt(s.entries.map(thousands)),
                opt(s.bytes.map(|b| format!("{:.1}", b as f64 / 1e6))),
                opt(s.seconds.map(|t| format!("{t:.2}"))),
                opt(s.mb_per_sec.map(|r| format!("{r:.1}"))),
                opt(s.entries_per_sec.map(|r| thousands(r.round() as u64))),
            ));
        }
        out.push_str(
            "\nMB: the backup's files but MANIFEST.json (written by create, read by the hashers, verify and\n\
             restore); for the appends, their payloads. sha256sum (and openssl) run right after each create,\n\
             over its files, warm in the page cache as create's own source reads were (the node had just been\n\
             filled and frozen). Restore includes its verify pass; the row below it is that pass alone.\n\n",
        );
        let verdict = |r: f64| if r >= GOAL_RATIO { "met" } else { "NOT met" };
        for (label, r) in [
            ("backup create --data-dir / sha256sum", self.ratio_create_data_dir_to_sha256sum),
            ("backup create --server / sha256sum", self.ratio_create_server_to_sha256sum),
        ] {
            out.push_str(&format!(
                "{label:<48} {:>5.0}%   (MB/s; goal ≥ {:.0}%: {})\n",
                100.0 * r,
                100.0 * GOAL_RATIO,
                verdict(r)
            ));
        }
        if let Some(r) = self.ratio_create_data_dir_to_openssl {
            let label = "backup create --data-dir / openssl dgst -sha256";
            out.push_str(&format!("{label:<48} {:>5.0}%   (MB/s; a reference, no goal)\n", 100.0 * r));
        }
        for (clients, r) in &self.ratio_restore_to_append {
            let label =
                format!("backup restore / http append, {clients} client{}", if *clients == 1 { "" } else { "s" });
            out.push_str(&format!("{label:<48} {:>5.0}%   (entries/s)\n", 100.0 * r));
        }
        out
    }
}

/// Fills `ledgers` ledgers of a fresh node at `dir` concurrently, waits
/// until every full chunk is a pack (a stopped node's data is mostly
/// packs, and no freezing then competes with the measurements), and stops
/// the store so the node is ready for `--data-dir` and `ferry serve`.
async fn fill(dir: &Path, options: &Options) -> anyhow::Result<()> {
    let store = crate::store::open(dir).await?;
    let ledgers: Vec<LedgerName> =
        (0..options.ledgers).map(|i| LedgerName::parse(&format!("backup-{i:02}")).expect("a valid name")).collect();
    crate::export::fill(&store, dir, &ledgers, options.entries, options.payload_bytes).await?;
    store.shutdown().await;
    Ok(())
}

/// One append peer: `clients` closed-loop clients posting batches of
/// `APPEND_BATCH` entries to a fresh `ferry serve`.
async fn append_peer(parent: &Path, root: &Path, options: &Options, clients: usize) -> anyhow::Result<Step> {
    let cell = Cell { clients, payload_bytes: options.payload_bytes, batch: APPEND_BATCH };
    let data = root.join(format!("appended-{clients}"));
    let server = FerryServer::start(&options.ferry, &data, &root.join(format!("serve-append-{clients}.log"))).await?;
    let http = HttpOptions { server: Some(server.url.clone()), token: None, wrk: None };
    let measured = crate::http::run(&cell, options.append_timing, parent, &http).await;
    server.stop();
    let measured = measured.with_context(|| format!("HTTP batch appends with {clients} clients"))?;
    let rate = measured.entries_per_sec();
    ensure!(rate > 0.0, "HTTP batch appends with {clients} clients appended nothing");
    eprintln!("http append {clients} clients: {rate:.0} entries/s");
    let payload = options.payload_bytes as f64;
    Ok(Step {
        name: format!("http append {clients}×{APPEND_BATCH}×{}B", options.payload_bytes),
        entries: Some(measured.entries),
        bytes: Some(measured.entries * options.payload_bytes as u64),
        seconds: None,
        entries_per_sec: Some(rate),
        mb_per_sec: Some(rate * payload / 1e6),
    })
}

/// The `ferry` binary `--backup` runs: `chosen`, or the one built next to
/// this benchmark (`cargo build --release -p ferry -p ferry-bench` puts
/// both in `target/release`).
pub fn ferry_binary(chosen: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match chosen {
        Some(path) => path,
        None => {
            let exe = std::env::current_exe().context("find ferry-bench's own binary")?;
            exe.with_file_name(format!("ferry{}", std::env::consts::EXE_SUFFIX))
        }
    };
    ensure!(
        path.is_file(),
        "no ferry binary at {} (build it with `cargo build --release -p ferry`, or pass --ferry-bin)",
        path.display()
    );
    Ok(path)
}

/// `ferry --version`, for the header.
pub fn ferry_version(ferry: &Path) -> String {
    Command::new(ferry)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn os(s: impl AsRef<std::ffi::OsStr>) -> OsString {
    s.as_ref().to_owned()
}

/// A finished `ferry` command: its wall time and the JSON line it printed.
struct Finished {
    took: Duration,
    json: Value,
}

/// Runs `ferry ARGS…` to its end, timed from spawn to exit; fails with its
/// stderr unless it exits 0 having printed one JSON line.
async fn ferry_json(ferry: &Path, args: &[OsString]) -> anyhow::Result<Finished> {
    let mut cmd = ferry_command(ferry);
    cmd.args(args);
    let shown = format!("ferry {}", args.iter().map(|a| a.to_string_lossy()).collect::<Vec<_>>().join(" "));
    let (took, out) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = cmd.output();
        (started.elapsed(), out)
    })
    .await
    .context("a command's thread panicked")?;
    let out = out.with_context(|| format!("run {shown}"))?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("{shown}: {}\n{stderr}", out.status);
    }
    let line = stdout.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
    let json = serde_json::from_str(line).with_context(|| format!("{shown} printed no JSON line: {stdout:?}"))?;
    Ok(Finished { took, json })
}

/// Fails unless `json[field]` is `expected`.
fn expect_count(json: &Value, field: &str, expected: u64, what: &str) -> anyhow::Result<()> {
    let got = json.get(field).and_then(Value::as_u64);
    ensure!(got == Some(expected), "{what}: expected {field} = {expected}, it printed {json}");
    Ok(())
}

/// Every file under a backup but `MANIFEST.json`, relative to it and
/// sorted, and their total size: what a create wrote besides the manifest.
fn backup_files(dir: &Path) -> anyhow::Result<(Vec<PathBuf>, u64)> {
    let mut files = Vec::new();
    let mut pending = vec![PathBuf::new()];
    let mut bytes = 0;
    while let Some(rel) = pending.pop() {
        let full = dir.join(&rel);
        for entry in std::fs::read_dir(&full).with_context(|| format!("list {}", full.display()))? {
            let entry = entry?;
            let path = rel.join(entry.file_name());
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(path);
            } else if path != Path::new(MANIFEST) {
                bytes += meta.len();
                files.push(path);
            }
        }
    }
    files.sort();
    ensure!(!files.is_empty(), "{} holds no files besides {MANIFEST}", dir.display());
    Ok((files, bytes))
}

/// `sha256sum FILES…` in `dir` (one process, as a person would run it),
/// timed from spawn to exit.
async fn sha256sum(dir: &Path, files: &[PathBuf]) -> anyhow::Result<Duration> {
    let mut cmd = Command::new("sha256sum");
    cmd.arg("--");
    hash_files(cmd, dir, files).await.context("run sha256sum (coreutils)")
}

/// `openssl dgst -sha256 -r FILES…`, timed the same way: a reference, not
/// the goal's peer. coreutils' `sha256sum` (9.x as Debian builds it) uses
/// portable C; OpenSSL, like the `sha2` crate ferry uses, uses the CPU's
/// SHA extensions where it has them. `None` when there is no `openssl`.
async fn openssl_sha256(dir: &Path, files: &[PathBuf]) -> anyhow::Result<Option<Duration>> {
    if Command::new("openssl").arg("version").output().is_err() {
        return Ok(None);
    }
    let mut cmd = Command::new("openssl");
    cmd.args(["dgst", "-sha256", "-r"]);
    hash_files(cmd, dir, files).await.context("run openssl dgst -sha256").map(Some)
}

/// Runs `cmd FILES…` in `dir`, timed from spawn to exit. Its digests
/// (`sha256sum`'s format) are checked against the backup's `CHECKSUMS`, so
/// it is known to have hashed the files the backup names.
async fn hash_files(mut cmd: Command, dir: &Path, files: &[PathBuf]) -> anyhow::Result<Duration> {
    let shown = cmd.get_program().to_string_lossy().into_owned();
    cmd.current_dir(dir).args(files).stdin(Stdio::null());
    let (took, out) = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let out = cmd.output();
        (started.elapsed(), out)
    })
    .await
    .context("a hashing thread panicked")?;
    let out = out?;
    if !out.status.success() {
        bail!("{shown} in {}: {}\n{}", dir.display(), out.status, String::from_utf8_lossy(&out.stderr));
    }
    let checksums = std::fs::read_to_string(dir.join("CHECKSUMS")).context("read the backup's CHECKSUMS")?;
    let ours = String::from_utf8_lossy(&out.stdout);
    let missing = unmatched_lines(&checksums, &ours);
    ensure!(missing.is_empty(), "{shown} disagrees with {}/CHECKSUMS on: {missing:?}", dir.display());
    Ok(took)
}

/// The lines of `expected` (`sha256sum`'s format) that `got` lacks, with
/// the `*`/space mode marker ignored.
fn unmatched_lines(expected: &str, got: &str) -> Vec<String> {
    let normal = |l: &str| l.replacen(" *", "  ", 1);
    let got: std::collections::HashSet<String> = got.lines().map(normal).collect();
    expected.lines().filter(|l| !l.trim().is_empty()).map(normal).filter(|l| !got.contains(l)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_files_are_all_but_the_manifest() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = dir.path().join("ledgers").join("a");
        std::fs::create_dir_all(&ledger).unwrap();
        for (path, text) in
            [("MANIFEST.json", "{}"), ("CHECKSUMS", "x"), ("ledgers/a/ledger.json", "{}"), ("ledgers/a/e.jsonl", "12")]
        {
            std::fs::write(dir.path().join(path), text).unwrap();
        }
        let (files, bytes) = backup_files(dir.path()).unwrap();
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        assert_eq!(names, ["CHECKSUMS", "ledgers/a/e.jsonl", "ledgers/a/ledger.json"]);
        assert_eq!(bytes, 1 + 2 + 2);
    }

    #[test]
    fn checksum_lines_match_whatever_the_mode_marker() {
        let expected = "aa  ledgers/a/e.jsonl\nbb *ledger.json\n";
        assert!(unmatched_lines(expected, "bb  ledger.json\naa  ledgers/a/e.jsonl\ncc  CHECKSUMS\n").is_empty());
        assert_eq!(unmatched_lines(expected, "aa  ledgers/a/e.jsonl\n"), ["bb  ledger.json"]);
    }

    #[test]
    fn the_better_step_is_the_shorter_command_or_the_higher_rate() {
        let command = |secs: u64| Step::timed("create", Some(10), 100, Duration::from_secs(secs));
        assert_eq!(command(3).better(command(2)).seconds, Some(2.0));
        assert_eq!(command(2).better(command(3)).seconds, Some(2.0));
        let append = |rate: f64| Step { seconds: None, entries_per_sec: Some(rate), ..command(1) };
        assert_eq!(append(5.0).better(append(7.0)).rate(), 7.0);
        assert_eq!(append(7.0).better(append(5.0)).rate(), 7.0);
    }

    #[test]
    fn counts_are_checked() {
        let json = serde_json::json!({"entries": 5, "imported": 4});
        assert!(expect_count(&json, "entries", 5, "create").is_ok());
        let err = expect_count(&json, "imported", 5, "restore").unwrap_err().to_string();
        assert!(err.contains("expected imported = 5"), "{err}");
    }

    #[test]
    fn a_missing_ferry_binary_is_named() {
        let err = ferry_binary(Some(PathBuf::from("/nonexistent/ferry"))).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ferry"), "{err}");
    }
}
