//! The `postgres` sink with the real binary and real PostgreSQL: the
//! machine's server (127.0.0.1:5432, user postgres, trust) with a schema
//! per test, and a private instance per test that stops, restarts or needs
//! a password or TLS (initdb + pg_ctl in a temp dir, run as the `postgres`
//! user when the tests run as root). Every outcome is checked with SQL of
//! the test's own, not only with ferry's range check. A missing server or
//! missing PostgreSQL binaries fail the tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sqlx::AssertSqlSafe;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::support::{
    Env, Server, assert_exit, durable_cursors_of, ferry, free_port, parse_line, run_to_exit, serve_command,
};

const SHARED: &str = "postgres://postgres@127.0.0.1:5432/postgres";

async fn pool(url: &str) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed for this test: {e}"))
}

/// A schema of the machine's server for one test, dropped at the end.
struct Schema {
    name: String,
    pg: PgPool,
}

impl Schema {
    async fn new(tag: &str) -> Self {
        let name = format!("ferry_it_{tag}_{}_{}", std::process::id(), rand::random::<u32>());
        let pg = pool(SHARED).await;
        exec(&pg, &format!("CREATE SCHEMA {name}")).await;
        Self { name, pg }
    }

    async fn drop(self) {
        exec(&self.pg, &format!("DROP SCHEMA {} CASCADE", self.name)).await;
    }
}

async fn exec(pg: &PgPool, sql: &str) {
    sqlx::query(AssertSqlSafe(sql.to_owned())).execute(pg).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn scalar(pg: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned())).fetch_one(pg).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// An exporter section for the postgres sink.
fn exporter(name: &str, batch: usize, config: &str) -> String {
    format!(
        "[[exporters]]\nname = \"{name}\"\nsink = \"postgres\"\n\
         batch = {{ max_entries = {batch}, linger = \"2ms\" }}\n\
         retry = {{ initial = \"50ms\", max = \"500ms\" }}\n\
         [exporters.config]\n{config}\n"
    )
}

