//! Real databases for the tests (PostgreSQL 127.0.0.1:5432 user postgres,
//! MariaDB/MySQL 127.0.0.1:3306 user root), one database per test with a
//! unique name, dropped at the end; real stores in temp dirs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ferry_core::{Entry, LedgerName};
use ferry_outbox::{SourceConfig, SourceSettings, SourceState, SourceStatus, Sources};
use ferry_store::{Store, StoreConfig};
use sqlx::mysql::MySqlPool;
use sqlx::postgres::PgPool;
use sqlx::{AssertSqlSafe, Connection as _};

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const MY_ADMIN: &str = "mysql://root@127.0.0.1:3306/mysql";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Postgres,
    Mysql,
}

/// The payload column's type.
#[derive(Debug, Clone, Copy)]
pub enum PayloadType {
    /// `jsonb` / `JSON`.
    Json,
    /// `text` / `LONGTEXT`: anything can be written, JSON or not.
    Text,
}

pub enum Pool {
    Pg(PgPool),
    My(MySqlPool),
}

/// A database of its own with an `outbox` table.
pub struct TestDb {
    pub driver: Driver,
    pub name: String,
    pub url: String,
    pub pool: Pool,
    pub payload: PayloadType,
}

fn unique_name() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    format!("ferry_ob_{}_{}_{nanos}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

impl TestDb {
    pub async fn new(driver: Driver, payload: PayloadType) -> TestDb {
        let name = unique_name();
        match driver {
            Driver::Postgres => {
                let mut admin = sqlx::PgConnection::connect(PG_ADMIN).await.expect("PostgreSQL on 127.0.0.1:5432");
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
                let url = format!("postgres://postgres@127.0.0.1:5432/{name}");
                let pool = PgPool::connect(&url).await.unwrap();
                let ty = match payload {
                    PayloadType::Json => "jsonb",
                    PayloadType::Text => "text",
                };
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "CREATE TABLE outbox (id bigserial PRIMARY KEY, ledger text, key text, payload {ty}, \
                     created_at timestamptz NOT NULL DEFAULT now(), exported_at timestamptz)"
                )))
                .execute(&pool)
                .await
                .unwrap();
                TestDb { driver, name, url, pool: Pool::Pg(pool), payload }
            }
            Driver::Mysql => {
                let mut admin = sqlx::MySqlConnection::connect(MY_ADMIN).await.expect("MariaDB on 127.0.0.1:3306");
                sqlx::raw_sql(AssertSqlSafe(format!("CREATE DATABASE {name}"))).execute(&mut admin).await.unwrap();
                let url = format!("mysql://root@127.0.0.1:3306/{name}");
                let pool = MySqlPool::connect(&url).await.unwrap();
                let ty = match payload {
                    PayloadType::Json => "JSON",
                    PayloadType::Text => "LONGTEXT",
                };
                sqlx::raw_sql(AssertSqlSafe(format!(
                    "CREATE TABLE outbox (id BIGINT AUTO_INCREMENT PRIMARY KEY, ledger VARCHAR(200), `key` VARCHAR(300), \
                     payload {ty}, created_at DATETIME(6) NOT NULL DEFAULT NOW(6), exported_at DATETIME(6) NULL)"
                )))
                .execute(&pool)
                .await
                .unwrap();
                TestDb { driver, name, url, pool: Pool::My(pool), payload }
            }
        }
    }

    /// A statement without parameters; the number of rows it changed.
    pub async fn exec(&self, sql: &str) -> u64 {
        match &self.pool {
            Pool::Pg(p) => sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(p).await.unwrap().rows_affected(),
            Pool::My(p) => sqlx::raw_sql(AssertSqlSafe(sql.to_owned())).execute(p).await.unwrap().rows_affected(),
        }
    }

    /// Inserts a row; its id.
    pub async fn insert(&self, ledger: Option<&str>, key: Option<&str>, payload: &str) -> i64 {
        match &self.pool {
            Pool::Pg(p) => sqlx::query_scalar(match self.payload {
                PayloadType::Json => {
                    "INSERT INTO outbox (ledger, key, payload) VALUES ($1, $2, $3::jsonb) RETURNING id"
                }
                PayloadType::Text => "INSERT INTO outbox (ledger, key, payload) VALUES ($1, $2, $3) RETURNING id",
            })
            .bind(ledger)
            .bind(key)
            .bind(payload)
            .fetch_one(p)
            .await
            .unwrap(),
            Pool::My(p) => {
                let done = sqlx::query("INSERT INTO outbox (ledger, `key`, payload) VALUES (?, ?, ?)")
                    .bind(ledger)
                    .bind(key)
                    .bind(payload)
                    .execute(p)
                    .await
                    .unwrap();
                done.last_insert_id() as i64
            }
        }
    }

    /// `(id, exported)` of every row, in id order.
    pub async fn rows(&self) -> Vec<(i64, bool)> {
        let sql = "SELECT id, exported_at IS NOT NULL FROM outbox ORDER BY id";
        match &self.pool {
            Pool::Pg(p) => sqlx::query_as(sql).fetch_all(p).await.unwrap(),
            Pool::My(p) => {
                let rows: Vec<(i64, i64)> = sqlx::query_as(AssertSqlSafe(
                    "SELECT id, CAST(exported_at IS NOT NULL AS SIGNED) FROM outbox ORDER BY id",
                ))
                .fetch_all(p)
                .await
                .unwrap();
                rows.into_iter().map(|(id, e)| (id, e == 1)).collect()
            }
        }
    }

    /// A source on this database's `outbox` table; `extra` is more TOML.
    pub fn source(&self, name: &str, extra: &str) -> SourceSettings {
        let driver = match self.driver {
            Driver::Postgres => "postgres",
            Driver::Mysql => "mysql",
        };
        let text =
            format!("name = \"{name}\"\ndriver = \"{driver}\"\nurl = \"{}\"\npoll = \"50ms\"\n{extra}", self.url);
        let raw: SourceConfig = toml::from_str(&text).unwrap();
        SourceSettings::from_config(&raw).unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let (driver, name) = (self.driver, self.name.clone());
        let pool = match &self.pool {
            Pool::Pg(p) => Pool::Pg(p.clone()),
            Pool::My(p) => Pool::My(p.clone()),
        };
        // A runtime of its own: Drop may run inside the test's runtime.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                match pool {
                    Pool::Pg(p) => p.close().await,
                    Pool::My(p) => p.close().await,
                }
                match driver {
                    Driver::Postgres => {
                        if let Ok(mut admin) = sqlx::PgConnection::connect(PG_ADMIN).await {
                            let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                            let _ = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut admin).await;
                        }
                    }
                    Driver::Mysql => {
                        if let Ok(mut admin) = sqlx::MySqlConnection::connect(MY_ADMIN).await {
                            let sql = format!("DROP DATABASE IF EXISTS {name}");
                            let _ = sqlx::raw_sql(AssertSqlSafe(sql)).execute(&mut admin).await;
                        }
                    }
                }
            });
        })
        .join();
    }
}

pub fn ledger(name: &str) -> LedgerName {
    LedgerName::parse(name).unwrap()
}

pub fn open_store(dir: &std::path::Path) -> Store {
    match Store::open(StoreConfig::new(dir)) {
        Ok(store) => store,
        Err(e) => panic!("Store::open: {e}"),
    }
}

/// Every entry of a ledger (empty when it does not exist).
pub fn read_all(store: &Store, ledger: &LedgerName) -> Vec<Entry> {
    if store.ledger_info(ledger).is_none() {
        return Vec::new();
    }
    let mut out: Vec<Entry> = Vec::new();
    let mut from = None;
    loop {
        let batch = store.read_blocking(ledger, from, 1000).expect("read");
        if batch.entries.is_empty() {
            return out;
        }
        from = Some(batch.next);
        out.extend(batch.entries);
    }
}

/// Waits (at most 15 s) until `check` holds.
pub async fn until<F: FnMut() -> bool>(what: &str, mut check: F) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < Duration::from_secs(15), "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn status(sources: &Sources, name: &str) -> SourceStatus {
    sources.status_of(name).expect("source exists")
}

pub fn is(sources: &Sources, name: &str, state: SourceState) -> bool {
    status(sources, name).state == state
}
