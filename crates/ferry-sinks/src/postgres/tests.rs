//! Config validation and error sorting (pure), and the sink against the
//! machine's PostgreSQL (127.0.0.1:5432, user postgres, trust): the tests
//! that need it fail when it is not there.

use ferry_core::{Entry, LedgerName, Payload};
use serde_json::json;

use super::*;

const URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

fn validate(v: serde_json::Value) -> Result<PostgresConfig, String> {
    PostgresConfig::validate(v).map_err(|e| e.to_string())
}

#[test]
fn config_is_validated_without_io_naming_the_field() {
    let cases = [
        (json!({"table": "t"}), "config.url"),
        (json!({"url": URL}), "config.table"),
        (json!({"url": "http://x/db", "table": "t"}), "config.url"),
        (json!({"url": "not a url", "table": "t"}), "config.url"),
        (json!({"url": format!("{URL}?sslmode=disable"), "table": "t"}), "config.url"),
        (json!({"url": URL, "table": "Audit"}), "config.table"),
        (json!({"url": URL, "table": "a.b.c"}), "config.table"),
        (json!({"url": URL, "table": "a;drop"}), "config.table"),
        (json!({"url": URL, "table": "1t"}), "config.table"),
        (json!({"url": URL, "table": "s.ferry_cursors"}), "config.table"),
        (json!({"url": URL, "table": "x".repeat(64)}), "config.table"),
        (json!({"url": URL, "table": "t", "ca_file": "/ca.pem"}), "config.ca_file"),
        (json!({"url": URL, "table": "t", "max_connections": 0}), "config.max_connections"),
        (json!({"url": URL, "table": "t", "max_connections": 65}), "config.max_connections"),
        (json!({"url": URL, "table": "t", "create_table": "yes"}), "config.create_table"),
        (json!({"url": URL, "table": "t", "password": "x"}), "config.password"),
    ];
    for (value, field) in cases {
        let error = validate(value.clone()).unwrap_err();
        assert!(error.starts_with(&format!("{field}:")), "{value}: {error}");
    }
    let unknown = validate(json!({"url": URL, "table": "t", "batch_size": 3})).unwrap_err();
    assert!(unknown.contains("batch_size"), "{unknown}");
    let c = validate(json!({"url": URL, "table": "audit.log_1"})).unwrap();
    assert_eq!((c.schema.as_deref(), c.table.as_str(), c.max_connections), (Some("audit"), "log_1", 4));
    assert!(!c.create_table && !c.transactional_cursor && !c.tls);
    let c = validate(json!({"url": URL, "table": "t", "tls": true, "ca_file": "/ca.pem", "max_connections": 2,
        "create_table": true, "transactional_cursor": true}))
    .unwrap();
    assert_eq!((c.schema, c.tls, c.max_connections), (None, true, 2));
}

#[test]
fn the_password_is_a_secret_and_never_shown() {
    let c = validate(json!({"url": "postgres://ferry:p%40ss%2Fw0rd@db:5432/audit?password=other-pw", "table": "t"}))
        .unwrap();
    let secrets = c.secrets();
    for shown in [secrets.redact("p%40ss%2Fw0rd"), secrets.redact("p@ss/w0rd"), secrets.redact("other-pw")] {
        assert_eq!(shown, ferry_export::redact::REDACTED);
    }
    assert_eq!(c.shown_url(), "postgres://***@db:5432/audit?***");
    assert!(!format!("{c:?}").contains("w0rd"), "{c:?}");
    let bad = validate(json!({"url": "postgresx://u:hunter22@h/d", "table": "t"})).unwrap_err();
    assert!(!bad.contains("hunter22"), "{bad}");
}