async fn append_n(server: &Server, ledger: &str, n: usize, tag: &str) {
    let entries: Vec<String> = (0..n)
        .map(|i| match i % 3 {
            0 => format!(
                r#"{{"key":"k-{i}","payload":{{"tag":"{tag}","i":{i},"nested":{{"b":[1,2.5,null],"a":"é\"\\"}}}}}}"#
            ),
            1 => format!(r#"{{"payload":{{"i":{i},"tag":"{tag}"}}}}"#),
            _ => format!(r#"{{"key":"k-{i}","payload":[{i},"{tag}",true]}}"#),
        })
        .collect();
    let r = server.append(ledger, format!(r#"{{"entries":[{}]}}"#, entries.join(","))).await;
    assert_eq!(r.status, 201, "append to {ledger}: {}", r.text);
}

async fn incarnation(server: &Server, ledger: &str) -> i64 {
    let r = server.get(&format!("/v1/ledgers/{ledger}")).await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()["incarnation"].as_i64().expect("incarnation")
}

async fn caught_up(server: &Server, exporter: &str, ledgers: usize) -> Value {
    server
        .wait_exporter(exporter, "catch up", |s| {
            s["ledgers"].as_array().is_some_and(|ls| ls.len() == ledgers && ls.iter().all(|l| l["lag"] == 0))
        })
        .await
}

/// The table's rows of the ledger's incarnation equal the ledger's
/// entries exactly: ids, ts, key, hash, and payload as jsonb; and there is
/// no row of another incarnation.
async fn assert_rows_are_the_ledger(server: &Server, pg: &PgPool, table: &str, ledger: &str) {
    let lines = server.read_all(ledger).await;
    let incarnation = incarnation(server, ledger).await;
    let q = format!(
        "SELECT incarnation, id, ts, key, hash, payload::text FROM {table} WHERE ledger = $1 ORDER BY incarnation, id"
    );
    type Row = (i64, i64, i64, Option<String>, Option<String>, String);
    let rows: Vec<Row> = sqlx::query_as(AssertSqlSafe(q)).bind(ledger).fetch_all(pg).await.expect("read the rows");
    assert_eq!(rows.len(), lines.len(), "{table}/{ledger}: {} rows for {} entries", rows.len(), lines.len());
    for (row, line) in rows.iter().zip(&lines) {
        let e = parse_line(line);
        let (inc, id, ts, key, hash, payload) = row;
        assert_eq!(*inc, incarnation, "{table}/{ledger} id {id}: incarnation");
        assert_eq!((*id as u64, *ts as u64), (e.id, e.ts), "{table}/{ledger}: id and ts of {line}");
        assert_eq!(key, &e.key, "{table}/{ledger} id {id}: key");
        assert_eq!(hash, &e.hash, "{table}/{ledger} id {id}: hash");
        let stored: Value = serde_json::from_str(payload).expect("payload as JSON");
        let sent: Value = serde_json::from_str(e.payload.get()).expect("entry payload");
        assert_eq!(stored, sent, "{table}/{ledger} id {id}: payload");
    }
}

fn cli(server: &Server, args: &[&str]) -> crate::support::Exited {
    let mut c = ferry();
    c.args(args).env("FERRY_SERVER", &server.base);
    run_to_exit(c, None)
}

/// Rows equal the ledgers (a chained ledger's hashes included); the range
/// check is clean, then finds a row deleted by hand and a row of an id
/// the cursor has not reached, as the test's own SQL counts them too.
#[tokio::test]
async fn rows_equal_the_ledgers_and_the_range_check_finds_a_gap() {
    let schema = Schema::new("rt").await;
    let table = format!("{}.entries", schema.name);
    let env = Env::new();
    let config = format!(
        "[storage]\nhash_chain = [\"chained*\"]\n{}",
        exporter("pg", 40, &format!("url = \"{SHARED}\"\ntable = \"{table}\"\ncreate_table = true"))
    );
    let server = env.serve_with(&config).await;
    append_n(&server, "plain", 95, "p").await;
    append_n(&server, "chained.a", 61, "c").await;
    append_n(&server, "plain", 7, "p2").await;
    caught_up(&server, "pg", 2).await;
    assert_rows_are_the_ledger(&server, &schema.pg, &table, "plain").await;
    assert_rows_are_the_ledger(&server, &schema.pg, &table, "chained.a").await;
    let hashed = scalar(&schema.pg, &format!("SELECT count(hash) FROM {table} WHERE ledger = 'chained.a'")).await;
    assert_eq!(hashed, 61, "every entry of a chained ledger carries its hash");

    let clean = cli(&server, &["exporters", "check", "pg"]);
    assert_exit(&clean, 0, "check of a clean export");
    let report: Value = serde_json::from_str(&clean.stdout).expect("check report");
    assert_eq!(report["ok"], true, "{report}");
    let plain = report["ledgers"].as_array().unwrap().iter().find(|l| l["ledger"] == "plain").unwrap().clone();
    assert_eq!(plain["holding"]["distinct"], 102, "{report}");
    assert_eq!((plain["holding"]["min"].as_u64(), plain["holding"]["max"].as_u64()), (Some(1), Some(102)));

    // A gap made by hand, and a row past the cursor.
    exec(&schema.pg, &format!("DELETE FROM {table} WHERE ledger = 'plain' AND id = 50")).await;
    let inc = incarnation(&server, "plain").await;
    exec(&schema.pg, &format!("INSERT INTO {table} VALUES ('plain', {inc}, 500, 0, NULL, NULL, '{{}}'::jsonb)")).await;
    let present = scalar(
        &schema.pg,
        &format!("SELECT count(DISTINCT id) FROM {table} WHERE ledger = 'plain' AND id BETWEEN 1 AND 102"),
    )
    .await;
    assert_eq!(present, 101, "the test's own count sees the gap");
    let faulty = cli(&server, &["exporters", "check", "pg", "--ledger", "plain"]);
    assert_exit(&faulty, 1, "check with a gap");
    let report: Value = serde_json::from_str(&faulty.stdout).expect("check report");
    let ledger = &report["ledgers"][0];
    assert_eq!(ledger["faults"][0], "1 of ids 1..=102 missing (holds 101 of 102)", "{report}");
    assert_eq!(ledger["holding"]["above_cursor"], 1, "{report}");
    assert!(ledger["notes"][0].as_str().unwrap().contains("above the cursor"), "{report}");
    server.stop();
    schema.drop().await;
}

/// The entries table as `create_table` made it before the chain check
/// (`payload jsonb`).
fn jsonb_table(table: &str) -> String {
    format!(
        "CREATE TABLE {table} (ledger text NOT NULL, incarnation bigint NOT NULL, id bigint NOT NULL, \
         ts bigint NOT NULL, key text, hash text, payload jsonb NOT NULL, PRIMARY KEY (ledger, incarnation, id))"
    )
}

/// The faults and notes of `ledger` in a check report.
fn ledger_of(report: &Value, ledger: &str) -> Value {
    report["ledgers"].as_array().unwrap().iter().find(|l| l["ledger"] == ledger).unwrap().clone()
}

/// A chained ledger's rows altered or deleted in the table break its hash
/// chain, and the range check names the first id where it breaks (issue
/// #21): a payload changed in place (the counts stay clean) at that id,
/// a deleted row at its id (besides the gap). The rows read back are the
/// payloads' exact text (`payload json`). A `jsonb` table is still
/// written, and its chain reported uncheckable (a note, not a fault).
#[tokio::test]
async fn the_range_check_names_the_first_id_where_the_chain_breaks() {
    let schema = Schema::new("chain").await;
    let table = format!("{}.entries", schema.name);
    let legacy = format!("{}.legacy", schema.name);
    exec(&schema.pg, &jsonb_table(&legacy)).await;
    let env = Env::new();
    let config = format!(
        "[storage]\nhash_chain = [\"*\"]\n{}{}",
        exporter("pg", 7, &format!("url = \"{SHARED}\"\ntable = \"{table}\"\ncreate_table = true")),
        exporter("old", 7, &format!("url = \"{SHARED}\"\ntable = \"{legacy}\""))
    );
    let server = env.serve_with(&config).await;
    append_n(&server, "audit", 30, "a").await;
    caught_up(&server, "pg", 1).await;
    caught_up(&server, "old", 1).await;
    assert_rows_are_the_ledger(&server, &schema.pg, &table, "audit").await;
    let lines = server.read_all("audit").await;
    let texts: Vec<String> =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT payload::text FROM {table} ORDER BY id")))
            .fetch_all(&schema.pg)
            .await
            .unwrap();
    let payloads: Vec<String> = lines.iter().map(|l| parse_line(l).payload.get().to_owned()).collect();
    assert_eq!(texts, payloads, "payload json keeps the exact text");

    let clean = cli(&server, &["exporters", "check", "pg"]);
    assert_exit(&clean, 0, "check of a clean chained export");
    let report: Value = serde_json::from_str(&clean.stdout).expect("check report");
    let audit = ledger_of(&report, "audit");
    assert_eq!(audit["holding"]["chain"], serde_json::json!({"state": "intact", "rows": 30}), "{report}");
    let old = cli(&server, &["exporters", "check", "old"]);
    assert_exit(&old, 0, "a jsonb table's chain is uncheckable, not a fault");
    let report: Value = serde_json::from_str(&old.stdout).expect("check report");
    let audit = ledger_of(&report, "audit");
    assert_eq!(audit["holding"]["chain"]["state"], "uncheckable", "{report}");
    assert!(audit["notes"][0].as_str().unwrap().contains("jsonb"), "{report}");
    assert_eq!(audit["holding"]["distinct"], 30, "{report}");

    // One payload changed in place: every count stays clean.
    exec(&schema.pg, &format!("UPDATE {table} SET payload = '{{\"i\":999}}' WHERE id = 12")).await;
    let altered = cli(&server, &["exporters", "check", "pg"]);
    assert_exit(&altered, 1, "check with an altered row");
    let report: Value = serde_json::from_str(&altered.stdout).expect("check report");
    let audit = ledger_of(&report, "audit");
    let faults = audit["faults"].as_array().unwrap();
    assert_eq!(faults.len(), 1, "{report}");
    assert!(faults[0].as_str().unwrap().starts_with("chain breaks at id 12: "), "{report}");
    assert_eq!(audit["holding"]["chain"]["id"], 12, "{report}");

    // Put back (the exact text), then delete another row.
    exec(&schema.pg, &format!("UPDATE {table} SET payload = $${}$$ WHERE id = 12", payloads[11])).await;
    assert_exit(&cli(&server, &["exporters", "check", "pg"]), 0, "the row put back");
    exec(&schema.pg, &format!("DELETE FROM {table} WHERE id = 20")).await;
    let deleted = cli(&server, &["exporters", "check", "pg"]);
    assert_exit(&deleted, 1, "check with a deleted row");
    let report: Value = serde_json::from_str(&deleted.stdout).expect("check report");
    let audit = ledger_of(&report, "audit");
    let faults: Vec<&str> = audit["faults"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert!(faults.contains(&"1 of ids 1..=30 missing (holds 29 of 30)"), "{report}");
    assert!(faults.iter().any(|f| f.starts_with("chain breaks at id 20: no row holds it")), "{report}");
    server.stop();
    schema.drop().await;
}

/// Bad configs stop `ferry serve` before storage opens, naming the key:
/// an unknown database, a missing table without `create_table`, tables of
/// the wrong shape (a wrong type, no unique key on the three columns).
#[tokio::test]
async fn bad_configs_stop_serve_naming_the_field() {
    let schema = Schema::new("bad").await;
    let s = &schema.name;
    exec(&schema.pg, &format!("CREATE TABLE {s}.typed (ledger text, incarnation bigint, id bigint, ts text, key text, hash text, payload jsonb, PRIMARY KEY (ledger, incarnation, id))")).await;
    exec(&schema.pg, &format!("CREATE TABLE {s}.unkeyed (ledger text, incarnation bigint, id bigint, ts bigint, key text, hash text, payload jsonb, PRIMARY KEY (ledger, id))")).await;
    let env = Env::new();
    let cases = [
        ("postgres://postgres@127.0.0.1:5432/ferry_no_such_database", "x", "config.url", "does not exist"),
        (SHARED, &format!("{s}.missing") as &str, "config.table", "does not exist"),
        (SHARED, &format!("{s}.typed"), "config.table", "column ts is text, not bigint"),
        (SHARED, &format!("{s}.unkeyed"), "config.table", "no unique key on (id, incarnation, ledger)"),
    ];
    for (url, table, field, words) in cases {
        let config = env.config("bad.toml", &exporter("pg", 10, &format!("url = \"{url}\"\ntable = \"{table}\"")));
        let out = run_to_exit(serve_command(&env.data_dir(), Some(&config), free_port()), None);
        assert_exit(&out, 1, table);
        assert!(out.stderr.contains(field) && out.stderr.contains(words), "{table}: {field}, {words}:\n{}", out.stderr);
        assert!(!env.data_dir().exists(), "{table}: storage was opened");
    }
    schema.drop().await;
}

/// A table dropped while ferry runs is a permanent failure: the ledger
/// stops in `failed`, nothing is skipped, and the rows before stay.
#[tokio::test]
async fn a_table_dropped_mid_run_fails_the_ledger() {
    let schema = Schema::new("drop").await;
    let table = format!("{}.entries", schema.name);
    let env = Env::new();
    let config = exporter("pg", 10, &format!("url = \"{SHARED}\"\ntable = \"{table}\"\ncreate_table = true"));
    let server = env.serve_with(&config).await;
    append_n(&server, "a", 12, "x").await;
    caught_up(&server, "pg", 1).await;
    assert_rows_are_the_ledger(&server, &schema.pg, &table, "a").await;
    exec(&schema.pg, &format!("DROP TABLE {table}")).await;
    append_n(&server, "a", 3, "y").await;
    let status = server.wait_exporter("pg", "the ledger fails", |s| s["ledgers"][0]["state"] == "failed").await;
    let ledger = &status["ledgers"][0];
    assert_eq!(ledger["cursor"], 12, "{status}");
    let error = ledger["last_error"].as_str().unwrap();
    assert!(error.contains("does not exist") && error.contains("42P01"), "{error}");
    server.stop();
    schema.drop().await;
}

/// A batch PostgreSQL refuses (`\u0000` in a jsonb payload, in a table
/// made before `create_table` made `payload json`, which keeps it) goes
/// to the dead-letter ledger once, and the transactional cursor does not
/// send it round again: the entries after it arrive, and the cursor row
/// ends at the head.
#[tokio::test]
async fn a_refused_batch_is_dead_lettered_once_with_the_transactional_cursor() {
    let schema = Schema::new("dlq").await;
    let table = format!("{}.entries", schema.name);
    exec(&schema.pg, &jsonb_table(&table)).await;
    let env = Env::new();
    let config = exporter(
        "pg",
        3,
        &format!("url = \"{SHARED}\"\ntable = \"{table}\"\ncreate_table = true\ntransactional_cursor = true"),
    )
    .replace("sink = \"postgres\"\n", "sink = \"postgres\"\ndead_letter = \"dlq\"\n");
    let server = env.serve_with(&config).await;
    append_n(&server, "a", 4, "before").await;
    let r = server.append("a", r#"{"entries":[{"payload":{"nul":"\u0000"}}]}"#).await;
    assert_eq!(r.status, 201, "{}", r.text);
    append_n(&server, "a", 4, "after").await;
    let status = server
        .wait_exporter("pg", "go past the refused batch", |s| {
            s["ledgers"].as_array().is_some_and(|ls| ls.iter().any(|l| l["ledger"] == "a" && l["lag"] == 0))
        })
        .await;
    let a = status["ledgers"].as_array().unwrap().iter().find(|l| l["ledger"] == "a").unwrap().clone();
    assert_eq!(a["cursor"], 9, "{status}");
    // Batches of 3: 1..=3, then 4..=6 holds the refused entry 5.
    let dead = server.read_all("dlq").await;
    let ids: Vec<u64> =
        dead.iter().map(|l| serde_json::from_str::<Value>(l).unwrap()["payload"]["id"].as_u64().unwrap()).collect();
    assert_eq!(ids, [4, 5, 6], "{dead:?}");
    let rows: Vec<i64> = sqlx::query_scalar(AssertSqlSafe(format!("SELECT id FROM {table} ORDER BY id")))
        .fetch_all(&schema.pg)
        .await
        .unwrap();
    assert_eq!(rows, [1, 2, 3, 7, 8, 9]);
    let row = scalar(&schema.pg, &format!("SELECT id FROM {}.ferry_cursors WHERE ledger = 'a'", schema.name)).await;
    assert_eq!(row, 9);
    server.stop();
    schema.drop().await;
}

// ---- transactional cursor under kill -9 ----

const LEDGERS: [&str; 3] = ["audit", "pay.eu", "t-1"];
const CYCLES: usize = 20;
const KILL_AFTER_MS: std::ops::RangeInclusive<u64> = 30..=300;

async fn append_until(base: String, http: reqwest::Client, stop: Arc<AtomicBool>, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let ledger = LEDGERS[rng.random_range(0..LEDGERS.len())];
        let n = rng.random_range(1..=15);
        let entries: Vec<String> =
            (0..n).map(|j| format!(r#"{{"payload":{{"seed":{seed},"i":{}}}}}"#, i + j)).collect();
        i += n;
        let url = format!("{base}/v1/ledgers/{ledger}/entries");
        let body = format!(r#"{{"entries":[{}]}}"#, entries.join(","));
        // Failures after a kill (or a stop) are expected; the data checks
        // find any loss.
        let _ = http.post(url).header("content-type", "application/json").body(body).send().await;
    }
}

/// Per ledger: (rows, least id, greatest id) in the table, and the id of
/// the `ferry_cursors` row.
async fn destination(pg: &PgPool, schema: &str) -> BTreeMap<String, (i64, i64, i64, Option<i64>)> {
    let q = format!(
        "SELECT e.ledger, count(*), min(e.id), max(e.id), \
         (SELECT c.id FROM {schema}.ferry_cursors c WHERE c.exporter = 'pg' AND c.ledger = e.ledger) \
         FROM {schema}.entries e GROUP BY e.ledger"
    );
    let rows: Vec<(String, i64, i64, i64, Option<i64>)> =
        sqlx::query_as(AssertSqlSafe(q)).fetch_all(pg).await.expect("read the destination");
    rows.into_iter().map(|(l, n, min, max, c)| (l, (n, min, max, c))).collect()
}

/// SPEC §5's transactional cursor under `kill -9`: after every kill, each
/// ledger's rows are ids 1..=n with no gap and no repeat, the
/// `ferry_cursors` row is at n (same transaction), and ferry's durable
/// cursor is not past it. At the end the rows are the ledgers exactly and
/// the cursor rows are at the heads. Then a destination restored from an
/// older copy (rows above an id deleted, its cursor row set back) is
/// refilled, with a warning: after a restart, and live.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_transactional_cursor_keeps_rows_exact_across_kill_9_and_a_restored_destination() {
    let seed = std::env::var("FERRY_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>);
    eprintln!("postgres kill -9 test seed {seed} (FERRY_CRASH_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let schema = Schema::new("kill").await;
    let s = schema.name.clone();
    let env = Env::new();
    let config = format!(
        "[storage]\nchunk_entries = 16\n{}",
        exporter(
            "pg",
            7,
            &format!(
                "url = \"{SHARED}\"\ntable = \"{s}.entries\"\ncreate_table = true\ntransactional_cursor = true\nmax_connections = 2"
            )
        )
    );
    let started = Instant::now();
    // Kills that left a committed batch unacknowledged (ferry's cursor
    // below the cursor row): the next start takes the row's position.
    let mut lost_acks = 0;
    for cycle in 0..CYCLES {
        let mut server = env.serve_with(&config).await;
        let stop = Arc::new(AtomicBool::new(false));
        let tasks: Vec<_> = (0..3)
            .map(|_| tokio::spawn(append_until(server.base.clone(), server.http.clone(), stop.clone(), rng.random())))
            .collect();
        tokio::time::sleep(Duration::from_millis(rng.random_range(KILL_AFTER_MS))).await;
        assert!(server.is_running(), "cycle {cycle}: ferry serve died on its own:\n{}", server.stderr());
        stop.store(true, Ordering::SeqCst);
        server.kill();
        for t in tasks {
            t.await.expect("append task");
        }
        let durable = durable_cursors_of(&env.data_dir(), "pg");
        for (ledger, (n, min, max, cursor_row)) in destination(&schema.pg, &s).await {
            let at = format!("cycle {cycle} (seed {seed}), {ledger}");
            assert_eq!((min, max), (1, n), "{at}: rows are not ids 1..={n}");
            assert_eq!(cursor_row, Some(n), "{at}: the cursor row is not at the last row");
            let cursor = durable.get(&ledger).copied().unwrap_or(0);
            assert!(cursor <= n as u64, "{at}: ferry's cursor {cursor} is past the rows ({n})");
            lost_acks += usize::from(cursor < n as u64);
        }
    }
    let server = env.serve_with(&config).await;
    caught_up(&server, "pg", LEDGERS.len()).await;
    let mut total = 0;
    for ledger in LEDGERS {
        assert_rows_are_the_ledger(&server, &schema.pg, &format!("{s}.entries"), ledger).await;
        total += server.head(ledger).await.unwrap();
    }
    assert!(total > (CYCLES * 10) as u64, "too few entries to mean anything: {total}");
    let dest = destination(&schema.pg, &s).await;
    for ledger in LEDGERS {
        let head = server.head(ledger).await.unwrap() as i64;
        assert_eq!(dest[ledger].3, Some(head), "{ledger}: the cursor row is at the head");
    }
    eprintln!("{CYCLES} kill -9 cycles in {:?}: {total} entries, {lost_acks} lost acknowledgements", started.elapsed());

    // A restored destination, found at start.
    server.stop();
    let (ledger, keep) = ("audit", 5);
    exec(&schema.pg, &format!("DELETE FROM {s}.entries WHERE ledger = '{ledger}' AND id > {keep}")).await;
    exec(&schema.pg, &format!("UPDATE {s}.ferry_cursors SET id = {keep} WHERE ledger = '{ledger}'")).await;
    let server = env.serve_with(&config).await;
    let head = server.head(ledger).await.unwrap() as i64;
    let rows_of = format!("SELECT count(*) FROM {s}.entries WHERE ledger = '{ledger}'");
    crate::support::eventually("the restored destination is refilled", async || {
        scalar(&schema.pg, &rows_of).await == head
    })
    .await;
    caught_up(&server, "pg", LEDGERS.len()).await;
    assert_rows_are_the_ledger(&server, &schema.pg, &format!("{s}.entries"), ledger).await;
    assert!(server.stderr().contains("restored from an older copy"), "no warning:\n{}", server.stderr());

    // And while ferry runs: the next batch finds the cursor row moved, and
    // the position is read again.
    exec(&schema.pg, &format!("DELETE FROM {s}.entries WHERE ledger = '{ledger}' AND id > 2")).await;
    exec(&schema.pg, &format!("UPDATE {s}.ferry_cursors SET id = 2 WHERE ledger = '{ledger}'")).await;
    append_n(&server, ledger, 4, "live").await;
    crate::support::eventually("the live restore is refilled", async || scalar(&schema.pg, &rows_of).await == head + 4)
        .await;
    caught_up(&server, "pg", LEDGERS.len()).await;
    assert_rows_are_the_ledger(&server, &schema.pg, &format!("{s}.entries"), ledger).await;
    let row = destination(&schema.pg, &s).await[ledger].3;
    assert_eq!(row, Some(head + 4));
    server.stop();
    schema.drop().await;
}

// ---- a private instance: password, TLS, unreachable, restarted ----

/// A PostgreSQL instance of this test's own, with a password (scram) and
/// TLS on, on a free port; stopped and removed on drop.
struct PrivatePg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    /// The server's self-signed certificate (its own CA).
    ca_file: PathBuf,
}

/// `cmd` as the `postgres` user when running as root (PostgreSQL refuses
/// to run as root).
fn as_postgres(program: &Path) -> Command {
    let root = std::fs::read_to_string("/proc/self/status")
        .map(|s| s.lines().any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0")))
        .unwrap_or(false);
    if root {
        let mut cmd = Command::new("runuser");
        cmd.arg("-u").arg("postgres").arg("--").arg(program);
        cmd
    } else {
        Command::new(program)
    }
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivatePg {
    fn init() -> Self {
        let bin = glob_bin();
        let dir = tempfile::Builder::new().prefix("ferry-pg-").tempdir().expect("temp dir");
        let data = dir.path().join("data");
        let password = format!("pw-{}", rand::random::<u64>());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        let (cert, key) = certificate();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, &cert).unwrap();
        run(Command::new("chown").arg("-R").arg("postgres").arg(dir.path()), "chown the temp dir");
        let mut initdb = as_postgres(&bin.join("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "-A", "scram-sha-256", "-E", "UTF8", "--locale=C"]);
        initdb.arg(format!("--pwfile={}", pwfile.display())).arg("--no-sync");
        run(&mut initdb, "initdb");
        std::fs::write(data.join("server.crt"), &cert).unwrap();
        std::fs::write(data.join("server.key"), &key).unwrap();
        run(
            Command::new("chown").arg("postgres").arg(data.join("server.crt")).arg(data.join("server.key")),
            "chown the certificate",
        );
        run(Command::new("chmod").arg("600").arg(data.join("server.key")), "chmod the key");
        Self { dir, bin, port: free_port(), password, ca_file }
    }

    fn pg_ctl(&self, args: &[&str]) -> Command {
        let mut cmd = as_postgres(&self.bin.join("pg_ctl"));
        cmd.arg("-D").arg(self.dir.path().join("data")).args(args);
        cmd
    }

    fn start(&self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c ssl=on -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log");
        let mut cmd = self.pg_ctl(&["-w", "-t", "30", "-o", &options, "-l"]);
        cmd.arg(&log).arg("start");
        run(&mut cmd, "pg_ctl start");
    }

    /// `pg_ctl stop -m immediate`: the server's processes exit at once,
    /// like a crash of the database (committed data survives).
    fn stop_immediate(&self) {
        run(&mut self.pg_ctl(&["-w", "-m", "immediate", "stop"]), "pg_ctl stop");
    }

    fn url(&self, password: &str) -> String {
        format!("postgres://postgres:{password}@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = self.pg_ctl(&["-m", "immediate", "stop"]).output();
    }
}

/// The newest PostgreSQL's server binaries.
fn glob_bin() -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's server binaries under /usr/lib/postgresql are needed for this test")
        .map(|e| e.expect("dir entry").path().join("bin"))
        .filter(|b| b.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("no /usr/lib/postgresql/*/bin/initdb")
}

/// A self-signed certificate for 127.0.0.1, as (certificate PEM, key PEM).
fn certificate() -> (String, String) {
    let rcgen::CertifiedKey { cert, signing_key } =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("generate a certificate");
    (cert.pem(), signing_key.serialize_pem())
}

/// A private instance with TLS and a password: ferry starts while it is
/// down (the ledgers back off, nothing refused) and drains over verified
/// TLS once it is up; a wrong password and an untrusted certificate stop
/// `ferry serve` naming `config.url` and `config.ca_file`, without the
/// password; and the database restarted (`-m immediate`) in the middle of
/// an export loses nothing and repeats nothing, with and without the
/// transactional cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_private_instance_over_tls_unreachable_at_start_and_restarted_mid_export() {
    let pg = PrivatePg::init();
    let env = Env::new();
    let sink = |table: &str, extra: &str| {
        format!(
            "url = \"{}\"\ntable = \"{table}\"\ncreate_table = true\ntls = true\nca_file = \"{}\"\n{extra}",
            pg.url(&pg.password),
            pg.ca_file.display()
        )
    };
    let config = format!(
        "{}{}",
        exporter("plain", 25, &sink("plain", "")),
        exporter("txn", 25, &sink("txn", "transactional_cursor = true"))
    );
    let server = env.serve_with(&config).await;
    append_n(&server, "a", 60, "early").await;
    let status = server.wait_exporter("plain", "back off", |s| s["ledgers"][0]["state"] == "backing_off").await;
    let error = status["ledgers"][0]["last_error"].as_str().unwrap().to_owned();
    assert!(error.contains(&format!("127.0.0.1:{}", pg.port)), "{error}");
    assert!(!error.contains(&pg.password) && !server.stderr().contains(&pg.password), "the password is shown");
    assert!(server.stderr().contains("cannot be reached now"), "{}", server.stderr());

    pg.start();
    caught_up(&server, "plain", 1).await;
    caught_up(&server, "txn", 1).await;
    let admin = pool(&pg.url(&pg.password)).await;
    assert_rows_are_the_ledger(&server, &admin, "public.plain", "a").await;
    assert_rows_are_the_ledger(&server, &admin, "public.txn", "a").await;
    let tls = scalar(
        &admin,
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE s.ssl AND a.application_name = 'ferry'",
    )
    .await;
    assert!(tls > 0, "ferry's connections are not TLS");

    // Definite refusals at start.
    let other = Env::new();
    let wrong_password = sink("plain", "").replace(&pg.password, "not-the-pw-42");
    let untrusted = certificate();
    let other_ca = other.config("other-ca.pem", &untrusted.0);
    let wrong_ca = sink("plain", "").replace(&pg.ca_file.display().to_string(), &other_ca.display().to_string());
    for (name, text, field, words) in [
        ("password", wrong_password, "config.url", "password authentication failed"),
        ("ca", wrong_ca, "config.ca_file", "certificate"),
    ] {
        let cfg = other.config(&format!("{name}.toml"), &exporter("p", 10, &text));
        let out = run_to_exit(serve_command(&other.data_dir(), Some(&cfg), free_port()), None);
        assert_exit(&out, 1, name);
        assert!(out.stderr.contains(field) && out.stderr.contains(words), "{name}:\n{}", out.stderr);
        assert!(!out.stderr.contains("not-the-pw-42") && !out.stderr.contains(&pg.password), "{}", out.stderr);
    }

    // The database restarts while entries keep coming.
    let stop = Arc::new(AtomicBool::new(false));
    let (base, http) = (server.base.clone(), server.http.clone());
    let appender = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let body = format!(r#"{{"entries":[{{"payload":{{"i":{i}}}}},{{"payload":{{"j":{i}}}}}]}}"#);
                let url = format!("{base}/v1/ledgers/a/entries");
                let r = http.post(url).header("content-type", "application/json").body(body).send().await;
                assert_eq!(r.expect("append").status(), 201);
                i += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_restart = server.stderr().len();
    pg.stop_immediate();
    tokio::time::sleep(Duration::from_millis(400)).await;
    pg.start();
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    appender.await.expect("appender");
    let head = server.head("a").await.unwrap();
    assert!(head > 100, "too few entries appended around the restart: {head}");
    caught_up(&server, "plain", 1).await;
    caught_up(&server, "txn", 1).await;
    let admin = pool(&pg.url(&pg.password)).await;
    assert_rows_are_the_ledger(&server, &admin, "public.plain", "a").await;
    assert_rows_are_the_ledger(&server, &admin, "public.txn", "a").await;
    let row = scalar(&admin, "SELECT id FROM public.ferry_cursors WHERE exporter = 'txn' AND ledger = 'a'").await;
    assert_eq!(row as u64, head);
    // ferry's connections were open and cut by the restart (a pool that
    // reconnects in time may never fail a delivery; one that was mid-batch
    // fails it and sends it again).
    let log = &server.stderr()[before_restart..];
    assert!(log.contains("immediate shutdown"), "the restart cut no connection of ferry's:\n{log}");
    server.stop();
}
