//! SPEC §2.4 under `kill -9`: clients append while two file exporters
//! ship the ledgers, the process is SIGKILLed at random moments and
//! restarted. After every kill, each exporter's durable cursor is at most
//! the last complete line its files hold (never ahead of the sink), and
//! the files hold consecutive ids from 1 (no gap, no duplicate). At the
//! end the files equal the ledgers byte for byte.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::exporters::file_lines;
use crate::support::{Env, durable_cursors, parse_line};

const LEDGERS: [&str; 3] = ["audit", "pay.eu", "t-1"];
const EXPORTERS: [&str; 2] = ["small", "large"];
const CYCLES: usize = 30;
const TASKS: usize = 4;
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 20..=400;

fn config(root: &Path) -> String {
    format!(
        r#"
[storage]
chunk_entries = 16

[[exporters]]
name = "small"
sink = "file"
batch = {{ max_entries = 13, linger = "1ms" }}
max_parallel_ledgers = 2
[exporters.config]
dir = "{0}/small"
max_file_bytes = "4KiB"

[[exporters]]
name = "large"
sink = "file"
batch = {{ max_entries = 200, linger = "20ms" }}
[exporters.config]
dir = "{0}/large"
max_file_bytes = "64KiB"
"#,
        root.display()
    )
}

/// The ids of the complete lines in a ledger's files, checked to run 1, 2,
/// 3, … with nothing repeated or missing; a torn last line is ignored (the
/// next start cuts it). Returns the last complete id.
fn check_files(dir: &Path, ledger: &str) -> Result<u64, String> {
    let mut files: Vec<_> = match std::fs::read_dir(dir.join(ledger)) {
        Ok(entries) => entries.map(|e| e.expect("dir entry").path()).collect(),
        Err(_) => return Ok(0),
    };
    files.sort();
    let mut last = 0;
    for (i, f) in files.iter().enumerate() {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?;
        let complete = match text.rfind('\n') {
            Some(end) => &text[..=end],
            None => "",
        };
        if complete.len() != text.len() && i + 1 != files.len() {
            return Err(format!("{}: a torn line in a file that is not the last", f.display()));
        }
        for line in complete.lines() {
            let id = parse_line(line).id;
            if id != last + 1 {
                return Err(format!("{}: id {id} follows id {last}", f.display()));
            }
            last = id;
        }
    }
    Ok(last)
}

async fn append_until_killed(server_base: String, http: reqwest::Client, killed: Arc<AtomicBool>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut i = 0u64;
    while !killed.load(Ordering::SeqCst) {
        let ledger = LEDGERS[rng.random_range(0..LEDGERS.len())];
        let n = if rng.random_bool(0.5) { 1 } else { rng.random_range(2..=20) };
        let entries: Vec<String> = (0..n)
            .map(|j| {
                format!(
                    r#"{{"payload":{{"seed":{seed},"i":{},"pad":"{}"}}}}"#,
                    i + j,
                    "y".repeat(rng.random_range(0..200))
                )
            })
            .collect();
        i += n;
        let url = format!("{server_base}/v1/ledgers/{ledger}/entries");
        let body = format!(r#"{{"entries":[{}]}}"#, entries.join(","));
        // Failures after the kill are expected; before it, the data checks
        // at the end find any loss.
        let _ = http.post(url).header("content-type", "application/json").body(body).send().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exported_files_hold_every_entry_once_in_order_across_kill_9() {
    let seed = std::env::var("FERRY_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    eprintln!("export crash test seed {seed} (FERRY_CRASH_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = Env::new();
    let out = env.dir.path().join("out");
    let cfg = config(&out);
    let started = Instant::now();
    let mut ahead_checks = 0;
    for cycle in 0..CYCLES {
        let mut server = env.serve_with(&cfg).await;
        let killed = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..TASKS)
            .map(|_| {
                tokio::spawn(append_until_killed(
                    server.base.clone(),
                    server.http.clone(),
                    killed.clone(),
                    rng.random(),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(KILL_AFTER_MS))).await;
        assert!(server.is_running(), "cycle {cycle}: ferry serve died on its own:\n{}", server.stderr());
        killed.store(true, Ordering::SeqCst);
        server.kill();
        for t in tasks {
            t.await.expect("append task");
        }
        let durable = durable_cursors(&env.data_dir());
        for exporter in EXPORTERS {
            for ledger in LEDGERS {
                let in_files = check_files(&out.join(exporter), ledger)
                    .unwrap_or_else(|e| panic!("cycle {cycle} (seed {seed}), exporter {exporter}: {e}"));
                let cursor = durable.get(&(exporter.to_owned(), ledger.to_owned())).copied().unwrap_or(0);
                assert!(
                    cursor <= in_files,
                    "cycle {cycle} (seed {seed}): {exporter}/{ledger} cursor {cursor} is ahead of the files ({in_files})"
                );
                ahead_checks += (cursor > 0) as usize;
            }
        }
    }
    let server = env.serve_with(&cfg).await;
    for exporter in EXPORTERS {
        server
            .wait_exporter(exporter, "catch up after the last restart", |s| {
                s["ledgers"].as_array().is_some_and(|ls| ls.len() == LEDGERS.len() && ls.iter().all(|l| l["lag"] == 0))
            })
            .await;
    }
    let mut total = 0;
    for ledger in LEDGERS {
        let stored = server.read_all(ledger).await;
        total += stored.len();
        for exporter in EXPORTERS {
            assert!(
                file_lines(&out.join(exporter), ledger) == stored,
                "{exporter}/{ledger}: files differ from the ledger"
            );
        }
    }
    server.stop();
    eprintln!("{CYCLES} kill -9 cycles in {:?}: {total} entries exported by two file exporters", started.elapsed());
    assert!(ahead_checks > CYCLES, "cursors rarely moved: the loop exported too little");
    assert!(total > CYCLES * 20, "too few entries to mean anything: {total}");
}
