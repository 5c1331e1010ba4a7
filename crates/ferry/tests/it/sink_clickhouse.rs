//! The `clickhouse` sink against real ClickHouse servers (18.16, Debian's
//! package): the shared one on 127.0.0.1:8123 (a database of its own per
//! test) and, for the tests that restart or start the destination late,
//! private servers on free ports in temp dirs. No mocks. A missing server
//! fails the test.
//!
//! Round trip (payload byte for byte, key null or not, hash on a chained
//! ledger), the range check clean and with faults, configs refused at
//! start naming the field, an unreachable server drained once it comes up,
//! a dropped table turning the ledger `failed`, 1,000 small ledgers in far
//! fewer INSERTs, and a `kill -9` loop of ferry with restarts of the
//! destination: afterwards the exactly-once view (`FINAL`) equals the
//! ledgers, by `ferry exporters check` and by SQL here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;

use crate::support::{
    Env, Server, assert_exit, durable_cursors_of, ferry, free_port, http, parse_line, run_to_exit, serve_command,
};

const SHARED: &str = "http://127.0.0.1:8123";

/// Runs `sql` on the server at `url`; panics with the server's answer.
async fn sql(url: &str, sql: &str) -> String {
    match try_sql(url, sql).await {
        Ok(text) => text,
        Err(e) => panic!(
            "ClickHouse at {url}: {e}\n(start it: clickhouse-server --config-file=/etc/clickhouse-server/config.xml)\nSQL: {sql}"
        ),
    }
}

async fn try_sql(url: &str, sql: &str) -> Result<String, String> {
    let client = http();
    let r = client.post(url).body(sql.to_owned()).send().await.map_err(|e| format!("{e:?}"))?;
    let status = r.status();
    let text = r.text().await.map_err(|e| e.to_string())?;
    if status.is_success() { Ok(text) } else { Err(format!("{status}: {text}")) }
}

/// A database of its own on the shared server, dropped at the end, or
/// when the test fails.
struct Db {
    name: String,
}

impl Db {
    async fn new(url: &str) -> Db {
        let name = format!("ferry_it_{}", rand::random::<u32>());
        sql(url, &format!("CREATE DATABASE {name}")).await;
        Db { name }
    }

    async fn drop_it(self) {
        drop(self);
    }
}

impl Drop for Db {
    /// A plain blocking request (this may run while a test panics, so
    /// every error is ignored).
    fn drop(&mut self) {
        use std::io::{Read as _, Write as _};
        let body = format!("DROP DATABASE IF EXISTS {}", self.name);
        if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:8123") {
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "POST / HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            if s.write_all(request.as_bytes()).is_ok() {
                let _ = s.read_to_end(&mut Vec::new());
            }
        }
    }
}

/// An exporter `ch` into `url`/`db`.`table` with `extra` config keys (JSON
/// object members), and `head` prepended (e.g. `[storage]`).
fn config(head: &str, url: &str, db: &str, extra: &str, exporter_extra: &str) -> String {
    format!(
        r#"{head}
[[exporters]]
name = "ch"
sink = "clickhouse"
batch = {{ max_entries = 50, linger = "5ms" }}
retry = {{ initial = "50ms", max = "500ms" }}
{exporter_extra}
[exporters.config]
url = "{url}"
database = "{db}"
table = "entries"
{extra}
"#
    )
}

/// A number of a JSONEachRow row: 18.16 quotes 64-bit integers.
fn num(v: &Value) -> u64 {
    v.as_u64().or_else(|| v.as_str().and_then(|s| s.parse().ok())).unwrap_or_else(|| panic!("not a number: {v}"))
}