#[test]
fn sqlstates_sort_into_retryable_and_permanent() {
    use errors::{Kind, sqlstate};
    let retryable = ["08006", "08001", "40001", "40P01", "57P01", "57P02", "57P03", "57014", "53100", "53300", "58030"];
    for code in retryable.into_iter().chain(["55P03", "25006"]) {
        assert_eq!(sqlstate(code), Kind::Retryable, "{code}");
    }
    // undefined table / column, datatype mismatch, permission denied,
    // invalid JSON, not-null violation, bad password, unknown database.
    let permanent = ["42P01", "42703", "42804", "42501", "22P02", "22P05", "23502", "28P01", "3D000", "XX000"];
    for code in permanent.into_iter().chain(["", "4"]) {
        assert_eq!(sqlstate(code), Kind::Permanent, "{code}");
    }
}

#[test]
fn sqlx_errors_sort_by_kind_and_refuse_the_right_field() {
    use errors::{Kind, classify, connect_refusal};
    let io = |kind| sqlx::Error::Io(std::io::Error::from(kind));
    assert_eq!(classify(&io(std::io::ErrorKind::ConnectionRefused)), Kind::Retryable);
    assert_eq!(classify(&io(std::io::ErrorKind::UnexpectedEof)), Kind::Retryable);
    assert_eq!(classify(&sqlx::Error::PoolTimedOut), Kind::Retryable);
    assert_eq!(classify(&sqlx::Error::Protocol("x".into())), Kind::Retryable);
    assert_eq!(classify(&sqlx::Error::RowNotFound), Kind::Permanent);
    assert_eq!(classify(&sqlx::Error::Tls("server does not support TLS".into())), Kind::Permanent);
    let untrusted = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
    );
    assert!(errors::tls_rejection(&untrusted).is_some());
    let untrusted = sqlx::Error::Io(untrusted);
    assert_eq!(classify(&untrusted), Kind::Permanent);
    assert_eq!(connect_refusal(&untrusted, true), Some("config.ca_file"));
    assert_eq!(connect_refusal(&untrusted, false), Some("config.tls"));
    assert_eq!(connect_refusal(&io(std::io::ErrorKind::ConnectionRefused), false), None);
    assert_eq!(connect_refusal(&sqlx::Error::PoolTimedOut, false), None);
}

#[test]
fn a_table_of_the_wrong_shape_is_described() {
    let col = |n: &str, t: &str, null: bool, default: bool| (n.to_owned(), t.to_owned(), null, default);
    let good: Vec<_> = sql::ENTRY_COLUMNS
        .iter()
        .map(|c| col(c.name, c.types[0], c.nullable, false))
        .chain([col("extra", "integer", false, true), col("note", "text", true, false)])
        .collect();
    assert!(shape_problems(&sql::ENTRY_COLUMNS, &good).is_empty());
    let mut bad = good.clone();
    bad[2] = col("id", "integer", false, false);
    bad[4] = col("key", "text", false, false);
    bad.remove(6);
    bad.push(col("tenant", "text", false, false));
    assert_eq!(
        shape_problems(&sql::ENTRY_COLUMNS, &bad),
        [
            "column id is integer, not bigint",
            "column key is NOT NULL, but ferry writes NULL there",
            "no column payload",
            "column tenant is NOT NULL without a default, and ferry does not write it"
        ]
    );
}

// ---- against the machine's PostgreSQL ----

/// A schema of its own, dropped at the end.
struct Schema {
    name: String,
    admin: PgPool,
}

impl Schema {
    async fn new() -> Self {
        let name = format!("ferry_unit_{}_{}", std::process::id(), rand_suffix());
        let admin = PgPoolOptions::new()
            .max_connections(2)
            .connect(URL)
            .await
            .expect("PostgreSQL at 127.0.0.1:5432 (user postgres, trust) is needed for these tests");
        sqlx::query(AssertSqlSafe(format!("CREATE SCHEMA {name}"))).execute(&admin).await.unwrap();
        Self { name, admin }
    }

    async fn sql(&self, text: &str) {
        sqlx::query(AssertSqlSafe(text.replace("$S", &self.name))).execute(&self.admin).await.unwrap();
    }

    async fn ids(&self, table: &str) -> Vec<i64> {
        let q = format!("SELECT id FROM {}.{table} ORDER BY id", self.name);
        sqlx::query_scalar(AssertSqlSafe(q)).fetch_all(&self.admin).await.unwrap()
    }

