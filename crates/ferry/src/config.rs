//! The TOML configuration (SPEC §8): parsed strictly (unknown keys and bad
//! values are errors naming the key and line), then validated into the
//! settings each part of ferry takes. Raw → validated, nothing in between.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use std::sync::Arc;

use ferry_api::{AccessToken, ApiConfig, Scope, Secret, Tokens, parse_digest};
use ferry_core::LedgerName;
use ferry_core::limits::EXPORTERS_MAX;
use ferry_core::limits::{
    BODY_BYTES_MAX_DEFAULT, BODY_BYTES_MAX_LIMIT, BUFFERED_BODY_BYTES_MAX_DEFAULT, CHUNK_ENTRIES_MAX,
    CHUNK_ENTRIES_MIN, ENTRY_BYTES_MAX_DEFAULT, ENTRY_BYTES_MAX_LIMIT, HEADER_READ_TIMEOUT_DEFAULT,
    IDLE_TIMEOUT_DEFAULT, PINS_MAX_DEFAULT, WATCHERS_MAX_DEFAULT,
};
use ferry_core::units::{Seconds, Size};
use ferry_export::{ExporterConfig, ExporterSettings};
use ferry_outbox::{SourceConfig, SourceSettings};
use ferry_sinks::SinkConfig;
use ferry_store::StoreConfig;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub data_dir: PathBuf,
    pub server: Server,
    pub storage: Storage,
    pub retention: Retention,
    pub log: Log,
    pub exporters: Vec<toml::Spanned<ExporterConfig>>,
    pub sources: Vec<toml::Spanned<SourceConfig>>,
    /// The line each `[[exporters]]` table starts on (for error messages).
    #[serde(skip)]
    pub exporter_lines: Vec<usize>,
    /// The line each `[[sources]]` table starts on (for error messages).
    #[serde(skip)]
    pub source_lines: Vec<usize>,
    /// `--exporter` flags, after the file's exporters.
    #[serde(skip)]
    pub exporter_flags: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: String,
    pub tokens: Vec<String>,
    pub scoped_tokens: Vec<ScopedToken>,
    pub token_file: PathBuf,
    pub metrics_auth: bool,
    pub max_body_bytes: Size,
    pub max_watchers: usize,
    pub max_pins: usize,
    pub shutdown_timeout: Seconds,
    /// Unset: as many as the open-file limit leaves after the store's
    /// reserve, at most `CONNECTIONS_MAX_DEFAULT`.
    pub max_connections: Option<usize>,
    pub header_read_timeout: Seconds,
    pub idle_timeout: Seconds,
    pub max_buffered_body_bytes: Size,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    /// Globs of the ledgers with their own series on `/metrics`; none by
    /// default (per-ledger series are opt-in: each ledger adds series).
    pub metrics_ledgers: Vec<toml::Spanned<String>>,
    /// The line of each `metrics_ledgers` glob (for error messages).
    #[serde(skip)]
    pub metrics_ledger_lines: Vec<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Storage {
    pub chunk_entries: Option<u64>,
    pub max_entry_bytes: Size,
    pub auto_create_ledgers: bool,
    pub catalog_dir: PathBuf,
    pub hot_dir: PathBuf,
    pub ledgers_dir: PathBuf,
    /// The quota of every ledger; none by default.
    pub max_ledger_bytes: ByteLimit,
    /// Globs of the ledgers created with a hash chain; none by default
    /// (`["*"]`: every ledger); see `ferry_store::StoreConfig::hash_chain`.
    pub hash_chain: Vec<String>,
    /// A chained ledger publishes `ledger.checkpoint` at every multiple of
    /// this id; 0: never.
    pub checkpoint_every: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// `""` (or absent): keep forever.
    #[serde(deserialize_with = "no_age_limit_if_empty")]
    pub max_age: Option<Seconds>,
    /// The bytes of all ledgers together; none by default.
    pub max_bytes: ByteLimit,
    pub respect_exporters: bool,
    /// Keyed with their place in the file, so a bad name is refused with
    /// its line.
    pub ledgers: std::collections::BTreeMap<toml::Spanned<String>, LedgerRetention>,
    /// The line of each `ledgers` key (for error messages).
    #[serde(skip)]
    pub ledger_lines: std::collections::BTreeMap<String, usize>,
}

/// A byte limit written as a size (`"10GiB"`), a number of bytes, or `0` /
/// `""` for no limit; negative numbers are refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteLimit(pub Option<u64>);

impl<'de> Deserialize<'de> for ByteLimit {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteLimit;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size like \"10GiB\", a number of bytes, or 0 or \"\" for no limit")
            }

            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<ByteLimit, E> {
                Ok(ByteLimit((n > 0).then_some(n)))
            }

            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<ByteLimit, E> {
                u64::try_from(n).map(|n| ByteLimit((n > 0).then_some(n))).map_err(|_| {
                    E::custom(format!("{n} is negative; write a size like \"10GiB\", or 0 or \"\" for no limit"))
                })
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<ByteLimit, E> {
                if text.is_empty() {
                    return Ok(ByteLimit(None));
                }
                let size = serde::de::value::StrDeserializer::<E>::new(text);
                Size::deserialize(size).map(|s| ByteLimit((s.0 > 0).then_some(s.0)))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// `[retention] max_age`: a duration, or `""` for none.
fn no_age_limit_if_empty<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Seconds>, D::Error> {
    let text = String::deserialize(d)?;
    if text.is_empty() {
        return Ok(None);
    }
    Seconds::deserialize(serde::de::value::StrDeserializer::<D::Error>::new(&text)).map(Some)
}

/// One `[retention.ledgers]` value: a duration string (its `max_age`, the
/// form older configs use) or a table `{ max_age, max_bytes }`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LedgerRetention {
    pub max_age: Option<Seconds>,
    pub max_bytes: ByteLimit,
}

impl<'de> Deserialize<'de> for LedgerRetention {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Table {
            max_age: Option<Seconds>,
            #[serde(default)]
            max_bytes: ByteLimit,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = LedgerRetention;

            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a max_age like \"7d\", or a table like { max_age = \"7d\", max_bytes = \"10GiB\" }")
            }

            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<LedgerRetention, E> {
                let age = Seconds::deserialize(serde::de::value::StrDeserializer::<E>::new(text))?;
                Ok(LedgerRetention { max_age: Some(age), max_bytes: ByteLimit(None) })
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<LedgerRetention, A::Error> {
                let t = Table::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(LedgerRetention { max_age: t.max_age, max_bytes: t.max_bytes })
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Log {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./ferry-data"),
            server: Server::default(),
            storage: Storage::default(),
            retention: Retention::default(),
            log: Log::default(),
            exporters: Vec::new(),
            sources: Vec::new(),
            exporter_lines: Vec::new(),
            source_lines: Vec::new(),
            exporter_flags: Vec::new(),
        }
    }
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            tokens: Vec::new(),
            scoped_tokens: Vec::new(),
            token_file: PathBuf::new(),
            metrics_auth: false,
            max_body_bytes: Size(BODY_BYTES_MAX_DEFAULT),
            max_watchers: WATCHERS_MAX_DEFAULT,
            max_pins: PINS_MAX_DEFAULT,
            shutdown_timeout: Seconds(Duration::from_secs(30)),
            max_connections: None,
            header_read_timeout: Seconds(HEADER_READ_TIMEOUT_DEFAULT),
            idle_timeout: Seconds(IDLE_TIMEOUT_DEFAULT),
            max_buffered_body_bytes: Size(BUFFERED_BODY_BYTES_MAX_DEFAULT),
            tls_cert: PathBuf::new(),
            tls_key: PathBuf::new(),
            metrics_ledgers: Vec::new(),
            metrics_ledger_lines: Vec::new(),
        }
    }
}

