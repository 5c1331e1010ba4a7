//! `postgres`: each batch is one `INSERT … SELECT … FROM UNNEST(arrays)
//! ON CONFLICT (ledger, incarnation, id) DO NOTHING` into a table
//! `(ledger text, incarnation bigint, id bigint, ts bigint, key text,
//! hash text, payload json)` whose unique key is `(ledger, incarnation,
//! id)`. With `transactional_cursor = true` the same transaction upserts
//! `ferry_cursors (exporter, ledger, incarnation, id, updated_at)` in the
//! table's schema. The batch is acknowledged after the COMMIT returned.
//!
//! **Why exactly once in effect.** A batch is one transaction, so the
//! table holds all of it or none of it, and only a batch that committed is
//! acknowledged: every id up to the runtime's cursor is in the table. A
//! batch that committed but whose acknowledgement was lost (a crash, a
//! timeout, a dropped future during COMMIT) is sent again with the same
//! ids; its rows hit the unique key and `DO NOTHING` keeps the first copy,
//! which is the same entry (entries never change). So the table holds each
//! `(ledger, incarnation, id)` once, whatever happened. The incarnation is
//! part of the key: a ledger deleted and created again writes new rows,
//! never over the old ledger's.
//!
//! With `transactional_cursor`, the destination also knows its own
//! position, in the same transaction as the rows, so it never disagrees
//! with them. `prepare` answers it (`Prepared::DestinationThrough`): above
//! the runtime's cursor it is a lost acknowledgement (nothing is sent
//! again); below it the database was restored from an older copy (the
//! runtime warns and sends the missing entries again). The upsert moves
//! the row only from the id right before the batch: if the row moved
//! under a running ferry (a restore, a second writer), the delivery is
//! refused as retryable and `prepare` reads the row again. With no row
//! for this incarnation (a new ledger, a cursor table created later, a
//! restore without it) the position is read from the rows: the greatest
//! id when the ids of this incarnation have no gap, else 0 (everything is
//! sent again from the ledger's First, and `DO NOTHING` keeps what is
//! there). The destination's position wins over the runtime's, so an
//! exporter `reset` does not move past or back over rows the table has;
//! change the rows and the cursor row to have that. One exception keeps
//! the runtime's own moves (a dead-lettered batch, entries pruned before
//! export) from looping: a position below the cursor is answered once,
//! and if the runtime comes back past it without a delivery, its cursor
//! stands and the next batch moves the row over the gap (`prepare`).
//!
//! **The chain check.** `payload` is `json` in the table `create_table`
//! makes: it keeps the entry's text byte for byte, which is what a
//! chained ledger's hashes were computed over, so the range check reads
//! the rows back (pages along the primary key) and recomputes the chain
//! (`ChainWalk`). A `jsonb` column (tables made before) is still accepted
//! and written, cast by its type; it normalises the text, so its chain is
//! reported uncheckable rather than broken everywhere.
//!
//! **Connections.** `build` connects once: bad credentials or an unknown
//! database refuse `config.url`, a missing table (without `create_table`)
//! or one of the wrong shape refuses `config.table`, a TLS verdict
//! `config.tls`/`config.ca_file`. A server that cannot be reached is not a
//! config error: the sink is built, logs a warning, and connects (and
//! checks or creates the table) at the first delivery; its ledgers back
//! off until then. A later permanent answer (a dropped table, a revoked
//! privilege) fails the ledger, and the table is checked again when it is
//! resumed.
//!
//! **Cancel safety.** A dropped delivery either never sent COMMIT (sqlx
//! rolls the transaction back before the connection is used again:
//! nothing happened) or sent it (the rows may be there: the replay is a
//! no-op, and with `transactional_cursor` the next `prepare` reads the
//! position the commit wrote).
//!
//! **Secrets.** Errors show the URL without userinfo or query, and never
//! the password (`PostgresConfig::secrets`).

mod config;
mod errors;
mod sql;

use std::collections::HashMap;
use std::str::FromStr as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use config::PostgresConfig;
use errors::Kind;
use ferry_core::{EntryId, LedgerName};
use ferry_export::check::{ChainRow, ChainWalk};
use ferry_export::sink::{ChainCheck, ChainStart};
use ferry_export::{Ack, Batch, Holding, Prepared, Secrets, SinkError, Target};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use sql::{Column, Statements};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgSslMode};
use sqlx::{AssertSqlSafe, Connection as _};