    async fn sink(&self, extra: serde_json::Value) -> Result<PostgresSink, ConfigError> {
        let mut config = json!({"url": URL, "table": format!("{}.entries", self.name)});
        config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        PostgresSink::new(PostgresConfig::validate(config).unwrap()).await
    }

    async fn drop(self) {
        self.sql("DROP SCHEMA $S CASCADE").await;
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
    h.finish() % 1_000_000_000
}

fn target(incarnation: u64) -> Target {
    Target { exporter: LedgerName::parse("pg").unwrap(), ledger: LedgerName::parse("audit").unwrap(), incarnation }
}

fn batch(incarnation: u64, ids: std::ops::RangeInclusive<EntryId>) -> Batch {
    let ledger = LedgerName::parse("audit").unwrap();
    let entries = ids
        .map(|id| Entry {
            ledger: ledger.clone(),
            id,
            ts: 1_700_000_000_000 + id,
            key: (id % 2 == 0).then(|| format!("k-{id}")),
            hash: (id % 3 == 0).then_some([id as u8; 32]),
            payload: Payload::from_json(&format!(r#"{{"n":{id},"s":"ü\"x"}}"#)).unwrap(),
        })
        .collect();
    Batch { exporter: LedgerName::parse("pg").unwrap(), ledger, incarnation, entries }
}

#[tokio::test]
async fn rows_are_written_once_with_their_columns_and_counted_by_the_check() {
    let schema = Schema::new().await;
    let missing = schema.sink(json!({})).await.err().expect("a missing table refuses the config").to_string();
    assert!(missing.starts_with("config.table:") && missing.contains("does not exist"), "{missing}");
    let sink = schema.sink(json!({"create_table": true})).await.unwrap();
    assert!(!sink.keeps_position());
    assert_eq!(sink.prepare(&target(1), 0).await, Ok(Prepared::Cursor));
    assert_eq!(sink.deliver(&batch(1, 1..=3)).await, Ok(Ack { through: 3 }));
    // A replay (a lost acknowledgement) changes nothing.
    assert_eq!(sink.deliver(&batch(1, 1..=3)).await, Ok(Ack { through: 3 }));
    sink.deliver(&batch(1, 4..=6)).await.unwrap();
    sink.deliver(&batch(2, 1..=2)).await.unwrap();
    assert_eq!(schema.ids("entries").await, [1, 1, 2, 2, 3, 4, 5, 6]);
    let q = format!(
        "SELECT count(*) FROM {}.entries WHERE incarnation = 1 AND ts = 1700000000000 + id \
         AND key IS NOT DISTINCT FROM CASE WHEN id % 2 = 0 THEN 'k-' || id END \
         AND (hash IS NULL) = (id % 3 <> 0) AND payload::text = '{{\"n\":' || id || ',\"s\":\"ü\\\"x\"}}'",
        schema.name
    );
    let matching: i64 = sqlx::query_scalar(AssertSqlSafe(q)).fetch_one(&schema.admin).await.unwrap();
    assert_eq!(matching, 6);
    let hash: String =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT hash FROM {}.entries WHERE id = 3 LIMIT 1", schema.name)))
            .fetch_one(&schema.admin)
            .await
            .unwrap();
    assert_eq!(hash, "03".repeat(32));
    let h = sink.check(&target(1), &ChainStart::unchained(2), 5).await.unwrap();
    assert_eq!(
        h,
        Holding { in_range: 4, distinct: 4, below_first: 1, above_cursor: 1, min: Some(1), max: Some(6), chain: None }
    );
    schema.drop().await;
}

#[tokio::test]
async fn the_transactional_cursor_is_the_destinations_position() {
    let schema = Schema::new().await;
    let sink = schema.sink(json!({"create_table": true, "transactional_cursor": true})).await.unwrap();
    assert!(sink.keeps_position());
    // Nothing there: 0, whatever the runtime's cursor.
    assert_eq!(sink.prepare(&target(1), 7).await, Ok(Prepared::DestinationThrough(0)));
    sink.deliver(&batch(1, 1..=4)).await.unwrap();
    assert_eq!(sink.prepare(&target(1), 2).await, Ok(Prepared::DestinationThrough(4)));
    // A batch that does not start right after the row is refused, and
    // writes nothing.
    let skewed = sink.deliver(&batch(1, 6..=7)).await.unwrap_err();
    assert!(!skewed.is_permanent() && skewed.to_string().contains("at id 5"), "{skewed}");
    let replay = sink.deliver(&batch(1, 3..=4)).await.unwrap_err();
    assert!(!replay.is_permanent(), "{replay}");
    assert_eq!(schema.ids("entries").await, [1, 2, 3, 4]);
    // Another incarnation: its own rows decide (none yet).
    assert_eq!(sink.prepare(&target(2), 9).await, Ok(Prepared::DestinationThrough(0)));
    sink.deliver(&batch(2, 1..=2)).await.unwrap();
    assert_eq!(sink.prepare(&target(2), 0).await, Ok(Prepared::DestinationThrough(2)));
    // The row now names incarnation 2: incarnation 1's rows decide.
    assert_eq!(sink.prepare(&target(1), 0).await, Ok(Prepared::DestinationThrough(4)));
    // No row: gap-free rows give their greatest id, a gap gives 0.
    schema.sql("DELETE FROM $S.ferry_cursors").await;
    assert_eq!(sink.prepare(&target(1), 0).await, Ok(Prepared::DestinationThrough(4)));
    schema.sql("DELETE FROM $S.entries WHERE incarnation = 1 AND id = 2").await;
    assert_eq!(sink.prepare(&target(1), 4).await, Ok(Prepared::DestinationThrough(0)));
    sink.deliver(&batch(1, 1..=4)).await.unwrap();
    assert_eq!(sink.prepare(&target(1), 4).await, Ok(Prepared::DestinationThrough(4)));
    let updated: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {}.ferry_cursors WHERE updated_at > now() - interval '1 minute'",
        schema.name
    )))
    .fetch_one(&schema.admin)
    .await
    .unwrap();
    assert_eq!(updated, 1);
    schema.drop().await;
}