impl Default for Storage {
    fn default() -> Self {
        Self {
            chunk_entries: None,
            max_entry_bytes: Size(ENTRY_BYTES_MAX_DEFAULT),
            auto_create_ledgers: true,
            catalog_dir: PathBuf::new(),
            hot_dir: PathBuf::new(),
            ledgers_dir: PathBuf::new(),
            max_ledger_bytes: ByteLimit(None),
            hash_chain: Vec::new(),
            checkpoint_every: ferry_store::CHECKPOINT_EVERY_DEFAULT,
        }
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            max_age: None,
            max_bytes: ByteLimit(None),
            respect_exporters: true,
            ledgers: Default::default(),
            ledger_lines: Default::default(),
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self { level: LogLevel::Info, format: LogFormat::Text }
    }
}

/// What `ferry serve` runs with, after validation.
pub struct ServeSettings {
    pub listen: SocketAddr,
    pub store: StoreConfig,
    pub api: ApiConfig,
    pub shutdown_timeout: Duration,
    pub log: Log,
    /// Validated exporters and their sinks' configs, not yet built.
    pub exporters: Vec<(ExporterSettings, SinkConfig)>,
    /// Validated outbox sources (`[[sources]]`), not yet connected.
    pub sources: Vec<SourceSettings>,
    /// `[retention] respect_exporters`: exporter cursors hold retention.
    pub respect_exporters: bool,
    /// `[server]` connection limits; `max_connections` unset is sized from
    /// the open-file limit once `ferry serve` has raised it.
    pub connections: Connections,
    /// `[server] tls_cert` and `tls_key`, both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// The `[server]` connection limits as configured.
#[derive(Debug, Clone)]
pub struct Connections {
    pub max_connections: Option<usize>,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Whether two directory paths name the same directory however they are
/// spelled (`./out` and `out`, `a/../b` and `b`, a symlink and its target
/// when both exist).
fn same_dir(a: &std::path::Path, b: &std::path::Path) -> bool {
    fn key(p: &std::path::Path) -> std::path::PathBuf {
        if let Ok(real) = std::fs::canonicalize(p) {
            return real;
        }
        let absolute = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let mut out = std::path::PathBuf::new();
        for part in absolute.components() {
            match part {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    }
    key(a) == key(b)
}

impl Config {
    /// Reads and parses a config file. Errors name the file, key and line.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        let line = |at: usize| 1 + text.as_bytes()[..at.min(text.len())].iter().filter(|b| **b == b'\n').count();
        // The parser's own rendering quotes the offending line, which may
        // hold a secret (a URL with a password, a token): name the place
        // and the problem only.
        let mut config: Config = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => {
                let start = span.start.min(text.len());
                let before: String = text[..start].chars().rev().take_while(|c| *c != '\n').collect();
                let before: String = before.chars().rev().collect();
                let key = key_before(&before).map(|k| format!(" (key {k})")).unwrap_or_default();
                let column = 1 + before.chars().count();
                anyhow::anyhow!(
                    "TOML parse error at line {}, column {column}{key}: {}",
                    line(start),
                    e.message().trim_end()
                )
            }
            None => anyhow::anyhow!("TOML parse error: {}", e.message().trim_end()),
        })?;
        config.exporter_lines = config.exporters.iter().map(|e| line(e.span().start)).collect();
        config.source_lines = config.sources.iter().map(|s| line(s.span().start)).collect();
        config.server.metrics_ledger_lines =
            config.server.metrics_ledgers.iter().map(|g| line(g.span().start)).collect();
        config.retention.ledger_lines =
            config.retention.ledgers.keys().map(|k| (k.get_ref().clone(), line(k.span().start))).collect();
        Ok(config)
    }

