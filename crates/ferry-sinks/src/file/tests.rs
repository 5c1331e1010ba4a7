#![allow(clippy::disallowed_methods)] // the tests damage sink files on purpose
use super::*;
use ferry_core::{Entry, Payload};

fn name(s: &str) -> LedgerName {
    LedgerName::parse(s).unwrap()
}

fn batch(ledger: &str, ids: std::ops::RangeInclusive<EntryId>) -> Batch {
    let ledger = name(ledger);
    let entries = ids
        .map(|id| Entry {
            ledger: ledger.clone(),
            id,
            ts: 1_700_000_000_000 + id,
            key: None,
            hash: None,
            payload: Payload::from_json(&format!(r#"{{"n":{id},"pad":"{}"}}"#, "x".repeat(100))).unwrap(),
        })
        .collect();
    Batch { exporter: name("x"), ledger, incarnation: 1, entries }
}

fn sink(dir: &Path, max_file_bytes: u64) -> FileSink {
    FileSink::new(FileConfig { dir: dir.to_path_buf(), max_file_bytes }).unwrap()
}

/// Every id in the ledger's files, in file and line order.
fn ids_in(dir: &Path, ledger: &str) -> Vec<EntryId> {
    let mut ids = Vec::new();
    for (first, path) in list(&dir.join(ledger)).unwrap() {
        let text = std::fs::read_to_string(&path).unwrap();
        let in_file: Vec<EntryId> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_u64().unwrap())
            .collect();
        assert_eq!(in_file.first(), Some(&first), "{} is named after its first id", path.display());
        ids.extend(in_file);
    }
    ids
}

#[tokio::test]
async fn files_roll_by_size_and_are_named_by_their_first_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = sink(dir.path(), 1024);
    s.prepare(&name("a"), 0).await.unwrap();
    for range in [1..=5, 6..=20, 21..=21] {
        let b = batch("a", range);
        assert_eq!(s.deliver(&b).await.unwrap(), Ack { through: b.last_id() });
    }
    assert_eq!(ids_in(dir.path(), "a"), (1..=21).collect::<Vec<_>>());
    let files = list(&dir.path().join("a")).unwrap();
    assert!(files.len() > 2, "{files:?}");
    for (_, path) in &files {
        assert!(std::fs::metadata(path).unwrap().len() <= 1024, "{} stays within max_file_bytes", path.display());
    }
}