/// A batch PostgreSQL refuses (`\u0000` in a jsonb payload) is
/// permanent; after the runtime dead-lettered it, the row is answered
/// once more (the runtime sends the batch again and dead-letters it
/// again), then the runtime's cursor stands and the next batch moves the
/// row over the gap: no endless loop.
#[tokio::test]
async fn a_dead_lettered_batch_is_not_sent_round_forever() {
    let schema = Schema::new().await;
    // A table made before `payload json` (jsonb refuses `\u0000`; json
    // keeps it).
    schema.sql(JSONB_TABLE).await;
    let sink = schema.sink(json!({"create_table": true, "transactional_cursor": true})).await.unwrap();
    sink.deliver(&batch(1, 1..=10)).await.unwrap();
    let mut refused = batch(1, 11..=12);
    refused.entries[1].payload = Payload::from_json(r#"{"nul":"\u0000"}"#).unwrap();
    let e = sink.deliver(&refused).await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("22P05"), "{e}");
    // Dead-lettered by the runtime: its cursor is 12.
    assert_eq!(sink.prepare(&target(1), 12).await, Ok(Prepared::DestinationThrough(10)));
    assert!(sink.deliver(&refused).await.unwrap_err().is_permanent());
    assert_eq!(sink.prepare(&target(1), 12).await, Ok(Prepared::Cursor));
    assert_eq!(sink.prepare(&target(1), 12).await, Ok(Prepared::Cursor), "asked again (a retry)");
    sink.deliver(&batch(1, 13..=14)).await.unwrap();
    assert_eq!(sink.prepare(&target(1), 14).await, Ok(Prepared::DestinationThrough(14)));
    let mut ids = (1..=10).chain(13..=14).collect::<Vec<i64>>();
    assert_eq!(schema.ids("entries").await, ids);
    // A destination restored later is still answered.
    schema.sql("UPDATE $S.ferry_cursors SET id = 13").await;
    schema.sql("DELETE FROM $S.entries WHERE id = 14").await;
    assert_eq!(sink.prepare(&target(1), 14).await, Ok(Prepared::DestinationThrough(13)));
    sink.deliver(&batch(1, 14..=14)).await.unwrap();
    ids.sort();
    assert_eq!(schema.ids("entries").await, ids);
    schema.drop().await;
}

