//! The outbox sources (SPEC §6) as `ferry serve` wires them: `[[sources]]`
//! refused before anything opens when it is wrong (naming the source, the
//! key and the line, never the URL's password), `GET /v1/sources` and
//! `GET /v1/sources/{name}` with none configured, the client's and the
//! CLI's view of them, a source whose database does not answer (listed,
//! backing off without showing its password, stopping cleanly), and
//! sources draining real PostgreSQL and MariaDB tables: a late commit, a
//! re-queue, a failed commit and `kill -9` without a duplicate, standby
//! and take-over, dead letters.

use std::time::Duration;

use serde_json::Value;
use sqlx::AssertSqlSafe;
use sqlx::mysql::{MySqlPool, MySqlPoolOptions};
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::support::{Env, Server, assert_exit, eventually, ferry, free_port, parse_line, run_to_exit, serve_command};

#[tokio::test]
async fn with_no_source_configured_the_list_is_empty_and_a_name_is_not_found() {
    let env = Env::new();
    let server = env.serve().await;
    let list = server.get("/v1/sources").await;
    assert_eq!(list.status, 200, "{}", list.text);
    assert_eq!(list.json(), serde_json::json!([]));
    server.get("/v1/sources/app").await.assert_error(404, "source_not_found");
    server.get("/v1/sources/..%2Fx").await.assert_error(404, "source_not_found");
    // Sources take no other method.
    server.post("/v1/sources", "{}").await.assert_error(405, "method_not_allowed");

    let client = server.client();
    assert!(client.sources().await.unwrap().is_empty());
    let missing = client.source("app").await.unwrap_err();
    assert_eq!(missing.code(), Some("source_not_found"), "{missing}");

    let cli = |args: &[&str]| {
        let mut c = ferry();
        c.args(args).env("FERRY_SERVER", &server.base);
        run_to_exit(c, None)
    };
    let status = cli(&["sources", "status"]);
    assert_exit(&status, 0, "sources status");
    assert_eq!(serde_json::from_str::<Value>(&status.stdout).unwrap(), serde_json::json!([]));
    let one = cli(&["sources", "status", "app"]);
    assert_exit(&one, 1, "status of an unknown source");
    assert!(one.stderr.contains("source_not_found"), "{}", one.stderr);
    assert_exit(&cli(&["sources", "status", "../x"]), 2, "a bad source name is a usage error");
}

#[tokio::test]
async fn sources_need_the_admin_scope() {
    let env = Env::new();
    let server = env
        .serve_with(
            "[server]\ntokens = [\"root-secret\"]\n[[server.scoped_tokens]]\nname = \"reader\"\n\
             secret = \"reader-secret\"\nledgers = [\"*\"]\ncan = [\"read\", \"append\", \"watch\", \"metrics\"]\n",
        )
        .await;
    for path in ["/v1/sources", "/v1/sources/app"] {
        let get = |token: Option<&'static str>| {
            let mut req = server.http.get(server.url(path));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            server.send(req)
        };
        get(None).await.assert_error(401, "unauthorized");
        get(Some("reader-secret")).await.assert_error(403, "forbidden");
        let admin = get(Some("root-secret")).await;
        assert_eq!(admin.status, if path == "/v1/sources" { 200 } else { 404 }, "{path}: {}", admin.text);
    }
}

/// The answer type of `ferry-client` reads what the server serialises,
/// every field included.
#[test]
fn the_client_reads_the_servers_source_status() {
    let status = ferry_outbox::SourceStatus {
        name: "app".into(),
        driver: "postgres".into(),
        table: "public.outbox".into(),
        state: ferry_outbox::SourceState::BackingOff,
        drained: 7,
        dead_lettered: 1,
        backlog: Some(3),
        oldest_pending_age_ms: Some(1_500),
        stuck: true,
        last_error: Some("connection refused".into()),
        lock_holder: Some("host-a:4242".into()),
        last_success_at: Some(1_763_769_600_123),
    };
    let json = serde_json::to_value(&status).unwrap();
    let read: ferry_client::SourceStatus = serde_json::from_value(json.clone()).unwrap();
    assert_eq!((read.name.as_str(), read.driver.as_str(), read.table.as_str()), ("app", "postgres", "public.outbox"));
    assert_eq!(read.state, "backing_off");
    assert_eq!(
        (read.drained, read.dead_lettered, read.backlog, read.oldest_pending_age_ms),
        (7, 1, Some(3), Some(1_500))
    );
    assert!(read.stuck);
    assert_eq!(read.last_error.as_deref(), Some("connection refused"));
    assert_eq!(read.lock_holder.as_deref(), Some("host-a:4242"));
    assert_eq!(read.last_success_at, Some(1_763_769_600_123));
    assert!(read.extra.is_empty(), "a field the client does not name: {:?}", read.extra);
    assert_eq!(serde_json::to_value(&read).unwrap(), json, "passed on unchanged");
}