#[tokio::test]
async fn prepare_cuts_everything_past_the_cursor_including_torn_lines_and_later_files() {
    let dir = tempfile::tempdir().unwrap();
    let s = sink(dir.path(), 1024);
    s.prepare(&name("a"), 0).await.unwrap();
    s.deliver(&batch("a", 1..=20)).await.unwrap();
    // A torn line at the end, as a crash in the middle of a write leaves it.
    let (_, last) = list(&dir.path().join("a")).unwrap().pop().unwrap();
    let mut f = OpenOptions::new().append(true).open(&last).unwrap();
    f.write_all(br#"{"ledger":"a","id":21,"ts":1,"pay"#).unwrap();
    drop(f);

    // A fresh sink (a restart) whose cursor is 12: ids 13.. were never acked.
    let s = sink(dir.path(), 1024);
    s.prepare(&name("a"), 12).await.unwrap();
    assert_eq!(ids_in(dir.path(), "a"), (1..=12).collect::<Vec<_>>());
    s.deliver(&batch("a", 13..=25)).await.unwrap();
    assert_eq!(ids_in(dir.path(), "a"), (1..=25).collect::<Vec<_>>(), "each id once, in order");

    s.prepare(&name("a"), 0).await.unwrap();
    assert!(ids_in(dir.path(), "a").is_empty(), "a reset to the start empties the files");
}

#[tokio::test]
async fn a_cursor_past_the_files_continues_in_a_new_file() {
    let dir = tempfile::tempdir().unwrap();
    let s = sink(dir.path(), 1 << 20);
    s.prepare(&name("a"), 0).await.unwrap();
    s.deliver(&batch("a", 1..=3)).await.unwrap();
    s.prepare(&name("a"), 10).await.unwrap();
    s.deliver(&batch("a", 11..=12)).await.unwrap();
    let firsts: Vec<EntryId> = list(&dir.path().join("a")).unwrap().into_iter().map(|(f, _)| f).collect();
    assert_eq!(firsts, vec![1, 11]);
}

#[tokio::test]
async fn a_batch_that_does_not_follow_the_files_is_refused_until_prepared() {
    let dir = tempfile::tempdir().unwrap();
    let s = sink(dir.path(), 1 << 20);
    assert!(s.deliver(&batch("a", 1..=2)).await.is_err(), "not prepared");
    s.prepare(&name("a"), 0).await.unwrap();
    let err = s.deliver(&batch("a", 5..=6)).await.unwrap_err();
    assert!(!err.is_permanent() && err.to_string().contains("preparing again"), "{err}");
    assert!(s.deliver(&batch("a", 1..=2)).await.is_err(), "a refused batch requires prepare again");
    s.prepare(&name("a"), 0).await.unwrap();
    s.deliver(&batch("a", 1..=2)).await.unwrap();
    assert_eq!(ids_in(dir.path(), "a"), vec![1, 2]);
}

#[tokio::test]
async fn a_damaged_line_before_the_cursor_is_reported_with_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let s = sink(dir.path(), 1 << 20);
    s.prepare(&name("a"), 0).await.unwrap();
    s.deliver(&batch("a", 1..=3)).await.unwrap();
    let (_, path) = list(&dir.path().join("a")).unwrap().pop().unwrap();
    let mut text = std::fs::read(&path).unwrap();
    let second_line = text.iter().position(|b| *b == b'\n').unwrap() + 1;
    text[second_line] = b'#';
    std::fs::write(&path, text).unwrap();
    let err = s.prepare(&name("a"), 3).await.unwrap_err().to_string();
    assert!(err.contains(&path.display().to_string()) && err.contains(&format!("offset {second_line}")), "{err}");
}

#[test]
fn config_requires_a_dir_and_a_sane_size() {
    let v = |j: serde_json::Value| FileConfig::validate(j).map_err(|e| e.to_string());
    assert!(v(serde_json::json!({})).unwrap_err().starts_with("config.dir"));
    assert!(
        v(serde_json::json!({"dir": "/x", "max_file_bytes": "1B"})).unwrap_err().starts_with("config.max_file_bytes")
    );
    assert!(v(serde_json::json!({"dir": "/x", "dirr": 1})).unwrap_err().contains("dirr"));
    assert_eq!(v(serde_json::json!({"dir": "/x"})).unwrap().max_file_bytes, 64 << 20);
}

#[tokio::test]
async fn garbage_past_the_cursor_is_cut_without_being_parsed() {
    let dir = tempfile::tempdir().unwrap();
    let s = sink(dir.path(), 1 << 20);
    s.prepare(&name("a"), 0).await.unwrap();
    s.deliver(&batch("a", 1..=3)).await.unwrap();
    let (_, path) = list(&dir.path().join("a")).unwrap().pop().unwrap();
    // What a power loss can leave after unsynced writes: zeros, then a newline.
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"\0\0\0\0{\"ledger\n").unwrap();
    drop(f);
    s.prepare(&name("a"), 3).await.unwrap();
    s.deliver(&batch("a", 4..=4)).await.unwrap();
    assert_eq!(ids_in(dir.path(), "a"), vec![1, 2, 3, 4]);
}

/// A sink that keeps at most `open_files` files open between deliveries.
fn sink_with_open_files(dir: &Path, max_file_bytes: u64, open_files: usize) -> FileSink {
    FileSink::with_open_files(FileConfig { dir: dir.to_path_buf(), max_file_bytes }, open_files).unwrap()
}

/// Descriptors this process holds on files under `dir`.
fn open_under(dir: &Path) -> usize {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.starts_with(&dir))
        .count()
}

