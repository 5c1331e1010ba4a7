//! SPEC §8 and §2.7 at the process level: strict config errors, the
//! storage lock, pinned layout values, and the client commands with their
//! exit codes (0 ok, 1 failure, 2 usage).

use std::path::Path;

use crate::support::{Env, Exited, Server, assert_exit, ferry, free_port, parse_line, run_to_exit, serve_command};

/// Runs a client command against `server` (through `FERRY_SERVER`).
fn client(server: &Server, args: &[&str], stdin: Option<&[u8]>) -> Exited {
    let mut cmd = ferry();
    cmd.args(args).env("FERRY_SERVER", &server.base);
    run_to_exit(cmd, stdin)
}

/// Starts `ferry serve` where it must refuse to run; returns what it printed.
fn refused_serve(data_dir: &Path, config: Option<&Path>) -> Exited {
    let out = run_to_exit(serve_command(data_dir, config, free_port()), None);
    assert!(!out.status.success(), "ferry serve was expected to fail:\n{}", out.stderr);
    out
}

#[test]
fn an_unknown_config_key_stops_serve_naming_the_key_and_its_line() {
    let env = Env::new();
    for (name, text, key, line) in [
        ("section.toml", "[storage]\nchunk_entries = 1024\nmax_entry_byte = \"1KiB\"\n", "max_entry_byte", "line 3"),
        ("top.toml", "# comment\n\ndatadir = \"x\"\n", "datadir", "line 3"),
        ("server.toml", "[server]\nlisten = \"127.0.0.1:1\"\n\n\nlisen = \"127.0.0.1:2\"\n", "lisen", "line 5"),
        ("section-name.toml", "[storrage]\nchunk_entries = 1024\n", "storrage", "line 1"),
        // A malformed value names its key and line too.
        ("value.toml", "[server]\nmax_body_bytes = \"lots\"\n", "max_body_bytes", "line 2"),
    ] {
        let config = env.config(name, text);
        let out = refused_serve(&env.data_dir(), Some(&config));
        assert!(
            out.stderr.contains(key) && out.stderr.contains(line),
            "{name}: stderr should name {key:?} and {line:?}:\n{}",
            out.stderr
        );
        assert!(!env.data_dir().exists(), "{name}: a refused config still created the data dir");
    }
}