use crate::ConfigError;

/// How long a connection may take, at build and from the pool.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The server cancels a statement running longer (a lock held elsewhere).
const STATEMENT_TIMEOUT: &str = "30s";
/// A delivery, `prepare` or `check` that has not answered by then (a
/// server that stopped answering without closing the connection) is
/// abandoned as retryable.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Rows the chain check reads per query.
const CHAIN_PAGE: i64 = 256;

pub struct PostgresSink {
    config: PostgresConfig,
    pool: PgPool,
    /// The statements, once the table was checked (or created); forgotten
    /// after a permanent failure, so a resumed ledger checks it again.
    ready: Mutex<Option<Arc<Statements>>>,
    /// Serialises the check of the table.
    setting_up: tokio::sync::Mutex<()>,
    /// What `prepare` answered per (exporter, ledger, incarnation) while
    /// the destination was behind the runtime's cursor (see `prepare`).
    told: Mutex<HashMap<TargetKey, Told>>,
    secrets: Secrets,
    shown_url: String,
}

type TargetKey = (LedgerName, LedgerName, u64);

/// A position `prepare` answered below the runtime's cursor, until a
/// delivery moves the cursor row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Told {
    /// The row's id, answered as the destination's position.
    Position(EntryId),
    /// The runtime came back past that position without a delivery: it
    /// moved on by itself (a dead-lettered batch, entries pruned before
    /// export, a reset forward); the next batch starts after `cursor` and
    /// may move the row from `row`.
    Jump { row: EntryId, cursor: EntryId },
}

/// Why the table could not be made ready.
enum SetupError {
    /// A statement about the table failed.
    Table(sqlx::Error),
    /// The table is missing or has the wrong shape: the config is wrong.
    Refused { field: &'static str, message: String },
}

impl PostgresSink {
    /// Connects once to check the login and the table (creating it when
    /// asked); see the module docs for what refuses the config.
    pub async fn new(config: PostgresConfig) -> Result<Self, ConfigError> {
        let options = connect_options(&config).await?;
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(options.clone());
        let sink = Self {
            secrets: config.secrets(),
            shown_url: config.shown_url(),
            config,
            pool,
            ready: Mutex::new(None),
            setting_up: tokio::sync::Mutex::new(()),
            told: Mutex::new(HashMap::new()),
        };
        let connected = match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
            Ok(connected) => connected,
            Err(_) => {
                sink.unreachable(&format!("no answer within {CONNECT_TIMEOUT:?}"));
                return Ok(sink);
            }
        };
        let mut conn = match connected {
            Ok(conn) => conn,
            Err(e) => {
                let ca_file = sink.config.ca_file.is_some();
                if let Some(field) = errors::connect_refusal(&e, ca_file) {
                    let message = sink.redact(format!("connect to {}: {}", sink.shown_url, describe(&e)));
                    return Err(ConfigError::Refused { field: field.into(), message });
                }
                sink.unreachable(&describe(&e));
                return Ok(sink);
            }
        };
        let setup = sink.setup(&mut conn).await;
        let _ = conn.close().await;
        match setup {
            Ok(statements) => *sink.ready.lock().expect("ready lock") = Some(Arc::new(statements)),
            Err(SetupError::Refused { field, message }) => {
                return Err(ConfigError::Refused { field: field.into(), message });
            }
            Err(SetupError::Table(e)) if errors::table_refusal(&e) => {
                let message = sink.redact(format!("table {}: {}", sink.config.shown_table(), describe(&e)));
                return Err(ConfigError::Refused { field: "config.table".into(), message });
            }
            Err(SetupError::Table(e)) => sink.unreachable(&describe(&e)),
        }
        Ok(sink)
    }

    fn unreachable(&self, why: &str) {
        tracing::warn!(
            url = %self.shown_url,
            table = %self.config.shown_table(),
            "postgres sink: the database cannot be reached now ({}); connecting at the first delivery",
            self.redact(why.to_owned())
        );
    }

    /// What the runtime removes from this sink's errors again.
    pub fn secrets(&self) -> Secrets {
        self.secrets.clone()
    }

