//! The listing commands as programs and people see them, against a real
//! `ferry serve`: JSON lines through a pipe (every page followed), aligned
//! tables on a terminal (a pseudo-terminal from util-linux `script`),
//! `--watch` redrawing until Ctrl-C, and `ferry health`'s exit codes
//! following an `http` exporter whose receiver fails and recovers.

use std::fs::File;
use std::io::Write as _;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use serde_json::Value;

use crate::support::{Env, Exited, FERRY, Server, Webhook, assert_exit, ferry, free_port, run_to_exit, send_signal};

/// Bound on every wait here (the server's export, a redraw).
const WAIT: Duration = Duration::from_secs(30);

/// `ferry ARGS` against `server`, stdout a file (not a terminal).
fn piped(server: &Server, args: &[&str]) -> Exited {
    let mut cmd = ferry();
    cmd.args(args).env("FERRY_SERVER", &server.base);
    run_to_exit(cmd, None)
}

/// `script -qec "stty …; exec ferry ARGS" /dev/null`: ferry on a
/// pseudo-terminal of `cols` columns and `rows` rows, FERRY_SERVER set.
fn on_terminal(server: &Server, args: &[&str], (cols, rows): (u16, u16)) -> Command {
    let mut line = format!("stty cols {cols} rows {rows} && exec '{FERRY}'");
    for a in args {
        assert!(!a.contains('\''), "an argument the shell line cannot quote: {a}");
        line.push_str(&format!(" '{a}'"));
    }
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"]).env("FERRY_SERVER", &server.base).env("SHELL", "/bin/sh");
    for var in ["FERRY_TOKEN", "FERRY_LOG", "NO_COLOR", "CLICOLOR", "CLICOLOR_FORCE", "TERM"] {
        cmd.env_remove(var);
    }
    cmd.env("TERM", "xterm");
    cmd
}

/// Runs `ferry ARGS` on a terminal to its end; stdout is what the terminal
/// showed, with its `\r\n` as `\n`.
fn terminal(server: &Server, args: &[&str], size: (u16, u16)) -> Exited {
    let mut cmd = on_terminal(server, args, size);
    cmd.stdin(Stdio::null());
    let mut out = run_to_exit(cmd, None);
    assert!(
        !out.stderr.contains("No such file") && !out.stderr.contains("not found"),
        "util-linux `script` is needed for the terminal tests: {}",
        out.stderr
    );
    out.stdout = out.stdout.replace("\r\n", "\n");
    out
}

/// Text without its ANSI colour sequences (`ESC [ … m`).
fn without_colours(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(at) = rest.find("\u{1b}[") {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 2..];
        let end = tail.find('m').expect("an unterminated colour sequence");
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    out
}

fn json_lines(out: &Exited) -> Vec<Value> {
    out.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l:?}\n{}", out.stdout)))
        .collect()
}

/// A child process killed on drop, so a failing test leaves none behind.
struct Running(Child);

