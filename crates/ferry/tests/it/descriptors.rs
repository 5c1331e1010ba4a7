//! Issue #12 item 9 with a real `ferry serve` under a low `ulimit -n`: it
//! raises its soft open-file limit to the hard one and logs it; a file
//! exporter over more ledgers than it may keep files open exports every
//! entry once, in order, holding a bounded number of files; and when the
//! process runs out of descriptors anyway, the ledgers go `backing_off`
//! and recover by themselves once descriptors are free, while the store
//! stays ready.

use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::exporters::file_lines;
use crate::support::{Env, Server};

/// The soft limit ferry starts with, and the hard one it may raise it to.
const SOFT: u64 = 64;
const HARD: u64 = 160;
/// What the file sink keeps open under `HARD`: an eighth of it.
const SINK_OPEN_FILES: usize = (HARD / 8) as usize;
/// Several times more ledgers than that, and more than `SOFT` descriptors.
const LEDGERS: usize = 100;

fn config(out: &Path) -> String {
    format!(
        r#"
# Connections may take every descriptor here (by default they leave the
# store a reserve, edge.rs): this test runs the process out on purpose.
[server]
max_connections = 100000

[[exporters]]
name = "f"
sink = "file"
batch = {{ max_entries = 100, linger = "1ms" }}
retry = {{ initial = "200ms", max = "500ms" }}
[exporters.config]
dir = "{}"
"#,
        out.display()
    )
}

fn ledger(i: usize) -> String {
    format!("tenant-{i:03}")
}

/// Descriptors the process holds, and those on files under `dir`.
fn descriptors(pid: u32, dir: &Path) -> (usize, usize) {
    let dir = dir.canonicalize().expect("canonical dir");
    let targets: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("list /proc/PID/fd")
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .collect();
    let under = targets.iter().filter(|t| t.starts_with(&dir)).count();
    (targets.len(), under)
}

/// The process's open-file limit (soft, hard) from `/proc/PID/limits`.
fn open_file_limit(pid: u32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("read /proc/PID/limits");
    let line = limits.lines().find(|l| l.starts_with("Max open files")).expect("a Max open files line");
    let numbers: Vec<u64> = line.split_whitespace().filter_map(|w| w.parse().ok()).collect();
    (numbers[0], numbers[1])
}

/// Ledgers of exporter `f` that are not caught up and running, with their
/// state and last error.
fn behind(status: &Value) -> Vec<String> {
    let ledgers = status["ledgers"].as_array().expect("ledgers");
    ledgers
        .iter()
        .filter(|l| l["cursor"] != l["head"] || l["state"] != "running")
        .map(|l| format!("{} {}/{} {} {}", l["ledger"], l["cursor"], l["head"], l["state"], l["last_error"]))
        .collect()
}

/// Waits until every ledger of `f` is caught up and running.
async fn all_exported(server: &Server, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let status = server.exporter("f").await;
        let late = behind(&status);
        let count = status["ledgers"].as_array().map_or(0, Vec::len);
        if late.is_empty() && count == LEDGERS {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} of {count} ledgers not exported within 20 s, e.g.:\n{}",
            late.len(),
            late.iter().take(5).cloned().collect::<Vec<_>>().join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn append_one(server: &Server, ledger: &str, n: usize) {
    let r = server.append(ledger, format!(r#"{{"payload":{{"n":{n}}}}}"#)).await;
    assert_eq!(r.status, 201, "append to {ledger}: {}", r.text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_low_open_file_limit_every_entry_is_exported_and_running_out_recovers_by_itself() {
    let env = Env::new();
    let out = env.dir.path().join("out");
    let config = env.config("ferry.toml", &config(&out));
    let server = Server::start_with_open_files(&env.data_dir(), Some(&config), SOFT, HARD).await;
    let pid = server.pid();

    // Appends one at a time, on one keep-alive connection.
    for i in 0..LEDGERS {
        for n in 0..3 {
            append_one(&server, &ledger(i), n).await;
        }
    }
    all_exported(&server, "under the raised limit").await;
    assert_eq!(open_file_limit(pid), (HARD, HARD), "the soft limit was raised to the hard one");
    assert!(server.stderr().contains("open-file limit raised"), "{}", server.stderr());
    let (_, sink_files) = descriptors(pid, &out);
    assert!(sink_files <= SINK_OPEN_FILES, "{sink_files} sink files open; the bound is {SINK_OPEN_FILES}");

    // Run the server out of descriptors: connections it accepts until none
    // is left, and more waiting in its backlog for any it frees.
    let (open, _) = descriptors(pid, &out);
    let hog: Vec<TcpStream> =
        (0..HARD as usize - open + 64).map(|_| TcpStream::connect(server.addr).expect("connect")).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    while descriptors(pid, &out).0 < HARD as usize {
        assert!(Instant::now() < deadline, "the server never ran out: {:?}", descriptors(pid, &out));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // New entries for the least recently used ledgers, whose files the sink
    // closed: reopening them fails.
    for i in 0..LEDGERS / 2 {
        append_one(&server, &ledger(i), 3).await;
    }
    server
        .wait_exporter("f", "a ledger backing off for want of descriptors", |s| {
            s["ledgers"].as_array().is_some_and(|ls| {
                ls.iter().any(|l| {
                    l["state"] == "backing_off"
                        && l["last_error"].as_str().is_some_and(|e| e.contains("Too many open files"))
                })
            })
        })
        .await;
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 200, "running out of descriptors does not poison the store: {}", ready.text);

    drop(hog);
    all_exported(&server, "after descriptors were freed").await;
    for i in 0..LEDGERS {
        let l = ledger(i);
        assert_eq!(file_lines(&out, &l), server.read_all(&l).await, "{l}: files equal the ledger");
    }
    let ready = server.get("/readyz").await;
    assert_eq!(ready.status, 200, "{}", ready.text);
    server.stop();
}