    /// True with `transactional_cursor`: `prepare` answers the position.
    pub fn keeps_position(&self) -> bool {
        self.config.transactional_cursor
    }

    fn redact(&self, message: String) -> String {
        self.secrets.redact(&message)
    }

    /// The destination's position with `transactional_cursor` (see the
    /// module docs); otherwise the runtime's cursor stands.
    ///
    /// A position below the cursor is answered once: if the runtime comes
    /// back with the cursor still past the same row and nothing was
    /// delivered between, it moved past the row on purpose (it
    /// dead-lettered a batch the sink refused, skipped entries retention
    /// pruned, or was reset forward), and answering the row again would
    /// send it round the same loop forever. Then the runtime's cursor
    /// stands, and the next batch may move the row over the gap. The memory
    /// is this process's: after a restart the row is answered once more
    /// (a dead-lettered batch is refused and dead-lettered again, which the
    /// dead-letter ledger's idempotency keys absorb).
    pub async fn prepare(&self, target: &Target, cursor: EntryId) -> Result<Prepared, SinkError> {
        if !self.config.transactional_cursor {
            return Ok(Prepared::Cursor);
        }
        let row = self.timed("read the position from", self.position(target)).await?;
        let key = (target.exporter.clone(), target.ledger.clone(), target.incarnation);
        let mut told = self.told.lock().expect("told lock");
        if row >= cursor {
            told.remove(&key);
            return Ok(Prepared::DestinationThrough(row));
        }
        match told.get(&key) {
            Some(Told::Position(r) | Told::Jump { row: r, .. }) if *r == row => {
                tracing::info!(exporter = %target.exporter, ledger = %target.ledger, cursor, destination = row, "postgres sink: the exporter moved past the destination's position without a delivery (a dead-lettered batch, pruned entries, a reset): going on from its cursor");
                told.insert(key, Told::Jump { row, cursor });
                Ok(Prepared::Cursor)
            }
            _ => {
                told.insert(key, Told::Position(row));
                Ok(Prepared::DestinationThrough(row))
            }
        }
    }

