//! A source's configuration: `[[sources]]` as written (`SourceConfig`),
//! validated into `SourceSettings` without touching the network. Table and
//! column names become `Ident`s, checked here, so nothing unchecked is ever
//! spliced into SQL.

use std::time::Duration;

use ferry_core::units::{Seconds, Size};
use ferry_core::{InvalidLedgerName, LedgerName};
use serde::Deserialize;

/// Rows per batch by default, and at most.
pub const BATCH_DEFAULT: usize = 1_000;
pub const BATCH_MAX: usize = 10_000;
/// Payload bytes per batch by default, and at most.
pub const BATCH_BYTES_DEFAULT: u64 = 4 * 1024 * 1024;
pub const BATCH_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// How often a source looks for rows when nothing woke it.
pub const POLL_DEFAULT: Duration = Duration::from_millis(200);
/// The PostgreSQL channel a source listens on by default.
pub const NOTIFY_CHANNEL_DEFAULT: &str = "ferry_outbox";

/// Why a source's settings were refused; each message starts with the
/// field and says what to change.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SettingsError {
    #[error("{field}: {error}: source and dead-letter names follow the ledger-name rules")]
    InvalidName { field: &'static str, error: InvalidLedgerName },
    #[error("driver: {0:?} is not a driver: use \"postgres\" or \"mysql\"")]
    UnknownDriver(String),
    #[error("url: {0}")]
    Url(String),
    #[error(
        "{field}: {value:?} is not a plain SQL identifier: use letters, digits and _ (not starting with a digit), \
         at most 63, optionally schema-qualified as schema.table for `table`"
    )]
    InvalidIdent { field: &'static str, value: String },
    #[error(
        "ledger, ledger_column: give exactly one: a fixed ledger (ledger = \"audit\") or the column naming each \
         row's ledger (ledger_column = \"ledger\", also accepted as columns.ledger; both given must agree)"
    )]
    LedgerChoice,
    #[error("{field}: {value} is outside 1..={max}: set it between 1 and {max}")]
    OutOfRange { field: &'static str, value: u64, max: u64 },
    #[error("{field}: must be longer than zero")]
    Zero { field: &'static str },
}

/// The database a source drains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Postgres,
    /// MySQL or MariaDB.
    Mysql,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Postgres => "postgres",
            Driver::Mysql => "mysql",
        }
    }
}

/// A checked SQL identifier: `[A-Za-z_][A-Za-z0-9_]*`, at most 63 bytes
/// (a table may be `schema.table`). Quoted by the driver when used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ident(String);

impl Ident {
    pub fn parse(field: &'static str, value: &str, qualified: bool) -> Result<Self, SettingsError> {
        let part_ok = |p: &str| {
            !p.is_empty()
                && p.len() <= 63
                && p.bytes().next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
                && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        };
        let parts: Vec<&str> = value.split('.').collect();
        let ok = match parts.as_slice() {
            [one] => part_ok(one),
            [schema, table] if qualified => part_ok(schema) && part_ok(table),
            _ => false,
        };
        if ok {
            Ok(Self(value.to_owned()))
        } else {
            Err(SettingsError::InvalidIdent { field, value: value.to_owned() })
        }
    }

    /// The parts (`schema`, `table`, or one name), for the driver to quote.
    pub fn parts(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Ident {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// `columns = {…}` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ColumnsConfig {
    pub id: Option<String>,
    /// The column naming each row's ledger: the same as `ledger_column`.
    pub ledger: Option<String>,
    /// `""`: the table has no key column.
    pub key: Option<String>,
    pub payload: Option<String>,
    pub created_at: Option<String>,
    pub exported_at: Option<String>,
}

/// The outbox table's columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Columns {
    pub id: Ident,
    pub key: Option<Ident>,
    pub payload: Ident,
    pub created_at: Ident,
    pub exported_at: Ident,
}

/// Where each row's ledger comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerFrom {
    /// Every row goes to this ledger.
    Fixed(LedgerName),
    /// Each row names its ledger in this column.
    Column(Ident),
}

