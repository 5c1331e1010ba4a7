//! `ferry verify` and `ferry inspect` against real data directories.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{Env, Exited, assert_exit, ferry, parse_line, run_to_exit};

/// Small chunks, so ~30 entries make several packs.
const CONFIG: &str = "[storage]\nchunk_entries = 4\n";
/// The only WAL segment of these tests (segments hold 64 MiB).
const SEGMENT: &str = "hot/00000000000000000001.wal";
/// The first record of a segment follows its 16-byte header.
const FIRST_RECORD_OFFSET: u64 = 16;

fn run(args: &[&str], dir: Option<&Path>) -> Exited {
    let mut cmd = ferry();
    cmd.args(args);
    if let Some(d) = dir {
        cmd.arg("--data-dir").arg(d);
    }
    run_to_exit(cmd, None)
}

pub(crate) fn verify(dir: &Path) -> Exited {
    run(&["verify"], Some(dir))
}

/// Waits until `path` exists (the freezer works in the background).
fn wait_for(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} did not appear", path.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Copies a data directory, file by file, leaving out `omit` (a path
/// relative to `from`; unlinking is only for `durable.rs`).
fn copy_dir(from: &Path, to: &Path, omit: Option<&Path>) {
    std::fs::create_dir_all(to).expect("create the copy");
    for item in std::fs::read_dir(from).expect("list the data dir") {
        let item = item.expect("dir entry");
        let target = to.join(item.file_name());
        let rel = omit.and_then(|o| o.strip_prefix(item.file_name()).ok());
        if item.file_type().expect("file type").is_dir() {
            copy_dir(&item.path(), &target, rel);
        } else if rel.is_none_or(|r| !r.as_os_str().is_empty()) {
            std::fs::copy(item.path(), &target).expect("copy a file");
        }
    }
}

/// A copy of `data` under `env`, to damage.
fn copy_of(env: &Env, data: &Path, name: &str) -> PathBuf {
    let dir = env.dir.path().join(name);
    copy_dir(data, &dir, None);
    dir
}

fn flip_bit(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).expect("read the file to damage");
    bytes[offset as usize] ^= 0x10;
    std::fs::write(path, bytes).expect("write the damaged file");
}

/// Pack path of a chunk (bucket = chunk / 1000).
pub(crate) fn pack(dir: &Path, ledger: &str, chunk: u64) -> PathBuf {
    dir.join(format!("ledgers/{ledger}/{:05}/{chunk:08}.pack", chunk / 1000))
}