    async fn position(&self, target: &Target) -> Result<EntryId, SinkError> {
        let st = self.statements().await?;
        let incarnation = to_i64(target.incarnation, "incarnation")?;
        let row: Option<(i64, i64)> = sqlx::query_as(AssertSqlSafe(st.read_cursor.clone()))
            .bind(target.exporter.as_str())
            .bind(target.ledger.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.sql_error(&format!("read {}", st.cursors), e))?;
        if let Some((row_incarnation, id)) = row
            && row_incarnation == incarnation
        {
            return Ok(u64::try_from(id).unwrap_or(0));
        }
        let (count, min, max): (i64, Option<i64>, Option<i64>) = sqlx::query_as(AssertSqlSafe(st.summary.clone()))
            .bind(target.ledger.as_str())
            .bind(incarnation)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| self.sql_error(&format!("count the rows of {}", st.table), e))?;
        let through = match (min, max) {
            (Some(min), Some(max)) if count == max - min + 1 => max,
            _ => 0,
        };
        if count > 0 {
            tracing::info!(
                exporter = %target.exporter,
                ledger = %target.ledger,
                rows = count,
                through,
                "postgres sink: no cursor row for this ledger's incarnation; position read from the rows (0: they have a gap, everything is sent again and rows present are kept)"
            );
        }
        Ok(u64::try_from(through).unwrap_or(0))
    }

    pub async fn deliver(&self, batch: &Batch) -> Result<Ack, SinkError> {
        self.timed("write to", self.write(batch)).await?;
        if self.config.transactional_cursor {
            let key = (batch.exporter.clone(), batch.ledger.clone(), batch.incarnation);
            self.told.lock().expect("told lock").remove(&key);
        }
        Ok(Ack { through: batch.last_id() })
    }

    /// The id the cursor row must hold for this batch to move it: the one
    /// right before the batch, or the row the runtime moved past.
    fn expected_row(&self, batch: &Batch) -> EntryId {
        let before = batch.first_id() - 1;
        let key = (batch.exporter.clone(), batch.ledger.clone(), batch.incarnation);
        match self.told.lock().expect("told lock").get(&key) {
            Some(Told::Jump { row, cursor }) if *cursor == before => *row,
            _ => before,
        }
    }

    async fn write(&self, batch: &Batch) -> Result<(), SinkError> {
        let st = self.statements().await?;
        let rows = Rows::new(batch)?;
        let incarnation = to_i64(batch.incarnation, "incarnation")?;
        let insert = sqlx::query(AssertSqlSafe(st.insert.clone()))
            .bind(batch.ledger.as_str())
            .bind(incarnation)
            .bind(&rows.ids)
            .bind(&rows.ts)
            .bind(&rows.keys)
            .bind(&rows.hashes)
            .bind(&rows.payloads);
        let what = format!("INSERT into {}", st.table);
        if !self.config.transactional_cursor {
            // One statement is one transaction: all rows or none.
            insert.execute(&self.pool).await.map_err(|e| self.sql_error(&what, e))?;
            return Ok(());
        }
        let (expected, last) = (to_i64(self.expected_row(batch), "id")?, to_i64(batch.last_id(), "id")?);
        let mut tx = self.pool.begin().await.map_err(|e| self.sql_error("BEGIN", e))?;
        let moved: Option<i64> = sqlx::query_scalar(AssertSqlSafe(st.upsert_cursor.clone()))
            .bind(batch.exporter.as_str())
            .bind(batch.ledger.as_str())
            .bind(incarnation)
            .bind(last)
            .bind(expected)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| self.sql_error(&format!("upsert {}", st.cursors), e))?;
        if moved.is_none() {
            let _ = tx.rollback().await;
            return Err(SinkError::retryable(format!(
                "{} does not hold {}/{} at id {}, where this batch follows: the destination moved (restored, or \
                 written by another process); its position is read again",
                st.cursors, batch.exporter, batch.ledger, expected
            )));
        }
        insert.execute(&mut *tx).await.map_err(|e| self.sql_error(&what, e))?;
        tx.commit().await.map_err(|e| self.sql_error("COMMIT", e))?;
        Ok(())
    }

    /// Counts the rows of the ledger's incarnation for the range check,
    /// then, for a chained ledger, walks the chain over them in id order
    /// (a `json` payload column: a `jsonb` one lost the text the chain
    /// hashed, so its chain is reported uncheckable).
    pub async fn check(&self, target: &Target, start: &ChainStart, cursor: EntryId) -> Result<Holding, SinkError> {
        let mut holding = self.timed("count the rows in", self.count(target, start.first, cursor)).await?;
        if let Some(walk) = ChainWalk::new(start, cursor) {
            let st = self.statements().await?;
            holding.chain = Some(match st.payload {
                sql::PayloadType::Json => self.walk_chain(&st, target, cursor, walk).await?,
                sql::PayloadType::Jsonb => ChainCheck::Uncheckable {
                    why: format!(
                        "the payload column of {} is jsonb, which does not keep the payload's text the chain \
                         hashed; a table with payload json keeps it (docs/sinks.md)",
                        st.table
                    ),
                },
            });
        }
        Ok(holding)
    }

    /// Reads the incarnation's rows through the cursor in id order, `CHAIN_PAGE` at a time
    /// (never all in memory), into the walk; stops at the first break.
    /// Pages follow the primary key, so each is an index range scan.
    async fn walk_chain(
        &self,
        st: &Statements,
        target: &Target,
        cursor: EntryId,
        mut walk: ChainWalk,
    ) -> Result<ChainCheck, SinkError> {
        let incarnation = to_i64(target.incarnation, "incarnation")?;
        let through = to_i64(cursor, "id")?;
        let mut after: i64 = -1;
        loop {
            type Row = (i64, i64, Option<String>, Option<String>, String);
            let page: Vec<Row> = self
                .timed("read the rows of", async {
                    sqlx::query_as(AssertSqlSafe(st.chain_rows.clone()))
                        .bind(target.ledger.as_str())
                        .bind(incarnation)
                        .bind(after)
                        .bind(CHAIN_PAGE)
                        .bind(through)
                        .fetch_all(&self.pool)
                        .await
                        .map_err(|e| self.sql_error(&format!("read the rows of {} for the chain check", st.table), e))
                })
                .await?;
            let n = |v: i64| u64::try_from(v).unwrap_or(0);
            for (id, ts, key, hash, payload) in &page {
                let row = ChainRow {
                    id: n(*id),
                    ts: n(*ts),
                    key: key.as_deref(),
                    payload: payload.as_bytes(),
                    hash: hash.as_deref(),
                };
                if !walk.push(row) {
                    return Ok(walk.finish());
                }
            }
            match page.last() {
                Some((id, ..)) if page.len() as i64 == CHAIN_PAGE => after = *id,
                _ => return Ok(walk.finish()),
            }
        }
    }

    async fn count(&self, target: &Target, first: EntryId, cursor: EntryId) -> Result<Holding, SinkError> {
        let st = self.statements().await?;
        type Counts = (i64, i64, i64, i64, Option<i64>, Option<i64>);
        let (in_range, distinct, below_first, above_cursor, min, max): Counts =
            sqlx::query_as(AssertSqlSafe(st.check.clone()))
                .bind(target.ledger.as_str())
                .bind(to_i64(target.incarnation, "incarnation")?)
                .bind(to_i64(first, "id")?)
                .bind(to_i64(cursor, "id")?)
                .fetch_one(&self.pool)
                .await
                .map_err(|e| self.sql_error(&format!("count the rows of {}", st.table), e))?;
        let n = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok(Holding {
            in_range: n(in_range),
            distinct: n(distinct),
            below_first: n(below_first),
            above_cursor: n(above_cursor),
            min: min.map(n),
            max: max.map(n),
            chain: None,
        })
    }

    /// Runs `call` for at most `CALL_TIMEOUT`.
    async fn timed<T>(&self, what: &str, call: impl Future<Output = Result<T, SinkError>>) -> Result<T, SinkError> {
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(result) => result,
            Err(_) => Err(SinkError::retryable(format!(
                "{what} {} at {}: no answer within {CALL_TIMEOUT:?}",
                self.config.shown_table(),
                self.shown_url
            ))),
        }
    }

    /// A SQL failure as a sink error. A permanent one also forgets the
    /// table check, so the next attempt (after a resume) checks it again.
    fn sql_error(&self, what: &str, error: sqlx::Error) -> SinkError {
        let message = self.redact(format!("{what} at {}: {}", self.shown_url, describe(&error)));
        match errors::classify(&error) {
            Kind::Retryable => SinkError::retryable(message),
            Kind::Permanent => {
                *self.ready.lock().expect("ready lock") = None;
                SinkError::permanent(message)
            }
        }
    }

    /// The statements, checking (or creating) the table first if that has
    /// not been done yet.
    async fn statements(&self) -> Result<Arc<Statements>, SinkError> {
        if let Some(st) = self.ready.lock().expect("ready lock").clone() {
            return Ok(st);
        }
        let _one = self.setting_up.lock().await;
        if let Some(st) = self.ready.lock().expect("ready lock").clone() {
            return Ok(st);
        }
        let mut conn = self.pool.acquire().await.map_err(|e| self.sql_error("connect", e))?;
        let st = match self.setup(&mut conn).await {
            Ok(st) => Arc::new(st),
            Err(SetupError::Refused { field, message }) => {
                return Err(SinkError::permanent(format!("{field}: {message}")));
            }
            Err(SetupError::Table(e)) => {
                return Err(self.sql_error(&format!("check table {}", self.config.shown_table()), e));
            }
        };
        *self.ready.lock().expect("ready lock") = Some(st.clone());
        Ok(st)
    }

    /// Resolves the schema, creates the tables when asked, and checks
    /// their shape, unique key and privileges.
    async fn setup(&self, conn: &mut PgConnection) -> Result<Statements, SetupError> {
        let schema = match &self.config.schema {
            Some(schema) => schema.clone(),
            None => {
                let current: Option<String> =
                    sqlx::query_scalar(sql::CURRENT_SCHEMA).fetch_one(&mut *conn).await.map_err(SetupError::Table)?;
                current.ok_or_else(|| SetupError::Refused {
                    field: "config.table",
                    message: "the connection's search_path names no schema that exists: write schema.table".into(),
                })?
            }
        };
        let st = Statements::new(&schema, &self.config.table);
        if self.config.create_table {
            create(conn, &st.create_table).await?;
        }
        let fix = if self.config.create_table {
            "drop it or name another table (create_table creates it when missing)"
        } else {
            "create it as docs/sinks.md shows, or set create_table = true"
        };
        let entries = Shape {
            schema: &schema,
            table: &self.config.table,
            qualified: &st.table,
            columns: &sql::ENTRY_COLUMNS,
            key: &sql::ENTRY_KEY,
            privileges: "SELECT, INSERT",
            fix,
        };
        let found = entries.check(conn).await?;
        // The shape check accepted the column, so it is one of the two.
        let payload = found
            .iter()
            .find(|(name, ..)| name == "payload")
            .and_then(|(_, ty, ..)| sql::PayloadType::from_data_type(ty))
            .unwrap_or(sql::PayloadType::Jsonb);
        let st = st.with_payload(payload);
        if self.config.transactional_cursor {
            create(conn, &st.create_cursors).await?;
            let cursors = Shape {
                schema: &schema,
                table: sql::CURSORS_TABLE,
                qualified: &st.cursors,
                columns: &sql::CURSOR_COLUMNS,
                key: &sql::CURSOR_KEY,
                privileges: "SELECT, INSERT, UPDATE",
                fix: "drop it (ferry creates it) or fix it as docs/sinks.md shows",
            };
            cursors.check(conn).await?;
        }
        Ok(st)
    }
}