/// `[[sources]]` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub driver: String,
    pub url: String,
    #[serde(default = "default_table")]
    pub table: String,
    #[serde(default)]
    pub columns: ColumnsConfig,
    pub ledger: Option<String>,
    pub ledger_column: Option<String>,
    pub batch: Option<u64>,
    pub batch_max_bytes: Option<Size>,
    pub poll: Option<Seconds>,
    pub max_lag: Option<Seconds>,
    pub purge_after: Option<Seconds>,
    pub dead_letter: Option<String>,
    pub notify_channel: Option<String>,
}

fn default_table() -> String {
    "outbox".to_owned()
}

/// A validated source.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    pub name: LedgerName,
    pub driver: Driver,
    /// The connection URL (TLS through `sslmode` / `ssl-mode` in it). Holds
    /// a password: never shown (status and errors show it redacted).
    pub url: String,
    pub table: Ident,
    pub columns: Columns,
    pub ledger: LedgerFrom,
    pub batch: usize,
    pub batch_max_bytes: u64,
    pub poll: Duration,
    /// The oldest pending row may be this old before the source is stuck.
    pub max_lag: Option<Duration>,
    /// Marked rows older than this are deleted.
    pub purge_after: Option<Duration>,
    /// Rows that cannot be appended go here with the reason; without it the
    /// source turns failed, naming the row.
    pub dead_letter: Option<LedgerName>,
    /// PostgreSQL: the channel `NOTIFY` wakes the source on.
    pub notify_channel: Ident,
}

