//! ferry's sinks (SPEC §5), one directory each with the same files:
//! `config.rs` (raw → validated, no I/O) and `mod.rs` (the `Sink` and, in
//! its `//!` docs, why it is exactly once in effect). The set is closed:
//! `SinkConfig` and `AnySink` are enums with a `match`, not a registry.

pub mod clickhouse;
mod error;
pub mod file;
pub mod http;
pub mod nats;
pub mod postgres;
pub mod stdout;

pub use error::ConfigError;
use ferry_core::EntryId;
use ferry_export::sink::ChainStart;
use ferry_export::{Ack, Batch, Holding, Prepared, Secrets, Sink, SinkError, Target};

/// A sink kind's validated configuration.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    Stdout(stdout::StdoutConfig),
    File(file::FileConfig),
    Http(http::HttpConfig),
    ClickHouse(clickhouse::ClickHouseConfig),
    Postgres(postgres::PostgresConfig),
    Nats(nats::NatsConfig),
}

impl SinkConfig {
    /// Checks `[exporters.config]` for sink `kind`, touching no disk or
    /// network. Errors start with the offending field (`config.url: …`).
    pub fn validate(kind: &str, config: &serde_json::Map<String, serde_json::Value>) -> Result<Self, ConfigError> {
        let value = serde_json::Value::Object(config.clone());
        match kind {
            "stdout" => stdout::StdoutConfig::validate(value).map(Self::Stdout),
            "file" => file::FileConfig::validate(value).map(Self::File),
            "http" => http::HttpConfig::validate(value).map(Self::Http),
            "clickhouse" => clickhouse::ClickHouseConfig::validate(value).map(Self::ClickHouse),
            "postgres" => postgres::PostgresConfig::validate(value).map(Self::Postgres),
            "nats" => nats::NatsConfig::validate(value).map(Self::Nats),
            k => Err(ConfigError::UnknownSink { kind: k.into() }),
        }
    }

    /// Builds the sink (creates the file sink's directory, the HTTP client;
    /// a database or bus sink asks its destination here). A definite answer
    /// that the config cannot work (wrong credentials, a missing table
    /// without `create_table`, a table of the wrong shape) is an error that
    /// stops startup; a destination that cannot be reached is not: the
    /// sink is built and its ledgers back off until it answers.
    pub async fn build(self) -> Result<AnySink, ConfigError> {
        Ok(match self {
            Self::Stdout(c) => AnySink::Stdout(stdout::StdoutSink::new(c)),
            Self::File(c) => AnySink::File(file::FileSink::new(c)?),
            Self::Http(c) => AnySink::Http(http::HttpSink::new(c)?),
            Self::ClickHouse(c) => AnySink::ClickHouse(clickhouse::ClickHouseSink::new(c).await?),
            Self::Postgres(c) => AnySink::Postgres(postgres::PostgresSink::new(c).await?),
            Self::Nats(c) => AnySink::Nats(nats::NatsSink::new(c).await?),
        })
    }
}

/// Deserialises a sink's raw config, naming the field on error
/// (`config.dir: invalid type: …`).
fn parse<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = match e.path().to_string().as_str() {
            "." => "config".to_owned(),
            path => format!("config.{path}"),
        };
        ConfigError::Parse { field, message: e.inner().to_string() }
    })
}

/// Any built sink.
pub enum AnySink {
    Stdout(stdout::StdoutSink),
    File(file::FileSink),
    Http(http::HttpSink),
    ClickHouse(clickhouse::ClickHouseSink),
    Postgres(postgres::PostgresSink),
    Nats(nats::NatsSink),
}

impl Sink for AnySink {
    async fn prepare(&self, target: &Target, cursor: EntryId) -> Result<Prepared, SinkError> {
        let ledger = &target.ledger;
        match self {
            Self::Stdout(s) => s.prepare(ledger, cursor).await.map(|()| Prepared::Cursor),
            Self::File(s) => s.prepare(ledger, cursor).await.map(|()| Prepared::Cursor),
            Self::Http(s) => s.prepare(ledger, cursor).await.map(|()| Prepared::Cursor),
            // ClickHouse keeps no position: replays collapse (see its docs).
            Self::ClickHouse(_) => Ok(Prepared::Cursor),
            Self::Postgres(s) => s.prepare(target, cursor).await,
            Self::Nats(s) => s.prepare(target, cursor).await,
        }
    }

    async fn deliver(&self, batch: &Batch) -> Result<Ack, SinkError> {
        match self {
            Self::Stdout(s) => s.deliver(batch).await,
            Self::File(s) => s.deliver(batch).await,
            Self::Http(s) => s.deliver(batch).await,
            Self::ClickHouse(s) => s.deliver(batch).await,
            Self::Postgres(s) => s.deliver(batch).await,
            Self::Nats(s) => s.deliver(batch).await,
        }
    }

    fn secrets(&self) -> Secrets {
        match self {
            Self::Stdout(_) | Self::File(_) => Secrets::default(),
            Self::Http(s) => s.secrets(),
            Self::ClickHouse(s) => s.secrets(),
            Self::Postgres(s) => s.secrets(),
            Self::Nats(s) => s.secrets(),
        }
    }

    fn keeps_position(&self) -> bool {
        match self {
            Self::Stdout(_) | Self::File(_) | Self::Http(_) | Self::ClickHouse(_) => false,
            Self::Postgres(s) => s.keeps_position(),
            Self::Nats(s) => s.keeps_position(),
        }
    }

    async fn check(&self, target: &Target, start: &ChainStart, cursor: EntryId) -> Result<Option<Holding>, SinkError> {
        match self {
            Self::File(s) => s.check(&target.ledger, *start, cursor).await.map(Some),
            Self::ClickHouse(s) => s.check(target, start, cursor).await.map(Some),
            Self::Postgres(s) => s.check(target, start, cursor).await.map(Some),
            Self::Nats(s) => s.check(target, start, cursor).await.map(Some),
            Self::Stdout(_) | Self::Http(_) => Ok(None),
        }
    }
}

/// The batch as JSON lines, one entry per line.
pub(crate) fn json_lines(batch: &Batch) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.entries.iter().map(|e| e.payload.len() + 96).sum());
    for e in &batch.entries {
        e.write_json(&mut out);
        out.push(b'\n');
    }
    out
}