/// `CREATE TABLE IF NOT EXISTS`, once more if another session created the
/// table at the same moment (the catalog's unique index says so then).
async fn create(conn: &mut PgConnection, statement: &Arc<str>) -> Result<(), SetupError> {
    for attempt in 0..2 {
        match sqlx::query(AssertSqlSafe(statement.clone())).execute(&mut *conn).await {
            Ok(_) => return Ok(()),
            Err(sqlx::Error::Database(e)) if attempt == 0 && matches!(e.code().as_deref(), Some("23505" | "42P07")) => {
            }
            Err(e) => return Err(SetupError::Table(e)),
        }
    }
    Ok(())
}

/// A table the sink writes, and what it needs of it.
struct Shape<'a> {
    schema: &'a str,
    table: &'a str,
    qualified: &'a str,
    columns: &'a [Column],
    key: &'a [&'a str],
    privileges: &'static str,
    fix: &'static str,
}

impl Shape<'_> {
    /// Checks the table; answers its columns (`(name, type, nullable,
    /// has default)`).
    async fn check(&self, conn: &mut PgConnection) -> Result<Vec<(String, String, bool, bool)>, SetupError> {
        let (schema, table) = (self.schema, self.table);
        let found: Vec<(String, String, bool, bool)> = sqlx::query_as(sql::COLUMNS)
            .bind(schema)
            .bind(table)
            .fetch_all(&mut *conn)
            .await
            .map_err(SetupError::Table)?;
        if found.is_empty() {
            return Err(self.refused(format!("table {schema}.{table} does not exist (or this user cannot see it)")));
        }
        let problems = shape_problems(self.columns, &found);
        if !problems.is_empty() {
            return Err(self.refused(format!("table {schema}.{table} does not fit: {}", problems.join("; "))));
        }
        let keyed: bool = sqlx::query_scalar(sql::UNIQUE_KEY)
            .bind(self.qualified)
            .bind(self.key)
            .bind(self.key.len() as i16)
            .fetch_one(&mut *conn)
            .await
            .map_err(SetupError::Table)?;
        if !keyed {
            return Err(self.refused(format!(
                "table {schema}.{table} has no unique key on ({}) (a PRIMARY KEY or UNIQUE constraint, not \
                 deferrable, not partial)",
                self.key.join(", ")
            )));
        }
        let allowed: bool = sqlx::query_scalar(sql::PRIVILEGES)
            .bind(self.qualified)
            .bind(self.privileges)
            .fetch_one(&mut *conn)
            .await
            .map_err(SetupError::Table)?;
        if !allowed {
            return Err(SetupError::Refused {
                field: "config.table",
                message: format!("this user lacks {} on {schema}.{table}: grant them", self.privileges),
            });
        }
        Ok(found)
    }

    fn refused(&self, problem: String) -> SetupError {
        SetupError::Refused { field: "config.table", message: format!("{problem}: {}", self.fix) }
    }
}

