//! `clickhouse`: batches go to ClickHouse's HTTP interface as
//! `INSERT INTO db.table (ledger, incarnation, id, ts, key, hash, payload)
//! FORMAT JSONEachRow`, gzip'd, with the user and password in the
//! `X-ClickHouse-User` / `X-ClickHouse-Key` headers (never in a URL). The
//! payload is the entry's JSON text as a string (old servers cannot load
//! an object into a `String` column), byte for byte; `key` and `hash`
//! (lower-case hex) are null when absent. Works with 18.16 (the Debian
//! package) and current servers.
//!
//! **Why exactly once in effect.** The runtime re-sends a batch until an
//! INSERT carrying it succeeded, so every entry arrives at least once; a
//! batch is acknowledged only after ClickHouse answered 200 to the INSERT
//! that carried it (the rows are then in a part in the server's files;
//! `docs/sinks.md` says what that means for power loss). The
//! table is a `ReplacingMergeTree` ordered by `(ledger, incarnation, id)`
//! (created so with `create_table`, and checked so at build otherwise), so
//! every repeat of an entry — a retry after a lost answer, a replay after
//! `kill -9`, a reset — has the same sorting key as the first copy and
//! collapses into it. Collapsing happens in background merges, at no fixed
//! time: the exactly-once view is `SELECT … FINAL` (or counting
//! `uniqExact((ledger, incarnation, id))`), which the range check uses. The
//! incarnation keeps a ledger deleted and created again (ids from 1 again)
//! apart from the old one. ClickHouse keeps no position of its own here,
//! so `prepare` answers `Cursor`: repeats are harmless, nothing to undo.
//!
//! **The chain check.** For a chained ledger the range check reads the
//! incarnation's rows back from `FINAL` in id order, as a stream, and
//! recomputes the hash chain over them (`ChainWalk`): `payload` is the
//! exact text the chain hashed, and a row replaced by a later insert of
//! its key is what `FINAL` shows, so it breaks the chain at its id.
//!
//! **Group commit.** Each INSERT makes a part, and many tiny parts make
//! ClickHouse refuse inserts ("Too many parts"). So concurrent deliveries
//! (up to `max_parallel_ledgers` ledgers) share INSERTs: a delivery joins a
//! queue; one flusher task lingers while deliveries keep joining (until
//! none joined for `GROUP_QUIET`, and never longer than `GROUP_WINDOW`),
//! sends everything queued (up to `GROUP_BYTES_MAX`) as one INSERT,
//! answers every delivery in it with that INSERT's outcome, and goes on
//! while deliveries wait (those that arrived while the INSERT was being
//! sent go in the next). Once `GROUP_BYTES_ENOUGH` waits (one batch of
//! 1,000 small entries) it sends at once: a part that size is a good part,
//! and lingering would only slow a catch-up. So 1,000 small ledgers
//! catching up, whose cursor commits pace their arrivals a few ms apart,
//! share few INSERTs, while deliveries that have all joined already (every
//! parallel slot waiting) never wait out a window for company that cannot
//! come. A delivery whose future was dropped before its rows were taken
//! leaves them out; after that, they may land unacknowledged, which the
//! replay collapses like any other repeat.
//!
//! **Deduplication token.** On servers that have `insert_deduplication_token`
//! (found in `system.settings`; 22.x on, never 18.16), an INSERT carrying
//! one batch sends `{ledger}:{incarnation}:{first}-{last}`, so a retried
//! INSERT is dropped by the server before it makes a part (with the
//! table's `non_replicated_deduplication_window`, set by `create_table`
//! where supported). An INSERT joining several batches sends none: its
//! make-up depends on timing, so a retry is almost never the same group and
//! joined tokens would almost never match, while ReplacingMergeTree
//! collapses the replay whatever its grouping.
//!
//! **Errors.** Connection errors, timeouts, 5xx without a known code and
//! transient server codes (too many parts, memory, network) are retried;
//! codes that will fail the same way again (unknown table or column, type
//! mismatch, syntax, authentication, access) are permanent: the ledger goes
//! `failed`, never skipped. Messages carry ClickHouse's exception text,
//! trimmed, and never the password.

mod config;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use config::ClickHouseConfig;
use ferry_core::{Entry, EntryId};
use ferry_export::check::{ChainRow, ChainWalk};
use ferry_export::sink::{ChainCheck, ChainStart};
use ferry_export::{Ack, Batch, Holding, Secrets, SinkError, Target};
use reqwest::StatusCode;
use tokio::sync::{OnceCell, oneshot};