#[tokio::test]
async fn tables_of_the_wrong_shape_refuse_the_config_and_a_dropped_table_is_permanent() {
    let schema = Schema::new().await;
    schema.sql("CREATE TABLE $S.entries (ledger text, incarnation bigint, id integer, ts bigint, key text, hash text, payload jsonb, PRIMARY KEY (ledger, incarnation, id))").await;
    let e = schema.sink(json!({"create_table": true})).await.err().unwrap().to_string();
    assert!(e.starts_with("config.table:") && e.contains("column id is integer, not bigint"), "{e}");
    schema.sql("DROP TABLE $S.entries").await;
    schema.sql("CREATE TABLE $S.entries (ledger text, incarnation bigint, id bigint, ts bigint, key text, hash text, payload jsonb)").await;
    let e = schema.sink(json!({})).await.err().unwrap().to_string();
    assert!(e.starts_with("config.table:") && e.contains("no unique key on (id, incarnation, ledger)"), "{e}");
    schema.sql("CREATE UNIQUE INDEX ON $S.entries (id, ledger, incarnation)").await;
    let sink = schema.sink(json!({})).await.unwrap();
    sink.deliver(&batch(1, 1..=2)).await.unwrap();
    schema.sql("DROP TABLE $S.entries").await;
    let e = sink.deliver(&batch(1, 3..=4)).await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("42P01"), "{e}");
    // The next attempt checks the table again, and says what is wrong.
    let e = sink.deliver(&batch(1, 3..=4)).await.unwrap_err();
    assert!(e.is_permanent() && e.to_string().contains("does not exist"), "{e}");
    schema.drop().await;
}

#[tokio::test]
async fn a_bad_login_refuses_the_url_and_an_unreachable_server_builds() {
    let config = |url: &str| PostgresConfig::validate(json!({"url": url, "table": "t"})).unwrap();
    let unknown_db = PostgresSink::new(config("postgres://postgres@127.0.0.1:5432/no_such_db_ferry")).await;
    let e = unknown_db.err().unwrap().to_string();
    assert!(e.starts_with("config.url:") && e.contains("3D000"), "{e}");
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let down =
        PostgresSink::new(config(&format!("postgres://postgres:pw-secret@127.0.0.1:{port}/postgres"))).await.unwrap();
    let e = down.deliver(&batch(1, 1..=1)).await.unwrap_err();
    assert!(!e.is_permanent(), "{e}");
    assert!(!e.to_string().contains("pw-secret") && e.to_string().contains(&format!(":{port}")), "{e}");
}

