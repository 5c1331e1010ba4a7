//! The outbox sources (SPEC §6, `docs/outbox.md`) under `kill -9`, on the
//! machine's PostgreSQL and MariaDB (a schema or a database per test): an
//! application inserts rows the whole time (small transactions, some of
//! several rows, some rolled back, to two ledgers through the ledger
//! column) while `ferry serve` is started and SIGKILLed in a loop; a
//! second server in standby takes over from a SIGKILLed first one; and
//! the whole path from a PostgreSQL outbox through a ledger to a
//! `clickhouse` exporter across a `kill -9`. Each time every committed
//! row is in its ledger (and in ClickHouse) exactly once, no rolled-back
//! row anywhere, and every committed row is marked `exported_at`.
//!
//! Each source has a name of its own: a PostgreSQL source's advisory lock
//! is named after the source, per database, so tests running at the same
//! time with the same name would wait for one another in standby.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use sqlx::AssertSqlSafe;
use sqlx::mysql::MySqlPool;
use sqlx::postgres::PgPool;

use crate::outbox::{PG, my, my_exec, my_outbox, ns, pg, pg_exec, pg_outbox, pg_scalar, source};
use crate::support::{Env, Server, assert_exit, ferry, http, parse_line, run_to_exit};

/// The ledgers the rows name in their ledger column.
const LEDGERS: [&str; 2] = ["orders", "audit"];

/// A test's own outbox table, on one of the two drivers.
#[derive(Clone)]
enum Outbox {
    Postgres { pool: PgPool, schema: String },
    Mariadb { pool: MySqlPool, db: String },
}

#[derive(Clone, Copy, Debug)]
enum Driver {
    Postgres,
    Mariadb,
}

impl Outbox {
    async fn new(driver: Driver, tag: &str) -> Outbox {
        match driver {
            Driver::Postgres => {
                let pool = pg().await;
                let schema = pg_outbox(&pool, tag).await;
                Outbox::Postgres { pool, schema }
            }
            Driver::Mariadb => {
                let pool = my().await;
                let db = my_outbox(&pool, tag).await;
                Outbox::Mariadb { pool, db }
            }
        }
    }

    fn table(&self) -> String {
        match self {
            Outbox::Postgres { schema, .. } => format!("{schema}.outbox"),
            Outbox::Mariadb { db, .. } => format!("{db}.outbox"),
        }
    }

    /// `[[sources]]` for this table, rows to the ledger their row names.
    fn source(&self, name: &str, extra: &str) -> String {
        let (driver, url, table) = match self {
            Outbox::Postgres { schema, .. } => ("postgres", PG.to_owned(), format!("{schema}.outbox")),
            Outbox::Mariadb { db, .. } => ("mysql", format!("mysql://root@127.0.0.1:3306/{db}"), "outbox".to_owned()),
        };
        format!(
            "[[sources]]\nname = \"{name}\"\ndriver = \"{driver}\"\nurl = \"{url}\"\ntable = \"{table}\"\n\
             ledger_column = \"ledger\"\npoll = \"50ms\"\n{extra}"
        )
    }

    /// One transaction inserting `rows` (one statement each), committed or
    /// rolled back.
    async fn transaction(&self, rows: &[Row], commit: bool) {
        let t = self.table();
        let statements: Vec<String> = rows
            .iter()
            .map(|r| {
                let key = match &r.key {
                    Some(k) => format!("'{k}'"),
                    None => "NULL".to_owned(),
                };
                let key_column = if matches!(self, Outbox::Mariadb { .. }) { "`key`" } else { "key" };
                format!(
                    "INSERT INTO {t} (ledger, {key_column}, payload) VALUES ('{}', {key}, '{{\"n\":{}}}')",
                    r.ledger, r.n
                )
            })
            .collect();
        match self {
            Outbox::Postgres { pool, .. } => {
                let mut tx = pool.begin().await.expect("BEGIN on PostgreSQL");
                for sql in &statements {
                    sqlx::query(AssertSqlSafe(sql.clone()))
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                }
                if commit { tx.commit().await } else { tx.rollback().await }.expect("end the transaction");
            }
            Outbox::Mariadb { pool, .. } => {
                let mut tx = pool.begin().await.expect("BEGIN on MariaDB");
                for sql in &statements {
                    sqlx::query(AssertSqlSafe(sql.clone()))
                        .execute(&mut *tx)
                        .await
                        .unwrap_or_else(|e| panic!("{sql}: {e}"));
                }
                if commit { tx.commit().await } else { tx.rollback().await }.expect("end the transaction");
            }
        }
    }