use crate::ConfigError;
use crate::error::error_chain;

/// The flusher sends when no delivery joined for this long…
const GROUP_QUIET: Duration = Duration::from_millis(20);
/// …or when it has lingered this long, whatever keeps joining.
const GROUP_WINDOW: Duration = Duration::from_millis(250);
/// Uncompressed rows one INSERT carries at most (at least one batch).
const GROUP_BYTES_MAX: usize = 16 << 20;
/// Uncompressed rows that make a part big enough on their own: with this
/// much waiting the flusher sends at once instead of lingering (a batch of
/// 1,000 small entries is about this size).
const GROUP_BYTES_ENOUGH: usize = 256 << 10;
/// Characters of a server's exception text kept in a message.
const EXCEPTION_CHARS_MAX: usize = 300;

/// The columns ferry writes, with the types it accepts for each.
const COLUMNS: [(&str, &[&str]); 7] = [
    ("ledger", &["String", "LowCardinality(String)"]),
    ("incarnation", &["UInt64"]),
    ("id", &["UInt64"]),
    ("ts", &["UInt64"]),
    ("key", &["Nullable(String)", "LowCardinality(Nullable(String))"]),
    ("hash", &["Nullable(String)", "LowCardinality(Nullable(String))"]),
    ("payload", &["String"]),
];

/// The sorting key that makes replays collapse, as `system.tables` shows it.
const SORTING_KEY: &str = "ledger, incarnation, id";

/// Server codes that will fail the same way again.
const PERMANENT_CODES: [u32; 26] = [
    6,   // CANNOT_PARSE_TEXT
    16,  // NO_SUCH_COLUMN_IN_TABLE
    26,  // CANNOT_PARSE_QUOTED_STRING
    27,  // CANNOT_PARSE_INPUT_ASSERTION_FAILED
    36,  // BAD_ARGUMENTS
    44,  // ILLEGAL_COLUMN
    47,  // UNKNOWN_IDENTIFIER
    48,  // NOT_IMPLEMENTED
    53,  // TYPE_MISMATCH
    60,  // UNKNOWN_TABLE
    62,  // SYNTAX_ERROR
    69,  // ARGUMENT_OUT_OF_BOUND
    70,  // CANNOT_CONVERT_TYPE
    73,  // UNKNOWN_FORMAT
    81,  // UNKNOWN_DATABASE
    115, // UNKNOWN_SETTING
    117, // INCORRECT_DATA
    164, // READONLY
    192, // UNKNOWN_USER
    193, // WRONG_PASSWORD
    194, // REQUIRED_PASSWORD
    195, // IP_ADDRESS_NOT_ALLOWED
    349, // CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN
    386, // NO_COMMON_TYPE
    497, // ACCESS_DENIED
    516, // AUTHENTICATION_FAILED
];

/// Why a request to the server failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// No answer: connection refused or reset, timeout, DNS.
    Unreachable(String),
    /// The server answered with an error.
    Answered { status: u16, code: Option<u32>, text: String },
    /// A definite no to the configuration, naming the key to change.
    Refused { field: &'static str, message: String },
}

impl Failure {
    /// The runtime's view: retry, or stop the ledger.
    pub(crate) fn into_sink_error(self, secrets: &Secrets) -> SinkError {
        match self {
            Self::Unreachable(message) => SinkError::retryable(secrets.redact(&message)),
            Self::Refused { field, message } => SinkError::permanent(secrets.redact(&format!("{field}: {message}"))),
            Self::Answered { status, code, text } => {
                let message = secrets.redact(&text);
                if permanent(status, code) { SinkError::permanent(message) } else { SinkError::retryable(message) }
            }
        }
    }
}

/// Whether an error answer will come again for the same request: known
/// permanent codes are; other codes, and answers without one, by status
/// (5xx, 408 and 429 are transient, other 4xx not).
pub(crate) fn permanent(status: u16, code: Option<u32>) -> bool {
    match code {
        Some(code) if PERMANENT_CODES.contains(&code) => true,
        Some(_) => false,
        None => (400..500).contains(&status) && status != 408 && status != 429,
    }
}