impl Running {
    /// Waits for the exit (`WAIT` at most).
    fn exit(&mut self, what: &str) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(status) = self.0.try_wait().expect("poll the child") {
                return status;
            }
            assert!(Instant::now() < deadline, "{what} did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls the file a child writes until `done` holds of its text.
async fn output_until(path: &Path, child: &mut Running, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned();
        if done(&text) {
            return text;
        }
        if let Some(status) = child.0.try_wait().expect("poll the child") {
            panic!("the command exited ({status}) before {what}:\n{text}");
        }
        assert!(Instant::now() < deadline, "{what} did not happen; output so far:\n{text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn listings_through_a_pipe_are_json_lines_over_every_page() {
    let env = Env::new();
    let s = env.serve_with("[[exporters]]\nname = \"o\"\nsink = \"stdout\"\n").await;
    // 2,500 ledgers: three pages of the server's default 1,000.
    let names: Vec<String> = (0..2_500).map(|i| format!("l{i:05}")).collect();
    futures_util::stream::iter(&names)
        .for_each_concurrent(16, |name| {
            let s = &s;
            async move {
                let r = s.put(&format!("/v1/ledgers/{name}")).await;
                assert_eq!(r.status, 201, "PUT {name}: {}", r.text);
            }
        })
        .await;
    assert_eq!(s.append("l00007", r#"{"entries":[{"payload":1},{"payload":2}]}"#).await.ids(), [1, 2]);

    let out = piped(&s, &["ledgers"]);
    assert_exit(&out, 0, "ledgers");
    let listed = json_lines(&out);
    let listed_names: Vec<&str> = listed.iter().map(|l| l["name"].as_str().expect("a name")).collect();
    assert_eq!(listed_names, names, "every ledger once, in name order");
    for l in &listed {
        for field in ["first", "head", "entries", "bytes", "created_at", "incarnation"] {
            assert!(l[field].is_u64(), "{field} missing from {l}");
        }
    }
    assert_eq!(listed[7]["head"], 2);
    // The objects as the API gives them.
    let first_page = s.get("/v1/ledgers").await.json();
    assert_eq!(listed[0], first_page["ledgers"][0]);

    // --json says the same on a terminal.
    let on_tty = terminal(&s, &["ledgers", "--json"], (100, 40));
    assert_exit(&on_tty, 0, "ledgers --json on a terminal");
    assert_eq!(on_tty.stdout, out.stdout);

    // An exporter's 2,500 ledgers (three pages of them) on its one line.
    s.wait_exporter("o", "l00007 exported", |v| v["lag"] == 0 && v["ledgers_total"] == 2_500).await;
    for args in [&["exporters", "status"][..], &["exporters", "status", "o"]] {
        let out = piped(&s, args);
        assert_exit(&out, 0, "exporters status");
        let status = json_lines(&out);
        assert_eq!(status.len(), 1, "one line for the one exporter");
        let ledgers: Vec<&str> = status[0]["ledgers"]
            .as_array()
            .expect("ledgers")
            .iter()
            .map(|l| l["ledger"].as_str().expect("a name"))
            .collect();
        assert_eq!(ledgers, names, "{args:?}: every ledger of the exporter, in name order");
        assert_eq!(status[0]["next"], Value::Null);
    }
    // And its table on a terminal: a header, the column titles, a row each.
    let out = terminal(&s, &["exporters", "status", "o"], (100, 40));
    assert_exit(&out, 0, "exporters status o on a terminal");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2 + 2_500, "{}", lines[..5].join("\n"));
    assert!(lines[1].starts_with("LEDGER"), "{}", lines[1]);
    assert!(lines[2_501].starts_with("l02499 "), "{}", lines[2_501]);
}

#[tokio::test]
async fn ledgers_on_a_terminal_are_an_aligned_table_with_human_sizes() {
    let env = Env::new();
    let s = env.serve().await;
    let big = format!(r#"{{"payload":"{}"}}"#, "x".repeat(3_000));
    assert_eq!(s.append("a-much-longer-ledger-name", big).await.ids(), [1]);
    assert_eq!(s.append("audit", r#"{"entries":[{"payload":1},{"payload":2},{"payload":3}]}"#).await.ids(), [1, 2, 3]);
    assert_eq!(s.put("/v1/ledgers/empty").await.status, 201);

    let out = terminal(&s, &["ledgers"], (120, 40));
    assert_exit(&out, 0, "ledgers on a terminal");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three rows:\n{}", out.stdout);
    let header = lines[0];
    let titles = ["NAME", "FIRST", "HEAD", "ENTRIES", "BYTES", "CREATED"];
    let starts: Vec<usize> =
        titles.iter().map(|t| header.find(t).unwrap_or_else(|| panic!("{t} in {header:?}"))).collect();
    assert!(starts.is_sorted(), "columns in order: {header:?}");
    let rows: Vec<Vec<String>> = lines[1..]
        .iter()
        .map(|row| {
            // Left-aligned columns start under their title, right-aligned
            // ones end under theirs.
            // (the titles of right-aligned columns are right-aligned too).
            let end = |i: usize| starts[i] + titles[i].len();
            assert_ne!(row.as_bytes()[0], b' ', "NAME starts under its title: {row:?}");
            for (i, title) in titles.iter().enumerate().take(5).skip(1) {
                assert_eq!(row.as_bytes().get(end(i)), Some(&b' '), "{title} ends under its title: {row:?}");
                assert_ne!(row.as_bytes()[end(i) - 1], b' ', "{title} ends under its title: {row:?}");
            }
            assert_eq!(row.as_bytes()[starts[5] - 1], b' ', "CREATED starts under its title: {row:?}");
            assert_ne!(row.as_bytes()[starts[5]], b' ', "CREATED starts under its title: {row:?}");
            let cut = |from: usize, to: usize| row[from..to].trim().to_owned();
            let mut name_and_first = row[..end(1)].split_whitespace().map(str::to_owned);
            vec![
                name_and_first.next().expect("a name"),
                name_and_first.next().expect("a first id"),
                cut(end(1), end(2)),
                cut(end(2), end(3)),
                cut(end(3), end(4)),
                row[starts[5]..].to_owned(),
            ]
        })
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
    assert_eq!(names, ["a-much-longer-ledger-name", "audit", "empty"], "{}", out.stdout);
    assert_eq!(rows[1][1..4], ["1", "3", "3"], "audit's first, head, entries:\n{}", out.stdout);
    assert_eq!(rows[2][1..4], ["1", "0", "0"], "an empty ledger:\n{}", out.stdout);
    assert!(rows[0][4].ends_with(" KiB"), "3,000 payload bytes in KiB: {:?}", rows[0][4]);
    assert!(rows[2][4].ends_with(" B"), "{:?}", rows[2][4]);
    for r in &rows {
        let t = &r[5];
        assert!(t.len() == 20 && t.ends_with('Z') && t.as_bytes()[10] == b'T', "an RFC 3339 UTC time: {t:?}");
    }
    assert!(!out.stdout.contains('{'), "a table, not JSON:\n{}", out.stdout);
}

/// Runs `ferry health` until its exit code is `code` (`WAIT` at most).
async fn health_until(s: &Server, code: i32, what: &str) -> Exited {
    let deadline = Instant::now() + WAIT;
    loop {
        let out = piped(s, &["health"]);
        if out.status.code() == Some(code) {
            return out;
        }
        assert!(Instant::now() < deadline, "{what}: ferry health never exited {code}; last:\n{out:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn health_exits_0_while_data_moves_and_1_when_an_exporter_is_stuck_or_the_server_is_gone() {
    let env = Env::new();
    {
        let s = env.serve().await;
        let out = piped(&s, &["health"]);
        assert_exit(&out, 0, "health with no exporters");
        assert_eq!(out.stdout, "ok: 0 exporters, 0 sources, nothing stuck\n");
        let out = piped(&s, &["health", "--json"]);
        assert_exit(&out, 0, "health --json");
        assert_eq!(json_lines(&out)[0]["status"], "ok");
        assert_exit(&piped(&s, &["health", "--verbose"]), 2, "an unknown flag is a usage error");
    }
    let mut cmd = ferry();
    cmd.args(["health", "--server", &format!("http://127.0.0.1:{}", free_port())]);
    let out = run_to_exit(cmd, None);
    assert_exit(&out, 1, "health with no server");
    assert!(out.stderr.contains("reach the ferry server"), "{}", out.stderr);

    let rx = Webhook::start(true).await;
    let addr = rx.addr;
    let config = format!(
        r#"
[[exporters]]
name = "hooks"
sink = "http"
max_lag = "1s"
retry = {{ initial = "20ms", max = "200ms" }}
batch = {{ max_entries = 50, linger = "5ms" }}
[exporters.config]
url = "http://{addr}/in"
timeout = "2s"
"#
    );
    let s = env.serve_with(&config).await;
    assert_eq!(s.append("audit", r#"{"entries":[{"payload":1},{"payload":2},{"payload":3}]}"#).await.ids(), [1, 2, 3]);

    // Stuck once the entries are older than max_lag.
    let out = health_until(&s, 1, "the receiver answers 503").await;
    assert!(out.stdout.starts_with("stuck: exporter hooks (max_lag 1s): 1 ledger, lag 3\n"), "{}", out.stdout);
    assert!(out.stdout.contains("  ledger audit: oldest unexported "), "{}", out.stdout);
    assert!(out.stdout.contains(", lag 3, "), "{}", out.stdout);
    assert!(out.stdout.contains("last error: ") && out.stdout.contains("503"), "{}", out.stdout);
    assert!(out.stderr.contains("stuck"), "{}", out.stderr);
    let out = piped(&s, &["health", "--json"]);
    assert_exit(&out, 1, "health --json while stuck");
    let health = &json_lines(&out)[0];
    assert_eq!(health["status"], "stuck");
    assert_eq!(health["exporters"][0]["stuck"][0]["ledger"], "audit", "{health}");

    // The status says the same: one JSON line through a pipe…
    let out = piped(&s, &["exporters", "status", "hooks"]);
    assert_exit(&out, 0, "exporters status hooks");
    let status = json_lines(&out);
    assert_eq!(status.len(), 1, "{}", out.stdout);
    assert_eq!((status[0]["name"].as_str(), status[0]["stuck_ledgers"].as_u64()), (Some("hooks"), Some(1)));
    assert_eq!(status[0]["ledgers"][0]["stuck"], true, "{}", out.stdout);
    // …and a table on a terminal, the last error cut to its width.
    let out = terminal(&s, &["exporters", "status"], (90, 40));
    assert_exit(&out, 0, "exporters status on a terminal");
    let text = without_colours(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("exporter hooks  sink http  running  lag 3  oldest unexported "), "{text}");
    assert!(lines[0].contains("1 of 1 ledgers stuck  max_lag 1s"), "{text}");
    let columns = ["LEDGER", "CURSOR", "HEAD", "LAG", "AGE", "STATE", "ATTEMPTS", "LAST ERROR"];
    let mut at = 0;
    for c in columns {
        at += lines[1][at..].find(c).unwrap_or_else(|| panic!("{c} after column {at} in {:?}", lines[1]));
    }
    assert!(lines[2].starts_with("audit "), "{text}");
    assert!(lines[2].contains(" (stuck) "), "{text}");
    let error_at = lines[1].find("LAST ERROR").expect("LAST ERROR");
    let error = lines[2][error_at..].trim();
    assert!(!error.is_empty() && error != "-", "the last error under its title: {text}");
    assert_eq!(lines.len(), 3, "{text}");
    for line in &lines[1..] {
        assert!(line.chars().count() <= 90, "a table line wider than the terminal: {line:?}");
    }
    assert!(out.stdout.contains("\u{1b}["), "the state is coloured on a terminal:\n{}", out.stdout);

    // The receiver recovers, the exporter catches up, and data moves again.
    rx.set_down(false);
    let out = health_until(&s, 0, "the receiver recovered").await;
    assert_eq!(out.stdout, "ok: 1 exporter, 0 sources, nothing stuck\n");
    assert!(rx.accepted() > 0);
    let status = s.exporter("hooks").await;
    assert_eq!(status["ledgers"][0]["cursor"], 3, "{status}");
}

#[tokio::test]
async fn exporters_status_watch_redraws_in_place_until_ctrl_c_and_restores_the_terminal() {
    let env = Env::new();
    let s = env.serve_with("[[exporters]]\nname = \"o\"\nsink = \"stdout\"\n").await;
    assert_eq!(s.append("audit", r#"{"payload":1}"#).await.ids(), [1]);

    let screen = env.dir.path().join("screen");
    let mut cmd = on_terminal(&s, &["exporters", "status", "--watch", "--interval", "100ms"], (100, 30));
    cmd.stdin(Stdio::piped()).stdout(File::create(&screen).expect("screen file")).stderr(Stdio::null());
    let mut child = Running(cmd.spawn().expect("spawn util-linux `script` (needed for the terminal tests)"));
    const REDRAW: &str = "\u{1b}[H\u{1b}[2Jferry exporters status · every 100ms · ";
    let text =
        output_until(&screen, &mut child, "the first frame", |t| t.contains(REDRAW) && t.contains("exporter o")).await;
    assert!(text.starts_with("\u{1b}[?1049h\u{1b}[?25l"), "the alternate screen, cursor hidden: {text:?}");
    // A later frame shows what changed since the first.
    assert_eq!(s.append("audit", r#"{"payload":2}"#).await.ids(), [2]);
    let text = output_until(&screen, &mut child, "a redraw with the new head", |t| {
        t.rsplit(REDRAW).next().is_some_and(|frame| {
            // LEDGER CURSOR HEAD …: audit exported through its new head.
            frame.lines().any(|l| l.split_whitespace().take(3).eq(["audit", "2", "2"]))
        })
    })
    .await;
    assert!(text.matches(REDRAW).count() >= 2, "{text:?}");

    // Ctrl-C: the terminal's interrupt character, through the pty.
    child.0.stdin.as_mut().expect("script's stdin").write_all(b"\x03").expect("send Ctrl-C");
    let status = child.exit("the watch after Ctrl-C");
    assert_eq!(status.code(), Some(0), "Ctrl-C ends the watch with 0");
    let text = String::from_utf8_lossy(&std::fs::read(&screen).expect("screen")).into_owned();
    let restored = text.rfind("\u{1b}[?25h\u{1b}[?1049l").expect("the terminal restored");
    assert!(restored > text.rfind(REDRAW).expect("a frame"), "restored after the last frame: {text:?}");

    // Through a pipe each refresh prints its JSON lines; SIGINT ends it with 0.
    let lines_path = env.dir.path().join("lines");
    let mut cmd = ferry();
    cmd.args(["exporters", "status", "--watch", "--interval", "100ms"]).env("FERRY_SERVER", &s.base);
    cmd.stdout(File::create(&lines_path).expect("lines file"));
    let mut child = Running(cmd.spawn().expect("spawn ferry"));
    let text = output_until(&lines_path, &mut child, "three refreshes", |t| t.lines().count() >= 3).await;
    send_signal(child.0.id(), "INT");
    assert_eq!(child.exit("the watch after SIGINT").code(), Some(0));
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"));
        assert_eq!((v["name"].as_str(), v["ledgers"][0]["head"].as_u64()), (Some("o"), Some(2)), "{line}");
    }
}