    /// `SELECT count(*) FROM outbox WHERE {condition}`.
    async fn count(&self, condition: &str) -> i64 {
        let t = self.table();
        match self {
            Outbox::Postgres { pool, .. } => {
                pg_scalar(pool, &format!("SELECT count(*) FROM {t} WHERE {condition}")).await
            }
            Outbox::Mariadb { pool, .. } => {
                let sql = format!("SELECT CAST(count(*) AS SIGNED) FROM {t} WHERE {condition}");
                sqlx::query_scalar(AssertSqlSafe(sql.clone()))
                    .fetch_one(pool)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"))
            }
        }
    }

    /// The `n` of every row marked `exported_at`, ascending.
    async fn marked_ns(&self) -> Vec<i64> {
        let t = self.table();
        let mut ns: Vec<i64> = match self {
            Outbox::Postgres { pool, .. } => {
                let sql = format!("SELECT (payload->>'n')::bigint FROM {t} WHERE exported_at IS NOT NULL");
                sqlx::query_scalar(AssertSqlSafe(sql.clone())).fetch_all(pool).await
            }
            Outbox::Mariadb { pool, .. } => {
                let sql =
                    format!("SELECT CAST(JSON_VALUE(payload, '$.n') AS SIGNED) FROM {t} WHERE exported_at IS NOT NULL");
                sqlx::query_scalar(AssertSqlSafe(sql.clone())).fetch_all(pool).await
            }
        }
        .expect("the marked rows");
        ns.sort_unstable();
        ns
    }

    async fn pending(&self) -> i64 {
        self.count("exported_at IS NULL").await
    }

    async fn drop_it(self) {
        match self {
            Outbox::Postgres { pool, schema } => pg_exec(&pool, &format!("DROP SCHEMA {schema} CASCADE")).await,
            Outbox::Mariadb { pool, db } => my_exec(&pool, &format!("DROP DATABASE {db}")).await,
        }
    }
}

/// A row the application inserts: its own sequence number `n` in the
/// payload, the ledger it names, a key on every third row.
#[derive(Clone, Debug)]
struct Row {
    n: i64,
    ledger: &'static str,
    key: Option<String>,
}

/// What the application committed (`n` → the row) and rolled back.
#[derive(Default, Debug)]
struct Inserted {
    committed: BTreeMap<i64, Row>,
    rolled_back: Vec<i64>,
    transactions: usize,
    /// The longest transaction, printed (an application held up by the
    /// source's row locks would show here).
    slowest: Duration,
}

impl Inserted {
    /// The committed `n`s of a ledger, ascending.
    fn of(&self, ledger: &str) -> Vec<i64> {
        self.committed.values().filter(|r| r.ledger == ledger).map(|r| r.n).collect()
    }
}

/// The application: transactions of 1 to 6 rows (half of them of one), one
/// in twenty rolled back, 2 to 8 ms apart, until `stop`.
async fn insert_until(outbox: Outbox, stop: Arc<AtomicBool>, first_n: i64, seed: u64) -> Inserted {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut inserted = Inserted::default();
    let mut n = first_n;
    while !stop.load(Ordering::SeqCst) {
        let size = if rng.random_bool(0.5) { 1 } else { rng.random_range(2..=6) };
        let rows: Vec<Row> = (0..size)
            .map(|_| {
                n += 1;
                let ledger = LEDGERS[rng.random_range(0..LEDGERS.len())];
                Row { n, ledger, key: (n % 3 == 0).then(|| format!("k-{n}")) }
            })
            .collect();
        let commit = !rng.random_ratio(1, 20);
        let began = Instant::now();
        outbox.transaction(&rows, commit).await;
        inserted.slowest = inserted.slowest.max(began.elapsed());
        inserted.transactions += 1;
        for row in rows {
            if commit {
                inserted.committed.insert(row.n, row);
            } else {
                inserted.rolled_back.push(row.n);
            }
        }
        // Paced, so the rows a loop inserts do not grow with how fast the
        // database client is: with Nagle's algorithm on (sqlx 0.9.0) a
        // transaction took ~40 ms, without it ~1 ms, and every cycle reads
        // all rows back. 2–8 ms keeps rows streaming in throughout (a few
        // thousand in a loop of ~10 s).
        tokio::time::sleep(Duration::from_millis(rng.random_range(2..=8))).await;
    }
    inserted
}