/// What is wrong with a table's columns (`(name, type, nullable,
/// has default)` as `information_schema` lists them), each a phrase.
fn shape_problems(needed: &[Column], found: &[(String, String, bool, bool)]) -> Vec<String> {
    let mut problems = Vec::new();
    for column in needed {
        match found.iter().find(|(name, ..)| name == column.name) {
            None => problems.push(format!("no column {}", column.name)),
            Some((_, ty, _, _)) if !column.types.contains(&ty.as_str()) => {
                problems.push(format!("column {} is {ty}, not {}", column.name, column.types[0]));
            }
            Some((_, _, false, _)) if column.nullable => {
                problems.push(format!("column {} is NOT NULL, but ferry writes NULL there", column.name));
            }
            Some(_) => {}
        }
    }
    for (name, _, nullable, default) in found {
        if !nullable && !default && !needed.iter().any(|c| c.name == name) {
            problems.push(format!("column {name} is NOT NULL without a default, and ferry does not write it"));
        }
    }
    problems
}

/// The connection options: the URL, TLS as configured (verify-full with
/// the CA file read now, or none), a statement timeout.
async fn connect_options(config: &PostgresConfig) -> Result<PgConnectOptions, ConfigError> {
    let options = PgConnectOptions::from_str(&config.url).map_err(|e| ConfigError::Invalid {
        field: "config.url".into(),
        problem: config.secrets().redact(&format!("{}: {e}", config.shown_url())),
        fix: "write postgres://USER:PASSWORD@HOST:PORT/DATABASE",
    })?;
    // Notices ("relation … already exists, skipping") are not worth a log
    // line each.
    let options = options
        .application_name("ferry")
        .options([("statement_timeout", STATEMENT_TIMEOUT), ("client_min_messages", "warning")]);
    if !config.tls {
        return Ok(options.ssl_mode(PgSslMode::Disable));
    }
    let options = options.ssl_mode(PgSslMode::VerifyFull);
    let Some(path) = &config.ca_file else { return Ok(options) };
    let refused = |message: String| ConfigError::Refused { field: "config.ca_file".into(), message };
    let pem = tokio::fs::read(path).await.map_err(|e| refused(format!("read {}: {e}", path.display())))?;
    let certificates = CertificateDer::pem_slice_iter(&pem).collect::<Result<Vec<_>, _>>();
    match certificates {
        Ok(certificates) if !certificates.is_empty() => Ok(options.ssl_root_cert_from_pem(pem)),
        Ok(_) => Err(refused(format!("{} holds no PEM certificate", path.display()))),
        Err(e) => Err(refused(format!("{}: {e}", path.display()))),
    }
}

