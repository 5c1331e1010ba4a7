//! An exporter's configuration: the raw form (`[[exporters]]` in TOML or
//! `--exporter NAME=SINK:{json}`), validated into `ExporterSettings`
//! without touching storage or the network. The sink's own table
//! (`config`) is validated by the sink crate.

use std::time::Duration;

use ferry_core::limits::{
    EXPORT_BATCH_BYTES_DEFAULT, EXPORT_BATCH_BYTES_MAX, EXPORT_BATCH_ENTRIES_DEFAULT, EXPORT_BATCH_ENTRIES_MAX,
    EXPORT_LINGER_MS_DEFAULT, EXPORT_LINGER_MS_MAX, EXPORT_PARALLEL_LEDGERS_DEFAULT, EXPORT_PARALLEL_LEDGERS_MAX,
    RETRY_INITIAL_MS_DEFAULT, RETRY_MAX_MS_DEFAULT, RETRY_WAIT_MS_MAX,
};
use ferry_core::units::{Seconds, Size};
use ferry_core::{InvalidLedgerName, LedgerName};
use serde::Deserialize;

/// Why an exporter's settings were refused. Each message starts with the
/// field it is about (`batch.max_entries: …`), or with the `--exporter`
/// flag's part, and says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    /// A `--exporter` flag without `=`.
    #[error("expected NAME=SINK:{{json}}: no '=' (e.g. audit=file:{{\"dir\":\"/srv/audit\"}})")]
    FlagSyntax,
    /// The JSON of a `--exporter` flag does not parse.
    #[error("the JSON after {sink}: does not parse: {error}: write one JSON object")]
    FlagJson { sink: String, error: serde_json::Error },
    /// The JSON of a `--exporter` flag is not an object.
    #[error("the JSON after {sink}: must be an object: write it as {{\"key\": value, …}}")]
    FlagNotObject { sink: String },
    /// A key of a `--exporter` flag is unknown or has the wrong type, in
    /// serde's words (which name the key and what it expects).
    #[error("{error}")]
    FlagKey { error: serde_json::Error },
    /// `name` or `dead_letter` is not a valid name.
    #[error("{field}: {error}: exporter and dead-letter names follow the ledger-name rules")]
    InvalidName { field: &'static str, error: InvalidLedgerName },
    /// `ledgers = []`.
    #[error("ledgers: give at least one glob (\"*\" for every ledger)")]
    NoLedgers,
    /// A `ledgers` glob does not parse.
    #[error("ledgers: {glob:?} is not a valid glob: {error}: fix the pattern (e.g. \"audit*\")")]
    InvalidGlob { glob: String, error: glob::PatternError },
    /// A count or size outside the limits of `ferry_core::limits`.
    #[error("{field}: {value} is outside 1..={max}: set it between 1 and {max}")]
    OutOfRange { field: &'static str, value: u64, max: u64 },
    /// `batch.linger` above `EXPORT_LINGER_MS_MAX`.
    #[error("batch.linger: {linger:?} is longer than {max_ms} ms: set it to at most {max_ms}ms")]
    LingerTooLong { linger: Duration, max_ms: u64 },
    /// `retry.initial` and `retry.max` out of order or out of bounds.
    #[error(
        "retry: need 0 < initial ({initial:?}) <= max ({max:?}) <= {wait_max:?}: \
         set initial above 0 and at most max, and max at most {wait_max:?}"
    )]
    RetryBounds { initial: Duration, max: Duration, wait_max: Duration },
}

/// Where an exporter starts in a ledger it has no cursor for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartAt {
    /// From the ledger's First.
    #[default]
    Earliest,
    /// After the ledger's head when the exporter first sees it (ledgers
    /// created later are exported from their first entry).
    Latest,
}

/// `[[exporters]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExporterConfig {
    pub name: String,
    pub sink: String,
    #[serde(default = "all_ledgers")]
    pub ledgers: Vec<String>,
    #[serde(default)]
    pub start: StartAt,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub dead_letter: String,
    #[serde(default = "default_parallel")]
    pub max_parallel_ledgers: usize,
    /// A ledger whose oldest unexported entry is older is stuck (`GET
    /// /v1/health`); unset = never stuck.
    #[serde(default)]
    pub max_lag: Option<Seconds>,
    /// The sink's own settings, validated by the sink.
    #[serde(default)]
    pub config: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    pub max_entries: usize,
    pub max_bytes: Size,
    pub linger: Seconds,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    pub initial: Seconds,
    pub max: Seconds,
    /// 0 = forever.
    pub max_attempts: u32,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_entries: EXPORT_BATCH_ENTRIES_DEFAULT,
            max_bytes: Size(EXPORT_BATCH_BYTES_DEFAULT),
            linger: Seconds(Duration::from_millis(EXPORT_LINGER_MS_DEFAULT)),
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            initial: Seconds(Duration::from_millis(RETRY_INITIAL_MS_DEFAULT)),
            max: Seconds(Duration::from_millis(RETRY_MAX_MS_DEFAULT)),
            max_attempts: 0,
        }
    }
}