/// Polls `cond` every 20 ms until it holds; fails after `limit`, saying
/// what `state` shows then.
async fn wait_for(what: &str, limit: Duration, mut cond: impl AsyncFnMut() -> bool, state: impl AsyncFn() -> String) {
    let deadline = Instant::now() + limit;
    while !cond().await {
        if Instant::now() >= deadline {
            panic!("timed out after {limit:?} waiting for: {what}\n{}", state().await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Every committed row in its ledger exactly once (its `n`, its key), no
/// rolled-back row, every committed row marked `exported_at`.
async fn assert_exactly_once(server: &Server, outbox: &Outbox, inserted: &Inserted, what: &str) {
    for ledger in LEDGERS {
        let mut seen = Vec::new();
        for line in server.read_all(ledger).await {
            let entry = parse_line(&line);
            let v: Value = serde_json::from_str(entry.payload.get()).unwrap();
            let n = v["n"].as_i64().unwrap_or_else(|| panic!("{what}: no n in {line}"));
            assert!(!inserted.rolled_back.contains(&n), "{what}: {ledger} holds n={n}, whose transaction rolled back");
            let row =
                inserted.committed.get(&n).unwrap_or_else(|| panic!("{what}: {ledger} holds n={n}, never inserted"));
            assert_eq!(row.ledger, ledger, "{what}: n={n} in the wrong ledger");
            assert_eq!(entry.key, row.key, "{what}: the key of n={n}");
            seen.push(n);
        }
        let total = seen.len();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(total, seen.len(), "{what}: {ledger} holds {} duplicate(s)", total - seen.len());
        let expected = inserted.of(ledger);
        let missing: Vec<i64> = expected.iter().filter(|n| seen.binary_search(n).is_err()).copied().collect();
        assert!(missing.is_empty(), "{what}: {ledger} lacks {} committed rows: {missing:?}", missing.len());
        assert_eq!(seen, expected, "{what}: {ledger}");
    }
    assert_eq!(outbox.pending().await, 0, "{what}: rows without exported_at");
}

/// Waits until the outbox has no pending row and the ledgers hold as many
/// entries as rows were committed.
async fn drained(server: &Server, outbox: &Outbox, inserted: &Inserted, limit: Duration) {
    let total = inserted.committed.len() as u64;
    let heads = async || {
        let mut sum = 0;
        for ledger in LEDGERS {
            sum += server.head(ledger).await.unwrap_or(0);
        }
        sum
    };
    wait_for(
        "every committed row drained",
        limit,
        async || outbox.pending().await == 0 && heads().await >= total,
        async || {
            format!(
                "pending {}, in the ledgers {} of {total}; the server's log:\n{}",
                outbox.pending().await,
                heads().await,
                server.stderr()
            )
        },
    )
    .await;
}

fn seed() -> u64 {
    std::env::var("FERRY_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random::<u64>)
}

/// (1) `kill -9` in a loop while the application inserts: each cycle
/// starts `ferry serve`, lets it drain 0–300 ms and SIGKILLs it, and
/// checks that every marked row is in a ledger; a batch killed between
/// its append and its commit is drained again with the same idempotency
/// keys. A last start drains the rest.
async fn rows_survive_a_kill_9_loop(driver: Driver) {
    const CYCLES: usize = 30;
    let seed = seed();
    eprintln!("{driver:?} outbox kill loop seed {seed} (FERRY_CRASH_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let outbox = Outbox::new(driver, "loop").await;
    let name = format!("loop-{:08x}", rng.random::<u32>());
    let env = Env::new();
    let config = env.config("ferry.toml", &outbox.source(&name, "batch = 20\n"));
    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let inserter = tokio::spawn(insert_until(outbox.clone(), stop.clone(), 0, rng.random()));
    // Kills that landed after a batch's append and before its commit: its
    // rows are in the ledgers but not marked, and the next start drains
    // them again under the same keys.
    let mut appended_unmarked = 0;
    for cycle in 0..CYCLES {
        let mut server = Server::start(&env.data_dir(), Some(&config)).await;
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..=300))).await;
        assert!(server.is_running(), "cycle {cycle} (seed {seed}): ferry serve died on its own:\n{}", server.stderr());
        server.kill();
        // A mark is committed only after its row's append is durable: after
        // any kill, every marked row is in the ledgers (read by a server
        // without the source).
        let reader = Server::start(&env.data_dir(), None).await;
        let mut appended = Vec::new();
        for ledger in LEDGERS {
            if reader.head(ledger).await.is_some() {
                appended.extend(ns(&reader, ledger).await);
            }
        }
        reader.stop();
        appended.sort_unstable();
        let marked = outbox.marked_ns().await;
        let lost: Vec<&i64> = marked.iter().filter(|n| appended.binary_search(n).is_err()).collect();
        assert!(lost.is_empty(), "cycle {cycle} (seed {seed}): rows marked but in no ledger: {lost:?}");
        appended_unmarked += appended.iter().filter(|n| marked.binary_search(n).is_err()).count();
    }
    stop.store(true, Ordering::SeqCst);
    let inserted = inserter.await.expect("the inserting task");
    let marked_in_the_loop = outbox.count("exported_at IS NOT NULL").await;
    let server = Server::start(&env.data_dir(), Some(&config)).await;
    drained(&server, &outbox, &inserted, Duration::from_secs(60)).await;
    assert_exactly_once(&server, &outbox, &inserted, &format!("{driver:?}, seed {seed}")).await;
    let rows = i64::try_from(inserted.committed.len()).unwrap();
    assert_eq!(outbox.count("TRUE").await, rows, "the table holds the committed rows only");
    let s = source(&server, &name).await;
    assert_eq!(s["state"], "running", "{s}");
    server.stop();
    eprintln!(
        "{driver:?}: {CYCLES} kill -9 cycles in {:?}: {} rows committed in {} transactions ({} rolled back), \
         {marked_in_the_loop} marked during the loop, {appended_unmarked} found appended and not marked after the kills; \
         the slowest transaction took {:?}",
        started.elapsed(),
        inserted.committed.len(),
        inserted.transactions,
        inserted.rolled_back.len(),
        inserted.slowest
    );
    assert!(marked_in_the_loop > 0, "the loop drained nothing: the kills proved nothing");
    assert!(inserted.committed.len() > 100, "too few rows to mean anything: {}", inserted.committed.len());
    outbox.drop_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outbox_rows_survive_a_kill_9_loop_exactly_once() {
    rows_survive_a_kill_9_loop(Driver::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_outbox_rows_survive_a_kill_9_loop_exactly_once() {
    rows_survive_a_kill_9_loop(Driver::Mariadb).await;
}

/// How long a standby server may take to drain after the holder of the
/// lock was SIGKILLed: its `poll` plus the database noticing the dead
/// connection and freeing the session lock (PostgreSQL's advisory lock,
/// MariaDB's `GET_LOCK`). Measured well under a second here; generous.
const TAKE_OVER_MAX: Duration = Duration::from_secs(15);

/// (2) Two servers with the same source: A drains, B waits in standby; A
/// is SIGKILLed, B takes over, and the rows inserted after the kill reach
/// B's ledgers exactly once. A, started again, stands by, its ledgers
/// holding exactly the rows it drained before the kill.
async fn a_standby_takes_over_from_a_killed_holder(driver: Driver) {
    let outbox = Outbox::new(driver, "takeover").await;
    let name = format!("takeover-{:08x}", rand::random::<u32>());
    let text = outbox.source(&name, "");
    let (a_env, b_env) = (Env::new(), Env::new());
    let a = a_env.serve_with(&text).await;
    let wait = async |what: &str, server: &Server, state: &str| {
        wait_for(
            what,
            Duration::from_secs(20),
            // A source starts out in standby, before it has asked the
            // database: a standby that names the holder has asked.
            async || {
                let s = source(server, &name).await;
                s["state"] == state && (state != "standby" || s["lock_holder"].is_string())
            },
            async || format!("{}\n{}", source(server, &name).await, server.stderr()),
        )
        .await;
    };
    wait("a drains", &a, "running").await;
    let b = b_env.serve_with(&text).await;
    wait("b stands by", &b, "standby").await;

    let row = |n: i64| Row { n, ledger: LEDGERS[(n % 2) as usize], key: (n % 3 == 0).then(|| format!("k-{n}")) };
    let mut before = Inserted::default();
    for chunk in (1..=20).collect::<Vec<_>>().chunks(4) {
        let rows: Vec<Row> = chunk.iter().map(|&n| row(n)).collect();
        outbox.transaction(&rows, true).await;
        before.committed.extend(rows.into_iter().map(|r| (r.n, r)));
    }
    drained(&a, &outbox, &before, Duration::from_secs(20)).await;
    for ledger in LEDGERS {
        assert_eq!(b.head(ledger).await, None, "standby drained into {ledger}");
    }

    let killed = Instant::now();
    a.kill();
    let mut after = Inserted::default();
    for chunk in (21..=40).collect::<Vec<_>>().chunks(4) {
        let rows: Vec<Row> = chunk.iter().map(|&n| row(n)).collect();
        outbox.transaction(&rows, true).await;
        after.committed.extend(rows.into_iter().map(|r| (r.n, r)));
    }
    wait_for(
        "b takes over",
        TAKE_OVER_MAX,
        async || source(&b, &name).await["state"] == "running",
        async || format!("{}\n{}", source(&b, &name).await, b.stderr()),
    )
    .await;
    let took_over = killed.elapsed();
    drained(&b, &outbox, &after, TAKE_OVER_MAX).await;
    let drained_after = killed.elapsed();
    eprintln!("{driver:?}: b ran {took_over:?} after a's kill -9 and drained the new rows {drained_after:?} after it");
    assert_exactly_once(&b, &outbox, &after, "b, the rows inserted after a's kill").await;

    let a = a_env.serve_with(&text).await;
    wait("a, restarted, stands by", &a, "standby").await;
    for ledger in LEDGERS {
        let mut seen = ns(&a, ledger).await;
        seen.sort_unstable();
        assert_eq!(seen, before.of(ledger), "a's {ledger} after its kill -9");
    }
    a.stop();
    b.stop();
    outbox.drop_it().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outbox_standby_takes_over_from_a_kill_9() {
    a_standby_takes_over_from_a_killed_holder(Driver::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_outbox_standby_takes_over_from_a_kill_9() {
    a_standby_takes_over_from_a_killed_holder(Driver::Mariadb).await;
}

/// The shared ClickHouse server (18.16) the `clickhouse` exporter writes to.
const CLICKHOUSE: &str = "http://127.0.0.1:8123";

/// Runs `sql` on ClickHouse; panics with its answer.
async fn ch(sql: &str) -> String {
    let r = http().post(CLICKHOUSE).body(sql.to_owned()).send().await;
    let r = r.unwrap_or_else(|e| panic!("ClickHouse at {CLICKHOUSE} is needed for this test: {e:?}"));
    let status = r.status();
    let text = r.text().await.expect("ClickHouse's answer");
    assert!(status.is_success(), "ClickHouse: {status}: {text}\nSQL: {sql}");
    text
}

/// A table of the test's own in ClickHouse's `default` database, dropped
/// at the end or when the test fails.
struct ChTable(String);

impl Drop for ChTable {
    /// A plain blocking request (this may run while a test panics, so
    /// every error is ignored).
    fn drop(&mut self) {
        use std::io::{Read as _, Write as _};
        let body = format!("DROP TABLE IF EXISTS default.{}", self.0);
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

/// (3) The whole path: an application inserting into a PostgreSQL outbox
/// → the ledgers → a `clickhouse` exporter, with `kill -9` of ferry in the
/// middle and rows inserted before, during and after it. Once the outbox
/// backlog and the exporter's lag are 0: every committed row once in its
/// ledger and once in ClickHouse's exactly-once view (`FINAL`: as many
/// rows as distinct ids as the ledger's head, carrying exactly the
/// committed `n`s), and `ferry exporters check` clean.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outbox_rows_reach_clickhouse_exactly_once_across_kill_9() {
    let seed = seed();
    eprintln!("outbox → clickhouse seed {seed} (FERRY_CRASH_SEED={seed} replays it)");
    let mut rng = StdRng::seed_from_u64(seed);
    let outbox = Outbox::new(Driver::Postgres, "ch").await;
    let name = format!("ch-{:08x}", rng.random::<u32>());
    let table = ChTable(format!("ferry_ob_{}_{:08x}", std::process::id(), rng.random::<u32>()));
    let t = format!("default.{}", table.0);
    let env = Env::new();
    let config = env.config(
        "ferry.toml",
        &format!(
            "{}\n[[exporters]]\nname = \"ch\"\nsink = \"clickhouse\"\n\
             batch = {{ max_entries = 50, linger = \"5ms\" }}\nretry = {{ initial = \"50ms\", max = \"500ms\" }}\n\
             [exporters.config]\nurl = \"{CLICKHOUSE}\"\ndatabase = \"default\"\ntable = \"{}\"\ncreate_table = true\n",
            outbox.source(&name, "batch = 20\n"),
            table.0
        ),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let inserter = tokio::spawn(insert_until(outbox.clone(), stop.clone(), 0, rng.random()));
    let server = Server::start(&env.data_dir(), Some(&config)).await;
    wait_for(
        "rows in ClickHouse before the kill",
        Duration::from_secs(20),
        async || {
            ch(&format!("EXISTS TABLE {t}")).await.trim() == "1"
                && ch(&format!("SELECT count() FROM {t}")).await.trim() != "0"
        },
        async || server.stderr(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..=300))).await;
    server.kill();
    let before_restart = ch(&format!("SELECT count() FROM {t} FINAL")).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = Server::start(&env.data_dir(), Some(&config)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    let inserted = inserter.await.expect("the inserting task");
    drained(&server, &outbox, &inserted, Duration::from_secs(30)).await;
    wait_for(
        "the outbox backlog and the exporter's lag at 0",
        Duration::from_secs(30),
        async || {
            let s = source(&server, &name).await;
            let e = server.exporter("ch").await;
            s["backlog"] == 0
                && e["ledgers"].as_array().is_some_and(|ls| {
                    ls.len() == LEDGERS.len() && ls.iter().all(|l| l["lag"] == 0 && l["state"] == "running")
                })
        },
        async || format!("{}\n{}", source(&server, &name).await, server.exporter("ch").await),
    )
    .await;
    assert_exactly_once(&server, &outbox, &inserted, &format!("outbox → ledgers, seed {seed}")).await;

    for ledger in LEDGERS {
        let head = server.head(ledger).await.unwrap_or(0);
        let counts = ch(&format!("SELECT count(), uniqExact(id) FROM {t} FINAL WHERE ledger = '{ledger}'")).await;
        assert_eq!(counts.trim(), format!("{head}\t{head}"), "{ledger} in ClickHouse (seed {seed})");
        let ns = ch(&format!(
            "SELECT visitParamExtractInt(payload, 'n') AS n FROM {t} FINAL WHERE ledger = '{ledger}' ORDER BY n"
        ))
        .await;
        let ns: Vec<i64> = ns.lines().map(|l| l.parse().expect("an n")).collect();
        assert_eq!(ns, inserted.of(ledger), "{ledger}: the committed rows in ClickHouse (seed {seed})");
    }
    let mut cli = ferry();
    cli.args(["exporters", "check", "ch"]).env("FERRY_SERVER", &server.base);
    let check = run_to_exit(cli, None);
    assert_exit(&check, 0, "ferry exporters check ch");
    let report: Value = serde_json::from_str(&check.stdout).expect("the check's JSON report");
    assert_eq!(report["ok"], true, "{report}");
    server.stop();
    let raw = ch(&format!("SELECT count() FROM {t}")).await;
    eprintln!(
        "outbox → clickhouse: {} rows committed ({} rolled back), {} in the view before the restart, \
         {} rows in the table before merges",
        inserted.committed.len(),
        inserted.rolled_back.len(),
        before_restart.trim(),
        raw.trim()
    );
    outbox.drop_it().await;
    drop(table);
}