impl SourceSettings {
    pub fn from_config(raw: &SourceConfig) -> Result<Self, SettingsError> {
        let name = LedgerName::parse(&raw.name).map_err(|error| SettingsError::InvalidName { field: "name", error })?;
        let driver = match raw.driver.as_str() {
            "postgres" | "postgresql" => Driver::Postgres,
            "mysql" | "mariadb" => Driver::Mysql,
            other => return Err(SettingsError::UnknownDriver(other.to_owned())),
        };
        let schemes: &[&str] = match driver {
            Driver::Postgres => &["postgres://", "postgresql://"],
            Driver::Mysql => &["mysql://", "mariadb://"],
        };
        if !schemes.iter().any(|s| raw.url.starts_with(s)) {
            return Err(SettingsError::Url(format!(
                "a {} source needs a URL starting with {}",
                driver.as_str(),
                schemes.join(" or ")
            )));
        }
        let col = |field: &'static str, value: &Option<String>, default: &str| {
            Ident::parse(field, value.as_deref().unwrap_or(default), false)
        };
        let c = &raw.columns;
        let columns = Columns {
            id: col("columns.id", &c.id, "id")?,
            key: match c.key.as_deref() {
                Some("") => None,
                other => Some(Ident::parse("columns.key", other.unwrap_or("key"), false)?),
            },
            payload: col("columns.payload", &c.payload, "payload")?,
            created_at: col("columns.created_at", &c.created_at, "created_at")?,
            exported_at: col("columns.exported_at", &c.exported_at, "exported_at")?,
        };
        // `columns.ledger` and `ledger_column` both name the ledger column;
        // given together they must agree.
        let column = match (&raw.ledger_column, &c.ledger) {
            (Some(a), Some(b)) if a != b => return Err(SettingsError::LedgerChoice),
            (Some(a), _) => Some(("ledger_column", a)),
            (None, Some(b)) => Some(("columns.ledger", b)),
            (None, None) => None,
        };
        let ledger = match (&raw.ledger, column) {
            (Some(l), None) => LedgerFrom::Fixed(
                LedgerName::parse(l).map_err(|error| SettingsError::InvalidName { field: "ledger", error })?,
            ),
            (None, Some((field, c))) => LedgerFrom::Column(Ident::parse(field, c, false)?),
            _ => return Err(SettingsError::LedgerChoice),
        };
        let batch = raw.batch.unwrap_or(BATCH_DEFAULT as u64);
        if !(1..=BATCH_MAX as u64).contains(&batch) {
            return Err(SettingsError::OutOfRange { field: "batch", value: batch, max: BATCH_MAX as u64 });
        }
        let batch_max_bytes = raw.batch_max_bytes.map_or(BATCH_BYTES_DEFAULT, |s| s.0);
        if !(1..=BATCH_BYTES_MAX).contains(&batch_max_bytes) {
            return Err(SettingsError::OutOfRange {
                field: "batch_max_bytes",
                value: batch_max_bytes,
                max: BATCH_BYTES_MAX,
            });
        }
        let positive = |field: &'static str, d: Option<Seconds>| match d {
            Some(Seconds(d)) if d.is_zero() => Err(SettingsError::Zero { field }),
            other => Ok(other.map(|s| s.0)),
        };
        let dead_letter = raw
            .dead_letter
            .as_deref()
            .filter(|d| !d.is_empty())
            .map(|d| LedgerName::parse(d).map_err(|error| SettingsError::InvalidName { field: "dead_letter", error }))
            .transpose()?;
        Ok(Self {
            name,
            driver,
            url: raw.url.clone(),
            table: Ident::parse("table", &raw.table, true)?,
            columns,
            ledger,
            batch: batch as usize,
            batch_max_bytes,
            poll: positive("poll", raw.poll)?.unwrap_or(POLL_DEFAULT),
            max_lag: positive("max_lag", raw.max_lag)?,
            purge_after: positive("purge_after", raw.purge_after)?,
            dead_letter,
            notify_channel: Ident::parse(
                "notify_channel",
                raw.notify_channel.as_deref().unwrap_or(NOTIFY_CHANNEL_DEFAULT),
                false,
            )?,
        })
    }

    /// The idempotency key of row `id`: a replay after a crash between the
    /// append and the source's commit answers the original entry.
    pub fn idempotency_key(&self, row_id: i64) -> String {
        format!("outbox:{}:{row_id}", self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(extra: &str) -> Result<SourceSettings, String> {
        let text = format!("name = \"app\"\ndriver = \"postgres\"\nurl = \"postgres://u:p@h/db\"\n{extra}");
        let raw: SourceConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
        SourceSettings::from_config(&raw).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_follow_the_spec_and_identifiers_are_checked() {
        let s = raw("ledger = \"audit\"").unwrap();
        assert_eq!((s.table.as_str(), s.columns.id.as_str(), s.batch), ("outbox", "id", 1_000));
        assert_eq!(s.columns.key.as_ref().map(Ident::as_str), Some("key"));
        assert_eq!(s.ledger, LedgerFrom::Fixed(LedgerName::parse("audit").unwrap()));
        assert_eq!(s.idempotency_key(42), "outbox:app:42");
        assert!(raw("ledger_column = \"tenant\"\ncolumns = { key = \"\" }").unwrap().columns.key.is_none());
        let tenant = LedgerFrom::Column(Ident::parse("x", "tenant", false).unwrap());
        assert_eq!(raw("columns = { ledger = \"tenant\" }").unwrap().ledger, tenant);
        assert_eq!(raw("ledger_column = \"tenant\"\ncolumns = { ledger = \"tenant\" }").unwrap().ledger, tenant);
        assert_eq!(raw("ledger = \"a\"\ntable = \"app.outbox\"").unwrap().table.parts().count(), 2);
        for (extra, says) in [
            ("", "ledger, ledger_column: give exactly one"),
            ("ledger = \"a\"\nledger_column = \"b\"", "give exactly one"),
            ("ledger = \"a\"\ntable = \"outbox; drop table x\"", "table: \"outbox; drop table x\" is not"),
            ("ledger = \"a\"\ncolumns = { id = \"1id\" }", "columns.id:"),
            ("ledger = \"a\"\ncolumns = { ledger = \"x\" }", "give exactly one"),
            ("ledger_column = \"a\"\ncolumns = { ledger = \"x\" }", "both given must agree"),
            ("columns = { ledger = \"1x\" }", "columns.ledger:"),
            ("ledger = \"A\"", "ledger:"),
            ("ledger = \"a\"\nbatch = 0", "batch: 0 is outside"),
            ("ledger = \"a\"\npoll = \"0s\"", "poll: must be longer"),
            ("ledger = \"a\"\nsurprise = 1", "unknown field `surprise`"),
        ] {
            let err = raw(extra).unwrap_err();
            assert!(err.contains(says), "{extra:?}: {err}");
        }
        let mysql: SourceConfig =
            toml::from_str("name = \"m\"\ndriver = \"mysql\"\nurl = \"postgres://x\"\nledger = \"a\"").unwrap();
        assert!(SourceSettings::from_config(&mysql).unwrap_err().to_string().starts_with("url: "));
    }
}