fn all_ledgers() -> Vec<String> {
    vec!["*".into()]
}

fn default_parallel() -> usize {
    EXPORT_PARALLEL_LEDGERS_DEFAULT
}

/// The exporter-level keys a `--exporter` JSON object may carry next to the
/// sink's own keys (no sink uses these names).
const FLAG_EXPORTER_KEYS: [&str; 7] =
    ["ledgers", "start", "batch", "retry", "dead_letter", "max_parallel_ledgers", "max_lag"];

impl ExporterConfig {
    /// Parses `NAME=SINK:{json}`. The JSON object is the sink's config; the
    /// keys `ledgers`, `start`, `batch`, `retry`, `dead_letter`,
    /// `max_parallel_ledgers` and `max_lag` in it are the exporter's own settings.
    pub fn from_flag(flag: &str) -> Result<Self, SettingsError> {
        let (name, rest) = flag.split_once('=').ok_or(SettingsError::FlagSyntax)?;
        let (sink, json) = match rest.split_once(':') {
            Some((sink, json)) => (sink, json),
            None => (rest, "{}"),
        };
        let value: serde_json::Value =
            serde_json::from_str(json).map_err(|error| SettingsError::FlagJson { sink: sink.into(), error })?;
        let serde_json::Value::Object(mut config) = value else {
            return Err(SettingsError::FlagNotObject { sink: sink.into() });
        };
        let mut exporter = serde_json::Map::new();
        exporter.insert("name".into(), name.into());
        exporter.insert("sink".into(), sink.into());
        for key in FLAG_EXPORTER_KEYS {
            if let Some(v) = config.remove(key) {
                exporter.insert(key.into(), v);
            }
        }
        exporter.insert("config".into(), serde_json::Value::Object(config));
        serde_json::from_value(serde_json::Value::Object(exporter)).map_err(|error| SettingsError::FlagKey { error })
    }

    /// Checks everything but the sink's own config. Errors name the field.
    pub fn validate(&self) -> Result<ExporterSettings, SettingsError> {
        let name =
            LedgerName::parse(&self.name).map_err(|error| SettingsError::InvalidName { field: "name", error })?;
        if self.ledgers.is_empty() {
            return Err(SettingsError::NoLedgers);
        }
        let patterns = self
            .ledgers
            .iter()
            .map(|g| glob::Pattern::new(g).map_err(|error| SettingsError::InvalidGlob { glob: g.clone(), error }))
            .collect::<Result<Vec<_>, _>>()?;
        let dead_letter = match self.dead_letter.as_str() {
            "" => None,
            dl => Some(
                LedgerName::parse(dl).map_err(|error| SettingsError::InvalidName { field: "dead_letter", error })?,
            ),
        };
        let b = &self.batch;
        in_range("batch.max_entries", b.max_entries as u64, EXPORT_BATCH_ENTRIES_MAX as u64)?;
        in_range("batch.max_bytes", b.max_bytes.0, EXPORT_BATCH_BYTES_MAX)?;
        if b.linger.0 > Duration::from_millis(EXPORT_LINGER_MS_MAX) {
            return Err(SettingsError::LingerTooLong { linger: b.linger.0, max_ms: EXPORT_LINGER_MS_MAX });
        }
        let r = &self.retry;
        let wait_max = Duration::from_millis(RETRY_WAIT_MS_MAX);
        if r.initial.0.is_zero() || r.initial.0 > r.max.0 || r.max.0 > wait_max {
            return Err(SettingsError::RetryBounds { initial: r.initial.0, max: r.max.0, wait_max });
        }
        in_range("max_parallel_ledgers", self.max_parallel_ledgers as u64, EXPORT_PARALLEL_LEDGERS_MAX as u64)?;
        Ok(ExporterSettings {
            matcher: LedgerMatcher { patterns, exclude: dead_letter.clone() },
            name,
            sink: self.sink.clone(),
            start: self.start,
            batch: BatchPolicy { max_entries: b.max_entries, max_bytes: b.max_bytes.0 as usize, linger: b.linger.0 },
            retry: RetryPolicy { initial: r.initial.0, max: r.max.0, max_attempts: r.max_attempts },
            dead_letter,
            max_parallel_ledgers: self.max_parallel_ledgers,
            max_lag: self.max_lag.map(|s| s.0),
        })
    }
}