/// The measurement behind the choice of `UNNEST` over COPY (run with
/// `cargo test -p ferry-sinks --release -- --ignored unnest_or_copy
/// --nocapture`): 1000-row batches of ~150-byte payloads into the same
/// table, each in one transaction, new rows every time, alternately by the
/// sink's statement and by COPY into a temporary table followed by `INSERT …
/// SELECT … ON CONFLICT DO NOTHING`.
#[tokio::test]
#[ignore = "a measurement, not a test"]
async fn unnest_or_copy_for_1000_row_batches() {
    const BATCHES: u64 = 200;
    let schema = Schema::new().await;
    let sink = schema.sink(json!({"create_table": true})).await.unwrap();
    let big = |b: u64| {
        let mut batch = batch(1, b * 1000 + 1..=(b + 1) * 1000);
        for e in &mut batch.entries {
            let text = format!(
                r#"{{"n":{},"user":"u-{}","pad":"{}","nested":{{"a":[1,2,3],"b":"x\\ty"}}}}"#,
                e.id,
                e.id % 97,
                "p".repeat(80)
            );
            e.payload = Payload::from_json(&text).unwrap();
        }
        batch
    };
    let st = sink.statements().await.unwrap();
    let mut conn = sink.pool.acquire().await.unwrap();
    // Interleaved, so both meet the same table size and the same load.
    let (mut unnest, mut copy) = (Duration::ZERO, Duration::ZERO);
    for b in 0..2 * BATCHES {
        let batch = big(b);
        let started = std::time::Instant::now();
        if b % 2 == 0 {
            sink.deliver(&batch).await.unwrap();
            unnest += started.elapsed();
            continue;
        }
        let mut tx = conn.begin().await.unwrap();
        sqlx::query(AssertSqlSafe(format!(
            "CREATE TEMP TABLE IF NOT EXISTS ferry_stage (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
            st.table
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        let mut text = Vec::with_capacity(batch.entries.len() * 256);
        for e in &batch.entries {
            let key = e.key.clone().unwrap_or_else(|| "\\N".into());
            let hash = e.hash.map_or_else(|| "\\N".into(), hex::encode);
            let payload = e.payload.as_str().replace('\\', "\\\\");
            text.extend_from_slice(format!("audit\t1\t{}\t{}\t{key}\t{hash}\t{payload}\n", e.id, e.ts).as_bytes());
        }
        let mut stage = tx.copy_in_raw("COPY ferry_stage FROM STDIN").await.unwrap();
        stage.send(text).await.unwrap();
        stage.finish().await.unwrap();
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO {} SELECT * FROM ferry_stage ON CONFLICT (ledger, incarnation, id) DO NOTHING",
            st.table
        )))
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        copy += started.elapsed();
    }
    let rows = schema.ids("entries").await.len() as u64;
    assert_eq!(rows, 2 * BATCHES * 1000);
    let per = |d: Duration| d.as_secs_f64() * 1000.0 / BATCHES as f64;
    eprintln!("1000-row batches: UNNEST {:.2} ms/batch, COPY + INSERT … SELECT {:.2} ms/batch", per(unnest), per(copy));
    drop(conn);
    schema.drop().await;
}

/// The entries table as `create_table` made it before the chain check.
const JSONB_TABLE: &str = "CREATE TABLE $S.entries (ledger text NOT NULL, incarnation bigint NOT NULL, \
     id bigint NOT NULL, ts bigint NOT NULL, key text, hash text, payload jsonb NOT NULL, \
     PRIMARY KEY (ledger, incarnation, id))";

/// A `json` payload column keeps the text, so the chain is walked (this
/// batch's hashes are no chain: it breaks at id 1, which has none); a
/// `jsonb` one is still written, and its chain reported uncheckable.
#[tokio::test]
async fn the_chain_is_walked_over_a_json_payload_and_uncheckable_over_jsonb() {
    let chained = ChainStart { first: 1, prev_hash: Some([0; 32]) };
    let schema = Schema::new().await;
    let sink = schema.sink(json!({"create_table": true})).await.unwrap();
    sink.deliver(&batch(1, 1..=3)).await.unwrap();
    let exact: String =
        sqlx::query_scalar(AssertSqlSafe(format!("SELECT payload::text FROM {}.entries WHERE id = 2", schema.name)))
            .fetch_one(&schema.admin)
            .await
            .unwrap();
    assert_eq!(exact, r#"{"n":2,"s":"ü\"x"}"#);
    let h = sink.check(&target(1), &chained, 3).await.unwrap();
    match h.chain {
        Some(ChainCheck::Broken { id: 1, reason }) => assert!(reason.contains("no hash"), "{reason}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(sink.check(&target(1), &ChainStart::unchained(1), 3).await.unwrap().chain, None);
    schema.drop().await;

    let schema = Schema::new().await;
    schema.sql(JSONB_TABLE).await;
    let sink = schema.sink(json!({})).await.unwrap();
    sink.deliver(&batch(1, 1..=3)).await.unwrap();
    let h = sink.check(&target(1), &chained, 3).await.unwrap();
    assert_eq!(h.distinct, 3);
    match h.chain {
        Some(ChainCheck::Uncheckable { why }) => assert!(why.contains("jsonb"), "{why}"),
        other => panic!("{other:?}"),
    }
    schema.drop().await;
}