/// Serves `env`'s data dir with 4-entry chunks, appends 17 entries to
/// `audit` (one request each) and 13 to `billing` (a batch of 5, then one
/// request each), waits for the full chunks to freeze, and returns the
/// running server.
async fn populated(env: &Env) -> crate::support::Server {
    let server = env.serve_with(CONFIG).await;
    for i in 1..=17 {
        let r = server.append("audit", format!(r#"{{"payload":{{"n":{i}}},"key":"k{i}"}}"#)).await;
        assert_eq!(r.ids(), [i]);
    }
    let batch = (1..=5).map(|i| format!(r#"{{"payload":[{i}]}}"#)).collect::<Vec<_>>().join(",");
    assert_eq!(server.append("billing", format!(r#"{{"entries":[{batch}]}}"#)).await.ids(), [1, 2, 3, 4, 5]);
    for i in 6..=13 {
        assert_eq!(server.append("billing", format!(r#"{{"payload":"b{i}"}}"#)).await.ids(), [i]);
    }
    // Ids 1..=16 of audit and 1..=12 of billing fill chunks 0..=3 and 0..=2.
    wait_for(&pack(&env.data_dir(), "audit", 3));
    wait_for(&pack(&env.data_dir(), "billing", 2));
    server
}

#[tokio::test]
async fn verify_passes_on_a_stopped_node_and_both_tools_refuse_while_it_runs() {
    let env = Env::new();
    let data = env.data_dir();
    let server = populated(&env).await;

    for (what, out) in [("verify", verify(&data)), ("inspect", run(&["inspect"], Some(&data)))] {
        assert_exit(&out, 1, &format!("{what} while the server runs"));
        assert!(
            out.stderr.contains("locked") && out.stderr.contains(&data.display().to_string()),
            "{what} should name the locked root:\n{}",
            out.stderr
        );
    }
    server.stop();

    let out = verify(&data);
    assert_exit(&out, 0, "verify of a clean stop");
    assert!(
        out.stdout.contains("2 ledgers, 7 packs, 30 entries") && out.stdout.contains("0 faults, 0 warnings"),
        "summary:\n{}",
        out.stdout
    );
    assert!(!out.stdout.contains("fault:") && !out.stdout.contains("warning:"), "{}", out.stdout);

    // The roots can come from a config file too.
    let config = env.config("verify.toml", &format!("data_dir = {:?}\n{CONFIG}", data.display().to_string()));
    let out = run(&["verify", "--config", config.to_str().expect("utf-8 path")], None);
    assert_exit(&out, 0, "verify --config");

    // Without a data dir it is a usage error.
    assert_exit(&run(&["verify"], None), 2, "verify without --data-dir");

    // Verification changed nothing: the node starts and serves everything.
    let server = env.serve_with(CONFIG).await;
    assert_eq!(server.read_all("audit").await.len(), 17);
    assert_eq!(server.read_all("billing").await.len(), 13);
}

#[tokio::test]
async fn verify_names_each_kind_of_damage() {
    let env = Env::new();
    let data = env.data_dir();
    populated(&env).await.stop();
    assert_exit(&verify(&data), 0, "verify before any damage");

    // A bit flipped in a pack: a fault naming the file.
    let dir = copy_of(&env, &data, "flipped-pack");
    let damaged = pack(&dir, "audit", 1);
    flip_bit(&damaged, 60);
    let out = verify(&dir);
    assert_exit(&out, 1, "verify with a flipped pack bit");
    let line = format!("fault: {}", damaged.display());
    assert!(out.stdout.contains(&line) && out.stdout.contains("corrupted pack"), "{line}:\n{}", out.stdout);
    assert!(out.stdout.contains("1 faults"), "{}", out.stdout);

    // A pack deleted (left out of the copy): its frozen key has no file.
    let dir = env.dir.path().join("deleted-pack");
    copy_dir(&data, &dir, Some(Path::new("ledgers/billing/00000/00000000.pack")));
    let gone = pack(&dir, "billing", 0);
    assert!(!gone.exists() && pack(&dir, "billing", 1).exists());
    let out = verify(&dir);
    assert_exit(&out, 1, "verify with a deleted pack");
    let line = format!("fault: {}: missing pack file", gone.display());
    assert!(out.stdout.contains(&line), "{line}:\n{}", out.stdout);

    // A file no key accounts for.
    let dir = copy_of(&env, &data, "orphan");
    let stray = dir.join("ledgers/x/00000/00000009.pack");
    std::fs::create_dir_all(stray.parent().expect("bucket")).expect("create the bucket");
    std::fs::write(&stray, b"not a pack").expect("write a stray file");
    let out = verify(&dir);
    assert_exit(&out, 1, "verify with an orphan file");
    let line = format!("fault: {}: orphan", stray.display());
    assert!(out.stdout.contains(&line), "{line}:\n{}", out.stdout);

    // The last segment cut in its last record: a torn write the next start
    // cuts, so a warning only.
    let dir = copy_of(&env, &data, "torn-tail");
    let segment = dir.join(SEGMENT);
    let bytes = std::fs::read(&segment).expect("read the segment");
    std::fs::write(&segment, &bytes[..bytes.len() - 5]).expect("write the segment cut short");
    let out = verify(&dir);
    assert_exit(&out, 0, "verify with a torn tail");
    let line = format!("warning: {} at offset", segment.display());
    assert!(out.stdout.contains(&line) && out.stdout.contains("torn tail"), "{line}:\n{}", out.stdout);
    assert!(!out.stdout.contains("fault:") && out.stdout.contains("0 faults, 1 warnings"), "{}", out.stdout);

    // A bit flipped in the first record, which later group commits follow:
    // damage to synced data, named by segment and offset.
    let dir = copy_of(&env, &data, "flipped-wal");
    let segment = dir.join(SEGMENT);
    flip_bit(&segment, FIRST_RECORD_OFFSET + 12);
    let out = verify(&dir);
    assert_exit(&out, 1, "verify with a flipped WAL bit");
    let line = format!("fault: {} at offset {FIRST_RECORD_OFFSET}: record checksum mismatch", segment.display());
    assert!(out.stdout.contains(&line), "{line}:\n{}", out.stdout);

    // None of this touched the original.
    assert_exit(&verify(&data), 0, "verify of the undamaged original");
}

#[tokio::test]
async fn inspect_prints_packs_segments_and_the_catalog() {
    let env = Env::new();
    let data = env.data_dir();
    populated(&env).await.stop();

    let file = pack(&data, "audit", 1);
    let out = run(&["inspect", file.to_str().expect("utf-8 path")], None);
    assert_exit(&out, 0, "inspect a pack");
    let version = format!("format_version: {}", ferry_core::limits::FORMAT_VERSION);
    for field in [version.as_str(), "ledger: audit", "chunk: 1", "first_id: 5", "count: 4", "blocks: 1"] {
        assert!(out.stdout.lines().any(|l| l == field), "{field:?} missing:\n{}", out.stdout);
    }
    assert!(out.stdout.contains("block 0: offset ") && out.stdout.contains("records 4"), "{}", out.stdout);
    let entries: Vec<_> = out.stdout.lines().filter(|l| l.starts_with('{')).map(parse_line).collect();
    assert_eq!(entries.iter().map(|e| e.id).collect::<Vec<_>>(), [5, 6, 7, 8]);
    assert_eq!(entries[0].ledger, "audit");
    assert_eq!(entries[0].key.as_deref(), Some("k5"));
    assert_eq!(entries[0].payload.get(), r#"{"n":5}"#);

    let segment = data.join(SEGMENT);
    let out = run(&["inspect", segment.to_str().expect("utf-8 path")], None);
    assert_exit(&out, 0, "inspect a segment");
    let records: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(records.len(), 30, "{}", out.stdout);
    assert_eq!(records[0]["offset"], FIRST_RECORD_OFFSET);
    assert_eq!(records[0]["entry"]["ledger"], "audit");
    // The batch of 5: all but its last record say more follow.
    let batch: Vec<_> = records.iter().filter(|r| r["entry"]["ledger"] == "billing").take(5).collect();
    assert!(batch[..4].iter().all(|r| r["flags"].to_string().contains("batch_continues")), "{batch:?}");
    assert!(!batch[4]["flags"].to_string().contains("batch_continues"), "{batch:?}");

    let out = run(&["inspect"], Some(&data));
    assert_exit(&out, 0, "inspect --data-dir");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(lines.contains(&"config:chunk_entries 4"), "{}", out.stdout);
    let version = format!("config:format_version {}", ferry_core::limits::FORMAT_VERSION);
    assert!(lines.contains(&version.as_str()), "{}", out.stdout);
    assert!(lines.contains(&"counter:incarnation 2"), "two ledgers were created: {}", out.stdout);
    for prefix in ["ledger:audit {", "ledger:billing {", "chunk:audit:00000003 {", "chunk:billing:00000002 {"] {
        assert!(lines.iter().any(|l| l.starts_with(prefix)), "{prefix:?} missing:\n{}", out.stdout);
    }
    let chunk = lines.iter().find(|l| l.starts_with("chunk:audit:00000000 ")).expect("chunk 0 of audit");
    let value: serde_json::Value = serde_json::from_str(chunk.split_once(' ').expect("key value").1).expect("JSON");
    assert_eq!(value["state"], "frozen");

    // FILE and --data-dir together are a usage error.
    let out = run(&["inspect", file.to_str().expect("utf-8 path")], Some(&data));
    assert_exit(&out, 2, "inspect FILE --data-dir");
}

/// Every file under `dir` with its bytes, lock files aside.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for item in std::fs::read_dir(dir).expect("list") {
        let path = item.expect("dir entry").path();
        if path.is_dir() {
            out.extend(snapshot(&path));
        } else if !path.to_string_lossy().ends_with("ferry.lock") {
            out.push((path.clone(), std::fs::read(&path).expect("read")));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn after_kill_9_verify_and_inspect_pass_and_change_no_byte() {
    let env = Env::new();
    let data = env.data_dir();
    populated(&env).await.kill();
    let before = snapshot(&data);

    let out = verify(&data);
    assert_exit(&out, 0, "verify after kill -9");
    assert!(out.stdout.contains("30 entries") && out.stdout.contains("0 faults"), "{}", out.stdout);
    assert_exit(&run(&["inspect"], Some(&data)), 0, "inspect --data-dir after kill -9");
    assert!(snapshot(&data) == before, "verify or inspect changed the data directory");

    // The node recovers as if nothing had looked at it.
    let server = env.serve_with(CONFIG).await;
    assert_eq!(server.read_all("audit").await.len(), 17);
}

/// SPEC §2.3 over the real binary: a bit flipped in the middle of a recent
/// pack (one holding idempotency keys, which startup reloads) does not stop
/// `ferry serve`. It starts ready, serves every other ledger and range, and
/// a read of the damaged range answers 500 `corrupted` naming the ledger,
/// the chunk and the offset; `ferry verify` lists the damage.
#[tokio::test]
async fn a_server_over_a_damaged_pack_starts_and_fails_only_the_reads_of_its_range() {
    let env = Env::new();
    let server = env.serve_with(CONFIG).await;
    for i in 1..=9 {
        let body = format!(r#"{{"payload":{{"n":{i}}},"idempotency_key":"req-{i}"}}"#);
        assert_eq!(server.append("audit", body).await.ids(), [i]);
    }
    assert_eq!(server.append("billing", r#"{"payload":1}"#).await.ids(), [1]);
    wait_for(&pack(&env.data_dir(), "audit", 1));
    // The catalog flips the chunk to frozen right after the rename.
    std::thread::sleep(Duration::from_millis(300));
    server.stop();

    let damaged = pack(&env.data_dir(), "audit", 0);
    let len = std::fs::metadata(&damaged).unwrap().len();
    flip_bit(&damaged, len / 2);
    // An exporter that reaches the damaged range stops in `failed` with its
    // error: it neither skips it nor dead-letters what it cannot read, even
    // with a dead-letter ledger and a retry budget of one.
    let out = env.dir.path().join("out");
    let exporter = format!(
        "{CONFIG}[[exporters]]\nname = \"f\"\nsink = \"file\"\nledgers = [\"audit\"]\n\
         batch = {{ max_entries = 3, linger = \"1ms\" }}\nretry = {{ initial = \"10ms\", max_attempts = 1 }}\n\
         dead_letter = \"dead\"\n[exporters.config]\ndir = \"{}\"\n",
        out.display()
    );
    let server = env.serve_with(&exporter).await;
    let status = server.wait_exporter("f", "audit failed", |s| s["ledgers"][0]["state"] == "failed").await;
    let ledger = &status["ledgers"][0];
    assert_eq!(ledger["cursor"], 0, "nothing skipped: {status:#}");
    let error = ledger["last_error"].as_str().unwrap_or_default();
    assert!(error.contains("corrupted pack of ledger audit chunk 0"), "{status:#}");
    assert_eq!(server.read_all("dead").await.len(), 0, "nothing dead-lettered");
    assert_eq!(server.get("/readyz").await.status, 200, "{}", server.stderr());
    assert_eq!(server.read_all("billing").await.len(), 1);
    assert_eq!(server.read_from("audit", 5).await.len(), 5, "the other chunks' range is served");
    let r = server.get("/v1/ledgers/audit/entries?from=1").await;
    r.assert_error(500, "corrupted");
    let message = r.json()["error"]["message"].as_str().unwrap_or_default().to_owned();
    assert!(message.contains("ledger audit chunk 0") && message.contains("at offset"), "{message}");
    // The damaged chunk's keys came back from the catalog (format 3), not
    // from the pack: none is lost, and a retry of one whose original cannot
    // be read to confirm it is refused, never appended again.
    assert!(!server.stderr().contains("idempotency keys of a damaged pack are lost"), "{}", server.stderr());
    let retry = server.append("audit", r#"{"payload":{"n":1},"idempotency_key":"req-1"}"#).await;
    retry.assert_error(500, "corrupted");
    assert_eq!(server.append("audit", r#"{"payload":10}"#).await.ids(), [10], "appends go on");
    server.stop();

    let out = verify(&env.data_dir());
    assert_exit(&out, 1, "verify over the damaged pack");
    assert!(out.stdout.contains("corrupted pack of chunk:audit:00000000"), "{}", out.stdout);
}
