//! The source database, PostgreSQL or MySQL/MariaDB, behind one `Conn`:
//! the lock, the batch's statements, the backlog, the purge.
//!
//! One connection does everything for a source: it takes the lock
//! (`pg_try_advisory_lock` / `GET_LOCK`, both held by the session) and runs
//! every batch, so losing the connection loses the lock and stops the
//! draining at the same instant; a batch can never run unlocked.
//!
//! Every identifier comes from a checked `Ident` and is quoted here
//! (`"x"` / `` `x` ``); every value is a bind parameter, except the row
//! ids of MySQL's `IN (…)`, which are integers formatted by us.

use std::str::FromStr as _;

use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{AssertSqlSafe, ConnectOptions as _, Connection as _};

use crate::settings::{Driver, Ident, LedgerFrom, SourceSettings};

/// PostgreSQL `application_name` is cut at 63 bytes; MySQL lock names at 64.
const NAME_BYTES_MAX: usize = 63;
const MYSQL_LOCK_NAME_MAX: usize = 64;

/// Rows a purge deletes per statement.
pub const PURGE_CHUNK: u64 = 10_000;

/// One outbox row as selected: the payload as text, whatever its column type.
#[derive(Debug, Clone)]
pub struct Row {
    pub id: i64,
    pub ledger: Option<String>,
    pub key: Option<String>,
    pub payload: Option<String>,
}

/// The statements of one source, built once from its checked identifiers.
#[derive(Debug)]
pub struct Statements {
    driver: Driver,
    select: String,
    /// PostgreSQL: the whole statement (`= ANY($1)`); MySQL: the prefix
    /// `… WHERE id IN (` the ids are appended to.
    mark: String,
    backlog: String,
    purge: String,
    /// The text the PostgreSQL lock's key is hashed from (advisory locks
    /// are per database). MySQL locks are per server: there the lock's
    /// name adds the database (`Conn::connect`).
    pub lock_name: String,
    /// The `application_name` a PostgreSQL lock connection announces.
    pub application_name: String,
}

fn quote(driver: Driver, ident: &Ident) -> String {
    let q = match driver {
        Driver::Postgres => '"',
        Driver::Mysql => '`',
    };
    ident.parts().map(|p| format!("{q}{p}{q}")).collect::<Vec<_>>().join(".")
}