/// `[[sources]]` that `ferry serve` refuses: exit 1 before the data
/// directory is touched, naming the source, the key and the line, never
/// the URL's password.
#[test]
fn a_bad_source_stops_ferry_serve_before_anything_opens() {
    const SOURCE: &str = "[[sources]]\nname = \"app\"\ndriver = \"postgres\"\n\
                          url = \"postgres://ferry:s3cret-pw@127.0.0.1:9/app\"\n";
    for (extra, needles) in [
        ("ledger = \"audit\"\nbatchh = 10\n", &["batchh", "line 6"][..]),
        ("ledger = \"audit\"\ntable = \"outbox; drop table x\"\n", &["sources[0] \"app\" (line 1)", "table:"]),
        ("ledger = \"audit\"\ncolumns = { id = \"id-\" }\n", &["sources[0] \"app\" (line 1)", "columns.id:"]),
        ("ledger = \"audit\"\nledger_column = \"tenant\"\n", &["sources[0] \"app\" (line 1)", "give exactly one"]),
        (
            "ledger = \"audit\"\n[[sources]]\nname = \"app\"\ndriver = \"mysql\"\nurl = \"mysql://h/db\"\nledger = \"b\"\n",
            &["sources[1] \"app\" (line 6)", "another source is already called app"],
        ),
    ] {
        let env = Env::new();
        let config = env.config("ferry.toml", &format!("{SOURCE}{extra}"));
        let out = run_to_exit(serve_command(&env.data_dir(), Some(&config), free_port()), None);
        assert_exit(&out, 1, extra);
        for needle in needles {
            assert!(out.stderr.contains(needle), "{extra:?}: {needle:?} not in {}", out.stderr);
        }
        assert!(!out.stderr.contains("s3cret-pw"), "the password in {}", out.stderr);
        assert!(!env.data_dir().exists(), "{extra:?}: the data directory was created");
    }
}

/// A source named like an exporter is fine; a source whose database does
/// not answer does not keep ferry from starting: it is listed, backs off
/// with an error that does not show the URL's password, and SIGTERM stops
/// it and the server cleanly.
#[tokio::test]
async fn a_source_whose_database_is_down_is_listed_backing_off_and_stops_cleanly() {
    let env = Env::new();
    let port = free_port();
    let server = env
        .serve_with(&format!(
            "[[exporters]]\nname = \"app\"\nsink = \"stdout\"\nledgers = [\"none-*\"]\n\
             [[sources]]\nname = \"app\"\ndriver = \"postgres\"\n\
             url = \"postgres://ferry:s3cret-pw@127.0.0.1:{port}/app\"\nledger = \"audit\"\npoll = \"50ms\"\n"
        ))
        .await;
    let list = server.get("/v1/sources").await;
    assert_eq!(list.status, 200, "{}", list.text);
    let list = list.json();
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(
        (&list[0]["name"], &list[0]["driver"], &list[0]["table"]),
        (&"app".into(), &"postgres".into(), &"outbox".into())
    );
    eventually("the source backs off", async || {
        let one = server.get("/v1/sources/app").await.json();
        one["state"] == "backing_off" && one["last_error"].is_string()
    })
    .await;
    let one = server.get("/v1/sources/app").await;
    assert!(!one.text.contains("s3cret-pw"), "the password in {}", one.text);
    let typed = server.client().source("app").await.unwrap();
    assert_eq!((typed.name.as_str(), typed.state.as_str(), typed.drained), ("app", "backing_off", 0));
    assert_eq!(server.get("/v1/exporters/app").await.status, 200, "the exporter of the same name");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!server.stderr().contains("s3cret-pw"), "the password in the log:\n{}", server.stderr());
    server.stop();
}