/// `1..=max`, or the error naming `field`.
fn in_range(field: &'static str, value: u64, max: u64) -> Result<(), SettingsError> {
    if (1..=max).contains(&value) { Ok(()) } else { Err(SettingsError::OutOfRange { field, value, max }) }
}

/// Which ledgers an exporter ships: any glob matches, and never its own
/// dead-letter ledger (a failing sink would feed it forever).
#[derive(Debug, Clone)]
pub struct LedgerMatcher {
    patterns: Vec<glob::Pattern>,
    exclude: Option<LedgerName>,
}

impl LedgerMatcher {
    pub fn matches(&self, ledger: &LedgerName) -> bool {
        self.exclude.as_ref() != Some(ledger) && self.patterns.iter().any(|p| p.matches(ledger.as_str()))
    }
}

/// When a batch goes out, and how big it may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    pub max_entries: usize,
    pub max_bytes: usize,
    /// How long the first waiting entry may wait for more to join it.
    pub linger: Duration,
}

/// How failed deliveries are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    /// Attempts of one batch before it counts as failed; 0 = forever.
    pub max_attempts: u32,
}

/// A validated exporter, minus its sink.
#[derive(Debug, Clone)]
pub struct ExporterSettings {
    pub name: LedgerName,
    /// The sink kind, e.g. `file`.
    pub sink: String,
    pub matcher: LedgerMatcher,
    pub start: StartAt,
    pub batch: BatchPolicy,
    pub retry: RetryPolicy,
    pub dead_letter: Option<LedgerName>,
    pub max_parallel_ledgers: usize,
    /// Stuck past this age of the oldest unexported entry; `None`: never.
    pub max_lag: Option<Duration>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> LedgerName {
        LedgerName::parse(s).unwrap()
    }

    #[test]
    fn a_flag_splits_exporter_keys_from_sink_keys() {
        let c = ExporterConfig::from_flag(
            r#"audit=file:{"dir":"/tmp/x","ledgers":["a*"],"batch":{"max_entries":5,"linger":"0ms"}}"#,
        )
        .unwrap();
        assert_eq!(c.name, "audit");
        assert_eq!(c.sink, "file");
        assert_eq!(c.ledgers, vec!["a*".to_string()]);
        assert_eq!(c.batch.max_entries, 5);
        assert_eq!(c.config.get("dir").unwrap(), "/tmp/x");
        assert!(c.config.get("ledgers").is_none());
        let s = c.validate().unwrap();
        assert!(s.matcher.matches(&name("ab")) && !s.matcher.matches(&name("ba")));
        assert_eq!(s.batch.linger, Duration::ZERO);
        assert_eq!(ExporterConfig::from_flag("out=stdout").unwrap().sink, "stdout");
        let lagged = ExporterConfig::from_flag(r#"out=stdout:{"max_lag":"2m"}"#).unwrap();
        assert_eq!(lagged.validate().unwrap().max_lag, Some(Duration::from_secs(120)));
        assert!(lagged.config.is_empty(), "max_lag is the exporter's key, not the sink's");
        assert_eq!(ExporterConfig::from_flag("out=stdout").unwrap().validate().unwrap().max_lag, None);
    }

    #[test]
    fn bad_settings_name_their_field() {
        let bad = [
            (r#"x=file:{"batch":{"max_entries":0}}"#, "batch.max_entries"),
            (r#"x=file:{"batch":{"max_bytes":"1TiB"}}"#, "batch.max_bytes"),
            (r#"x=file:{"retry":{"initial":"1m","max":"1s"}}"#, "retry"),
            (r#"x=file:{"max_parallel_ledgers":0}"#, "max_parallel_ledgers"),
            (r#"x=file:{"dead_letter":"../dlq"}"#, "dead_letter"),
            (r#"x=file:{"ledgers":["[a"]}"#, "ledgers"),
            (r#"x=file:{"ledgers":[]}"#, "ledgers"),
            (r#"../x=file:{}"#, "name"),
        ];
        for (flag, field) in bad {
            let err = ExporterConfig::from_flag(flag).unwrap().validate().unwrap_err().to_string();
            assert!(err.starts_with(field), "{flag}: {err}");
        }
        let err = ExporterConfig::from_flag(r#"x=file:{"start":"middle"}"#).unwrap_err().to_string();
        assert!(err.contains("middle"), "{err}");
        assert!(ExporterConfig::from_flag("x").is_err());
        assert!(ExporterConfig::from_flag("x=file:[1]").is_err());
    }

    #[test]
    fn the_dead_letter_ledger_is_never_exported_by_its_exporter() {
        let s = ExporterConfig::from_flag(r#"x=file:{"dead_letter":"dlq"}"#).unwrap().validate().unwrap();
        assert!(!s.matcher.matches(&name("dlq")));
        assert!(s.matcher.matches(&name("audit")));
    }
}