#[tokio::test]
async fn a_second_serve_on_the_same_data_dir_exits_naming_the_locked_root_and_the_first_keeps_serving() {
    let env = Env::new();
    let first = env.serve().await;
    assert_eq!(first.append("audit", r#"{"payload":1}"#).await.ids(), [1]);

    let out = refused_serve(&env.data_dir(), None);
    let root = env.data_dir().display().to_string();
    assert!(out.stderr.contains(&root), "stderr should name the locked root {root}:\n{}", out.stderr);
    assert!(out.stderr.contains("locked"), "stderr should say the root is locked:\n{}", out.stderr);

    // The first process still appends and reads.
    let r = first.append("audit", r#"{"payload":2}"#).await;
    assert_eq!((r.status, r.ids()), (201, vec![2]), "{}", r.text);
    assert_eq!(first.read_all("audit").await.len(), 2);
    // And the lock goes with the process: after a kill -9, a new one starts.
    first.kill();
    let second = env.serve().await;
    assert_eq!(second.read_all("audit").await.len(), 2);
}

#[tokio::test]
async fn a_changed_chunk_entries_is_refused_naming_the_pinned_value_and_data_is_unchanged() {
    let env = Env::new();
    let data = env.data_dir();
    let c1024 = env.config("c1024.toml", "[storage]\nchunk_entries = 1024\n");
    let c2048 = env.config("c2048.toml", "[storage]\nchunk_entries = 2048\n");

    let s = Server::start(&data, Some(&c1024)).await;
    let r =
        s.append("audit", r#"{"entries":[{"payload":1},{"payload":{"two":2}},{"payload":"three","key":"k"}]}"#).await;
    assert_eq!(r.ids(), [1, 2, 3]);
    let before = s.snapshot().await;
    s.stop();

    let out = refused_serve(&data, Some(&c2048));
    assert!(
        out.stderr.contains("chunk_entries") && out.stderr.contains("1024"),
        "stderr should name chunk_entries and the pinned 1024:\n{}",
        out.stderr
    );

    // The pinned value (given, or taken from the catalog) still works, and
    // nothing changed.
    for config in [Some(c1024.as_path()), None] {
        let s = Server::start(&data, config).await;
        assert_eq!(s.snapshot().await, before, "data changed after a refused start (config {config:?})");
        s.stop();
    }
}

#[tokio::test]
async fn append_and_read_round_trip_payloads_byte_for_byte() {
    let env = Env::new();
    let s = env.serve().await;

    let out = client(&s, &["append", "audit", r#"{"a":1}"#], None);
    assert_exit(&out, 0, "append");
    assert_eq!(out.stdout, "{\"ids\":[1]}\n");
    let out = client(&s, &["append", "audit", "--key", "user-7 ✓", r#"{"nested":{"x":[1,2.50e3,"é\u00e9"]}}"#], None);
    assert_exit(&out, 0, "append --key");
    assert_eq!(out.stdout, "{\"ids\":[2]}\n");
    // Whitespace outside strings is dropped, nothing else changes.
    let out = client(&s, &["append", "audit", "{ \"spaced\" : [ 1, 2 ], \"s\": \"a  b\" }"], None);
    assert_exit(&out, 0, "append spaced");

    // JSON lines on stdin, blank lines skipped.
    let stdin_lines = [
        r#"{"line":1}"#,
        "",
        r#"["ü","🚀",null,true,-0.5e-3]"#,
        r#""plain \"quoted\" \\ string""#,
        "42",
        r#"{"esc":"a\"b\\c\u00e9\ud83d\ude00","deep":{"x":{"y":{"z":[[]]}}}}"#,
    ];
    let out = client(&s, &["append", "audit"], Some(format!("{}\n", stdin_lines.join("\n")).as_bytes()));
    assert_exit(&out, 0, "append from stdin");
    assert!(out.stderr.contains("appended 5 entries"), "{}", out.stderr);

    let mut expected = vec![r#"{"a":1}"#, r#"{"nested":{"x":[1,2.50e3,"é\u00e9"]}}"#, r#"{"spaced":[1,2],"s":"a  b"}"#];
    expected.extend(stdin_lines.iter().filter(|l| !l.is_empty()));

    let out = client(&s, &["read", "audit"], None);
    assert_exit(&out, 0, "read");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), expected.len(), "{}", out.stdout);
    for (i, (line, payload)) in lines.iter().zip(&expected).enumerate() {
        let e = parse_line(line);
        assert_eq!((e.ledger.as_str(), e.id), ("audit", i as u64 + 1));
        assert_eq!(e.payload.get(), *payload, "payload of id {} differs from what was appended", i + 1);
        assert_eq!(e.key.as_deref(), (i == 1).then_some("user-7 ✓"));
    }
    // Exactly the lines the server serves.
    let served = s.read_all("audit").await;
    assert_eq!(out.stdout, format!("{}\n", served.join("\n")));

    // --server instead of the environment, with --from and --limit.
    let mut cmd = ferry();
    cmd.args(["read", "audit", "--from", "3", "--limit", "2", "--server", &s.base]);
    let out = run_to_exit(cmd, None);
    assert_exit(&out, 0, "read --server --from --limit");
    assert_eq!(out.stdout, format!("{}\n{}\n", served[2], served[3]));

    let out = client(&s, &["ledgers"], None);
    assert_exit(&out, 0, "ledgers");
    let listed: Vec<serde_json::Value> =
        out.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert_eq!(listed.len(), 1, "{}", out.stdout);
    assert_eq!(listed[0]["name"], "audit");
    assert_eq!(listed[0]["head"], expected.len());
}

#[tokio::test]
async fn stdin_appends_with_an_idempotency_key_can_be_rerun_without_duplicates() {
    let env = Env::new();
    let s = env.serve().await;
    let input = b"{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n";
    let out = client(&s, &["append", "jobs", "--idempotency-key", "import-7"], Some(input));
    assert_exit(&out, 0, "first run");
    assert_eq!(out.stdout, "{\"ids\":[1,2,3]}\n");
    let out = client(&s, &["append", "jobs", "--idempotency-key", "import-7"], Some(input));
    assert_exit(&out, 0, "second run");
    assert_eq!(out.stdout, "{\"ids\":[1,2,3]}\n");
    assert_eq!(s.head("jobs").await, Some(3));
}

#[tokio::test]
async fn ferry_ledgers_lists_every_ledger_as_a_json_line() {
    let env = Env::new();
    let s = env.serve().await;
    let out = client(&s, &["ledgers"], None);
    assert_exit(&out, 0, "ledgers with none");
    assert_eq!(out.stdout, "");
    for (ledger, n) in [("b.two", 2), ("a-one", 1), ("c_three", 3)] {
        let entries = vec![r#"{"payload":0}"#; n].join(",");
        assert_eq!(s.append(ledger, format!(r#"{{"entries":[{entries}]}}"#)).await.status, 201);
    }
    s.put("/v1/ledgers/empty").await;
    let out = client(&s, &["ledgers"], None);
    assert_exit(&out, 0, "ledgers");
    let mut listed: Vec<(String, u64)> = out
        .stdout
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            (v["name"].as_str().expect("name").to_owned(), v["head"].as_u64().expect("head"))
        })
        .collect();
    listed.sort();
    let want = [("a-one", 1), ("b.two", 2), ("c_three", 3), ("empty", 0)].map(|(n, h)| (n.to_owned(), h));
    assert_eq!(listed, want);
}

#[tokio::test]
async fn client_exit_codes_are_0_ok_1_failure_2_usage() {
    let env = Env::new();
    let s = env.serve().await;
    assert_exit(&client(&s, &["append", "audit", "1"], None), 0, "a good append");
    assert_exit(&client(&s, &["read", "audit"], None), 0, "a good read");

    // Failures reported by (or reaching) the server: 1.
    let out = client(&s, &["read", "missing"], None);
    assert_exit(&out, 1, "read of a missing ledger");
    assert!(out.stderr.contains("ledger_not_found") || out.stderr.contains("does not exist"), "{}", out.stderr);
    let big = format!("\"{}\"\n", "x".repeat(1024 * 1024 + 1));
    let out = client(&s, &["append", "audit"], Some(big.as_bytes()));
    assert_exit(&out, 1, "an entry over max_entry_bytes");
    assert!(out.stderr.contains("entry_too_large"), "{}", out.stderr);
    let mut unreachable = ferry();
    unreachable.args(["ledgers", "--server", &format!("http://127.0.0.1:{}", free_port())]);
    assert_exit(&run_to_exit(unreachable, None), 1, "an unreachable server");

    // Usage errors: 2, and nothing sent.
    for (args, stdin, what) in [
        (&["read", "Bad"][..], None, "an invalid ledger name"),
        (&["append", "../x", "1"][..], None, "an invalid ledger name to append"),
        (&["append", "a b", "1"][..], None, "a ledger name with a space"),
        (&["append"][..], None, "a missing ledger argument"),
        (&["read"][..], None, "a missing ledger argument to read"),
        (&["append", "audit", "{not json"][..], None, "an invalid payload"),
        (&["append", "audit"][..], Some(&b"{\"ok\":1}\n{broken\n"[..]), "an invalid stdin line"),
        (&["read", "audit", "--limit", "many"][..], None, "a non-numeric --limit"),
        (&["read", "audit", "--bogus"][..], None, "an unknown flag"),
        (&["frobnicate"][..], None, "an unknown command"),
        (&["ledgers", "--server", "ftp://127.0.0.1:1"][..], None, "a server URL that is not http"),
    ] {
        let out = client(&s, args, stdin);
        assert_exit(&out, 2, what);
        assert!(!out.stderr.is_empty(), "{what}: a usage error says why");
    }
    // Only the first good append reached the ledger.
    assert_eq!(s.head("audit").await, Some(1));
    assert_eq!(s.head("x").await, None);
}

#[tokio::test]
async fn client_commands_send_the_token_from_the_flag_or_the_environment() {
    let env = Env::new();
    let s = env.serve_with("[server]\ntokens = [\"secret\"]\n").await;
    let out = client(&s, &["ledgers"], None);
    assert_exit(&out, 1, "no token");
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    assert_exit(&client(&s, &["ledgers", "--token", "wrong"], None), 1, "a wrong token");
    assert_exit(&client(&s, &["append", "audit", "--token", "secret", "1"], None), 0, "--token");
    let mut cmd = ferry();
    cmd.args(["read", "audit"]).env("FERRY_SERVER", &s.base).env("FERRY_TOKEN", "secret");
    let out = run_to_exit(cmd, None);
    assert_exit(&out, 0, "FERRY_TOKEN");
    assert_eq!(out.stdout.lines().count(), 1);
}

#[tokio::test]
async fn read_and_stdin_append_page_through_more_than_one_request() {
    let env = Env::new();
    let s = env.serve().await;
    // 2,500 stdin lines go out as several requests, with dense ids.
    let input: String = (1..=2_500).map(|i| format!("{{\"i\":{i}}}\n")).collect();
    let out = client(&s, &["append", "big"], Some(input.as_bytes()));
    assert_exit(&out, 0, "append 2500 lines");
    assert!(out.stdout.lines().count() > 1, "one answer per request: {}", out.stdout);
    let ids: Vec<u64> = out
        .stdout
        .lines()
        .flat_map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("an answer")["ids"].as_array().cloned().expect("ids")
        })
        .map(|v| v.as_u64().expect("id"))
        .collect();
    assert_eq!(ids, (1..=2_500).collect::<Vec<u64>>());
    // Past READ_LIMIT_MAX (10,000), so `ferry read` needs several pages.
    let batch: Vec<String> = (2_501..=10_000).map(|i| format!("{{\"payload\":{{\"i\":{i}}}}}")).collect();
    assert_eq!(s.append("big", format!("{{\"entries\":[{}]}}", batch.join(","))).await.status, 201);
    let batch: Vec<String> = (10_001..=10_050).map(|i| format!("{{\"payload\":{{\"i\":{i}}}}}")).collect();
    assert_eq!(s.append("big", format!("{{\"entries\":[{}]}}", batch.join(","))).await.status, 201);

    let out = client(&s, &["read", "big"], None);
    assert_exit(&out, 0, "read 10050 entries");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 10_050);
    for (i, line) in lines.iter().enumerate() {
        let e = parse_line(line);
        assert_eq!(e.id, i as u64 + 1);
        assert_eq!(e.payload.get(), format!("{{\"i\":{}}}", i + 1));
    }
    let out = client(&s, &["read", "big", "--from", "9990", "--limit", "20"], None);
    assert_exit(&out, 0, "read --from 9990 --limit 20");
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), lines[9_989..10_009]);
    let out = client(&s, &["read", "big", "--from", "10051"], None);
    assert_exit(&out, 0, "read past the head");
    assert_eq!(out.stdout, "");
}

/// An error's cause is printed once: a data dir under a plain file says
/// "Not a directory" one time, not once per layer that carried it.
#[test]
fn an_error_names_its_os_cause_once() {
    let env = Env::new();
    let file = env.dir.path().join("plain-file");
    std::fs::write(&file, b"").expect("write a file");
    let out = refused_serve(&file.join("data"), None);
    assert_exit(&out, 1, "serve under a file");
    assert_eq!(out.stderr.matches("Not a directory").count(), 1, "{}", out.stderr);
}
