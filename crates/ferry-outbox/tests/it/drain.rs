//! Draining: exactly once, in id order per ledger; late commits; bad rows;
//! one active drainer; replays; purge.

use std::time::Duration;

use ferry_core::bus::Received;
use ferry_outbox::{SourceState, Sources};

use crate::support::*;

const STOP: Duration = Duration::from_secs(10);

/// The shared bodies run once per driver.
macro_rules! for_both_drivers {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::support::Driver::Postgres).await
                }
            )*
        }
        mod mysql {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::support::Driver::Mysql).await
                }
            )*
        }
    };
}

for_both_drivers!(
    rows_are_drained_once_in_id_order_per_ledger,
    a_fixed_ledger_drains_in_several_batches_and_requeued_rows_are_not_duplicated,
    a_row_committed_late_is_drained_exactly_once,
    a_bad_row_goes_to_the_dead_letter_ledger_and_the_rows_behind_it_move_on,
    a_bad_row_without_dead_letter_fails_the_source_until_it_is_fixed,
    one_process_drains_and_the_other_takes_over_when_it_stops,
    purge_deletes_only_old_exported_rows,
    a_database_that_is_down_backs_off_and_never_shows_the_password,
    the_connections_to_the_database_have_nagle_off,
);

/// Found while benchmarking (issue #20): sqlx 0.9.0 stopped setting
/// `TCP_NODELAY`, so a statement sent in more than one write waited for the
/// server's delayed ACK (~40 ms on Linux) — an INSERT of a 16 KiB row took
/// 48 ms instead of 0.4. The outbox's and the PostgreSQL sink's
/// connections go through the same sqlx; every one must have Nagle off.
async fn the_connections_to_the_database_have_nagle_off(driver: Driver) {
    let db = TestDb::new(driver, PayloadType::Json).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    db.insert(Some("a"), None, &format!("{{\"pad\":\"{}\"}}", "x".repeat(16 * 1024))).await;
    let sources = Sources::start(store.clone(), vec![db.source("app", "ledger_column = \"ledger\"")]);
    wait_exported(&db, &sources).await;
    let port = match driver {
        Driver::Postgres => 5432,
        Driver::Mysql => 3306,
    };
    let sockets = sockets_to(port);
    assert!(!sockets.is_empty(), "no connection to port {port} found in /proc/self/fd");
    let nagle_on: Vec<_> = sockets.iter().filter(|(_, nodelay)| !nodelay).collect();
    assert!(nagle_on.is_empty(), "connections to port {port} without TCP_NODELAY (fd, nodelay): {nagle_on:?}");
    sources.shutdown(STOP).await;
}

/// Every TCP socket of this process connected to `port` on loopback, with
/// whether it has `TCP_NODELAY`: each descriptor is duplicated through a
/// pidfd of the process itself, so nothing here needs `unsafe`.
fn sockets_to(port: u16) -> Vec<(i32, bool)> {
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
    let me = pidfd_open(getpid(), PidfdFlags::empty()).expect("pidfd_open of this process");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd").expect("list /proc/self/fd").flatten() {
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
        let Some(fd) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        // A descriptor closed meanwhile is simply not counted.
        let Some(dup) = is_socket.then(|| pidfd_getfd(&me, fd, PidfdGetfdFlags::empty()).ok()).flatten() else {
            continue;
        };
        let peer = rustix::net::getpeername(&dup).ok().flatten().and_then(|a| std::net::SocketAddr::try_from(a).ok());
        if peer.is_some_and(|p| p.ip().is_loopback() && p.port() == port) {
            found.push((fd, rustix::net::sockopt::tcp_nodelay(&dup).expect("getsockopt TCP_NODELAY")));
        }
    }
    found
}

async fn all_exported(db: &TestDb) -> bool {
    db.rows().await.iter().all(|(_, exported)| *exported)
}