/// The key to change for an authentication or access error, if it is one.
pub(crate) fn auth_field(code: Option<u32>) -> Option<&'static str> {
    match code? {
        192 | 195 | 497 => Some("config.user"),
        193 | 194 | 516 => Some("config.password"),
        _ => None,
    }
}

/// The server's exception code: the `X-ClickHouse-Exception-Code` header of
/// newer servers, else the body's leading `Code: N` (18.16 has only that).
pub(crate) fn exception_code(header: Option<&str>, body: &str) -> Option<u32> {
    if let Some(code) = header.and_then(|h| h.trim().parse().ok()) {
        return Some(code);
    }
    let rest = body.trim_start().strip_prefix("Code: ")?;
    rest[..rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len())].parse().ok()
}

/// The exception's own words from an error body, one line, trimmed:
/// 18.16 writes `Code: 60, e.displayText() = DB::Exception: Table x doesn't
/// exist., e.what() = DB::Exception`, newer servers `Code: 60. DB::Exception:
/// Table x does not exist. (UNKNOWN_TABLE) (version …)`.
pub(crate) fn exception_text(body: &str) -> String {
    let line = body.trim().lines().next().unwrap_or_default();
    let text = match line.find("DB::Exception: ") {
        Some(at) => &line[at + "DB::Exception: ".len()..],
        None => line,
    };
    let text = text.split(", e.what() = ").next().unwrap_or(text);
    let text = text.split(" (version ").next().unwrap_or(text).trim();
    let mut out: String = text.chars().take(EXCEPTION_CHARS_MAX).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// What ferry learnt of the server once (at build, or at first use when it
/// could not be reached then), the table checked (or created) with it.
#[derive(Debug)]
struct ServerInfo {
    version: String,
    /// The server has `insert_deduplication_token`.
    dedup_token: bool,
}

/// A delivery waiting for an INSERT.
struct Waiter {
    /// JSONEachRow lines of its batch.
    rows: Vec<u8>,
    /// `{ledger}:{incarnation}:{first}-{last}`.
    token: String,
    reply: oneshot::Sender<Result<(), SinkError>>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Waiter>,
    /// A flusher task is running (it empties `waiting`, then clears this).
    flushing: bool,
}

struct Inner {
    config: ClickHouseConfig,
    client: reqwest::Client,
    secrets: Secrets,
    /// The base URL as messages show it.
    shown_url: String,
    server: OnceCell<ServerInfo>,
    queue: Mutex<Queue>,
    /// Told of every delivery that joins the queue.
    joined: tokio::sync::Notify,
}

pub struct ClickHouseSink {
    inner: Arc<Inner>,
}

impl ClickHouseSink {
    /// Builds the client, then asks the server once: its version and
    /// features, and the table (created with `create_table`, else checked
    /// for the right columns and engine). A definite no is an error naming
    /// the key; no answer is a warning, and the sink asks at first use.
    pub async fn new(config: ClickHouseConfig) -> Result<Self, ConfigError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| ConfigError::Invalid {
                field: "config.ca_file".into(),
                problem: format!("{}: {e}", path.display()),
                fix: "name a readable PEM file with the CA certificate(s) to trust",
            })?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).ok().filter(|c| !c.is_empty()).ok_or_else(|| {
                    ConfigError::Invalid {
                        field: "config.ca_file".into(),
                        problem: format!("{}: no PEM certificate in it", path.display()),
                        fix: "name a PEM file holding \"-----BEGIN CERTIFICATE-----\" blocks",
                    }
                })?;
            builder = builder.tls_certs_only(certs);
        }
        let client = builder.build().map_err(|error| ConfigError::HttpClient { error: error.without_url() })?;
        let inner = Inner {
            shown_url: config.url.as_str().trim_end_matches('/').to_owned(),
            secrets: config.secrets(),
            config,
            client,
            server: OnceCell::new(),
            queue: Mutex::new(Queue::default()),
            joined: tokio::sync::Notify::new(),
        };
        let sink = Self { inner: Arc::new(inner) };
        match sink.inner.ready().await {
            Ok(info) => tracing::info!(
                url = %sink.inner.shown_url,
                table = %sink.inner.config.qualified_table(),
                version = %info.version,
                dedup_token = info.dedup_token,
                "clickhouse sink ready"
            ),
            Err(Failure::Refused { field, message }) => {
                return Err(ConfigError::Refused { field: field.into(), message: sink.inner.secrets.redact(&message) });
            }
            Err(other) => {
                let error = other.into_sink_error(&sink.inner.secrets);
                tracing::warn!(
                    url = %sink.inner.shown_url,
                    %error,
                    "clickhouse sink: the server did not answer at start; its ledgers back off until it does"
                );
            }
        }
        Ok(sink)
    }

    /// What the runtime removes from this sink's errors again.
    pub fn secrets(&self) -> Secrets {
        self.inner.secrets.clone()
    }

    /// Delivers through the shared INSERT queue (see the module docs).
    pub async fn deliver(&self, batch: &Batch) -> Result<Ack, SinkError> {
        self.inner.ready().await.map_err(|f| f.into_sink_error(&self.inner.secrets))?;
        let rows = rows(batch);
        let token = format!("{}:{}:{}-{}", batch.ledger, batch.incarnation, batch.first_id(), batch.last_id());
        let (reply, answer) = oneshot::channel();
        let start_flusher = {
            let mut queue = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            queue.waiting.push_back(Waiter { rows, token, reply });
            !std::mem::replace(&mut queue.flushing, true)
        };
        self.inner.joined.notify_one();
        if start_flusher {
            // A task of its own, so a dropped delivery never cancels an
            // INSERT other deliveries wait for.
            tokio::spawn(flush(self.inner.clone()));
        }
        match answer.await {
            Ok(Ok(())) => Ok(Ack { through: batch.last_id() }),
            Ok(Err(error)) => Err(error),
            Err(_) => Err(SinkError::retryable("the shared INSERT was abandoned before it answered")),
        }
    }

    /// The range check, in the exactly-once view (`FINAL`): the counts,
    /// then, for a chained ledger, the chain walked over the rows read
    /// back in id order (`walk_chain`).
    pub async fn check(&self, target: &Target, start: &ChainStart, cursor: EntryId) -> Result<Holding, SinkError> {
        let first = start.first;
        let inner = &self.inner;
        inner.ready().await.map_err(|f| f.into_sink_error(&inner.secrets))?;
        let sql = format!(
            "SELECT countIf(id >= {first} AND id <= {cursor}), uniqExactIf(id, id >= {first} AND id <= {cursor}), \
             countIf(id < {first}), countIf(id > {cursor}), count(), min(id), max(id) \
             FROM {} FINAL WHERE ledger = {} AND incarnation = {} FORMAT TabSeparated",
            inner.config.qualified_table(),
            quote(target.ledger.as_str()),
            target.incarnation
        );
        let text = inner.query(&sql).await.map_err(|f| f.into_sink_error(&inner.secrets))?;
        let n: Vec<u64> = text.trim().split('\t').filter_map(|v| v.parse().ok()).collect();
        let [in_range, distinct, below_first, above_cursor, count, min, max] = n[..] else {
            return Err(SinkError::retryable(format!("unexpected answer to the range check: {:?}", text.trim())));
        };
        let (min, max) = if count == 0 { (None, None) } else { (Some(min), Some(max)) };
        let chain = match ChainWalk::new(start, cursor) {
            Some(walk) => {
                Some(inner.walk_chain(target, cursor, walk).await.map_err(|f| f.into_sink_error(&inner.secrets))?)
            }
            None => None,
        };
        Ok(Holding { in_range, distinct, below_first, above_cursor, min, max, chain })
    }
}

