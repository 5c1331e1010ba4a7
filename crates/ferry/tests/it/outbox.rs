//! The outbox sources (SPEC §6) as `ferry serve` wires them: `[[sources]]`
//! refused before anything opens when it is wrong (naming the source, the
//! key and the line, never the URL's password), `GET /v1/sources` and
//! `GET /v1/sources/{name}` with none configured, the client's and the
//! CLI's view of them, and a source whose database does not answer, which
//! is listed, backs off without showing its password, and stops cleanly.

use std::time::Duration;

use serde_json::Value;

use crate::support::{Env, assert_exit, eventually, ferry, free_port, run_to_exit, serve_command};

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