/// An error's message: the server's words with its SQLSTATE, or sqlx's
/// chain of causes.
fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Database(e) => match e.code() {
            Some(code) => format!("{} (SQLSTATE {code})", e.message()),
            None => e.message().to_owned(),
        },
        sqlx::Error::PoolTimedOut => {
            format!("no connection within {CONNECT_TIMEOUT:?} (the server refused connections or did not answer)")
        }
        e => crate::error::error_chain(e),
    }
}

fn to_i64(value: u64, what: &str) -> Result<i64, SinkError> {
    i64::try_from(value).map_err(|_| SinkError::permanent(format!("{what} {value} does not fit PostgreSQL's bigint")))
}

/// A batch as the columns of `UNNEST`.
struct Rows<'a> {
    ids: Vec<i64>,
    ts: Vec<i64>,
    keys: Vec<Option<&'a str>>,
    hashes: Vec<Option<String>>,
    payloads: Vec<&'a str>,
}

impl<'a> Rows<'a> {
    fn new(batch: &'a Batch) -> Result<Self, SinkError> {
        let n = batch.entries.len();
        let mut rows = Rows {
            ids: Vec::with_capacity(n),
            ts: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            hashes: Vec::with_capacity(n),
            payloads: Vec::with_capacity(n),
        };
        for e in &batch.entries {
            rows.ids.push(to_i64(e.id, "id")?);
            rows.ts.push(to_i64(e.ts, "ts")?);
            rows.keys.push(e.key.as_deref());
            rows.hashes.push(e.hash.map(hex::encode));
            rows.payloads.push(e.payload.as_str());
        }
        Ok(rows)
    }
}

#[cfg(test)]
mod tests;