/// A row as the chain walk reads it back (`JSONEachRow`; 64-bit integers
/// come quoted from servers that quote them, bare from others).
#[derive(serde::Deserialize)]
struct ChainLine {
    id: Integer,
    ts: Integer,
    key: Option<String>,
    hash: Option<String>,
    payload: String,
}

#[derive(serde::Deserialize)]
#[serde(untagged)]
enum Integer {
    Bare(u64),
    Quoted(String),
}

impl Integer {
    fn get(&self) -> Option<u64> {
        match self {
            Self::Bare(n) => Some(*n),
            Self::Quoted(text) => text.parse().ok(),
        }
    }
}

/// Feeds one line of the answer to the walk; false once it broke.
fn walk_line(walk: &mut ChainWalk, line: &[u8]) -> Result<bool, Failure> {
    let unexpected = || {
        let shown: String = String::from_utf8_lossy(line).chars().take(EXCEPTION_CHARS_MAX).collect();
        // A server that fails mid-answer appends its exception to a 200.
        Failure::Unreachable(format!("unexpected line in the rows read back for the chain check: {shown}"))
    };
    let row: ChainLine = serde_json::from_slice(line).map_err(|_| unexpected())?;
    let (Some(id), Some(ts)) = (row.id.get(), row.ts.get()) else { return Err(unexpected()) };
    Ok(walk.push(ChainRow {
        id,
        ts,
        key: row.key.as_deref(),
        payload: row.payload.as_bytes(),
        hash: row.hash.as_deref(),
    }))
}

