//! The TOML configuration (SPEC §8): parsed strictly (unknown keys and bad
//! values are errors naming the key and line), then validated into the
//! settings each part of ferry takes. Raw → validated, nothing in between.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use ferry_api::ApiConfig;
use ferry_core::LedgerName;
use ferry_core::limits::{
    BODY_BYTES_MAX_DEFAULT, BODY_BYTES_MAX_LIMIT, CHUNK_ENTRIES_MAX, CHUNK_ENTRIES_MIN, ENTRY_BYTES_MAX_DEFAULT,
    ENTRY_BYTES_MAX_LIMIT, PINS_MAX_DEFAULT, WATCHERS_MAX_DEFAULT,
};
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
    pub exporters: Vec<toml::Table>,
    pub sources: Vec<toml::Table>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Server {
    pub listen: String,
    pub tokens: Vec<String>,
    pub token_file: PathBuf,
    pub metrics_auth: bool,
    pub max_body_bytes: Size,
    pub max_watchers: usize,
    pub max_pins: usize,
    pub shutdown_timeout: Seconds,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    pub max_age: Option<Seconds>,
    pub respect_exporters: bool,
    pub ledgers: std::collections::BTreeMap<String, Seconds>,
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
        }
    }
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:7070".into(),
            tokens: Vec::new(),
            token_file: PathBuf::new(),
            metrics_auth: false,
            max_body_bytes: Size(BODY_BYTES_MAX_DEFAULT),
            max_watchers: WATCHERS_MAX_DEFAULT,
            max_pins: PINS_MAX_DEFAULT,
            shutdown_timeout: Seconds(Duration::from_secs(30)),
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
        }
    }
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_age: None, respect_exporters: true, ledgers: Default::default() }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self { level: LogLevel::Info, format: LogFormat::Text }
    }
}

/// A byte size written as `"4MiB"`, `"512KB"` or a plain integer of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(Size(n)),
            Raw::Text(s) => s
                .parse::<bytesize::ByteSize>()
                .map(|b| Size(b.as_u64()))
                .map_err(|e| serde::de::Error::custom(format!("invalid size {s:?} (e.g. \"4MiB\"): {e}"))),
        }
    }
}

/// A duration written as `"50ms"`, `"30s"`, `"30d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seconds(pub Duration);

impl<'de> Deserialize<'de> for Seconds {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Seconds)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration {s:?} (e.g. \"50ms\", \"30d\"): {e}")))
    }
}

/// What `ferry serve` runs with, after validation.
pub struct ServeSettings {
    pub listen: SocketAddr,
    pub store: StoreConfig,
    pub api: ApiConfig,
    pub shutdown_timeout: Duration,
    pub log: Log,
}

impl Config {
    /// Reads and parses a config file. Errors name the file, key and line.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path).with_context(|| format!("read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("config file {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Config> {
        Ok(toml::from_str(text)?)
    }

    /// Checks everything a parse cannot, touching no storage.
    pub fn validate(self) -> anyhow::Result<ServeSettings> {
        let listen: SocketAddr = self.server.listen.parse().with_context(|| {
            format!("server.listen: {:?} is not an address like 127.0.0.1:7070", self.server.listen)
        })?;
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
        let mut retention =
            ferry_store::RetentionPolicy { max_age: self.retention.max_age.map(|s| s.0), ..Default::default() };
        for (name, age) in self.retention.ledgers {
            let ledger = LedgerName::parse(&name).with_context(|| format!("retention.ledgers.{name}"))?;
            retention.ledgers.insert(ledger, age.0);
        }
        if !self.exporters.is_empty() {
            bail!("[[exporters]] is not implemented yet in this version of ferry");
        }
        if !self.sources.is_empty() {
            bail!("[[sources]] is not implemented yet in this version of ferry");
        }
        let mut tokens = self.server.tokens;
        if !self.server.token_file.as_os_str().is_empty() {
            let path = &self.server.token_file;
            let text =
                std::fs::read_to_string(path).with_context(|| format!("server.token_file: read {}", path.display()))?;
            tokens.extend(text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned));
        }
        if tokens.iter().any(|t| t.is_empty() || t.chars().any(char::is_whitespace)) {
            bail!("server.tokens: a token must be non-empty and contain no whitespace");
        }
        let dir = |p: PathBuf| (!p.as_os_str().is_empty()).then_some(p);
        let store = StoreConfig {
            data_dir: self.data_dir,
            catalog_dir: dir(self.storage.catalog_dir),
            hot_dir: dir(self.storage.hot_dir),
            ledgers_dir: dir(self.storage.ledgers_dir),
            chunk_entries: self.storage.chunk_entries,
            max_entry_bytes: entry_max as usize,
            auto_create_ledgers: self.storage.auto_create_ledgers,
            retention,
            wal_segment_bytes: ferry_core::limits::WAL_SEGMENT_BYTES_MAX,
            holds: Vec::new(),
        };
        let api = ApiConfig {
            tokens,
            metrics_auth: self.server.metrics_auth,
            max_body_bytes: body_max as usize,
            max_watchers: self.server.max_watchers,
            closing: tokio::sync::watch::channel(false).1,
            metrics: None,
        };
        Ok(ServeSettings { listen, store, api, shutdown_timeout: self.server.shutdown_timeout.0, log: self.log })
    }
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
            "[[exporters]]\nname = \"x\"",
        ] {
            assert!(Config::parse(text).unwrap().validate().is_err(), "{text}");
        }
    }
}