// Draining, with the machine's PostgreSQL (127.0.0.1:5432, user postgres,
// trust; a schema per test) and MariaDB (127.0.0.1:3306, root without a
// password over TCP; a database per test), as `.ci/run` provides them. A
// missing server fails the test.

pub(crate) const PG: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub(crate) const MARIADB: &str = "mysql://root@127.0.0.1:3306/mysql";

pub(crate) async fn pg() -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(PG)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {PG} is needed for this test: {e}"))
}

pub(crate) async fn pg_exec(pg: &PgPool, sql: &str) {
    sqlx::query(AssertSqlSafe(sql.to_owned())).execute(pg).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

pub(crate) async fn pg_scalar(pg: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(AssertSqlSafe(sql.to_owned())).fetch_one(pg).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// A schema holding the README's outbox table and NOTIFY trigger.
pub(crate) async fn pg_outbox(pg: &PgPool, tag: &str) -> String {
    let schema = format!("ferry_ob_{tag}_{}_{}", std::process::id(), rand::random::<u32>());
    pg_exec(pg, &format!("CREATE SCHEMA {schema}")).await;
    pg_exec(
        pg,
        &format!(
            "CREATE TABLE {schema}.outbox (
                id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                ledger      text NULL,
                key         text NULL,
                payload     jsonb NOT NULL,
                created_at  timestamptz NOT NULL DEFAULT now(),
                exported_at timestamptz NULL
            )"
        ),
    )
    .await;
    pg_exec(pg, &format!("CREATE INDEX outbox_pending ON {schema}.outbox (id) WHERE exported_at IS NULL")).await;
    pg_exec(
        pg,
        &format!(
            "CREATE FUNCTION {schema}.ferry_outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_notify('ferry_outbox', ''); RETURN NULL; END $$"
        ),
    )
    .await;
    pg_exec(
        pg,
        &format!(
            "CREATE TRIGGER outbox_notify AFTER INSERT ON {schema}.outbox \
             FOR EACH STATEMENT EXECUTE FUNCTION {schema}.ferry_outbox_notify()"
        ),
    )
    .await;
    schema
}

/// `[[sources]]` for the schema's table, named after the schema: a
/// PostgreSQL source's advisory lock is named after the source, per
/// database, so tests running at the same time under one name would wait
/// for one another in standby (or take over one another's lock).
fn pg_source(schema: &str, extra: &str) -> String {
    format!(
        "[[sources]]\nname = \"{schema}\"\ndriver = \"postgres\"\nurl = \"{PG}\"\ntable = \"{schema}.outbox\"\n\
         ledger_column = \"ledger\"\npoll = \"50ms\"\n{extra}"
    )
}

pub(crate) async fn my() -> MySqlPool {
    MySqlPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect(MARIADB)
        .await
        .unwrap_or_else(|e| panic!("MariaDB at {MARIADB} is needed for this test: {e}"))
}

pub(crate) async fn my_exec(my: &MySqlPool, sql: &str) {
    sqlx::query(AssertSqlSafe(sql.to_owned())).execute(my).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A database holding the README's MariaDB outbox table; its name.
pub(crate) async fn my_outbox(my: &MySqlPool, tag: &str) -> String {
    let db = format!("ferry_ob_{tag}_{}_{}", std::process::id(), rand::random::<u32>());
    my_exec(my, &format!("CREATE DATABASE {db}")).await;
    my_exec(
        my,
        &format!(
            "CREATE TABLE {db}.outbox (
                id          BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
                ledger      VARCHAR(63) NULL,
                `key`       VARCHAR(256) NULL,
                payload     JSON NOT NULL,
                created_at  TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
                exported_at TIMESTAMP(6) NULL,
                KEY outbox_pending (exported_at, id)
            ) ENGINE=InnoDB"
        ),
    )
    .await;
    db
}

/// Every payload's `n` in the ledger, in id order.
pub(crate) async fn ns(server: &Server, ledger: &str) -> Vec<i64> {
    server
        .read_all(ledger)
        .await
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(parse_line(l).payload.get()).unwrap();
            v["n"].as_i64().unwrap_or_else(|| panic!("no n in {l}"))
        })
        .collect()
}

pub(crate) async fn source(server: &Server, name: &str) -> Value {
    server.get(&format!("/v1/sources/{name}")).await.json()
}