/// Sends what waits in the queue, a group at a time, until it is empty.
async fn flush(inner: Arc<Inner>) {
    // Should this task end early (a panic, a dropped runtime), the
    // deliveries still queued get an error (their senders drop) and a
    // later one starts a new task. Disarmed on the normal way out, where
    // a new task may already own the queue.
    struct Reset<'a> {
        inner: &'a Inner,
        armed: bool,
    }
    impl Drop for Reset<'_> {
        fn drop(&mut self) {
            if self.armed {
                let mut queue = self.inner.queue.lock().unwrap_or_else(|p| p.into_inner());
                queue.flushing = false;
                queue.waiting.clear();
            }
        }
    }
    let mut reset = Reset { inner: &inner, armed: true };
    loop {
        // Linger only while what waits is too small to be a good part on
        // its own: big batches go at once, small ones gather.
        let until = tokio::time::Instant::now() + GROUP_WINDOW;
        let quiet = || until.min(tokio::time::Instant::now() + GROUP_QUIET);
        while !inner.enough_queued() && tokio::time::timeout_at(quiet(), inner.joined.notified()).await.is_ok() {}
        let group = {
            let mut queue = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            let mut group = Vec::new();
            let mut bytes = 0;
            while let Some(w) = queue.waiting.front() {
                if !group.is_empty() && bytes + w.rows.len() > GROUP_BYTES_MAX {
                    break;
                }
                let w = queue.waiting.pop_front().expect("front exists");
                // A delivery dropped before its turn: leave its rows out.
                if w.reply.is_closed() {
                    continue;
                }
                bytes += w.rows.len();
                group.push(w);
            }
            if group.is_empty() {
                queue.flushing = false;
                reset.armed = false;
                return;
            }
            group
        };
        let sent = std::time::Instant::now();
        let result = inner.insert(&group).await.map_err(|f| f.into_sink_error(&inner.secrets));
        tracing::debug!(batches = group.len(), took = ?sent.elapsed(), ok = result.is_ok(), "clickhouse INSERT");
        if let Err(error) = &result {
            tracing::debug!(%error, batches = group.len(), "clickhouse INSERT failed");
        }
        for w in group {
            let _ = w.reply.send(result.clone());
        }
    }
}

impl Inner {
    /// Whether the rows waiting make a part worth an INSERT without
    /// waiting for more (`GROUP_BYTES_ENOUGH`).
    fn enough_queued(&self) -> bool {
        let queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.waiting.iter().map(|w| w.rows.len()).sum::<usize>() >= GROUP_BYTES_ENOUGH
    }

    /// The server's facts, asking (and checking the table) once.
    async fn ready(&self) -> Result<&ServerInfo, Failure> {
        self.server.get_or_try_init(|| self.introduce()).await
    }

    async fn introduce(&self) -> Result<ServerInfo, Failure> {
        let (db, table) = (&self.config.database, &self.config.table);
        let facts = self
            .query(&format!(
                "SELECT version(), \
                 (SELECT count() FROM system.settings WHERE name = 'insert_deduplication_token'), \
                 (SELECT count() FROM system.merge_tree_settings WHERE name = 'non_replicated_deduplication_window'), \
                 (SELECT count() FROM system.databases WHERE name = {}) FORMAT TabSeparated",
                quote(db)
            ))
            .await?;
        let facts: Vec<&str> = facts.trim().split('\t').collect();
        let [version, token, window, database] = facts[..] else {
            return Err(Failure::Unreachable(format!("unexpected answer to SELECT version(): {facts:?}")));
        };
        if database != "1" {
            return Err(Failure::Refused {
                field: "config.database",
                message: format!("database {db} does not exist on {}: create it, or name another", self.shown_url),
            });
        }
        let info = ServerInfo { version: version.to_owned(), dedup_token: token == "1" };
        if self.config.create_table {
            let settings = if window == "1" { " SETTINGS non_replicated_deduplication_window = 1000" } else { "" };
            self.query(&format!("{}{settings}", create_table_sql(db, table))).await?;
        }
        self.check_table().await?;
        Ok(info)
    }

