//! `sink = "clickhouse"`: `url` ("http://127.0.0.1:8123"), `database`
//! ("default"), `table` (required), `user` ("default"), `password`,
//! `create_table` (false), `tls` (follows the URL's scheme), `ca_file`
//! (a PEM bundle, read at build), `timeout` ("30s").

use std::path::PathBuf;
use std::time::Duration;

use ferry_core::units::Seconds;
use ferry_export::Secrets;
use ferry_export::redact::REDACTED;
use serde::Deserialize;

use crate::ConfigError;

/// Where a server answers when no `url` is configured.
pub const URL_DEFAULT: &str = "http://127.0.0.1:8123";
/// Requests give up after this long unless configured.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    url: Option<String>,
    database: Option<String>,
    table: Option<String>,
    user: Option<String>,
    #[serde(default)]
    password: String,
    #[serde(default)]
    create_table: bool,
    tls: Option<bool>,
    ca_file: Option<PathBuf>,
    timeout: Option<Seconds>,
}

/// The validated configuration. Debug shows no password.
#[derive(Clone)]
pub struct ClickHouseConfig {
    /// No userinfo, no query (ferry sets its own parameters).
    pub url: reqwest::Url,
    /// An identifier (`[A-Za-z_][A-Za-z0-9_]*`): written into SQL unquoted.
    pub database: String,
    /// An identifier, like `database`.
    pub table: String,
    /// Sent as `X-ClickHouse-User`.
    pub user: String,
    /// Sent as `X-ClickHouse-Key` when set; never in a URL or a message.
    pub password: Option<String>,
    pub create_table: bool,
    /// True exactly when the URL is `https://`.
    pub tls: bool,
    /// Roots to trust instead of the system's (read and checked at build).
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

impl std::fmt::Debug for ClickHouseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseConfig")
            .field("url", &self.url.as_str())
            .field("database", &self.database)
            .field("table", &self.table)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .field("create_table", &self.create_table)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ClickHouseConfig {
    pub fn validate(value: serde_json::Value) -> Result<Self, ConfigError> {
        let raw: Raw = crate::parse(value)?;
        let text = raw.url.unwrap_or_else(|| URL_DEFAULT.to_owned());
        let url = reqwest::Url::parse(&text).map_err(|e| ConfigError::Invalid {
            field: "config.url".into(),
            problem: format!("{:?} is not a URL: {e}", ferry_export::redact::redact_userinfo(&text)),
            fix: "write the server's HTTP interface, e.g. \"http://127.0.0.1:8123\"",
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::Invalid {
                field: "config.url".into(),
                problem: format!("scheme {:?} is not http or https", url.scheme()),
                fix: "use the HTTP interface (port 8123, or 8443 with TLS), not the native protocol",
            });
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(ConfigError::Invalid {
                field: "config.url".into(),
                problem: "the URL carries a user or password".into(),
                fix: "remove them from the URL and set config.user and config.password instead",
            });
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(ConfigError::Invalid {
                field: "config.url".into(),
                problem: "the URL has a query or fragment".into(),
                fix: "remove it: ferry sets the query parameters of each request itself",
            });
        }
        let https = url.scheme() == "https";
        let tls = raw.tls.unwrap_or(https);
        if tls != https {
            return Err(ConfigError::Invalid {
                field: "config.tls".into(),
                problem: format!("tls = {tls} but the URL is {}://", url.scheme()),
                fix: "use an https:// URL for TLS (and http:// without it), or leave tls out",
            });
        }
        if raw.ca_file.is_some() && !tls {
            return Err(ConfigError::Invalid {
                field: "config.ca_file".into(),
                problem: "a CA file without TLS".into(),
                fix: "use an https:// URL, or remove ca_file",
            });
        }
        let database = identifier("config.database", raw.database.unwrap_or_else(|| "default".to_owned()))?;
        let table = identifier(
            "config.table",
            raw.table.ok_or(ConfigError::Missing {
                field: "config.table",
                fix: "name the table to insert into (e.g. \"ferry_entries\"); set create_table = true to create it",
            })?,
        )?;
        let user = raw.user.unwrap_or_else(|| "default".to_owned());
        if user.is_empty() || user.chars().any(|c| c.is_control() || !c.is_ascii()) {
            return Err(ConfigError::Invalid {
                field: "config.user".into(),
                problem: "not a user name ferry can send".into(),
                fix: "use a non-empty ASCII user name (or leave it out for \"default\")",
            });
        }
        let password = Some(raw.password).filter(|p| !p.is_empty());
        if password.as_ref().is_some_and(|p| p.chars().any(|c| c.is_control() || !c.is_ascii())) {
            return Err(ConfigError::Invalid {
                field: "config.password".into(),
                problem: "the password holds characters an HTTP header cannot carry".into(),
                fix: "use printable ASCII characters only",
            });
        }
        let timeout = raw.timeout.map_or(TIMEOUT_DEFAULT, |t| t.0);
        if timeout.is_zero() {
            return Err(ConfigError::Invalid {
                field: "config.timeout".into(),
                problem: "must be longer than 0".into(),
                fix: "set a duration such as \"30s\" (the default)",
            });
        }
        Ok(Self {
            url,
            database,
            table,
            user,
            password,
            create_table: raw.create_table,
            tls,
            ca_file: raw.ca_file,
            timeout,
        })
    }

    /// `database.table`, both plain identifiers.
    pub fn qualified_table(&self) -> String {
        format!("{}.{}", self.database, self.table)
    }

    /// The password, removed from every message.
    pub fn secrets(&self) -> Secrets {
        let mut secrets = Secrets::default();
        if let Some(password) = &self.password {
            secrets.add(password);
        }
        secrets
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: safe to write into SQL as it is.
fn identifier(field: &'static str, name: String) -> Result<String, ConfigError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(name)
    } else {
        Err(ConfigError::Invalid {
            field: field.into(),
            problem: format!("{name:?} is not a plain identifier"),
            fix: "use letters, digits and '_' only, not starting with a digit",
        })
    }
}