    /// Validates every exporter (file first, then `--exporter` flags) and
    /// its sink config, touching no storage or network.
    fn exporters(&self) -> anyhow::Result<Vec<(ExporterSettings, SinkConfig)>> {
        let mut raw: Vec<(String, ExporterConfig)> = Vec::new();
        for (i, e) in self.exporters.iter().enumerate() {
            let line = self.exporter_lines.get(i).copied().unwrap_or(0);
            raw.push((format!("exporters[{i}] {:?} (line {line})", e.get_ref().name), e.get_ref().clone()));
        }
        for flag in &self.exporter_flags {
            let parsed = ExporterConfig::from_flag(flag).map_err(|e| anyhow::anyhow!("--exporter {flag:?}: {e}"))?;
            raw.push((format!("--exporter {:?}", parsed.name), parsed));
        }
        if raw.len() > EXPORTERS_MAX {
            bail!("exporters: {} configured; at most {EXPORTERS_MAX}", raw.len());
        }
        let mut out: Vec<(ExporterSettings, SinkConfig)> = Vec::new();
        for (what, config) in raw {
            let settings = config.validate().map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            let sink =
                SinkConfig::validate(&config.sink, &config.config).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            if out.iter().any(|(s, _)| s.name == settings.name) {
                bail!("{what}: name: another exporter is already called {}", settings.name);
            }
            // Each file sink cuts its files back to its own cursors.
            if let SinkConfig::File(f) = &sink
                && out.iter().any(|(_, o)| matches!(o, SinkConfig::File(g) if same_dir(&g.dir, &f.dir)))
            {
                bail!("{what}: config.dir: {} is the directory of another file exporter", f.dir.display());
            }
            out.push((settings, sink));
        }
        Ok(out)
    }

    /// Validates every `[[sources]]` table, touching no network: names
    /// unique among sources (a source may share an exporter's name: they
    /// are told apart by their routes), identifiers checked, one of
    /// `ledger` and `ledger_column`. Errors name `sources[i] "name" (line N)`.
    fn sources(&self) -> anyhow::Result<Vec<SourceSettings>> {
        let mut out: Vec<SourceSettings> = Vec::with_capacity(self.sources.len());
        for (i, s) in self.sources.iter().enumerate() {
            let raw = s.get_ref();
            let line = self.source_lines.get(i).copied().unwrap_or(0);
            let what = format!("sources[{i}] {:?} (line {line})", raw.name);
            let settings = SourceSettings::from_config(raw).map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            if out.iter().any(|o| o.name == settings.name) {
                bail!("{what}: name: another source is already called {}", settings.name);
            }
            out.push(settings);
        }
        Ok(out)
    }

    /// Checks everything a parse cannot, touching no storage.
    pub fn validate(self) -> anyhow::Result<ServeSettings> {
        let exporters = self.exporters()?;
        let sources = self.sources()?;
        let listen: SocketAddr = self.server.listen.parse().with_context(|| {
            format!("server.listen: {:?} is not an address like 127.0.0.1:7070", self.server.listen)
        })?;
        let (body_max, entry_max) = self.sizes()?;
        let retention = self.retention.policy()?;
        let tokens = Arc::new(Tokens::new(self.server.access_tokens()?));
        let (connections, tls) = self.server.connections(body_max)?;
        let metrics_ledgers = self.server.metrics_ledgers()?;
        let dir = |p: PathBuf| (!p.as_os_str().is_empty()).then_some(p);
        let store = StoreConfig {
            data_dir: self.data_dir,
            catalog_dir: dir(self.storage.catalog_dir),
            hot_dir: dir(self.storage.hot_dir),
            ledgers_dir: dir(self.storage.ledgers_dir),
            chunk_entries: self.storage.chunk_entries,
            max_entry_bytes: entry_max as usize,
            auto_create_ledgers: self.storage.auto_create_ledgers,
            max_ledger_bytes: self.storage.max_ledger_bytes.0,
            retention,
            wal_segment_bytes: ferry_core::limits::WAL_SEGMENT_BYTES_MAX,
            holds: Vec::new(),
            hash_chain: self.storage.hash_chain,
            checkpoint_every: self.storage.checkpoint_every,
        };
        let api = ApiConfig {
            tokens,
            metrics_auth: self.server.metrics_auth,
            max_body_bytes: body_max as usize,
            max_buffered_body_bytes: self.server.max_buffered_body_bytes.0,
            max_watchers: self.server.max_watchers,
            idle_timeout: self.server.idle_timeout.0,
            closing: tokio::sync::watch::channel(false).1,
            metrics: None,
            exporters: None,
            sources: None,
            max_pins: self.server.max_pins,
            metrics_ledgers,
        };
        Ok(ServeSettings {
            listen,
            store,
            api,
            shutdown_timeout: self.server.shutdown_timeout.0,
            log: self.log,
            exporters,
            sources,
            respect_exporters: self.retention.respect_exporters,
            connections,
            tls,
        })
    }

    /// `storage.chunk_entries` in range, and (max_body_bytes,
    /// max_entry_bytes) within their limits and each other.
    fn sizes(&self) -> anyhow::Result<(u64, u64)> {
        if let Some(c) = self.storage.chunk_entries
            && !(CHUNK_ENTRIES_MIN..=CHUNK_ENTRIES_MAX).contains(&c)
        {
            bail!("storage.chunk_entries: {c} is outside {CHUNK_ENTRIES_MIN}..={CHUNK_ENTRIES_MAX}");
        }
        let (body_max, entry_max) = (self.server.max_body_bytes.0, self.storage.max_entry_bytes.0);
        if entry_max == 0 || entry_max > body_max.min(ENTRY_BYTES_MAX_LIMIT) {
            bail!(
                "storage.max_entry_bytes ({entry_max}) must be at least 1 and at most server.max_body_bytes \
                 ({body_max}) and {ENTRY_BYTES_MAX_LIMIT}"
            );
        }
        if body_max > BODY_BYTES_MAX_LIMIT {
            bail!("server.max_body_bytes ({body_max}) may be at most {BODY_BYTES_MAX_LIMIT}");
        }
        Ok((body_max, entry_max))
    }
}

impl Retention {
    /// `[retention]` as the store takes it, with each ledger name checked.
    fn policy(&self) -> anyhow::Result<ferry_store::RetentionPolicy> {
        let mut retention = ferry_store::RetentionPolicy {
            max_age: self.max_age.map(|s| s.0),
            max_bytes: self.max_bytes.0,
            ..Default::default()
        };
        for (name, settings) in &self.ledgers {
            let name = name.get_ref();
            let ledger = LedgerName::parse(name).with_context(|| {
                let line = self.ledger_lines.get(name).copied().unwrap_or(0);
                format!("retention.ledgers.{name:?} (line {line})")
            })?;
            let settings = ferry_store::LedgerRetention {
                max_age: settings.max_age.map(|s| s.0),
                max_bytes: settings.max_bytes.0,
            };
            retention.ledgers.insert(ledger, settings);
        }
        Ok(retention)
    }
}

impl Server {
    /// `metrics_ledgers` as globs; a bad one is named with its line.
    fn metrics_ledgers(&self) -> anyhow::Result<Vec<glob::Pattern>> {
        let line = |i: usize| self.metrics_ledger_lines.get(i).copied().unwrap_or(0);
        let globs = self.metrics_ledgers.iter().enumerate().map(|(i, g)| {
            glob::Pattern::new(g.get_ref()).map_err(|e| {
                anyhow::anyhow!(
                    "server.metrics_ledgers (line {}): {:?} is not a valid glob: {e} (e.g. \"audit*\")",
                    line(i),
                    g.get_ref()
                )
            })
        });
        globs.collect()
    }