    /// The table has ferry's columns with fitting types, collapses replays
    /// (a ReplacingMergeTree) and sorts by `(ledger, incarnation, id)`.
    async fn check_table(&self) -> Result<(), Failure> {
        let (db, table) = (&self.config.database, &self.config.table);
        let qualified = self.config.qualified_table();
        let columns = self
            .query(&format!(
                "SELECT name, type FROM system.columns WHERE database = {} AND table = {} FORMAT TabSeparated",
                quote(db),
                quote(table)
            ))
            .await?;
        let columns: Vec<(&str, &str)> = columns.lines().filter_map(|l| l.split_once('\t')).collect();
        if columns.is_empty() {
            return Err(Failure::Refused {
                field: "config.table",
                message: format!(
                    "table {qualified} does not exist: set create_table = true, or create it: {}",
                    create_table_sql(db, table)
                ),
            });
        }
        let mut problems = Vec::new();
        for (name, types) in COLUMNS {
            match columns.iter().find(|(n, _)| *n == name) {
                None => problems.push(format!("no column {name} ({})", types[0])),
                Some((_, t)) if !types.contains(t) => problems.push(format!("column {name} is {t}, not {}", types[0])),
                Some(_) => {}
            }
        }
        let engine = self
            .query(&format!(
                "SELECT engine, sorting_key FROM system.tables WHERE database = {} AND name = {} FORMAT TabSeparated",
                quote(db),
                quote(table)
            ))
            .await?;
        let (engine, sorting_key) = engine.trim_end_matches('\n').split_once('\t').unwrap_or(("", ""));
        if !engine.ends_with("ReplacingMergeTree") {
            problems.push(format!("engine {engine} does not collapse replays (ReplacingMergeTree does)"));
        } else if sorting_key != SORTING_KEY {
            problems.push(format!("ORDER BY ({sorting_key}) is not ({SORTING_KEY}), so replays would not collapse"));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Failure::Refused {
                field: "config.table",
                message: format!(
                    "table {qualified} has the wrong shape: {}; ferry needs: {}",
                    problems.join("; "),
                    create_table_sql(db, table)
                ),
            })
        }
    }

    /// One INSERT of every waiter's rows.
    async fn insert(&self, group: &[Waiter]) -> Result<(), Failure> {
        let info = self.ready().await?;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        for w in group {
            std::io::Write::write_all(&mut gz, &w.rows).map_err(|e| Failure::Unreachable(format!("gzip: {e}")))?;
        }
        let body = gz.finish().map_err(|e| Failure::Unreachable(format!("gzip: {e}")))?;
        let sql = format!(
            "INSERT INTO {} (ledger, incarnation, id, ts, key, hash, payload) FORMAT JSONEachRow",
            self.config.qualified_table()
        );
        let mut params = vec![("query", sql.as_str()), ("enable_http_compression", "1")];
        if let [one] = group
            && info.dedup_token
        {
            params.push(("insert_deduplication_token", one.token.as_str()));
        }
        let request = self.request().query(&params).header(reqwest::header::CONTENT_ENCODING, "gzip").body(body);
        self.send(request, "INSERT").await.map(drop)
    }

    /// Reads the incarnation's rows through the cursor back in id order, in the exactly-once
    /// view, as a stream (never the whole answer in memory), and walks the
    /// chain over them; stops reading at the first break.
    async fn walk_chain(&self, target: &Target, cursor: EntryId, mut walk: ChainWalk) -> Result<ChainCheck, Failure> {
        let sql = format!(
            "SELECT id, ts, key, hash, payload FROM {} FINAL WHERE ledger = {} AND incarnation = {} \
             AND id <= {cursor} ORDER BY id FORMAT JSONEachRow",
            self.config.qualified_table(),
            quote(target.ledger.as_str()),
            target.incarnation
        );
        let mut response = self.send_for_response(self.request().body(sql), "SELECT").await?;
        let read_error = |e: reqwest::Error| {
            Failure::Unreachable(format!(
                "SELECT at {}: reading the rows for the chain check: {}",
                self.shown_url,
                error_chain(&e.without_url())
            ))
        };
        let mut pending: Vec<u8> = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(read_error)? {
            pending.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(end) = pending[start..].iter().position(|b| *b == b'\n') {
                let line = &pending[start..start + end];
                start += end + 1;
                if !line.is_empty() && !walk_line(&mut walk, line)? {
                    return Ok(walk.finish());
                }
            }
            pending.drain(..start);
        }
        if !pending.is_empty() {
            walk_line(&mut walk, &pending)?;
        }
        Ok(walk.finish())
    }

    /// Runs one statement (no data) and returns the answer's body.
    async fn query(&self, sql: &str) -> Result<String, Failure> {
        let what = sql.split_whitespace().next().unwrap_or("query");
        // The status then covers the whole answer, not only its start.
        let request = self.request().query(&[("wait_end_of_query", "1")]).body(sql.to_owned());
        self.send(request, what).await
    }

    fn request(&self) -> reqwest::RequestBuilder {
        let mut request = self.client.post(self.config.url.clone()).header("X-ClickHouse-User", &self.config.user);
        if let Some(password) = &self.config.password {
            request = request.header("X-ClickHouse-Key", password);
        }
        request
    }

    async fn send(&self, request: reqwest::RequestBuilder, what: &str) -> Result<String, Failure> {
        let response = self.send_for_response(request, what).await?;
        response.text().await.map_err(|e| {
            Failure::Unreachable(format!("{what} at {}: reading the answer: {}", self.shown_url, e.without_url()))
        })
    }

    /// Sends the request; a 200 answer is returned unread, any other is
    /// read and made the failure it names.
    async fn send_for_response(
        &self,
        request: reqwest::RequestBuilder,
        what: &str,
    ) -> Result<reqwest::Response, Failure> {
        let response = request.send().await.map_err(|e| {
            let how = if e.is_timeout() { "timed out" } else { "failed" };
            Failure::Unreachable(format!("{what} at {} {how}: {}", self.shown_url, error_chain(&e.without_url())))
        })?;
        let status = response.status();
        if status == StatusCode::OK {
            return Ok(response);
        }
        let header =
            response.headers().get("X-ClickHouse-Exception-Code").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let body = response.text().await.map_err(|e| {
            Failure::Unreachable(format!("{what} at {}: reading the answer: {}", self.shown_url, e.without_url()))
        })?;
        let code = exception_code(header.as_deref(), &body);
        let text = format!(
            "{what} at {} answered {status}{}: {}",
            self.shown_url,
            code.map(|c| format!(" (code {c})")).unwrap_or_default(),
            exception_text(&body)
        );
        if let Some(field) = auth_field(code) {
            return Err(Failure::Refused { field, message: self.secrets.redact(&text) });
        }
        Err(Failure::Answered { status: status.as_u16(), code, text: self.secrets.redact(&text) })
    }
}