async fn wait_exported(db: &TestDb, sources: &Sources) {
    let start = std::time::Instant::now();
    while !all_exported(db).await {
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "timed out waiting for every row to be exported: {:?} {:?}",
            db.rows().await,
            sources.status()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn rows_are_drained_once_in_id_order_per_ledger(driver: Driver) {
    let db = TestDb::new(driver, PayloadType::Json).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut expect: Vec<(i64, &str, Option<String>, String)> = Vec::new();
    for i in 0..12 {
        let to = if i % 3 == 0 { "b" } else { "a" };
        let key = (i % 2 == 0).then(|| format!("k{i}"));
        let id = db.insert(Some(to), key.as_deref(), &format!("{{\"n\": {i}, \"s\": \"x{i}\"}}")).await;
        expect.push((id, to, key, format!("{{\"n\":{i},\"s\":\"x{i}\"}}")));
    }
    let sources = Sources::start(store.clone(), vec![db.source("app", "ledger_column = \"ledger\"")]);
    wait_exported(&db, &sources).await;
    // More rows, once running: drained too.
    for i in 12..15 {
        let id = db.insert(Some("a"), None, &format!("{{\"n\":{i},\"s\":\"x{i}\"}}")).await;
        expect.push((id, "a", None, format!("{{\"n\":{i},\"s\":\"x{i}\"}}")));
    }
    wait_exported(&db, &sources).await;
    for name in ["a", "b"] {
        let want: Vec<_> = expect.iter().filter(|e| e.1 == name).collect();
        let got = read_all(&store, &ledger(name));
        assert_eq!(got.len(), want.len(), "ledger {name}: every row once");
        for (entry, (_, _, key, payload)) in got.iter().zip(&want) {
            assert_eq!(entry.payload.as_str(), payload, "ledger {name} in id order, payload kept");
            assert_eq!(&entry.key, key);
        }
    }
    until("the status to count every row and the backlog to empty", || {
        let st = status(&sources, "app");
        st.drained == 15 && st.backlog == Some(0) && st.last_success_at.is_some()
    })
    .await;
    let st = status(&sources, "app");
    assert_eq!(
        (st.state, st.driver.as_str(), st.table.as_str()),
        (SourceState::Running, driver_name(driver), "outbox")
    );
    assert!(st.lock_holder.is_some() && st.last_error.is_none() && !st.stuck, "{st:?}");
    sources.shutdown(STOP).await;
    sources.shutdown(STOP).await;
    assert_eq!(status(&sources, "app").state, SourceState::Stopped);
    store.shutdown().await;
}

fn driver_name(driver: Driver) -> &'static str {
    match driver {
        Driver::Postgres => "postgres",
        Driver::Mysql => "mysql",
    }
}

async fn a_fixed_ledger_drains_in_several_batches_and_requeued_rows_are_not_duplicated(driver: Driver) {
    let db = TestDb::new(driver, PayloadType::Json).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    for i in 0..25 {
        db.insert(None, Some(&format!("k{i}")), &format!("{{\"n\":{i}}}")).await;
    }
    // Batches of at most 4 rows, and at most 20 bytes of payload (2 rows).
    let settings = db.source("app", "ledger = \"audit\"\nbatch = 4\nbatch_max_bytes = 20");
    let sources = Sources::start(store.clone(), vec![settings]);
    wait_exported(&db, &sources).await;
    let first = read_all(&store, &ledger("audit"));
    assert_eq!(first.len(), 25);
    for (i, entry) in first.iter().enumerate() {
        assert_eq!(entry.payload.as_str(), format!("{{\"n\":{i}}}"));
    }
    // Clearing exported_at re-queues: the rows are appended again with the
    // same idempotency keys, and the ledger answers the original entries.
    db.exec("UPDATE outbox SET exported_at = NULL").await;
    wait_exported(&db, &sources).await;
    until("the replay to be counted", || status(&sources, "app").drained == 50).await;
    assert_eq!(read_all(&store, &ledger("audit")), first, "a replay adds nothing");
    sources.shutdown(STOP).await;
    store.shutdown().await;
}

async fn a_row_committed_late_is_drained_exactly_once(driver: Driver) {
    let db = TestDb::new(driver, PayloadType::Json).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let sources = Sources::start(store.clone(), vec![db.source("app", "ledger = \"audit\"")]);
    until("running", || is(&sources, "app", SourceState::Running)).await;
    let audit = ledger("audit");
    match &db.pool {
        Pool::Pg(p) => {
            let mut a = p.begin().await.unwrap();
            let n: i64 = sqlx::query_scalar("INSERT INTO outbox (payload) VALUES ('{\"tx\":\"a\"}') RETURNING id")
                .fetch_one(&mut *a)
                .await
                .unwrap();
            let m = db.insert(None, None, "{\"tx\":\"b\"}").await;
            assert_eq!(m, n + 1);
            until("the later row", || read_all(&store, &audit).len() == 1).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(read_all(&store, &audit).len(), 1, "the open transaction's row is not seen yet");
            a.commit().await.unwrap();
        }
        Pool::My(p) => {
            let mut a = p.begin().await.unwrap();
            let n = sqlx::query("INSERT INTO outbox (payload) VALUES ('{\"tx\":\"a\"}')")
                .execute(&mut *a)
                .await
                .unwrap()
                .last_insert_id() as i64;
            let m = db.insert(None, None, "{\"tx\":\"b\"}").await;
            assert_eq!(m, n + 1);
            until("the later row", || read_all(&store, &audit).len() == 1).await;
            tokio::time::sleep(Duration::from_millis(300)).await;
            assert_eq!(read_all(&store, &audit).len(), 1, "the open transaction's row is not seen yet");
            a.commit().await.unwrap();
        }
    }
    wait_exported(&db, &sources).await;
    until("the late row", || read_all(&store, &audit).len() == 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got: Vec<String> = read_all(&store, &audit).iter().map(|e| e.payload.as_str().to_owned()).collect();
    assert_eq!(got, ["{\"tx\":\"b\"}", "{\"tx\":\"a\"}"], "each row exactly once, the late one after");
    sources.shutdown(STOP).await;
    store.shutdown().await;
}

async fn a_bad_row_goes_to_the_dead_letter_ledger_and_the_rows_behind_it_move_on(driver: Driver) {
    let db = TestDb::new(driver, PayloadType::Text).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    db.insert(Some("a"), None, "{\"n\":1}").await;
    let bad = db.insert(Some("a"), None, "not json").await;
    let bad_ledger = db.insert(Some("Not A Ledger"), None, "{\"n\":2}").await;
    db.insert(Some("a"), None, "{\"n\":3}").await;
    let settings = db.source("app", "ledger_column = \"ledger\"\ndead_letter = \"app-dead\"");
    let sources = Sources::start(store.clone(), vec![settings]);
    wait_exported(&db, &sources).await;
    let good: Vec<String> = read_all(&store, &ledger("a")).iter().map(|e| e.payload.as_str().to_owned()).collect();
    assert_eq!(good, ["{\"n\":1}", "{\"n\":3}"]);
    let dead = read_all(&store, &ledger("app-dead"));
    assert_eq!(dead.len(), 2);
    let first: serde_json::Value = serde_json::from_str(dead[0].payload.as_str()).unwrap();
    assert_eq!((first["source"].as_str(), first["row_id"].as_i64()), (Some("app"), Some(bad)));
    assert_eq!(first["payload_text"], "not json");
    assert!(first["reason"].as_str().unwrap().contains("not valid JSON"), "{first}");
    let second: serde_json::Value = serde_json::from_str(dead[1].payload.as_str()).unwrap();
    assert_eq!(second["row_id"].as_i64(), Some(bad_ledger));
    assert!(second["reason"].as_str().unwrap().contains("Not A Ledger"), "{second}");
    until("the status", || status(&sources, "app").dead_lettered == 2).await;
    assert_eq!(status(&sources, "app").drained, 2);
    sources.shutdown(STOP).await;
    store.shutdown().await;
}

async fn a_bad_row_without_dead_letter_fails_the_source_until_it_is_fixed(driver: Driver) {
    let db = TestDb::new(driver, PayloadType::Text).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut events = store.events().subscribe("source.", 16);
    db.insert(None, None, "{\"n\":1}").await;
    let bad = db.insert(None, None, "{\"n\": 1,}").await;
    db.insert(None, None, "{\"n\":3}").await;
    // The bad row has waited an hour: past max_lag, the source is stuck.
    let hour_ago = match driver {
        Driver::Postgres => "now() - interval '1 hour'",
        Driver::Mysql => "NOW(6) - INTERVAL 1 HOUR",
    };
    db.exec(&format!("UPDATE outbox SET created_at = {hour_ago} WHERE id = {bad}")).await;
    let sources = Sources::start(store.clone(), vec![db.source("app", "ledger = \"audit\"\nmax_lag = \"1m\"")]);
    until("failed", || is(&sources, "app", SourceState::Failed)).await;
    let st = status(&sources, "app");
    assert!(st.stuck && st.oldest_pending_age_ms.unwrap() >= 3_600_000, "{st:?}");
    let error = st.last_error.unwrap();
    assert!(error.contains(&format!("row {bad}:")), "{error}");
    assert_eq!(
        db.rows().await.iter().map(|r| r.1).collect::<Vec<_>>(),
        [true, false, false],
        "nothing behind it moves"
    );
    assert_eq!(read_all(&store, &ledger("audit")).len(), 1);
    match events.recv().await {
        Some(Received::Message(e)) => assert_eq!(e.key, "source.failed/app"),
        other => panic!("expected source.failed, got {other:?}"),
    }
    db.exec(&format!("UPDATE outbox SET payload = '{{\"n\":2}}' WHERE id = {bad}")).await;
    wait_exported(&db, &sources).await;
    until("running", || is(&sources, "app", SourceState::Running)).await;
    assert!(status(&sources, "app").last_error.is_none());
    let got: Vec<String> = read_all(&store, &ledger("audit")).iter().map(|e| e.payload.as_str().to_owned()).collect();
    assert_eq!(got, ["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"]);
    until("not stuck", || !status(&sources, "app").stuck).await;
    match events.recv().await {
        Some(Received::Message(e)) => assert_eq!(e.key, "source.recovered/app"),
        other => panic!("expected source.recovered, got {other:?}"),
    }
    sources.shutdown(STOP).await;
    store.shutdown().await;
}

async fn one_process_drains_and_the_other_takes_over_when_it_stops(driver: Driver) {
    let db = TestDb::new(driver, PayloadType::Json).await;
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (store1, store2) = (open_store(dir1.path()), open_store(dir2.path()));
    let first = Sources::start(store1.clone(), vec![db.source("app", "ledger = \"audit\"")]);
    until("the first running", || is(&first, "app", SourceState::Running)).await;
    let second = Sources::start(store2.clone(), vec![db.source("app", "ledger = \"audit\"")]);
    until("the second in standby, naming the holder", || {
        let st = status(&second, "app");
        st.state == SourceState::Standby && st.lock_holder.is_some()
    })
    .await;
    for i in 0..5 {
        db.insert(None, None, &format!("{{\"n\":{i}}}")).await;
    }
    wait_exported(&db, &first).await;
    assert_eq!(read_all(&store1, &ledger("audit")).len(), 5);
    assert!(read_all(&store2, &ledger("audit")).is_empty(), "the standby drains nothing");
    first.shutdown(STOP).await;
    until("the second to take over", || is(&second, "app", SourceState::Running)).await;
    for i in 5..8 {
        db.insert(None, None, &format!("{{\"n\":{i}}}")).await;
    }
    wait_exported(&db, &second).await;
    assert_eq!(read_all(&store2, &ledger("audit")).len(), 3);
    assert_eq!(read_all(&store1, &ledger("audit")).len(), 5);
    second.shutdown(STOP).await;
    store1.shutdown().await;
    store2.shutdown().await;
}

async fn purge_deletes_only_old_exported_rows(driver: Driver) {
    let db = TestDb::new(driver, PayloadType::Json).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let old = db.insert(None, None, "{\"n\":1}").await;
    let recent = db.insert(None, None, "{\"n\":2}").await;
    let pending = db.insert(None, None, "{\"n\":3}").await;
    let two_days_ago = match driver {
        Driver::Postgres => "now() - interval '2 days'",
        Driver::Mysql => "NOW(6) - INTERVAL 2 DAY",
    };
    db.exec(&format!("UPDATE outbox SET exported_at = {two_days_ago} WHERE id = {old}")).await;
    let now = match driver {
        Driver::Postgres => "now()",
        Driver::Mysql => "NOW(6)",
    };
    db.exec(&format!("UPDATE outbox SET exported_at = {now} WHERE id = {recent}")).await;
    let sources = Sources::start(store.clone(), vec![db.source("app", "ledger = \"audit\"\npurge_after = \"1d\"")]);
    wait_exported(&db, &sources).await;
    assert_eq!(db.rows().await, [(recent, true), (pending, true)]);
    assert_eq!(read_all(&store, &ledger("audit")).len(), 1, "only the pending row was drained");
    sources.shutdown(STOP).await;
    store.shutdown().await;
}

async fn a_database_that_is_down_backs_off_and_never_shows_the_password(driver: Driver) {
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut events = store.events().subscribe("source.", 16);
    let (name, url) = match driver {
        Driver::Postgres => ("postgres", "postgres://ferry:hunter2secret@127.0.0.1:1/app"),
        Driver::Mysql => ("mysql", "mysql://ferry:hunter2secret@127.0.0.1:1/app"),
    };
    let text = format!("name = \"app\"\ndriver = \"{name}\"\nurl = \"{url}\"\nledger = \"audit\"");
    let raw: ferry_outbox::SourceConfig = toml::from_str(&text).unwrap();
    let sources = Sources::start(store.clone(), vec![ferry_outbox::SourceSettings::from_config(&raw).unwrap()]);
    until("backing off", || is(&sources, "app", SourceState::BackingOff)).await;
    let error = status(&sources, "app").last_error.unwrap();
    assert!(!error.contains("hunter2secret"), "{error}");
    match events.recv().await {
        Some(Received::Message(e)) => {
            assert_eq!(e.key, "source.failed/app");
            assert!(!e.data.to_string().contains("hunter2secret"), "{}", e.data);
        }
        other => panic!("expected source.failed, got {other:?}"),
    }
    sources.shutdown(STOP).await;
    assert_eq!(status(&sources, "app").state, SourceState::Stopped);
    store.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_notify_wakes_the_source_before_its_poll() {
    let db = TestDb::new(Driver::Postgres, PayloadType::Json).await;
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let mut settings = db.source("app", "ledger = \"audit\"\nnotify_channel = \"app_outbox\"");
    settings.poll = Duration::from_secs(60);
    let sources = Sources::start(store.clone(), vec![settings]);
    until("running", || is(&sources, "app", SourceState::Running)).await;
    // The first (empty) batch, then the LISTEN, then a wait of a minute.
    tokio::time::sleep(Duration::from_millis(500)).await;
    db.insert(None, None, "{\"n\":1}").await;
    db.exec("NOTIFY app_outbox").await;
    let start = std::time::Instant::now();
    while !all_exported(&db).await {
        assert!(start.elapsed() < Duration::from_secs(10), "NOTIFY did not wake the source");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read_all(&store, &ledger("audit")).len(), 1);
    sources.shutdown(STOP).await;
    store.shutdown().await;
}