    /// The connection limits and the TLS files, checked against each other
    /// and `max_body_bytes`.
    fn connections(&self, body_max: u64) -> anyhow::Result<(Connections, Option<(PathBuf, PathBuf)>)> {
        if self.max_connections == Some(0) {
            bail!("server.max_connections: must be at least 1");
        }
        for (key, d) in [("header_read_timeout", self.header_read_timeout.0), ("idle_timeout", self.idle_timeout.0)] {
            if d < Duration::from_millis(100) {
                bail!("server.{key}: {d:?} is too short; at least 100ms");
            }
        }
        let buffered = self.max_buffered_body_bytes.0;
        if buffered < body_max {
            bail!(
                "server.max_buffered_body_bytes ({buffered}) must be at least server.max_body_bytes ({body_max}), \
                 or the largest body could never be received"
            );
        }
        let tls = match (self.tls_cert.as_os_str().is_empty(), self.tls_key.as_os_str().is_empty()) {
            (true, true) => None,
            (false, false) => Some((self.tls_cert.clone(), self.tls_key.clone())),
            (false, true) => bail!("server.tls_cert is set but server.tls_key is not: set both, or neither"),
            (true, false) => bail!("server.tls_key is set but server.tls_cert is not: set both, or neither"),
        };
        let connections = Connections {
            max_connections: self.max_connections,
            header_read_timeout: self.header_read_timeout.0,
            idle_timeout: self.idle_timeout.0,
        };
        Ok((connections, tls))
    }

    /// Every token: `tokens` (all scopes), `[[server.scoped_tokens]]`
    /// and the lines of `token_file`, each checked, names and secrets
    /// unique. A `token_file` that names no token is an error: an empty
    /// file must never mean "no auth".
    pub fn access_tokens(&self) -> anyhow::Result<Vec<AccessToken>> {
        let mut out: Vec<(AccessToken, String)> = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let token = AccessToken::everything(format!("tokens[{}]", i + 1), Secret::Plain(t.clone()))
                .map_err(|e| anyhow::anyhow!("server.tokens: entry {}: {e}", i + 1))?;
            out.push((token, format!("server.tokens entry {}", i + 1)));
        }
        for (i, t) in self.scoped_tokens.iter().enumerate() {
            let what = format!("server.scoped_tokens[{}] {:?}", i + 1, t.name);
            let token = t.access_token().map_err(|e| anyhow::anyhow!("{what}: {e}"))?;
            out.push((token, what));
        }
        if !self.token_file.as_os_str().is_empty() {
            let path = &self.token_file;
            let text =
                std::fs::read_to_string(path).with_context(|| format!("server.token_file: read {}", path.display()))?;
            let from_file = token_file_tokens(&text).map_err(|TokenLineError { line, problem }| {
                anyhow::anyhow!("server.token_file: {} line {line}: {problem}", path.display())
            })?;
            if from_file.is_empty() {
                bail!(
                    "server.token_file has no tokens: {} holds only blank and '#' comment lines; write one \
                     token per line, or remove token_file (with no tokens at all the server runs without auth)",
                    path.display()
                );
            }
            for (line, token) in from_file {
                out.push((token, format!("server.token_file {} line {line}", path.display())));
            }
        }
        for (i, (a, what)) in out.iter().enumerate() {
            if let Some((_, first)) = out[..i].iter().find(|(b, _)| b.name == a.name) {
                bail!("{what}: the token name {:?} is already used by {first}", a.name);
            }
            if let Some((_, first)) = out[..i].iter().find(|(b, _)| b.same_secret(a)) {
                bail!("{what}: the same secret as {first}; each token needs its own");
            }
        }
        Ok(out.into_iter().map(|(t, _)| t).collect())
    }
}

/// `[[server.scoped_tokens]]`: a token limited to some ledgers and scopes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScopedToken {
    pub name: String,
    #[serde(default)]
    pub secret: Option<String>,
    /// The SHA-256 of the secret in hex (`ferry token hash`), so the
    /// config file need not hold the secret.
    #[serde(default)]
    pub secret_sha256: Option<String>,
    pub ledgers: Vec<String>,
    pub can: Vec<String>,
}

impl ScopedToken {
    fn access_token(&self) -> Result<AccessToken, String> {
        check_token_name(&self.name)?;
        let secret = match (&self.secret, &self.secret_sha256) {
            (Some(s), None) => Secret::Plain(s.clone()),
            (None, Some(d)) => Secret::Sha256(
                parse_digest(d).ok_or("secret_sha256 must be 64 hex digits (the output of `ferry token hash`)")?,
            ),
            (Some(_), Some(_)) => return Err("set secret or secret_sha256, not both".into()),
            (None, None) => return Err("set secret or secret_sha256".into()),
        };
        let can = self
            .can
            .iter()
            .map(|c| {
                Scope::parse(c).ok_or_else(|| format!("can: {c:?} is not one of read, append, watch, metrics, admin"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        AccessToken::new(self.name.clone(), secret, &self.ledgers, &can)
    }
}

/// A token's name is shown in logs and events: plain, short, no secret.
fn check_token_name(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_alphanumeric() || "._-".contains(c);
    if name.is_empty() || name.len() > 64 || !name.chars().all(plain) {
        return Err("name must be 1 to 64 characters of a-z, A-Z, 0-9, '.', '_', '-'".into());
    }
    Ok(())
}

/// The key whose value starts where `line_start` (a line's text up to an
/// error) ends: the name before its last `=` outside quotes, after any `{`
/// or `,` of an inline table. Keys are named in errors, values never, so
/// anything that is not plainly a key gives `None`.
fn key_before(line_start: &str) -> Option<&str> {
    let (mut quote, mut key_from, mut key) = (None, 0, None);
    for (i, c) in line_start.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '{' | ',' | '[') => key_from = i + 1,
            (None, '=') => key = Some(line_start[key_from..i].trim()),
            (None, _) => {}
        }
    }
    let plain = |k: &str| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "_-. \"'".contains(c));
    key.filter(|k| plain(k))
}