fn cut(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// FNV-1a: a stable short digest for a lock name too long to spell out.
fn fnv64(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
}

impl Statements {
    pub fn new(s: &SourceSettings) -> Self {
        let d = s.driver;
        let q = |i: &Ident| quote(d, i);
        let (t, c) = (q(&s.table), &s.columns);
        let (id, payload, exported, created) = (q(&c.id), q(&c.payload), q(&c.exported_at), q(&c.created_at));
        let text = |col: Option<String>| match (d, col) {
            (Driver::Postgres, Some(col)) => format!("{col}::text"),
            (Driver::Postgres, None) => "NULL::text".to_owned(),
            (Driver::Mysql, Some(col)) => format!("CAST({col} AS CHAR)"),
            (Driver::Mysql, None) => "CAST(NULL AS CHAR)".to_owned(),
        };
        let ledger = text(match &s.ledger {
            LedgerFrom::Column(col) => Some(q(col)),
            LedgerFrom::Fixed(_) => None,
        });
        let key = text(c.key.as_ref().map(q));
        let payload = text(Some(payload));
        let base = format!("ferry-outbox:{}", s.name);
        match d {
            Driver::Postgres => Self {
                driver: d,
                select: format!(
                    "SELECT {id}::bigint, {ledger}, {key}, {payload} FROM {t} WHERE {exported} IS NULL \
                     ORDER BY {id} LIMIT $1 FOR UPDATE SKIP LOCKED"
                ),
                mark: format!("UPDATE {t} SET {exported} = now() WHERE {id} = ANY($1)"),
                backlog: format!(
                    "SELECT count(*), (EXTRACT(EPOCH FROM (now() - min({created}))) * 1000)::bigint \
                     FROM {t} WHERE {exported} IS NULL"
                ),
                purge: format!(
                    "DELETE FROM {t} WHERE {id} IN (SELECT {id} FROM {t} \
                     WHERE {exported} < now() - make_interval(secs => $1) LIMIT {PURGE_CHUNK})"
                ),
                application_name: cut(&format!("ferry-outbox {} pid {}", s.name, std::process::id()), NAME_BYTES_MAX)
                    .to_owned(),
                lock_name: base,
            },
            Driver::Mysql => Self {
                driver: d,
                select: format!(
                    "SELECT CAST({id} AS SIGNED), {ledger}, {key}, {payload} FROM {t} WHERE {exported} IS NULL \
                     ORDER BY {id} LIMIT ? FOR UPDATE SKIP LOCKED"
                ),
                mark: format!("UPDATE {t} SET {exported} = NOW(6) WHERE {id} IN ("),
                backlog: format!(
                    "SELECT count(*), CAST(TIMESTAMPDIFF(MICROSECOND, min({created}), NOW(6)) DIV 1000 AS SIGNED) \
                     FROM {t} WHERE {exported} IS NULL"
                ),
                purge: format!(
                    "DELETE FROM {t} WHERE {exported} < NOW(6) - INTERVAL ? MICROSECOND ORDER BY {id} LIMIT {PURGE_CHUNK}"
                ),
                application_name: String::new(),
                lock_name: base,
            },
        }
    }
}

/// `ferry-outbox:{database}:{source}`, or, past MySQL's 64 characters,
/// its start and a digest of the whole.
fn mysql_lock_name(base: &str, database: &str) -> String {
    let full = match base.split_once(':') {
        Some((prefix, name)) => format!("{prefix}:{database}:{name}"),
        None => format!("{base}:{database}"),
    };
    if full.len() <= MYSQL_LOCK_NAME_MAX {
        full
    } else {
        format!("{}:{:016x}", cut(&full, MYSQL_LOCK_NAME_MAX - 17), fnv64(&full))
    }
}

/// A source's lock connection.
pub enum Conn {
    Postgres(PgConnection),
    /// With its `CONNECTION_ID()`, which `IS_USED_LOCK` answers, and the
    /// name of the source's lock.
    Mysql(MySqlConnection, i64, String),
}

impl Conn {
    pub async fn connect(s: &SourceSettings, st: &Statements) -> Result<Conn, sqlx::Error> {
        match s.driver {
            Driver::Postgres => {
                let options = PgConnectOptions::from_str(&s.url)?.application_name(&st.application_name);
                Ok(Conn::Postgres(options.connect().await?))
            }
            Driver::Mysql => {
                let options = MySqlConnectOptions::from_str(&s.url)?;
                let mut conn = options.connect().await?;
                // No gap locks: under REPEATABLE READ a batch's locking read
                // would hold the gap past the last row (the supremum) and
                // make the application's inserts wait for the batch.
                sqlx::raw_sql("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED").execute(&mut conn).await?;
                let (id, database): (i64, Option<String>) =
                    sqlx::query_as("SELECT CAST(CONNECTION_ID() AS SIGNED), CAST(DATABASE() AS CHAR)")
                        .fetch_one(&mut conn)
                        .await?;
                Ok(Conn::Mysql(conn, id, mysql_lock_name(&st.lock_name, database.as_deref().unwrap_or(""))))
            }
        }
    }

    /// Takes the source's lock without waiting; true when this connection holds it.
    pub async fn try_lock(&mut self, st: &Statements) -> Result<bool, sqlx::Error> {
        match self {
            Conn::Postgres(c) => {
                sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtext($1))").bind(&st.lock_name).fetch_one(c).await
            }
            Conn::Mysql(c, _, lock) => {
                let got: Option<i64> =
                    sqlx::query_scalar("SELECT CAST(GET_LOCK(?, 0) AS SIGNED)").bind(&*lock).fetch_one(c).await?;
                Ok(got == Some(1))
            }
        }
    }

    /// Who holds the source's lock, as the database tells: a PostgreSQL
    /// `application_name` and backend pid, or a MySQL connection id, user
    /// and host. `None`: nobody.
    pub async fn lock_holder(&mut self, st: &Statements) -> Result<Option<String>, sqlx::Error> {
        match self {
            Conn::Postgres(c) => {
                sqlx::query_scalar(
                    "WITH k AS (SELECT hashtext($1)::bigint AS k) \
                     SELECT a.application_name || ' (backend pid ' || a.pid || ')' \
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid, k \
                     WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
                     AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
                     AND l.classid::bigint = ((k.k >> 32) & 4294967295) AND l.objid::bigint = (k.k & 4294967295) \
                     LIMIT 1",
                )
                .bind(&st.lock_name)
                .fetch_optional(c)
                .await
            }
            Conn::Mysql(c, own, lock) => {
                let holder: Option<i64> = sqlx::query_scalar("SELECT CAST(IS_USED_LOCK(?) AS SIGNED)")
                    .bind(&*lock)
                    .fetch_one(&mut *c)
                    .await?;
                let Some(holder) = holder else { return Ok(None) };
                let who: Option<String> = sqlx::query_scalar(
                    "SELECT CAST(CONCAT(USER, '@', HOST) AS CHAR) FROM information_schema.PROCESSLIST WHERE ID = ?",
                )
                .bind(holder)
                .fetch_optional(&mut *c)
                .await?;
                let mine =
                    if holder == *own { format!(", ferry-outbox pid {}", std::process::id()) } else { String::new() };
                Ok(Some(format!("connection {holder} ({}{mine})", who.as_deref().unwrap_or("?"))))
            }
        }
    }

    pub async fn begin(&mut self) -> Result<(), sqlx::Error> {
        self.raw("BEGIN").await
    }

    pub async fn commit(&mut self) -> Result<(), sqlx::Error> {
        self.raw("COMMIT").await
    }

    pub async fn rollback(&mut self) -> Result<(), sqlx::Error> {
        self.raw("ROLLBACK").await
    }

    async fn raw(&mut self, sql: &'static str) -> Result<(), sqlx::Error> {
        match self {
            Conn::Postgres(c) => sqlx::raw_sql(sql).execute(c).await.map(drop),
            Conn::Mysql(c, ..) => sqlx::raw_sql(sql).execute(c).await.map(drop),
        }
    }

    /// The oldest unexported rows, at most `limit`, locked for this
    /// transaction (rows another transaction holds are skipped).
    pub async fn select(&mut self, st: &Statements, limit: usize) -> Result<Vec<Row>, sqlx::Error> {
        type Raw = (i64, Option<String>, Option<String>, Option<String>);
        let rows: Vec<Raw> = match self {
            Conn::Postgres(c) => {
                sqlx::query_as(AssertSqlSafe(st.select.as_str())).bind(limit as i64).fetch_all(c).await?
            }
            Conn::Mysql(c, ..) => {
                sqlx::query_as(AssertSqlSafe(st.select.as_str())).bind(limit as i64).fetch_all(c).await?
            }
        };
        Ok(rows.into_iter().map(|(id, ledger, key, payload)| Row { id, ledger, key, payload }).collect())
    }

    /// Sets `exported_at` on these rows.
    pub async fn mark(&mut self, st: &Statements, ids: &[i64]) -> Result<u64, sqlx::Error> {
        match self {
            Conn::Postgres(c) => {
                let done = sqlx::query(AssertSqlSafe(st.mark.as_str())).bind(ids).execute(c).await?;
                Ok(done.rows_affected())
            }
            Conn::Mysql(c, ..) => {
                debug_assert_eq!(st.driver, Driver::Mysql);
                let list = ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",");
                let done = sqlx::raw_sql(AssertSqlSafe(format!("{}{list})", st.mark))).execute(c).await?;
                Ok(done.rows_affected())
            }
        }
    }

    /// Rows not exported yet, and the age in milliseconds of the oldest.
    pub async fn backlog(&mut self, st: &Statements) -> Result<(u64, Option<u64>), sqlx::Error> {
        let (count, age): (i64, Option<i64>) = match self {
            Conn::Postgres(c) => sqlx::query_as(AssertSqlSafe(st.backlog.as_str())).fetch_one(c).await?,
            Conn::Mysql(c, ..) => sqlx::query_as(AssertSqlSafe(st.backlog.as_str())).fetch_one(c).await?,
        };
        Ok((count.max(0) as u64, age.map(|a| a.max(0) as u64)))
    }

    /// Deletes at most `PURGE_CHUNK` rows exported more than `older_than` ago.
    pub async fn purge_chunk(&mut self, st: &Statements, older_than: std::time::Duration) -> Result<u64, sqlx::Error> {
        let done = match self {
            Conn::Postgres(c) => sqlx::query(AssertSqlSafe(st.purge.as_str()))
                .bind(older_than.as_secs_f64())
                .execute(c)
                .await?
                .rows_affected(),
            Conn::Mysql(c, ..) => {
                let micros = i64::try_from(older_than.as_micros()).unwrap_or(i64::MAX);
                sqlx::query(AssertSqlSafe(st.purge.as_str())).bind(micros).execute(c).await?.rows_affected()
            }
        };
        Ok(done)
    }

    pub async fn close(self) {
        let _ = match self {
            Conn::Postgres(c) => c.close().await,
            Conn::Mysql(c, ..) => c.close().await,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::SourceConfig;

    fn settings(driver: &str, url: &str, extra: &str) -> SourceSettings {
        let text = format!("name = \"app\"\ndriver = \"{driver}\"\nurl = \"{url}\"\n{extra}");
        let raw: SourceConfig = toml::from_str(&text).unwrap();
        SourceSettings::from_config(&raw).unwrap()
    }

    #[test]
    fn every_identifier_is_quoted_for_its_driver() {
        let extra = "table = \"app.outbox\"\nledger_column = \"tenant\"\ncolumns = { key = \"\", payload = \"body\" }";
        let pg = Statements::new(&settings("postgres", "postgres://u:p@h/db", extra));
        assert!(pg.select.starts_with("SELECT \"id\"::bigint, \"tenant\"::text, NULL::text, \"body\"::text FROM \"app\".\"outbox\" WHERE \"exported_at\" IS NULL"), "{}", pg.select);
        assert!(pg.mark.ends_with("WHERE \"id\" = ANY($1)"), "{}", pg.mark);
        assert_eq!(pg.lock_name, "ferry-outbox:app");
        assert!(pg.application_name.starts_with("ferry-outbox app pid "));
        let my = Statements::new(&settings("mysql", "mysql://u:p@h/db", extra));
        assert!(my.select.starts_with("SELECT CAST(`id` AS SIGNED), CAST(`tenant` AS CHAR), CAST(NULL AS CHAR), CAST(`body` AS CHAR) FROM `app`.`outbox`"), "{}", my.select);
        assert!(my.purge.contains("LIMIT 10000") && my.select.ends_with("LIMIT ? FOR UPDATE SKIP LOCKED"));
    }

    #[test]
    fn mysql_lock_names_name_the_database_and_fit_in_64_characters() {
        assert_eq!(mysql_lock_name("ferry-outbox:app", "shop"), "ferry-outbox:shop:app");
        let long = mysql_lock_name(&format!("ferry-outbox:{}", "x".repeat(63)), "a_database_name");
        assert_eq!(long.len(), 64);
        assert_ne!(long, mysql_lock_name(&format!("ferry-outbox:{}y", "x".repeat(62)), "a_database_name"));
    }
}
