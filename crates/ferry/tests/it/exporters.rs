//! SPEC §2.4–2.6 and §5 with real `ferry serve` processes: the file sink
//! ends up holding every entry once, in order, across restarts; resets
//! re-deliver exactly the asked range (the stdout sink is the delivery
//! log); a failed reset changes nothing; pause, orphaned cursors, ledger
//! deletion, retention holds, config refusals, the CLI, and the idle cost.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::{Env, Server, assert_exit, ferry, free_port, parse_line, run_to_exit, serve_command};

/// A file exporter `f` into `{dir}` and a stdout exporter `o`, both eager.
fn config(dir: &Path, extra: &str) -> String {
    format!(
        r#"
[[exporters]]
name = "f"
sink = "file"
batch = {{ max_entries = 7, linger = "1ms" }}
[exporters.config]
dir = "{}"
max_file_bytes = "2KiB"

[[exporters]]
name = "o"
sink = "stdout"
batch = {{ max_entries = 7, linger = "1ms" }}
{extra}"#,
        dir.display()
    )
}

/// Every line of the file sink's files for `ledger`, in file order.
pub fn file_lines(dir: &Path, ledger: &str) -> Vec<String> {
    let mut files: Vec<_> = match std::fs::read_dir(dir.join(ledger)) {
        Ok(entries) => entries.map(|e| e.expect("dir entry").path()).collect(),
        Err(_) => return Vec::new(),
    };
    files.sort();
    let mut lines = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&f).expect("read a sink file");
        let first: u64 = name.trim_end_matches(".jsonl").parse().expect("file named by its first id");
        let mine: Vec<String> = text.lines().map(str::to_owned).collect();
        assert_eq!(mine.first().map(|l| parse_line(l).id), Some(first), "{name} starts with id {first}");
        lines.extend(mine);
    }
    lines
}

/// Per ledger, how many times each id was printed by the stdout sink.
fn stdout_deliveries(server: &Server) -> BTreeMap<(String, u64), usize> {
    let mut seen = BTreeMap::new();
    for line in server.stdout().lines() {
        let e = parse_line(line);
        *seen.entry((e.ledger, e.id)).or_default() += 1;
    }
    seen
}