/// Rows reach the ledger their row names, each once: a row whose
/// transaction took its id early and commits late is drained after a
/// higher one; a re-queued row inside the window appends nothing; the
/// status and the CLI say what was drained.
#[tokio::test]
async fn postgres_rows_reach_their_ledgers_once_a_late_commit_included() {
    let pg = pg().await;
    let schema = pg_outbox(&pg, "late").await;
    let t = format!("{schema}.outbox");
    pg_exec(
        &pg,
        &format!(
            "INSERT INTO {t} (ledger, key, payload) VALUES \
             ('orders', 'o-1', '{{\"n\":1}}'), ('orders', NULL, '{{\"n\":2}}'), ('audit', 'a-1', '{{\"n\":3}}')"
        ),
    )
    .await;
    let env = Env::new();
    let server = env.serve_with(&pg_source(&schema, "")).await;
    eventually("the first rows are drained", async || {
        server.head("orders").await == Some(2) && server.head("audit").await == Some(1)
    })
    .await;
    eventually("the rows are marked", async || {
        pg_scalar(&pg, &format!("SELECT count(*) FROM {t} WHERE exported_at IS NULL")).await == 0
    })
    .await;
    assert_eq!(ns(&server, "orders").await, [1, 2]);
    let keys: Vec<Option<String>> = server.read_all("orders").await.iter().map(|l| parse_line(l).key).collect();
    assert_eq!(keys, [Some("o-1".to_owned()), None]);

    // A late commit: row 4 takes its id, row 5 commits and is drained
    // first, then row 4 commits and is drained too.
    let mut late = pg.begin().await.unwrap();
    sqlx::query(AssertSqlSafe(format!("INSERT INTO {t} (ledger, payload) VALUES ('orders', '{{\"n\":4}}')")))
        .execute(&mut *late)
        .await
        .unwrap();
    pg_exec(&pg, &format!("INSERT INTO {t} (ledger, payload) VALUES ('orders', '{{\"n\":5}}')")).await;
    eventually("row 5 is drained", async || server.head("orders").await == Some(3)).await;
    late.commit().await.unwrap();
    eventually("the late row 4 is drained", async || server.head("orders").await == Some(4)).await;
    assert_eq!(ns(&server, "orders").await, [1, 2, 5, 4]);

    // Re-queued inside the window: marked again, nothing appended.
    pg_exec(&pg, &format!("UPDATE {t} SET exported_at = NULL WHERE id = 1")).await;
    eventually("the re-queued row is marked again", async || {
        pg_scalar(&pg, &format!("SELECT count(*) FROM {t} WHERE exported_at IS NULL")).await == 0
    })
    .await;
    assert_eq!(ns(&server, "orders").await, [1, 2, 5, 4], "a re-queue inside the window appends nothing");

    eventually("the status catches up", async || {
        let s = source(&server, &schema).await;
        s["state"] == "running" && s["backlog"] == 0 && s["drained"].as_u64() >= Some(5)
    })
    .await;
    let s = source(&server, &schema).await;
    assert_eq!((&s["driver"], &s["table"], &s["stuck"]), (&"postgres".into(), &t.clone().into(), &false.into()), "{s}");
    assert!(s["lock_holder"].is_string() && s["last_success_at"].is_u64(), "{s}");
    let mut cli = ferry();
    cli.args(["sources", "status", &schema]).env("FERRY_SERVER", &server.base);
    let out = run_to_exit(cli, None);
    assert_exit(&out, 0, "sources status app");
    assert_eq!(serde_json::from_str::<Value>(&out.stdout).unwrap()["name"], schema.as_str());
    server.stop();
    pg_exec(&pg, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// A batch that fails after its append, with its rows marked, and before
/// its commit rolls back and is drained again: the keys answer the
/// original ids, so every row is in its ledger once.
#[cfg(feature = "failpoints")]
#[tokio::test]
async fn a_batch_that_fails_before_its_commit_is_replayed_without_a_duplicate() {
    let pg = pg().await;
    let schema = pg_outbox(&pg, "replay").await;
    let t = format!("{schema}.outbox");
    let values: Vec<String> = (1..=5).map(|n| format!("('orders', '{{\"n\":{n}}}')")).collect();
    pg_exec(&pg, &format!("INSERT INTO {t} (ledger, payload) VALUES {}", values.join(", "))).await;
    let env = Env::new();
    let config = env.config("ferry.toml", &pg_source(&schema, ""));
    let failpoints = [("FAILPOINTS", "outbox::before_commit=1*return")];
    let server = Server::start_env(&env.data_dir(), Some(&config), &failpoints).await;
    eventually("the rows are marked", async || {
        pg_scalar(&pg, &format!("SELECT count(*) FROM {t} WHERE exported_at IS NULL")).await == 0
    })
    .await;
    assert_eq!(ns(&server, "orders").await, [1, 2, 3, 4, 5], "each row once, after the replay");
    let metrics = server.get("/metrics").await.text;
    let errors = metrics
        .lines()
        .find(|l| l.starts_with(&format!("ferry_outbox_errors_total{{source=\"{schema}\"}}")))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert!(errors >= Some(1.0), "the injected failure happened:\n{metrics}");
    server.stop();
    pg_exec(&pg, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// `kill -9` while rows stream in, then a restart: every row is in its
/// ledger exactly once.
#[tokio::test]
async fn postgres_rows_survive_kill_9_without_a_duplicate() {
    let pg = pg().await;
    let schema = pg_outbox(&pg, "kill").await;
    let t = format!("{schema}.outbox");
    let env = Env::new();
    let config = env.config("ferry.toml", &pg_source(&schema, "batch = 7\n"));
    let server = Server::start(&env.data_dir(), Some(&config)).await;
    for round in 0..10 {
        let values: Vec<String> = (0..30).map(|i| format!("('orders', '{{\"n\":{}}}')", round * 30 + i)).collect();
        pg_exec(&pg, &format!("INSERT INTO {t} (ledger, payload) VALUES {}", values.join(", "))).await;
    }
    eventually("some rows are drained", async || server.head("orders").await.unwrap_or(0) > 0).await;
    server.kill();
    let server = Server::start(&env.data_dir(), Some(&config)).await;
    eventually("every row is drained", async || {
        pg_scalar(&pg, &format!("SELECT count(*) FROM {t} WHERE exported_at IS NULL")).await == 0
    })
    .await;
    let mut seen = ns(&server, "orders").await;
    assert_eq!(seen.len(), 300, "each row once");
    seen.sort_unstable();
    assert_eq!(seen, (0..300).collect::<Vec<_>>());
    server.stop();
    pg_exec(&pg, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// Two servers with the same source: one drains, the other waits in
/// standby naming the holder, and takes over when the first stops.
#[tokio::test]
async fn a_second_server_waits_in_standby_and_takes_over() {
    let pg = pg().await;
    let schema = pg_outbox(&pg, "standby").await;
    let t = format!("{schema}.outbox");
    let (a_env, b_env) = (Env::new(), Env::new());
    let text = pg_source(&schema, "");
    let a = a_env.serve_with(&text).await;
    eventually("a drains", async || source(&a, &schema).await["state"] == "running").await;
    let b = b_env.serve_with(&text).await;
    eventually("b waits", async || {
        let s = source(&b, &schema).await;
        s["state"] == "standby" && s["lock_holder"].is_string()
    })
    .await;
    pg_exec(&pg, &format!("INSERT INTO {t} (ledger, payload) VALUES ('orders', '{{\"n\":1}}')")).await;
    eventually("a drains the row", async || a.head("orders").await == Some(1)).await;
    assert_eq!(b.head("orders").await, None, "standby drains nothing");
    a.stop();
    eventually("b takes over", async || source(&b, &schema).await["state"] == "running").await;
    pg_exec(&pg, &format!("INSERT INTO {t} (ledger, payload) VALUES ('orders', '{{\"n\":2}}')")).await;
    eventually("b drains the next row", async || b.head("orders").await == Some(1)).await;
    assert_eq!(ns(&b, "orders").await, [2]);
    b.stop();
    pg_exec(&pg, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// MariaDB: the README's table, rows to a fixed ledger and to the ledger
/// their row names, a row that cannot be appended dead-lettered with its
/// reason while the rows behind it move on.
#[tokio::test]
async fn mariadb_rows_drain_and_a_bad_row_is_dead_lettered() {
    let my = my().await;
    let exec = async |sql: String| my_exec(&my, &sql).await;
    let db = my_outbox(&my, "dead").await;
    exec(format!(
        "INSERT INTO {db}.outbox (ledger, `key`, payload) VALUES \
         ('audit', 'k-1', '{{\"n\":1}}'), ('Not A Ledger', NULL, '{{\"n\":2}}'), ('audit', NULL, '{{\"n\":3}}')"
    ))
    .await;
    let env = Env::new();
    let server = env
        .serve_with(&format!(
            "[[sources]]\nname = \"shop\"\ndriver = \"mysql\"\nurl = \"mysql://root@127.0.0.1:3306/{db}\"\n\
             ledger_column = \"ledger\"\ndead_letter = \"outbox-dead\"\npoll = \"50ms\"\n"
        ))
        .await;
    eventually("the rows are drained", async || {
        server.head("audit").await == Some(2) && server.head("outbox-dead").await == Some(1)
    })
    .await;
    assert_eq!(ns(&server, "audit").await, [1, 3]);
    let dead = server.read_all("outbox-dead").await;
    let dead: Value = serde_json::from_str(parse_line(&dead[0]).payload.get()).unwrap();
    assert_eq!((&dead["source"], &dead["row_id"]), (&"shop".into(), &2.into()), "{dead}");
    assert!(dead["reason"].as_str().is_some_and(|r| r.contains("Not A Ledger")), "{dead}");
    eventually("the status counts both", async || {
        let s = source(&server, "shop").await;
        s["drained"] == 2 && s["dead_lettered"] == 1 && s["driver"] == "mysql"
    })
    .await;
    let pending: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT CAST(count(*) AS SIGNED) FROM {db}.outbox WHERE exported_at IS NULL"
    )))
    .fetch_one(&my)
    .await
    .unwrap();
    assert_eq!(pending, 0, "every row marked, the dead-lettered one included");
    server.stop();
    exec(format!("DROP DATABASE {db}")).await;
}

/// `?sslmode=require` in a PostgreSQL source's URL: the source drains over
/// TLS (PostgreSQL's `pg_stat_ssl` says so of the lock connection, found
/// by the `application_name` naming the source and ferry's pid). The
/// server's certificate is made out to `localhost` and the URL says
/// 127.0.0.1: `require` encrypts without checking the certificate, while
/// `sslmode=verify-full` refuses it, so the mode is honoured, not ignored.
#[tokio::test]
async fn a_postgres_source_with_sslmode_require_drains_over_tls() {
    let pg = pg().await;
    let schema = pg_outbox(&pg, "tls").await;
    let t = format!("{schema}.outbox");
    let name = format!("tls-{:08x}", rand::random::<u32>());
    let config = |mode: &str| {
        format!(
            "[[sources]]\nname = \"{name}\"\ndriver = \"postgres\"\nurl = \"{PG}?sslmode={mode}\"\n\
             table = \"{t}\"\nledger_column = \"ledger\"\npoll = \"50ms\"\n"
        )
    };
    pg_exec(&pg, &format!("INSERT INTO {t} (ledger, payload) VALUES ('orders', '{{\"n\":1}}')")).await;
    let env = Env::new();
    let server = env.serve_with(&config("require")).await;
    eventually("the row is drained over TLS", async || server.head("orders").await == Some(1)).await;
    assert_eq!(ns(&server, "orders").await, [1]);
    let application_name = format!("ferry-outbox {name} pid {}", server.pid());
    let encrypted = pg_scalar(
        &pg,
        &format!(
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.application_name = '{application_name}' AND s.ssl"
        ),
    )
    .await;
    assert_eq!(encrypted, 1, "the lock connection of {application_name:?} is not encrypted");
    server.stop();

    let env = Env::new();
    let server = env.serve_with(&config("verify-full")).await;
    eventually("verify-full refuses the certificate", async || {
        let s = source(&server, &name).await;
        s["state"] == "backing_off" && s["last_error"].is_string()
    })
    .await;
    let s = source(&server, &name).await;
    assert!(s["last_error"].as_str().is_some_and(|e| e.contains("certificate")), "{s}");
    assert_eq!(server.head("orders").await, None, "nothing drained without a trusted certificate");
    server.stop();
    pg_exec(&pg, &format!("DROP SCHEMA {schema} CASCADE")).await;
}