/// Why a line of `token_file` was refused (`line` counts from 1). The
/// problem never quotes the line: it may hold a secret.
#[derive(Debug, PartialEq, Eq)]
struct TokenLineError {
    line: usize,
    problem: String,
}

/// The tokens of a `token_file`, with their line numbers. One token per
/// line: `[sha256:]SECRET [name=N] [ledgers=a*,b] [can=read,append]`,
/// fields separated by whitespace; blank lines and lines starting with `#`
/// are skipped. A bare secret has every scope on every ledger; a line that
/// names `ledgers` or `can` must name both. The one place the line format
/// is read.
fn token_file_tokens(text: &str) -> Result<Vec<(usize, AccessToken)>, TokenLineError> {
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let fail = |problem: String| TokenLineError { line: n, problem };
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        let secret = match first.strip_prefix("sha256:") {
            Some(d) => {
                Secret::Sha256(parse_digest(d).ok_or_else(|| fail("sha256: must be followed by 64 hex digits".into()))?)
            }
            None => Secret::Plain(first.to_owned()),
        };
        let (mut name, mut ledgers, mut can) = (None, None, None);
        for field in fields {
            let (key, value) = field.split_once('=').ok_or_else(|| {
                fail(
                    "after the secret only name=, ledgers= and can= fields may follow (a token contains no whitespace)"
                        .into(),
                )
            })?;
            let slot = match key {
                "name" => &mut name,
                "ledgers" => &mut ledgers,
                "can" => &mut can,
                _ => return Err(fail(format!("unknown field {key:?}; expected name=, ledgers= or can="))),
            };
            if slot.replace(value.to_owned()).is_some() {
                return Err(fail(format!("{key}= given twice")));
            }
        }
        let name = match name {
            Some(name) => {
                check_token_name(&name).map_err(fail)?;
                name
            }
            None => format!("token_file:{n}"),
        };
        let token = match (ledgers, can) {
            (None, None) => AccessToken::everything(name, secret),
            (Some(ledgers), Some(can)) => {
                let ledgers: Vec<String> = ledgers.split(',').map(str::to_owned).collect();
                let can = can
                    .split(',')
                    .map(|c| {
                        Scope::parse(c)
                            .ok_or_else(|| format!("can: {c:?} is not one of read, append, watch, metrics, admin"))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(fail)?;
                AccessToken::new(name, secret, &ledgers, &can)
            }
            _ => return Err(fail("a line that names ledgers= or can= must name both".into())),
        }
        .map_err(fail)?;
        tokens.push((n, token));
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_the_spec_defaults() {
        let s = Config::parse("").unwrap().validate().unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:7070");
        assert_eq!(s.store.data_dir, PathBuf::from("./ferry-data"));
        assert_eq!(s.api.max_body_bytes, 16 * 1024 * 1024);
        assert_eq!(s.store.max_entry_bytes, 1024 * 1024);
        assert!(s.store.auto_create_ledgers);
        assert_eq!(s.store.chunk_entries, None);
    }

    #[test]
    fn the_full_spec_shape_parses() {
        let text = r#"
data_dir = "/tmp/x"
[server]
listen = "127.0.0.1:7071"
tokens = ["a"]
token_file = ""
metrics_auth = true
max_body_bytes = "8MiB"
max_watchers = 10
max_pins = 2
shutdown_timeout = "5s"
[storage]
chunk_entries = 1024
max_entry_bytes = "512KiB"
auto_create_ledgers = false
catalog_dir = ""
hot_dir = ""
ledgers_dir = ""
[retention]
respect_exporters = true
[log]
level = "debug"
format = "json"
"#;
        let s = Config::parse(text).unwrap().validate().unwrap();
        assert_eq!(s.api.max_body_bytes, 8 * 1024 * 1024);
        assert_eq!(s.store.max_entry_bytes, 512 * 1024);
        assert_eq!(s.store.chunk_entries, Some(1024));
        assert_eq!(s.shutdown_timeout, Duration::from_secs(5));
        assert_eq!(s.log.format, LogFormat::Json);
    }

    #[test]
    fn metrics_ledgers_are_globs_none_by_default_and_a_bad_one_names_its_line() {
        assert!(Config::parse("").unwrap().validate().unwrap().api.metrics_ledgers.is_empty());
        let text = "[server]\nmetrics_ledgers = [\"audit*\", \"payments.eu\"]\n";
        let globs = Config::parse(text).unwrap().validate().unwrap().api.metrics_ledgers;
        assert_eq!(globs.iter().map(glob::Pattern::as_str).collect::<Vec<_>>(), ["audit*", "payments.eu"]);
        assert!(globs[0].matches("audit-2026") && !globs[0].matches("orders"));
        let bad = "data_dir = \"x\"\n[server]\nmetrics_ledgers = [\n  \"a*\",\n  \"[oops\",\n]\n";
        let msg = format!("{:#}", Config::parse(bad).unwrap().validate().err().expect("refused"));
        assert!(msg.contains("server.metrics_ledgers") && msg.contains("line 5"), "{msg}");
        assert!(msg.contains("\"[oops\"") && msg.contains("not a valid glob"), "{msg}");
        for (text, needles) in [
            ("[server]\nmetrics_ledgers = \"audit*\"", &["metrics_ledgers", "line 2"][..]),
            ("[server]\nmetrics_ledgers = [1]", &["metrics_ledgers", "line 2"]),
            ("[server]\nmetrics_ledger = [\"a\"]", &["metrics_ledger", "line 2", "unknown field"]),
        ] {
            let msg = format!("{:#}", Config::parse(text).unwrap_err());
            for needle in needles {
                assert!(msg.contains(needle), "{text:?}: {needle:?} not in {msg}");
            }
        }
    }

    #[test]
    fn unknown_key_error_names_the_key_and_line() {
        let err = Config::parse("data_dir = \"x\"\n[server]\nlisten = \"127.0.0.1:1\"\nlisen = 2\n").unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("lisen"), "{msg}");
        assert!(msg.contains("line 4"), "{msg}");
    }

    #[test]
    fn bad_values_are_errors() {
        for text in [
            "[server]\nmax_body_bytes = \"lots\"",
            "[server]\nshutdown_timeout = \"soon\"",
            "[log]\nlevel = \"loud\"",
            "[storage]\nchunk_entries = -1",
        ] {
            assert!(Config::parse(text).is_err(), "{text}");
        }
        for text in [
            "[server]\nlisten = \"nowhere\"",
            "[storage]\nchunk_entries = 1",
            "[storage]\nmax_entry_bytes = \"32MiB\"",
            "[[exporters]]\nname = \"x\"\nsink = \"file\"",
            "[[exporters]]\nname = \"x\"\nsink = \"carrier-pigeon\"",
        ] {
            assert!(Config::parse(text).unwrap().validate().is_err(), "{text}");
        }
    }

    #[test]
    fn size_limits_and_per_ledger_retention_parse_in_the_old_and_the_table_form() {
        let text = r#"
[storage]
max_ledger_bytes = "1GiB"
[retention]
max_age = ""
max_bytes = 1000
[retention.ledgers]
"payments.eu" = "7d"
audit = { max_bytes = "10MiB" }
logs = { max_age = "1h", max_bytes = "" }
"#;
        let s = Config::parse(text).unwrap().validate().unwrap();
        assert_eq!(s.store.max_ledger_bytes, Some(1 << 30));
        let r = &s.store.retention;
        assert_eq!((r.max_age, r.max_bytes), (None, Some(1000)));
        let ledger = |n: &str| r.ledgers[&LedgerName::parse(n).unwrap()];
        assert_eq!(ledger("payments.eu").max_age, Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(ledger("payments.eu").max_bytes, None);
        assert_eq!((ledger("audit").max_age, ledger("audit").max_bytes), (None, Some(10 << 20)));
        assert_eq!((ledger("logs").max_age, ledger("logs").max_bytes), (Some(Duration::from_secs(3600)), None));
        // 0 and "" are no limit, as is leaving the key out.
        for text in ["[storage]\nmax_ledger_bytes = 0", "[storage]\nmax_ledger_bytes = \"\"", ""] {
            assert_eq!(Config::parse(text).unwrap().validate().unwrap().store.max_ledger_bytes, None, "{text}");
        }
    }

    #[test]
    fn bad_size_limits_name_the_key_and_line() {
        let error = |text: &str| match Config::parse(text) {
            Ok(c) => format!("{:#}", c.validate().err().expect("refused")),
            Err(e) => format!("{e:#}"),
        };
        for (text, needles) in [
            ("[storage]\nmax_ledger_bytes = -1", &["max_ledger_bytes", "line 2", "negative"][..]),
            ("[retention]\nmax_bytes = \"many\"", &["max_bytes", "line 2", "invalid size"]),
            ("[retention]\nmax_bytes = true", &["max_bytes", "line 2"]),
            ("[retention.ledgers]\na = { max_bytes = 1, max_size = 2 }", &["max_size", "line 2"]),
            ("[retention.ledgers]\na = { max_bytes = -3 }", &["max_bytes", "line 2", "negative"]),
            ("[retention.ledgers]\na = []", &["key a", "line 2", "a max_age like"]),
            ("\n[retention.ledgers]\n\"A\" = \"1d\"", &["retention.ledgers", "\"A\"", "line 3"]),
        ] {
            let msg = error(text);
            for needle in needles {
                assert!(msg.contains(needle), "{text:?}: {needle:?} not in {msg}");
            }
        }
    }

    #[test]
    fn a_parse_error_names_the_key_never_the_value() {
        assert_eq!(key_before("max_ledger_bytes = "), Some("max_ledger_bytes"));
        assert_eq!(key_before("a = { max_bytes = "), Some("max_bytes"));
        assert_eq!(key_before("a = { max_age = \"1d\", max_bytes = "), Some("max_bytes"));
        assert_eq!(key_before("lisen"), None);
        assert_eq!(key_before("url = \"http://u:pw@h/?token=x"), Some("url"), "an = inside a string is no key");
        assert_eq!(key_before("\"a.b\" = "), Some("\"a.b\""));
        let msg = format!("{:#}", Config::parse("[server]\ntokens = [\"s3cret-token\", 7]\n").unwrap_err());
        assert!(msg.contains("line 2") && msg.contains("key tokens"), "{msg}");
        assert!(!msg.contains("s3cret-token"), "{msg}");
    }

    #[test]
    fn token_file_lines_skip_blanks_and_comments_and_name_a_bad_line() {
        let names =
            |text: &str| token_file_tokens(text).map(|ts| ts.into_iter().map(|(n, t)| (n, t.name)).collect::<Vec<_>>());
        assert_eq!(names(""), Ok(vec![]));
        assert_eq!(names("\n \t\n# a comment\n  # another\n"), Ok(vec![]));
        assert_eq!(names("# ops\n one \r\n\ntwo name=ops\n"), Ok(vec![(2, "token_file:2".into()), (4, "ops".into())]));
        let digest = ferry_api::secret_digest("s");
        let scoped = format!("sha256:{digest} name=tenant ledgers=tenant-42.*,audit can=read,append");
        assert_eq!(names(&scoped), Ok(vec![(1, "tenant".into())]));
        for (text, line, problem) in [
            ("ok\n\nnot ok\n", 3, "only name=, ledgers= and can="),
            ("s colour=red", 1, "unknown field"),
            ("s ledgers=a*", 1, "must name both"),
            ("s ledgers=a* can=read,fly", 1, "\"fly\" is not one of"),
            ("s ledgers=a* can=admin", 1, "admin is allowed only"),
            ("sha256:abc", 1, "64 hex digits"),
            ("s name=a name=b", 1, "given twice"),
            ("s name=has/slash", 1, "name must be"),
        ] {
            let err = token_file_tokens(text).map(|_| ()).unwrap_err();
            assert_eq!(err.line, line, "{text:?}");
            assert!(err.problem.contains(problem), "{text:?}: {}", err.problem);
        }
    }

    #[test]
    fn scoped_tokens_parse_and_bad_ones_name_the_entry() {
        let ok = r#"
[server]
tokens = ["root-secret"]
[[server.scoped_tokens]]
name = "tenant-42"
secret = "t42-secret"
ledgers = ["tenant-42.*"]
can = ["read", "append", "watch"]
[[server.scoped_tokens]]
name = "auditor"
secret_sha256 = "2bb80d537b1da3e38bd30361aa855686bde0eacd7162fef6a25fe97bf527a25b"
ledgers = ["*"]
can = ["read"]
"#;
        let tokens = Config::parse(ok).unwrap().server.access_tokens().unwrap();
        let names: Vec<_> = tokens.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["tokens[1]", "tenant-42", "auditor"]);
        for (entry, expected) in [
            ("name = \"a\"\nsecret = \"s\"\nledgers = [\"x*\"]\ncan = [\"admin\"]", "admin is allowed only"),
            ("name = \"a\"\nledgers = [\"*\"]\ncan = [\"read\"]", "set secret or secret_sha256"),
            ("name = \"a\"\nsecret = \"s\"\nsecret_sha256 = \"00\"\nledgers = [\"*\"]\ncan = [\"read\"]", "not both"),
            ("name = \"a\"\nsecret_sha256 = \"00\"\nledgers = [\"*\"]\ncan = [\"read\"]", "64 hex digits"),
            ("name = \"a\"\nsecret = \"s\"\nledgers = [\"*\"]\ncan = [\"write\"]", "\"write\" is not one of"),
            ("name = \"a\"\nsecret = \"s\"\nledgers = []\ncan = [\"read\"]", "ledgers is empty"),
            ("name = \"tokens[1]\"\nsecret = \"s\"\nledgers = [\"*\"]\ncan = [\"read\"]", "name must be"),
            ("name = \"b\"\nsecret = \"root-secret\"\nledgers = [\"*\"]\ncan = [\"read\"]", "the same secret"),
        ] {
            let text = format!("[server]\ntokens = [\"root-secret\"]\n[[server.scoped_tokens]]\n{entry}\n");
            let err = format!("{:#}", Config::parse(&text).unwrap().server.access_tokens().unwrap_err());
            assert!(err.contains(expected), "{entry}: {err}");
            assert!(err.contains("scoped_tokens[1]"), "{entry}: {err}");
            assert!(!err.contains("root-secret") && !err.contains("\"s\""), "no secret in {err}");
        }
        let unknown = Config::parse("[[server.scoped_tokens]]\nname = \"a\"\nscret = \"s\"\n").unwrap_err();
        assert!(format!("{unknown:#}").contains("scret"), "{unknown:#}");
    }
}

#[cfg(test)]
mod exporter_tests {
    use super::*;

    fn error_of(text: &str) -> String {
        match Config::parse(text) {
            Ok(c) => format!("{:#}", c.validate().err().expect("validation fails")),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn exporters_parse_with_their_sink_config() {
        let text = r#"
[[exporters]]
name = "audit-files"
sink = "file"
ledgers = ["audit*"]
start = "latest"
batch = { max_entries = 100, max_bytes = "1MiB", linger = "10ms" }
retry = { initial = "50ms", max = "5s", max_attempts = 3 }
dead_letter = "dlq"
max_parallel_ledgers = 4
[exporters.config]
dir = "/tmp/ferry-export"
max_file_bytes = "1MiB"

[[exporters]]
name = "hook"
sink = "http"
[exporters.config]
url = "http://127.0.0.1:9/x"
format = "ndjson"
headers = { x-team = "audit" }
"#;
        let s = Config::parse(text).unwrap().validate().unwrap();
        assert_eq!(s.exporters.len(), 2);
        assert_eq!(s.exporters[0].0.batch.max_entries, 100);
        assert!(s.exporters[0].0.dead_letter.is_some());
        assert!(matches!(s.exporters[1].1, SinkConfig::Http(_)));
    }

    #[test]
    fn bad_exporter_config_names_the_field_and_line() {
        let unknown = "data_dir = \"x\"\n[[exporters]]\nname = \"a\"\nsink = \"file\"\nbatchh = 1\n";
        let msg = error_of(unknown);
        assert!(msg.contains("batchh") && msg.contains("line 5"), "{msg}");
        let no_dir = "\n\n[[exporters]]\nname = \"a\"\nsink = \"file\"\n";
        let msg = error_of(no_dir);
        assert!(msg.contains("config.dir") && msg.contains("line 3"), "{msg}");
        let bad_url = "[[exporters]]\nname = \"a\"\nsink = \"http\"\n[exporters.config]\nurl = \"ftp://x\"\n";
        assert!(error_of(bad_url).contains("config.url"), "{}", error_of(bad_url));
        let unknown_sink_key =
            "[[exporters]]\nname = \"a\"\nsink = \"file\"\n[exporters.config]\ndir = \"/t\"\ndirr = 1\n";
        assert!(error_of(unknown_sink_key).contains("dirr"), "{}", error_of(unknown_sink_key));
        let twice = "[[exporters]]\nname = \"a\"\nsink = \"stdout\"\n[[exporters]]\nname = \"a\"\nsink = \"stdout\"\n";
        assert!(error_of(twice).contains("already called"), "{}", error_of(twice));
        let same_dir = "[[exporters]]\nname = \"a\"\nsink = \"file\"\nconfig = { dir = \"/t\" }\n\
                        [[exporters]]\nname = \"b\"\nsink = \"file\"\nconfig = { dir = \"/t\" }\n";
        assert!(error_of(same_dir).contains("another file exporter"), "{}", error_of(same_dir));
        // Spelled differently, the same directory (#12 item 11).
        for (x, y) in [("./out", "out"), ("/t/../t", "/t"), ("/t/", "/t/./"), ("out/x/..", "out")] {
            let two = format!(
                "[[exporters]]\nname = \"a\"\nsink = \"file\"\nconfig = {{ dir = \"{x}\" }}\n\
                 [[exporters]]\nname = \"b\"\nsink = \"file\"\nconfig = {{ dir = \"{y}\" }}\n"
            );
            assert!(error_of(&two).contains("another file exporter"), "{x} and {y}: {}", error_of(&two));
        }
    }

    #[test]
    fn exporter_flags_are_validated_like_the_file() {
        let c = Config {
            exporter_flags: vec![r#"f=file:{"dir":"/tmp/x","batch":{"max_entries":0}}"#.into()],
            ..Config::default()
        };
        let msg = format!("{:#}", c.validate().err().unwrap());
        assert!(msg.contains("batch.max_entries"), "{msg}");
    }
}

#[cfg(test)]
mod source_tests {
    use super::*;

    fn error_of(text: &str) -> String {
        match Config::parse(text) {
            Ok(c) => format!("{:#}", c.validate().err().expect("validation fails")),
            Err(e) => format!("{e:#}"),
        }
    }

    const SOURCE: &str =
        "[[sources]]\nname = \"app\"\ndriver = \"postgres\"\nurl = \"postgres://ferry:pw@127.0.0.1/app\"\n";

    #[test]
    fn sources_parse_into_settings() {
        let text = r#"
[[exporters]]
name = "app"
sink = "stdout"

[[sources]]
name = "app"
driver = "postgres"
url = "postgres://root@127.0.0.1/app?sslmode=require"
table = "outbox"
ledger = "audit"
batch = 500
poll = "50ms"
max_lag = "5m"
purge_after = "7d"
dead_letter = "outbox-dead"

[[sources]]
name = "orders"
driver = "mysql"
url = "mysql://ferry@127.0.0.1/shop"
table = "shop.outbox"
ledger_column = "tenant"
columns = { key = "", payload = "body" }
"#;
        let s = Config::parse(text).unwrap().validate().unwrap();
        assert_eq!(s.sources.len(), 2);
        let (app, orders) = (&s.sources[0], &s.sources[1]);
        assert_eq!((app.name.as_str(), app.driver, app.batch), ("app", ferry_outbox::Driver::Postgres, 500));
        assert_eq!(app.ledger, ferry_outbox::LedgerFrom::Fixed(LedgerName::parse("audit").unwrap()));
        assert_eq!(app.poll, Duration::from_millis(50));
        assert_eq!(app.max_lag, Some(Duration::from_secs(300)));
        assert_eq!(app.dead_letter.as_ref().map(LedgerName::as_str), Some("outbox-dead"));
        assert_eq!(orders.driver, ferry_outbox::Driver::Mysql);
        assert!(matches!(&orders.ledger, ferry_outbox::LedgerFrom::Column(c) if c.as_str() == "tenant"));
        assert!(orders.columns.key.is_none());
        assert_eq!(orders.columns.payload.as_str(), "body");
        assert_eq!(orders.table.as_str(), "shop.outbox");
        // None configured: none started.
        assert!(Config::parse("").unwrap().validate().unwrap().sources.is_empty());
    }

    #[test]
    fn bad_sources_name_the_source_the_key_and_the_line() {
        for (text, needles) in [
            (format!("{SOURCE}ledger = \"a\"\nbatchh = 1\n"), &["batchh", "line 6"][..]),
            (format!("\n{SOURCE}ledger = \"a\"\ncolumns = {{ idd = \"x\" }}\n"), &["idd", "line 7"]),
            (
                format!("{SOURCE}ledger = \"a\"\ntable = \"outbox; drop table x\"\n"),
                &["sources[0] \"app\" (line 1)", "table:", "not a plain SQL identifier"],
            ),
            (
                format!("{SOURCE}ledger = \"a\"\ncolumns = {{ id = \"1id\" }}\n"),
                &["sources[0] \"app\" (line 1)", "columns.id:"],
            ),
            (
                format!("{SOURCE}ledger = \"a\"\nledger_column = \"tenant\"\n"),
                &["sources[0] \"app\" (line 1)", "ledger, ledger_column: give exactly one"],
            ),
            (format!("{SOURCE}\n"), &["sources[0] \"app\" (line 1)", "give exactly one"]),
            (format!("{SOURCE}ledger = \"A\"\n"), &["sources[0] \"app\" (line 1)", "ledger:"]),
            (format!("{SOURCE}ledger = \"a\"\nbatch = 0\n"), &["sources[0]", "batch: 0 is outside"]),
            (format!("{SOURCE}ledger = \"a\"\n{}ledger = \"b\"\n", SOURCE.replace("\"app\"", "\"other\"")), &[]),
            (
                format!("{SOURCE}ledger = \"a\"\n\n{SOURCE}ledger = \"b\"\n"),
                &["sources[1] \"app\" (line 7)", "another source is already called app"],
            ),
            (
                "[[sources]]\nname = \"app\"\ndriver = \"oracle\"\nurl = \"x\"\nledger = \"a\"\n".to_owned(),
                &["sources[0] \"app\" (line 1)", "driver: \"oracle\" is not a driver"],
            ),
            (
                "[[sources]]\nname = \"app\"\ndriver = \"mysql\"\nurl = \"postgres://u:pw@h/db\"\nledger = \"a\"\n"
                    .to_owned(),
                &["sources[0] \"app\" (line 1)", "url: a mysql source needs"],
            ),
            (
                "[[sources]]\nname = \"Bad Name\"\ndriver = \"postgres\"\nurl = \"postgres://h/db\"\nledger = \"a\"\n"
                    .to_owned(),
                &["sources[0] \"Bad Name\"", "name:"],
            ),
        ] {
            if needles.is_empty() {
                assert!(Config::parse(&text).unwrap().validate().is_ok(), "{text}");
                continue;
            }
            let msg = error_of(&text);
            for needle in needles {
                assert!(msg.contains(needle), "{text:?}: {needle:?} not in {msg}");
            }
            assert!(!msg.contains("pw"), "no password in {msg}");
        }
    }
}