async fn append_n(server: &Server, ledger: &str, n: usize) {
    let mut left = n;
    let mut i = 0;
    while left > 0 {
        // Alternate singles and batches of up to 9.
        let k = if i % 2 == 0 { 1 } else { left.min(9) };
        let entries: Vec<String> =
            (0..k).map(|j| format!(r#"{{"payload":{{"n":{},"pad":"{}"}}}}"#, i * 10 + j, "x".repeat(40))).collect();
        let r = server.append(ledger, format!(r#"{{"entries":[{}]}}"#, entries.join(","))).await;
        assert_eq!(r.status, 201, "{}", r.text);
        left -= k;
        i += 1;
    }
}

/// Waits until every ledger of `exporter` has cursor == head.
async fn caught_up(server: &Server, exporter: &str) -> Value {
    server
        .wait_exporter(exporter, "catch up", |s| {
            // `lag` counts every ledger; `ledgers` is the first page.
            s["lag"] == 0
                && s["ledgers"]
                    .as_array()
                    .is_some_and(|ls| ls.iter().all(|l| l["cursor"] == l["head"] && l["lag"] == 0))
        })
        .await
}

fn cursor_of(status: &Value, ledger: &str) -> Option<u64> {
    status["ledgers"].as_array()?.iter().find(|l| l["ledger"] == ledger)?["cursor"].as_u64()
}

#[tokio::test]
async fn the_file_sink_holds_every_entry_once_in_order_across_restarts() {
    let env = Env::new();
    let out = env.dir.path().join("out");
    let cfg = config(&out, "");
    let server = env.serve_with(&cfg).await;
    append_n(&server, "audit", 120).await;
    append_n(&server, "pay.eu", 40).await;
    caught_up(&server, "f").await;
    for l in ["audit", "pay.eu"] {
        assert_eq!(file_lines(&out, l), server.read_all(l).await, "{l}: files equal the ledger");
    }
    let files = std::fs::read_dir(out.join("audit")).unwrap().count();
    assert!(files > 2, "max_file_bytes = 2KiB rolls files: {files}");
    server.stop();

    let server = env.serve_with(&cfg).await;
    append_n(&server, "audit", 30).await;
    let status = caught_up(&server, "f").await;
    assert_eq!(cursor_of(&status, "audit"), Some(150));
    assert_eq!(file_lines(&out, "audit"), server.read_all("audit").await, "no entry again after a restart");
    let o = caught_up(&server, "o").await;
    assert_eq!(o["sink"], "stdout");
    let printed = stdout_deliveries(&server);
    assert_eq!(printed.len(), 30, "the restarted stdout exporter printed only the new entries");
    assert!(printed.keys().all(|(l, id)| l == "audit" && (121..=150).contains(id)), "{printed:?}");
    let l = &status["ledgers"][0];
    for field in ["ledger", "cursor", "head", "lag", "state", "last_error", "attempts", "last_success_at"] {
        assert!(l.get(field).is_some(), "status has {field}: {l}");
    }
    assert_eq!((l["state"].as_str(), l["attempts"].as_u64()), (Some("running"), Some(0)));
    assert!(l["last_success_at"].as_u64().is_some());
}

#[tokio::test]
async fn start_latest_skips_existing_entries_and_exports_later_ledgers_from_their_first() {
    let env = Env::new();
    let out = env.dir.path().join("out");
    let server = env.serve().await;
    append_n(&server, "old", 5).await;
    server.stop();

    let cfg = format!(
        "[[exporters]]\nname = \"late\"\nsink = \"file\"\nstart = \"latest\"\nbatch = {{ linger = \"1ms\" }}\n\
         [exporters.config]\ndir = \"{}\"\n",
        out.display()
    );
    let server = env.serve_with(&cfg).await;
    assert_eq!(cursor_of(&server.exporter("late").await, "old"), Some(5));
    append_n(&server, "old", 2).await;
    append_n(&server, "fresh", 3).await;
    caught_up(&server, "late").await;
    let ids = |l: &str| file_lines(&out, l).iter().map(|x| parse_line(x).id).collect::<Vec<_>>();
    assert_eq!(ids("old"), vec![6, 7]);
    assert_eq!(ids("fresh"), vec![1, 2, 3]);
    server.stop();
    // The starting cursor was durable: a restart does not move it.
    let server = env.serve_with(&cfg).await;
    let status = caught_up(&server, "late").await;
    assert_eq!(cursor_of(&status, "old"), Some(7));
    assert_eq!(ids("old"), vec![6, 7]);
}

#[tokio::test]
async fn reset_re_delivers_exactly_the_requested_range() {
    let env = Env::new();
    let out = env.dir.path().join("out");
    let server = env.serve_with(&config(&out, "")).await;
    append_n(&server, "a", 20).await;
    append_n(&server, "b", 10).await;
    caught_up(&server, "o").await;
    caught_up(&server, "f").await;
    let once = stdout_deliveries(&server);
    assert_eq!(once.len(), 30);
    assert!(once.values().all(|n| *n == 1));

    // One ledger, from an id.
    let r = server.post("/v1/exporters/o/reset", r#"{"ledger":"a","from_id":15}"#).await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(cursor_of(&r.json(), "a"), Some(14));
    caught_up(&server, "o").await;
    let twice = stdout_deliveries(&server);
    for ((l, id), n) in &twice {
        let expect = if l == "a" && *id >= 15 { 2 } else { 1 };
        assert_eq!(*n, expect, "{l}/{id} delivered {n} times");
    }

    // The whole exporter, from the start (an empty body).
    let r = server.post("/v1/exporters/o/reset", "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    caught_up(&server, "o").await;
    let thrice = stdout_deliveries(&server);
    for ((l, id), n) in &thrice {
        assert_eq!(*n, twice[&(l.clone(), *id)] + 1, "{l}/{id}");
    }

    // The file sink re-delivers by cutting its files back: still once each.
    let r = server.post("/v1/exporters/f/reset", r#"{"ledger":"a","from_id":3}"#).await;
    assert_eq!(r.status, 200, "{}", r.text);
    caught_up(&server, "f").await;
    assert_eq!(file_lines(&out, "a"), server.read_all("a").await);

    // Requests that cannot be honoured change nothing.
    server.post("/v1/exporters/o/reset", r#"{"ledger":"nope"}"#).await.assert_error(404, "ledger_not_exported");
    server.post("/v1/exporters/o/reset", r#"{"from_id":0}"#).await.assert_error(422, "invalid_request");
    server.post("/v1/exporters/o/reset", r#"{"from":1}"#).await.assert_error(422, "invalid_entry");
    server.post("/v1/exporters/o/reset", r#"{"#).await.assert_error(400, "invalid_json");
    server.post("/v1/exporters/nobody/reset", "").await.assert_error(404, "exporter_not_found");
    assert_eq!(stdout_deliveries(&server), thrice);
}

#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_reset_that_cannot_be_written_changes_nothing_and_leaves_the_exporter_stopped() {
    let env = Env::new();
    let out = env.dir.path().join("out");
    let cfg = env.config("ferry.toml", &config(&out, ""));
    let server = Server::start_env(&env.data_dir(), Some(&cfg), &[("FAILPOINTS", "export::reset=return")]).await;
    append_n(&server, "a", 10).await;
    caught_up(&server, "o").await;
    let before = server.exporter("o").await;

    let r = server.post("/v1/exporters/o/reset", r#"{"from_id":2}"#).await;
    r.assert_error(500, "reset_failed");
    let stopped = server.exporter("o").await;
    assert_eq!(stopped["state"], "stopped");
    assert_eq!(cursor_of(&stopped, "a"), cursor_of(&before, "a"), "no cursor moved");
    // Stopped means stopped: new entries wait.
    append_n(&server, "a", 3).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(cursor_of(&server.exporter("o").await, "a"), Some(10));
    assert_eq!(stdout_deliveries(&server).len(), 10);

    let r = server.post("/v1/exporters/o/resume", "").await;
    assert_eq!(r.status, 200, "{}", r.text);
    assert_eq!(r.json()["state"], "running");
    caught_up(&server, "o").await;
    assert!(stdout_deliveries(&server).values().all(|n| *n == 1), "nothing was re-delivered");
    server.kill();
    // Nor did the catalog change.
    let out = run_to_exit(
        {
            let mut c = ferry();
            c.arg("inspect").arg("--data-dir").arg(env.data_dir());
            c
        },
        None,
    );
    assert_exit(&out, 0, "ferry inspect");
    assert!(out.stdout.contains("cursor:o:a {\"id\":13}"), "{}", out.stdout);
}

#[tokio::test]
async fn pause_holds_new_batches_until_resume() {
    let env = Env::new();
    let server = env.serve_with(&config(&env.dir.path().join("out"), "")).await;
    append_n(&server, "a", 3).await;
    caught_up(&server, "o").await;
    let r = server.post("/v1/exporters/o/pause", "").await;
    assert_eq!((r.status, r.json()["state"].as_str()), (200, Some("paused")), "{}", r.text);
    append_n(&server, "a", 4).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let paused = server.exporter("o").await;
    assert_eq!((cursor_of(&paused, "a"), paused["ledgers"][0]["state"].as_str()), (Some(3), Some("paused")));
    assert_eq!(paused["ledgers"][0]["lag"], 4);
    server.post("/v1/exporters/o/resume", "").await;
    caught_up(&server, "o").await;
    assert_eq!(stdout_deliveries(&server).len(), 7);
}

#[tokio::test]
async fn an_exporter_removed_from_the_config_is_orphaned_until_its_cursors_are_deleted() {
    let env = Env::new();
    let out = env.dir.path().join("out");
    let server = env.serve_with(&config(&out, "")).await;
    append_n(&server, "a", 4).await;
    caught_up(&server, "o").await;
    server.stop();

    let only_o = "[[exporters]]\nname = \"o\"\nsink = \"stdout\"\n";
    let server = env.serve_with(only_o).await;
    let list = server.get("/v1/exporters").await.json();
    let names: Vec<(&str, &str)> =
        list.as_array().unwrap().iter().map(|e| (e["name"].as_str().unwrap(), e["state"].as_str().unwrap())).collect();
    assert_eq!(names, vec![("o", "running"), ("f", "orphaned")]);
    let f = server.exporter("f").await;
    assert_eq!((cursor_of(&f, "a"), f["sink"].is_null()), (Some(4), true));
    server.send(server.http.delete(server.url("/v1/exporters/o"))).await.assert_error(409, "exporter_configured");
    let r = server.send(server.http.delete(server.url("/v1/exporters/f"))).await;
    assert_eq!(r.status, 204, "{}", r.text);
    server.get("/v1/exporters/f").await.assert_error(404, "exporter_not_found");
    server.stop();
    let server = env.serve_with(only_o).await;
    assert_eq!(server.get("/v1/exporters").await.json().as_array().unwrap().len(), 1, "deleted for good");
}

#[tokio::test]
async fn a_deleted_ledger_loses_its_cursors_and_a_new_one_of_that_name_exports_from_one() {
    let env = Env::new();
    let server = env.serve_with(&config(&env.dir.path().join("out"), "")).await;
    append_n(&server, "a", 6).await;
    caught_up(&server, "o").await;
    let r = server.send(server.http.delete(server.url("/v1/ledgers/a"))).await;
    assert_eq!(r.status, 204, "{}", r.text);
    append_n(&server, "a", 2).await;
    let status = caught_up(&server, "o").await;
    assert_eq!(cursor_of(&status, "a"), Some(2));
    let printed = stdout_deliveries(&server);
    assert_eq!(printed.get(&("a".into(), 1)), Some(&2), "id 1 of the old and of the new ledger");
    assert_eq!(printed.get(&("a".into(), 6)), Some(&1));
}

#[tokio::test]
async fn retention_keeps_what_an_exporter_has_not_exported() {
    let env = Env::new();
    // The exporter of `held*` can never deliver (nothing listens there).
    let cfg = format!(
        "[storage]\nchunk_entries = 4\n[retention]\nmax_age = \"1s\"\n\
         [[exporters]]\nname = \"h\"\nsink = \"http\"\nledgers = [\"held*\"]\n\
         retry = {{ initial = \"50ms\", max = \"200ms\" }}\n\
         [exporters.config]\nurl = \"http://127.0.0.1:{}/x\"\ntimeout = \"200ms\"\n",
        free_port()
    );
    let server = env.serve_with(&cfg).await;
    append_n(&server, "held", 20).await;
    append_n(&server, "free", 20).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while server.first_and_head("free").await.unwrap().0 == 1 {
        assert!(std::time::Instant::now() < deadline, "retention never pruned `free`");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.first_and_head("held").await.unwrap().0, 1, "unexported chunks are kept");
    let h = server.exporter("h").await;
    assert_eq!(h["ledgers"][0]["state"], "backing_off");
    assert!(h["ledgers"][0]["last_error"].as_str().unwrap().contains("POST"), "{h}");
}

#[test]
fn a_bad_exporter_config_stops_serve_before_storage_opens_naming_the_field() {
    let env = Env::new();
    let cases = [
        ("no-dir.toml", "\n[[exporters]]\nname = \"f\"\nsink = \"file\"\n", &["config.dir", "line 2"][..]),
        (
            "bad-url.toml",
            "[[exporters]]\nname = \"h\"\nsink = \"http\"\n[exporters.config]\nurl = \"ftp://x\"\n",
            &["config.url"],
        ),
        ("sink.toml", "[[exporters]]\nname = \"x\"\nsink = \"pigeon\"\n", &["unknown sink", "pigeon"]),
        (
            "batch.toml",
            "[[exporters]]\nname = \"x\"\nsink = \"stdout\"\nbatch = { max_entries = 0 }\n",
            &["batch.max_entries"],
        ),
        ("key.toml", "[[exporters]]\nname = \"x\"\nsink = \"stdout\"\nledger = [\"a\"]\n", &["ledger", "line 4"]),
    ];
    for (name, text, needles) in cases {
        let config = env.config(name, text);
        let out = run_to_exit(serve_command(&env.data_dir(), Some(&config), free_port()), None);
        assert_exit(&out, 1, name);
        for needle in needles {
            assert!(out.stderr.contains(needle), "{name}: stderr should contain {needle:?}:\n{}", out.stderr);
        }
        assert!(!env.data_dir().exists(), "{name}: storage was opened");
    }
    let mut cmd = serve_command(&env.data_dir(), None, free_port());
    cmd.arg("--exporter").arg(r#"x=file:{"dir": 3}"#);
    let out = run_to_exit(cmd, None);
    assert_exit(&out, 1, "--exporter with a bad dir");
    assert!(out.stderr.contains("--exporter") && out.stderr.contains("dir"), "{}", out.stderr);
    assert!(!env.data_dir().exists());
}

#[tokio::test]
async fn exporters_are_controlled_from_the_cli() {
    let env = Env::new();
    let out = env.dir.path().join("out");
    let cfg = env.config("ferry.toml", &config(&out, ""));
    let server = Server::start(&env.data_dir(), Some(&cfg)).await;
    append_n(&server, "a", 5).await;
    caught_up(&server, "o").await;
    let cli = |args: &[&str]| {
        let mut c = ferry();
        c.args(args).env("FERRY_SERVER", &server.base);
        run_to_exit(c, None)
    };
    let status = cli(&["exporters", "status"]);
    assert_exit(&status, 0, "exporters status");
    // Piped, one JSON line per exporter.
    let list: Vec<Value> = status.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(list.len(), 2, "{}", status.stdout);
    let reset = cli(&["exporters", "reset", "o", "--ledger", "a", "--from-id", "4"]);
    assert_exit(&reset, 0, "exporters reset");
    caught_up(&server, "o").await;
    assert_eq!(stdout_deliveries(&server)[&("a".into(), 4)], 2);
    assert_exit(&cli(&["exporters", "pause", "o"]), 0, "pause");
    assert_exit(&cli(&["exporters", "resume", "o"]), 0, "resume");
    let missing = cli(&["exporters", "status", "nobody"]);
    assert_exit(&missing, 1, "status of an unknown exporter");
    assert!(missing.stderr.contains("exporter_not_found"), "{}", missing.stderr);
    assert_exit(&cli(&["exporters", "reset", "o", "--ledger", "../x"]), 2, "a bad ledger name is a usage error");
}

/// The range check against the file sink: clean after an export, then a
/// line taken out of the middle (a gap) and a line written twice (a
/// repeat) are faults with exit 1; a sink that cannot be asked (stdout)
/// is no fault but says so.
#[tokio::test]
async fn the_range_check_finds_a_gap_and_a_repeat_in_the_file_sinks_files() {
    let env = Env::new();
    let out = env.dir.path().join("out");
    let cfg = env.config("ferry.toml", &config(&out, ""));
    let server = Server::start(&env.data_dir(), Some(&cfg)).await;
    append_n(&server, "a", 20).await;
    append_n(&server, "b", 5).await;
    caught_up(&server, "f").await;
    caught_up(&server, "o").await;
    let cli = |args: &[&str]| {
        let mut c = ferry();
        c.args(args).env("FERRY_SERVER", &server.base);
        run_to_exit(c, None)
    };
    let clean = cli(&["exporters", "check", "f"]);
    assert_exit(&clean, 0, "check of a clean export");
    let report: Value = serde_json::from_str(&clean.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["ledgers"][0]["holding"]["distinct"], 20, "{report}");
    assert_eq!(report["ledgers"][0]["holding"]["max"], 20, "{report}");

    // Take id 5 out of a's first file and write id 3 of b twice.
    server.stop();
    let first_file = |ledger: &str| {
        let mut files: Vec<_> = std::fs::read_dir(out.join(ledger)).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files[0].clone()
    };
    let (fa, fb) = (first_file("a"), first_file("b"));
    let text = std::fs::read_to_string(&fa).unwrap();
    let kept: String = text.lines().filter(|l| parse_line(l).id != 5).map(|l| format!("{l}\n")).collect();
    std::fs::write(&fa, kept).unwrap();
    let text = std::fs::read_to_string(&fb).unwrap();
    let third = text.lines().find(|l| parse_line(l).id == 3).unwrap().to_owned();
    let doubled: String =
        text.lines().flat_map(|l| if l == third { vec![l, l] } else { vec![l] }).map(|l| format!("{l}\n")).collect();
    std::fs::write(&fb, doubled).unwrap();
    let server = Server::start(&env.data_dir(), Some(&cfg)).await;
    let cli = |args: &[&str]| {
        let mut c = ferry();
        c.args(args).env("FERRY_SERVER", &server.base);
        run_to_exit(c, None)
    };
    let faulty = cli(&["exporters", "check", "f"]);
    assert_exit(&faulty, 1, "check with a gap and a repeat");
    assert!(faulty.stderr.contains("found faults in 2 ledger(s)"), "{}", faulty.stderr);
    let report: Value = serde_json::from_str(&faulty.stdout).unwrap();
    assert_eq!(report["ledgers"][0]["faults"][0], "1 of ids 1..=20 missing (holds 19 of 20)", "{report}");
    assert_eq!(report["ledgers"][1]["faults"][0], "1 repeated rows among ids 1..=5", "{report}");
    let one = cli(&["exporters", "check", "f", "--ledger", "b"]);
    let report: Value = serde_json::from_str(&one.stdout).unwrap();
    assert_eq!(report["ledgers"].as_array().unwrap().len(), 1, "{report}");
    let stdout = cli(&["exporters", "check", "o"]);
    assert_exit(&stdout, 0, "check of a sink that cannot be asked");
    assert!(stdout.stdout.contains("cannot be asked"), "{}", stdout.stdout);
    assert_exit(&cli(&["exporters", "check", "nobody"]), 1, "check of an unknown exporter");
}

/// The range check walks a chained ledger's hash chain over the file
/// sink's lines (issue #21): clean after an export; a line whose `ts` was
/// changed by hand keeps every count clean but breaks the chain at its id,
/// a fault with exit 1.
#[tokio::test]
async fn the_range_check_finds_a_changed_line_of_a_chained_ledger_in_the_file_sinks_files() {
    let env = Env::new();
    let out = env.dir.path().join("out");
    let cfg = env.config("ferry.toml", &config(&out, "[storage]\nhash_chain = [\"*\"]\n"));
    let server = Server::start(&env.data_dir(), Some(&cfg)).await;
    append_n(&server, "c", 20).await;
    caught_up(&server, "f").await;
    let check = |server: &Server| {
        let mut c = ferry();
        c.args(["exporters", "check", "f"]).env("FERRY_SERVER", &server.base);
        run_to_exit(c, None)
    };
    let clean = check(&server);
    assert_exit(&clean, 0, "check of a clean chained export");
    let report: Value = serde_json::from_str(&clean.stdout).unwrap();
    assert_eq!(
        report["ledgers"][0]["holding"]["chain"],
        serde_json::json!({"state": "intact", "rows": 20}),
        "{report}"
    );

    server.stop();
    let mut changed = false;
    for file in std::fs::read_dir(out.join("c")).unwrap().map(|e| e.unwrap().path()) {
        let text = std::fs::read_to_string(&file).unwrap();
        let Some(line) = text.lines().find(|l| parse_line(l).id == 7) else { continue };
        let ts = parse_line(line).ts;
        let edited = line.replacen(&format!(r#""ts":{ts}"#), &format!(r#""ts":{}"#, ts + 1), 1);
        std::fs::write(&file, text.replacen(line, &edited, 1)).unwrap();
        changed = true;
    }
    assert!(changed, "id 7 is in a file");
    let server = Server::start(&env.data_dir(), Some(&cfg)).await;
    let faulty = check(&server);
    assert_exit(&faulty, 1, "check with a changed line");
    let report: Value = serde_json::from_str(&faulty.stdout).unwrap();
    let faults = report["ledgers"][0]["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 1, "the counts are clean: {report}");
    assert!(faults[0].as_str().unwrap().starts_with("chain breaks at id 7: "), "{report}");
}

#[tokio::test]
async fn an_exporter_given_on_the_command_line_runs() {
    let env = Env::new();
    let out = env.dir.path().join("out");
    let port = free_port();
    let mut cmd = serve_command(&env.data_dir(), None, port);
    cmd.arg("--exporter").arg(format!(r#"files=file:{{"dir":"{}","batch":{{"linger":"1ms"}}}}"#, out.display()));
    let mut child = cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let http = crate::support::http();
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while http.get(format!("{base}/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(std::time::Instant::now() < deadline, "server did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = http.post(format!("{base}/v1/ledgers/a/entries")).body(r#"{"payload":1}"#).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while file_lines(&out, "a").is_empty() {
        assert!(std::time::Instant::now() < deadline, "nothing exported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(parse_line(&file_lines(&out, "a")[0]).id, 1);
    let _ = child.kill();
    let _ = child.wait();
}

/// `ferry_store_reads_total` from `/metrics` (0 before the first read).
async fn store_reads(server: &Server) -> u64 {
    let text = server.get("/metrics").await.text;
    text.lines()
        .find_map(|l| l.strip_prefix("ferry_store_reads_total "))
        .map_or(0, |v| v.trim().parse::<f64>().expect("a counter value") as u64)
}

/// User + system CPU time of a process, in clock ticks (`/proc/PID/stat`).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/PID/stat");
    let after_comm = &stat[stat.rfind(')').expect("comm ends with ')'") + 2..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after comm.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_exporters_over_10000_ledgers_read_nothing_from_storage() {
    const LEDGERS: usize = 10_000;
    const IDLE: Duration = Duration::from_secs(30);
    let env = Env::new();
    let server = env.serve_with(&config(&env.dir.path().join("out"), "")).await;
    let names: Vec<String> = (0..LEDGERS).map(|i| format!("tenant-{i:05}")).collect();
    for chunk in names.chunks(64) {
        let puts = chunk.iter().map(|n| server.http.put(server.url(&format!("/v1/ledgers/{n}"))).send());
        for r in futures_util::future::join_all(puts).await {
            assert!(r.expect("PUT a ledger").status().is_success());
        }
    }
    for n in names.iter().step_by(1000) {
        append_n(&server, n, 3).await;
    }
    for exporter in ["f", "o"] {
        let status = caught_up(&server, exporter).await;
        assert_eq!(status["ledgers_total"], LEDGERS, "every ledger tracked");
        assert_eq!(status["next"].as_str(), Some("tenant-00999"), "the first page of 1,000");
    }
    let (reads, cpu) = (store_reads(&server).await, cpu_ticks(server.pid()));
    assert!(reads > 0, "the catch-up read entries");
    tokio::time::sleep(IDLE).await;
    let (reads_after, cpu_after) = (store_reads(&server).await, cpu_ticks(server.pid()));
    eprintln!(
        "{LEDGERS} ledgers, 2 exporters, idle {IDLE:?}: {} storage reads, {} ms of CPU",
        reads_after - reads,
        (cpu_after - cpu) * 10
    );
    assert_eq!(reads_after, reads, "idle exporters read storage");
}