/// Issue #12 item 9: with more ledgers than the sink keeps files open, the
/// least recently used are closed between deliveries and reopened (the same
/// file, not a new one) when their ledger's next batch comes; every entry
/// lands once, in order.
#[tokio::test]
async fn more_ledgers_than_open_files_are_closed_and_reopened_and_each_entry_lands_once_in_order() {
    const LEDGERS: usize = 40;
    const OPEN_FILES: usize = 4;
    let dir = tempfile::tempdir().unwrap();
    let s = sink_with_open_files(dir.path(), 1 << 20, OPEN_FILES);
    let names: Vec<String> = (0..LEDGERS).map(|i| format!("l{i:02}")).collect();
    for n in &names {
        s.prepare(&name(n), 0).await.unwrap();
    }
    for round in 0..3 {
        for n in &names {
            s.deliver(&batch(n, round * 5 + 1..=round * 5 + 5)).await.unwrap();
            let open = open_under(dir.path());
            assert!(open <= OPEN_FILES, "{open} files open after delivering to {n}; the bound is {OPEN_FILES}");
        }
    }
    for n in &names {
        assert_eq!(ids_in(dir.path(), n), (1..=15).collect::<Vec<_>>(), "{n}: each id once, in order");
        let files = list(&dir.path().join(n)).unwrap();
        assert_eq!(files.len(), 1, "{n}: a closed file is reopened, not replaced by a new one: {files:?}");
    }
}

/// Runs the calling test again in a child process of its own: true in the
/// child, which runs the body; false in the parent, which has checked that
/// the child passed. For tests that exhaust the process's descriptors,
/// which would fail any test running beside them in one process.
fn in_own_process(test: &str) -> bool {
    const VAR: &str = "FERRY_SINKS_TEST_OWN_PROCESS";
    if std::env::var(VAR).as_deref() == Ok(test) {
        return true;
    }
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(VAR, test)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{test} in its own process: {}\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status
    );
    false
}

/// Lowers this process's soft open-file limit to 256 (at most) and opens
/// `/dev/null` until no descriptor is left; dropping the result frees them.
fn exhaust_descriptors() -> Vec<File> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let hard = getrlimit(Resource::Nofile).maximum;
    setrlimit(Resource::Nofile, Rlimit { current: Some(hard.map_or(256, |h| h.min(256))), maximum: hard }).unwrap();
    let mut held = Vec::new();
    loop {
        match File::open("/dev/null") {
            Ok(f) => held.push(f),
            Err(e) if ferry_fs::descriptors::exhausted(&e) => return held,
            Err(e) => panic!("open /dev/null: {e}"),
        }
    }
}

/// Issue #12 item 9: when the process runs out of descriptors, a failed
/// open is a retryable error (the runtime backs off and prepares again),
/// and the sink closes the files it keeps open between deliveries, so its
/// own idle files never keep a ledger from recovering.
#[tokio::test]
async fn running_out_of_descriptors_is_retryable_and_the_sink_closes_its_idle_files() {
    if !in_own_process("file::tests::running_out_of_descriptors_is_retryable_and_the_sink_closes_its_idle_files") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = sink_with_open_files(dir.path(), 1 << 20, 8);
    let idle: Vec<String> = (0..8).map(|i| format!("a{i}")).collect();
    for n in &idle {
        s.prepare(&name(n), 0).await.unwrap();
        s.deliver(&batch(n, 1..=3)).await.unwrap();
    }
    let held = exhaust_descriptors();

    let err = s.prepare(&name("b"), 0).await.unwrap_err();
    assert!(!err.is_permanent(), "{err}");
    assert!(err.to_string().contains("Too many open files"), "{err}");
    assert!(err.to_string().contains("closed the sink's 8 idle files"), "{err}");
    // The sink let go of its idle files: the retry finds descriptors, even
    // though the rest of the process still holds every other one.
    s.prepare(&name("b"), 0).await.expect("the retry after the sink closed its idle files");
    s.deliver(&batch("b", 1..=3)).await.unwrap();
    s.deliver(&batch("a0", 4..=6)).await.expect("a closed file is reopened");

    drop(held);
    for n in &idle[1..] {
        s.deliver(&batch(n, 4..=6)).await.unwrap();
    }
    for n in idle.iter().chain([&"b".to_owned()]) {
        let want: Vec<EntryId> = if n == "b" { (1..=3).collect() } else { (1..=6).collect() };
        assert_eq!(ids_in(dir.path(), n), want, "{n}");
    }
}