/// The table `create_table` makes (without the optional SETTINGS).
pub fn create_table_sql(db: &str, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {db}.{table} (ledger String, incarnation UInt64, id UInt64, ts UInt64, \
         key Nullable(String), hash Nullable(String), payload String) \
         ENGINE = ReplacingMergeTree ORDER BY (ledger, incarnation, id)"
    )
}

/// A SQL string literal.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// The batch as JSONEachRow lines.
pub(crate) fn rows(batch: &Batch) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.entries.iter().map(|e| e.payload.len() + 200).sum());
    for e in &batch.entries {
        write_row(&mut out, batch.incarnation, e);
    }
    out
}

fn write_row(out: &mut Vec<u8>, incarnation: u64, e: &Entry) {
    use std::io::Write as _;
    // Ledger names need no escaping: their alphabet is [a-z0-9._-].
    let _ = write!(out, r#"{{"ledger":"{}","incarnation":{incarnation},"id":{},"ts":{},"key":"#, e.ledger, e.id, e.ts);
    match &e.key {
        // Writing into a Vec cannot fail.
        Some(key) => drop(serde_json::to_writer(&mut *out, key)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","hash":"#);
    match &e.hash {
        Some(hash) => {
            out.push(b'"');
            out.extend_from_slice(hex::encode(hash).as_bytes());
            out.push(b'"');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(br#","payload":"#);
    let _ = serde_json::to_writer(&mut *out, e.payload.as_str());
    out.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests;