/// The ledger's rows in the exactly-once view, as the NDJSON lines ferry
/// serves (`{"ledger","id","ts","key"?,"hash"?,"payload"}`), payload as
/// stored, byte for byte.
async fn final_lines(url: &str, db: &str, ledger: &str) -> Vec<String> {
    let text = sql(
        url,
        &format!(
            "SELECT ledger, id, ts, key, hash, payload FROM {db}.entries FINAL WHERE ledger = '{ledger}' \
             ORDER BY id FORMAT JSONEachRow"
        ),
    )
    .await;
    text.lines()
        .map(|l| {
            let row: Value = serde_json::from_str(l).expect("a JSONEachRow row");
            let mut line = format!(
                r#"{{"ledger":"{}","id":{},"ts":{}"#,
                row["ledger"].as_str().unwrap(),
                num(&row["id"]),
                num(&row["ts"])
            );
            if let Some(key) = row["key"].as_str() {
                line.push_str(&format!(r#","key":{}"#, serde_json::to_string(key).unwrap()));
            }
            if let Some(hash) = row["hash"].as_str() {
                line.push_str(&format!(r#","hash":"{hash}""#));
            }
            line.push_str(&format!(r#","payload":{}}}"#, row["payload"].as_str().expect("payload is a string")));
            line
        })
        .collect()
}

/// Independently of ferry: per ledger, `[rows, distinct ids, min, max]` in
/// the exactly-once view, and distinct `(ledger, incarnation, id)` without
/// `FINAL` (what `uniqExact` counts whatever merges did).
async fn sql_view(url: &str, db: &str) -> (BTreeMap<String, [u64; 4]>, u64) {
    let text = sql(
        url,
        &format!(
            "SELECT ledger, count(), uniqExact(id), min(id), max(id) FROM {db}.entries FINAL GROUP BY ledger \
             FORMAT TabSeparated"
        ),
    )
    .await;
    let mut view = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        let n = |i: usize| f[i].parse::<u64>().unwrap();
        view.insert(f[0].to_owned(), [n(1), n(2), n(3), n(4)]);
    }
    let distinct = sql(url, &format!("SELECT uniqExact((ledger, incarnation, id)) FROM {db}.entries"))
        .await
        .trim()
        .parse()
        .unwrap();
    (view, distinct)
}

/// Appends `n` entries to `ledger` in requests of up to 7; keys on even
/// entries, payloads with escapes and non-ASCII text.
async fn append_n(server: &Server, ledger: &str, n: usize) {
    let mut left = n;
    let mut i = 0;
    while left > 0 {
        let k = left.min(7);
        let entries: Vec<String> = (0..k)
            .map(|j| {
                let key = if (i + j) % 2 == 0 { format!(r#","key":"k-{}""#, i + j) } else { String::new() };
                format!(r#"{{"payload":{{"n":{},"t":"é \"q\" \\ \u00e9 /"}}{key}}}"#, i + j)
            })
            .collect();
        let r = server.append(ledger, format!(r#"{{"entries":[{}]}}"#, entries.join(","))).await;
        assert_eq!(r.status, 201, "{}", r.text);
        left -= k;
        i += k;
    }
}

/// Waits until every ledger of `ch` is exported to its head.
async fn caught_up(server: &Server, ledgers: usize) -> Value {
    server
        .wait_exporter("ch", "catch up", |s| {
            s["ledgers"].as_array().is_some_and(|ls| {
                ls.len() == ledgers && ls.iter().all(|l| l["cursor"] == l["head"] && l["state"] == "running")
            })
        })
        .await
}

fn cli(server: &Server, args: &[&str]) -> crate::support::Exited {
    let mut c = ferry();
    c.args(args).env("FERRY_SERVER", &server.base);
    run_to_exit(c, None)
}

#[tokio::test]
async fn round_trip_and_the_range_check_clean_and_with_faults() {
    let db = Db::new(SHARED).await;
    let env = Env::new();
    let server = env
        .serve_with(&config("[storage]\nhash_chain = [\"chained*\"]\n", SHARED, &db.name, "create_table = true", ""))
        .await;
    append_n(&server, "plain", 40).await;
    append_n(&server, "chained.x", 23).await;
    caught_up(&server, 2).await;
    for ledger in ["plain", "chained.x"] {
        let stored = server.read_all(ledger).await;
        let held = final_lines(SHARED, &db.name, ledger).await;
        assert_eq!(held, stored, "{ledger}: the table differs from the ledger");
        let chained = ledger.starts_with("chained");
        assert!(stored.iter().all(|l| parse_line(l).hash.is_some() == chained), "{ledger}: hashes");
        assert!(
            stored.iter().any(|l| parse_line(l).key.is_some()) && stored.iter().any(|l| parse_line(l).key.is_none())
        );
    }
    let clean = cli(&server, &["exporters", "check", "ch"]);
    assert_exit(&clean, 0, "check of a clean export");
    let report: Value = serde_json::from_str(&clean.stdout).unwrap();
    assert_eq!(report["ok"], true, "{report}");
    let plain = report["ledgers"].as_array().unwrap().iter().find(|l| l["ledger"] == "plain").unwrap().clone();
    assert_eq!(plain["holding"]["distinct"], 40, "{report}");
    assert_eq!((plain["holding"]["min"].as_u64(), plain["holding"]["max"].as_u64()), (Some(1), Some(40)));

    // A reset re-sends plain whole: the replay collapses into the rows
    // already there (FINAL unchanged, the check still clean).
    assert_exit(&cli(&server, &["exporters", "reset", "ch", "--ledger", "plain"]), 0, "reset");
    caught_up(&server, 2).await;
    assert_eq!(final_lines(SHARED, &db.name, "plain").await, server.read_all("plain").await, "after the replay");
    let replayed = cli(&server, &["exporters", "check", "ch"]);
    assert_exit(&replayed, 0, "check after a replay");

    // A gap: id 3 of plain deleted (a mutation, applied asynchronously);
    // a row above the cursor of chained.x inserted by hand.
    let t = format!("{}.entries", db.name);
    let incarnation =
        report["ledgers"].as_array().unwrap().iter().find(|l| l["ledger"] == "chained.x").unwrap()["incarnation"]
            .as_u64()
            .unwrap();
    sql(SHARED, &format!("ALTER TABLE {t} DELETE WHERE ledger = 'plain' AND id = 3")).await;
    sql(
        SHARED,
        &format!(
            "INSERT INTO {t} (ledger, incarnation, id, ts, key, hash, payload) VALUES \
             ('chained.x', {incarnation}, 99, 1, NULL, NULL, '{{}}')"
        ),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while sql(SHARED, &format!("SELECT count() FROM {t} WHERE ledger = 'plain' AND id = 3")).await.trim() != "0" {
        assert!(Instant::now() < deadline, "the DELETE mutation did not apply");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let faulty = cli(&server, &["exporters", "check", "ch"]);
    assert_exit(&faulty, 1, "check with a gap");
    let report: Value = serde_json::from_str(&faulty.stdout).unwrap();
    let by = |name: &str| report["ledgers"].as_array().unwrap().iter().find(|l| l["ledger"] == name).unwrap().clone();
    assert_eq!(by("plain")["faults"][0], "1 of ids 1..=40 missing (holds 39 of 40)", "{report}");
    let chained = by("chained.x");
    assert_eq!(chained["faults"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(chained["holding"]["above_cursor"], 1, "{report}");
    assert_eq!(chained["holding"]["max"], 99, "{report}");
    assert!(chained["notes"][0].as_str().unwrap().contains("above the cursor"), "{report}");
    server.stop();
    db.drop_it().await;
}

/// Waits until `count_sql` answers 0 (a mutation applied).
async fn until_zero(url: &str, count_sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while sql(url, count_sql).await.trim() != "0" {
        assert!(Instant::now() < deadline, "the mutation did not apply: {count_sql}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A chained ledger's rows replaced or deleted in the table break its
/// hash chain, and the range check names the first id where it breaks
/// (issue #21): a row replaced with another payload (a later insert with
/// the same sorting key, which `FINAL` shows instead; the counts stay
/// clean) at that id, a row deleted by a mutation at its id (besides the
/// gap).
#[tokio::test]
async fn the_range_check_names_the_first_id_where_the_chain_breaks() {
    let db = Db::new(SHARED).await;
    let env = Env::new();
    let server =
        env.serve_with(&config("[storage]\nhash_chain = [\"*\"]\n", SHARED, &db.name, "create_table = true", "")).await;
    append_n(&server, "audit", 30).await;
    caught_up(&server, 1).await;
    assert_eq!(final_lines(SHARED, &db.name, "audit").await, server.read_all("audit").await);
    let ledger_of = |report: &Value| report["ledgers"].as_array().unwrap()[0].clone();
    let clean = cli(&server, &["exporters", "check", "ch"]);
    assert_exit(&clean, 0, "check of a clean chained export");
    let report: Value = serde_json::from_str(&clean.stdout).unwrap();
    assert_eq!(ledger_of(&report)["holding"]["chain"], serde_json::json!({"state": "intact", "rows": 30}), "{report}");

    let t = format!("{}.entries", db.name);
    sql(
        SHARED,
        &format!(
            "INSERT INTO {t} SELECT ledger, incarnation, id, ts, key, hash, '{{\"n\":999}}' FROM {t} FINAL \
             WHERE ledger = 'audit' AND id = 12"
        ),
    )
    .await;
    let replaced = sql(SHARED, &format!("SELECT payload FROM {t} FINAL WHERE ledger = 'audit' AND id = 12")).await;
    assert_eq!(replaced.trim(), r#"{"n":999}"#, "FINAL shows the later row");
    let altered = cli(&server, &["exporters", "check", "ch"]);
    assert_exit(&altered, 1, "check with a replaced row");
    let report: Value = serde_json::from_str(&altered.stdout).unwrap();
    let audit = ledger_of(&report);
    let faults = audit["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 1, "the counts are clean: {report}");
    assert!(faults[0].as_str().unwrap().starts_with("chain breaks at id 12: "), "{report}");
    assert_eq!(audit["holding"]["chain"]["id"], 12, "{report}");

    // The replaced row deleted, and another: the chain breaks at the
    // first missing id.
    sql(SHARED, &format!("ALTER TABLE {t} DELETE WHERE ledger = 'audit' AND id IN (12, 20)")).await;
    until_zero(SHARED, &format!("SELECT count() FROM {t} WHERE ledger = 'audit' AND id IN (12, 20)")).await;
    let deleted = cli(&server, &["exporters", "check", "ch"]);
    assert_exit(&deleted, 1, "check with deleted rows");
    let report: Value = serde_json::from_str(&deleted.stdout).unwrap();
    let faults: Vec<String> =
        ledger_of(&report)["faults"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_owned()).collect();
    assert!(faults.contains(&"2 of ids 1..=30 missing (holds 28 of 30)".to_owned()), "{report}");
    assert!(faults.iter().any(|f| f.starts_with("chain breaks at id 12: no row holds it")), "{report}");
    server.stop();
    db.drop_it().await;
}

#[tokio::test]
async fn configs_the_server_refuses_stop_serve_naming_the_field() {
    let db = Db::new(SHARED).await;
    let env = Env::new();
    sql(SHARED, &format!("CREATE TABLE {}.wrong (ledger String, id UInt32) ENGINE = MergeTree ORDER BY id", db.name))
        .await;
    sql(
        SHARED,
        &format!(
            "CREATE TABLE {}.unsorted (ledger String, incarnation UInt64, id UInt64, ts UInt64, key Nullable(String), \
             hash Nullable(String), payload String) ENGINE = ReplacingMergeTree ORDER BY (ledger, id)",
            db.name
        ),
    )
    .await;
    let base = |extra: &str| {
        format!(
            "[[exporters]]\nname = \"ch\"\nsink = \"clickhouse\"\n[exporters.config]\nurl = \"{SHARED}\"\n\
             database = \"{}\"\n{extra}\n",
            db.name
        )
    };
    let cases = [
        ("password", base("table = \"t\"\ncreate_table = true\npassword = \"hunter2-secret\""), "config.password"),
        ("user", base("table = \"t\"\nuser = \"nobody_here\""), "config.user"),
        ("missing", base("table = \"absent\""), "config.table"),
        ("shape", base("table = \"wrong\""), "config.table"),
        ("order", base("table = \"unsorted\""), "config.table"),
        (
            "database",
            "[[exporters]]\nname = \"ch\"\nsink = \"clickhouse\"\n[exporters.config]\ndatabase = \"no_such_db_x\"\n\
             table = \"t\"\ncreate_table = true\n"
                .to_owned(),
            "config.database",
        ),
        ("unknown", base("table = \"t\"\ntabel = \"x\""), "config.tabel"),
        (
            "ca",
            "[[exporters]]\nname = \"ch\"\nsink = \"clickhouse\"\n[exporters.config]\nurl = \"https://127.0.0.1:1\"\n\
             table = \"t\"\nca_file = \"/nonexistent/ca.pem\"\n"
                .to_owned(),
            "config.ca_file",
        ),
        (
            "ca-not-pem",
            "[[exporters]]\nname = \"ch\"\nsink = \"clickhouse\"\n[exporters.config]\nurl = \"https://127.0.0.1:1\"\n\
             table = \"t\"\nca_file = \"/etc/hostname\"\n"
                .to_owned(),
            "config.ca_file",
        ),
    ];
    for (name, text, field) in cases {
        let path = env.config(&format!("{name}.toml"), &text);
        let out = run_to_exit(serve_command(&env.data_dir(), Some(&path), free_port()), None);
        assert_exit(&out, 1, name);
        assert!(out.stderr.contains(field), "{name}: stderr should name {field}:\n{}", out.stderr);
        assert!(!out.stderr.contains("hunter2"), "{name}: the password leaked:\n{}", out.stderr);
        assert!(!env.data_dir().exists(), "{name}: storage was opened");
    }
    let shape = run_to_exit(
        serve_command(&env.data_dir(), Some(&env.config("s.toml", &base("table = \"wrong\""))), free_port()),
        None,
    );
    assert!(
        shape.stderr.contains("no column incarnation") && shape.stderr.contains("column id is UInt32"),
        "{}",
        shape.stderr
    );
    db.drop_it().await;
}

#[tokio::test]
async fn a_dropped_table_turns_the_ledger_failed_never_skipped() {
    let db = Db::new(SHARED).await;
    let env = Env::new();
    let server = env.serve_with(&config("", SHARED, &db.name, "create_table = true", "")).await;
    append_n(&server, "a", 10).await;
    caught_up(&server, 1).await;
    sql(SHARED, &format!("DROP TABLE {}.entries", db.name)).await;
    append_n(&server, "a", 5).await;
    let status = server.wait_exporter("ch", "the ledger fails", |s| s["ledgers"][0]["state"] == "failed").await;
    let l = &status["ledgers"][0];
    assert_eq!(l["cursor"], 10, "{status}");
    assert_eq!(l["head"], 15, "{status}");
    let error = l["last_error"].as_str().unwrap();
    assert!(error.contains("code 60") && error.contains("entries"), "{error}");
    // It stays failed (nothing skipped) until someone acts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let again = server.exporter("ch").await;
    assert_eq!(
        (again["ledgers"][0]["state"].as_str(), again["ledgers"][0]["cursor"].as_u64()),
        (Some("failed"), Some(10))
    );
    server.stop();
    db.drop_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_small_ledgers_share_few_inserts_and_arrive_exactly() {
    const LEDGERS: usize = 1000;
    let db = Db::new(SHARED).await;
    let env = Env::new();
    // The ledgers first, with no exporter; then the exporter catches up
    // 64 ledgers at a time.
    let server = env.serve().await;
    let mut tasks = Vec::new();
    for part in 0..8 {
        let (base, http) = (server.base.clone(), server.http.clone());
        tasks.push(tokio::spawn(async move {
            for i in (part..LEDGERS).step_by(8) {
                let body = r#"{"entries":[{"payload":{"a":1}},{"payload":{"b":2},"key":"k"},{"payload":[3]}]}"#;
                let r = http
                    .post(format!("{base}/v1/ledgers/l{i:04}/entries"))
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .expect("append");
                assert_eq!(r.status(), 201);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    server.stop();
    let started = Instant::now();
    let server =
        env.serve_with(&config("", SHARED, &db.name, "create_table = true", "max_parallel_ledgers = 64")).await;
    caught_up(&server, LEDGERS).await;
    let took = started.elapsed();
    // Each INSERT takes a block number: the greatest is the INSERT count.
    let inserts: u64 = sql(
        SHARED,
        &format!("SELECT max(max_block_number) FROM system.parts WHERE database = '{}' AND table = 'entries'", db.name),
    )
    .await
    .trim()
    .parse()
    .unwrap();
    eprintln!("{LEDGERS} ledgers of 3 entries exported in {inserts} INSERTs, {took:?}");
    assert!(inserts > 0 && inserts <= 150, "{inserts} INSERTs for {LEDGERS} ledgers: the sink did not coalesce");
    let (view, distinct) = sql_view(SHARED, &db.name).await;
    assert_eq!(view.len(), LEDGERS);
    assert!(view.values().all(|v| *v == [3, 3, 1, 3]), "{view:?}");
    assert_eq!(distinct, 3 * LEDGERS as u64);
    let check = cli(&server, &["exporters", "check", "ch"]);
    assert_exit(&check, 0, "check after 1,000 ledgers");
    server.stop();
    db.drop_it().await;
}

/// The password of user `ferry` on the private servers.
const PRIVATE_PASSWORD: &str = "s3cret-pw-77";

/// A ClickHouse server of the test's own, on free ports in a temp dir
/// (Debian's config with ports and paths rewritten), to stop and start.
struct PrivateClickHouse {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl PrivateClickHouse {
    fn new(dir: &Path, port: u16) -> PrivateClickHouse {
        Self::with_https(dir, port, None)
    }

    /// With `https_port`, the server also answers HTTPS there, with a
    /// self-signed certificate for 127.0.0.1 in `{dir}/cert.pem`.
    fn with_https(dir: &Path, port: u16, https_port: Option<u16>) -> PrivateClickHouse {
        std::fs::create_dir_all(dir).unwrap();
        let config = std::fs::read_to_string("/etc/clickhouse-server/config.xml")
            .expect("ClickHouse is not installed: apt-get install -y clickhouse-server");
        let d = dir.display();
        let mut ports = format!("<http_port>{port}</http_port>");
        if let Some(https) = https_port {
            let rcgen::CertifiedKey { cert, signing_key } =
                rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("generate a certificate");
            std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
            std::fs::write(dir.join("key.pem"), signing_key.serialize_pem()).unwrap();
            ports.push_str(&format!("<https_port>{https}</https_port>"));
        }
        let config = config
            .replace("<http_port>8123</http_port>", &ports)
            .replace("/etc/clickhouse-server/server.crt", &format!("{d}/cert.pem"))
            .replace("/etc/clickhouse-server/server.key", &format!("{d}/key.pem"))
            .replace("<dhParamsFile>/etc/clickhouse-server/dhparam.pem</dhParamsFile>", "")
            .replace("<tcp_port>9000</tcp_port>", &format!("<tcp_port>{}</tcp_port>", free_port()))
            .replace(
                "<interserver_http_port>9009</interserver_http_port>",
                &format!("<interserver_http_port>{}</interserver_http_port>", free_port()),
            )
            .replace("<listen_host>::1</listen_host>", "")
            .replace("<path>/var/lib/clickhouse/</path>", &format!("<path>{d}/data/</path>"))
            .replace("<tmp_path>/var/lib/clickhouse/tmp/</tmp_path>", &format!("<tmp_path>{d}/tmp/</tmp_path>"))
            .replace(
                "<user_files_path>/var/lib/clickhouse/user_files/</user_files_path>",
                &format!("<user_files_path>{d}/user_files/</user_files_path>"),
            )
            .replace(
                "<format_schema_path>/var/lib/clickhouse/format_schemas/</format_schema_path>",
                &format!("<format_schema_path>{d}/format_schemas/</format_schema_path>"),
            )
            .replace("/var/log/clickhouse-server/", &format!("{d}/log/"));
        assert!(config.contains(&format!("{d}/data/")), "the server config's <path> was not rewritten");
        std::fs::write(dir.join("config.xml"), config).unwrap();
        // Debian's users, plus `ferry` with a password (PRIVATE_PASSWORD).
        let users = std::fs::read_to_string("/etc/clickhouse-server/users.xml").unwrap().replacen(
            "</users>",
            &format!(
                "<ferry><password>{PRIVATE_PASSWORD}</password><networks><ip>::/0</ip></networks>\
                 <profile>default</profile><quota>default</quota></ferry></users>"
            ),
            1,
        );
        std::fs::write(dir.join("users.xml"), users).unwrap();
        PrivateClickHouse { dir: dir.to_owned(), port, child: None }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until `SELECT 1` answers.
    async fn start(&mut self) {
        let out = std::fs::File::create(self.dir.join("server.out")).unwrap();
        let child = Command::new("clickhouse-server")
            .arg(format!("--config-file={}", self.dir.join("config.xml").display()))
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start clickhouse-server (apt-get install -y clickhouse-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while try_sql(&self.url(), "SELECT 1").await.is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!(
                    "private clickhouse-server exited ({status}):\n{}",
                    std::fs::read_to_string(self.dir.join("server.out")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "private clickhouse-server did not answer within 30 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, then reap.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateClickHouse {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test]
async fn an_unreachable_server_is_not_a_config_error_and_is_drained_once_it_answers() {
    let env = Env::new();
    let mut ch = PrivateClickHouse::new(&env.dir.path().join("ch"), free_port());
    let extra = format!("create_table = true\nuser = \"ferry\"\npassword = \"{PRIVATE_PASSWORD}\"");
    let server = env.serve_with(&config("", &ch.url(), "default", &extra, "")).await;
    assert!(server.stderr().contains("did not answer at start"), "{}", server.stderr());
    append_n(&server, "a", 12).await;
    let status = server.wait_exporter("ch", "back off", |s| s["ledgers"][0]["state"] == "backing_off").await;
    assert!(status["ledgers"][0]["last_error"].as_str().unwrap().contains("failed"), "{status}");
    ch.start().await;
    caught_up(&server, 1).await;
    assert_eq!(final_lines(&ch.url(), "default", "a").await, server.read_all("a").await);
    // The password went in a header, and nowhere into what ferry shows.
    let check = cli(&server, &["exporters", "check", "ch"]);
    assert_exit(&check, 0, "check with a password");
    let shown = format!("{}{}{}", server.stderr(), server.exporter("ch").await, check.stdout);
    assert!(!shown.contains(PRIVATE_PASSWORD), "the password leaked:\n{shown}");
    server.stop();
}

#[tokio::test]
async fn tls_with_a_ca_file_reaches_an_https_server_and_an_unknown_certificate_backs_off() {
    let env = Env::new();
    let https = free_port();
    let mut ch = PrivateClickHouse::with_https(&env.dir.path().join("ch"), free_port(), Some(https));
    ch.start().await;
    let ca = env.dir.path().join("ch/cert.pem");
    let url = format!("https://127.0.0.1:{https}");
    let extra = format!("create_table = true\nca_file = \"{}\"", ca.display());
    let server = env.serve_with(&config("", &url, "default", &extra, "")).await;
    append_n(&server, "a", 9).await;
    caught_up(&server, 1).await;
    assert_eq!(final_lines(&ch.url(), "default", "a").await, server.read_all("a").await);
    server.stop();
    // Without the CA file the certificate is unknown: the ledger backs off
    // (naming the certificate problem), it does not fail.
    let env = Env::new();
    let server = env.serve_with(&config("", &url, "default", "create_table = true", "")).await;
    append_n(&server, "a", 1).await;
    let status = server.wait_exporter("ch", "back off", |s| s["ledgers"][0]["state"] == "backing_off").await;
    assert!(status["ledgers"][0]["last_error"].as_str().unwrap().contains("certificate"), "{status}");
    server.stop();
}

async fn append_until_killed(base: String, http: reqwest::Client, killed: Arc<AtomicBool>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let ledgers = ["audit", "pay.eu", "t-1", "t-2"];
    while !killed.load(Ordering::SeqCst) {
        let ledger = ledgers[rng.random_range(0..ledgers.len())];
        let n = rng.random_range(1..=15);
        let entries: Vec<String> = (0..n)
            .map(|_| {
                format!(r#"{{"payload":{{"s":{seed},"pad":"{}"}},"key":"k"}}"#, "z".repeat(rng.random_range(0..100)))
            })
            .collect();
        let _ = http
            .post(format!("{base}/v1/ledgers/{ledger}/entries"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"entries":[{}]}}"#, entries.join(",")))
            .send()
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_exactly_once_view_survives_kill_9_of_ferry_and_restarts_of_the_destination() {
    const CYCLES: usize = 24;
    let seed = std::env::var("FERRY_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    eprintln!("clickhouse crash test seed {seed} (FERRY_CRASH_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let env = Env::new();
    let mut ch = PrivateClickHouse::new(&env.dir.path().join("ch"), free_port());
    ch.start().await;
    let cfg = config(
        "[storage]\nchunk_entries = 64\n",
        &ch.url(),
        "default",
        "create_table = true",
        "max_parallel_ledgers = 4",
    );
    let started = Instant::now();
    let mut restarts = 0;
    let mut ahead_checks = 0;
    for cycle in 0..CYCLES {
        let mut server = env.serve_with(&cfg).await;
        let killed = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..3)
            .map(|_| {
                tokio::spawn(append_until_killed(
                    server.base.clone(),
                    server.http.clone(),
                    killed.clone(),
                    rng.random(),
                ))
            })
            .collect();
        let delay = rng.random_range(30..=300);
        if cycle % 6 == 3 {
            // The destination dies mid-export and comes back.
            tokio::time::sleep(Duration::from_millis(delay / 2)).await;
            ch.kill();
            tokio::time::sleep(Duration::from_millis(100)).await;
            ch.start().await;
            restarts += 1;
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        assert!(server.is_running(), "cycle {cycle}: ferry serve died on its own:\n{}", server.stderr());
        killed.store(true, Ordering::SeqCst);
        server.kill();
        for t in tasks {
            t.await.unwrap();
        }
        // No durable cursor is ahead of the destination: ids 1..=cursor
        // are all in the table.
        for (ledger, cursor) in durable_cursors_of(&env.data_dir(), "ch") {
            let held = sql(
                &ch.url(),
                &format!(
                    "SELECT uniqExact(id) FROM default.entries FINAL WHERE ledger = '{ledger}' AND id <= {cursor}"
                ),
            )
            .await;
            assert_eq!(
                held.trim(),
                cursor.to_string(),
                "cycle {cycle} (seed {seed}): {ledger} cursor {cursor} is ahead"
            );
            ahead_checks += usize::from(cursor > 0);
        }
    }
    assert!(ahead_checks > CYCLES, "cursors rarely moved: the loop exported too little");
    let server = env.serve_with(&cfg).await;
    let status = server
        .wait_exporter("ch", "catch up after the last restart", |s| {
            s["ledgers"].as_array().is_some_and(|ls| !ls.is_empty() && ls.iter().all(|l| l["lag"] == 0))
        })
        .await;
    let (view, distinct) = sql_view(&ch.url(), "default").await;
    let mut total = 0;
    for l in status["ledgers"].as_array().unwrap() {
        let ledger = l["ledger"].as_str().unwrap();
        let stored = server.read_all(ledger).await;
        let head = stored.len() as u64;
        total += head;
        assert_eq!(view.get(ledger), Some(&[head, head, 1, head]), "{ledger} (seed {seed})");
        assert!(final_lines(&ch.url(), "default", ledger).await == stored, "{ledger}: table differs (seed {seed})");
    }
    assert_eq!(distinct, total, "distinct (ledger, incarnation, id) without FINAL (seed {seed})");
    let check = cli(&server, &["exporters", "check", "ch"]);
    assert_exit(&check, 0, "check after the kill -9 loop");
    server.stop();
    // Rows without FINAL: repeats not merged away yet (if any) show here.
    let raw = sql(&ch.url(), "SELECT count() FROM default.entries").await;
    eprintln!(
        "{CYCLES} kill -9 cycles, {restarts} destination restarts, {total} entries ({} rows before merges) in {:?}",
        raw.trim(),
        started.elapsed()
    );
    assert!(total > 200, "too few entries to mean anything: {total}");
}
