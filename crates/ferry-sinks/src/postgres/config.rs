//! `sink = "postgres"`: `url` (required), `table` (required, `table` or
//! `schema.table`), `create_table` (false), `transactional_cursor` (false),
//! `tls` (false), `ca_file`, `max_connections` (4).

use std::path::PathBuf;

use ferry_export::Secrets;
use ferry_export::redact::REDACTED;
use serde::Deserialize;

use crate::ConfigError;

/// Connections the sink keeps unless configured: one per ledger delivering
/// at once, up to this.
pub const MAX_CONNECTIONS_DEFAULT: u32 = 4;
/// More would only hold server slots: batches of one ledger go one at a
/// time, and `max_parallel_ledgers` bounds the rest.
pub const MAX_CONNECTIONS_MAX: u32 = 64;
/// PostgreSQL's identifier limit (NAMEDATALEN - 1).
const IDENTIFIER_BYTES_MAX: usize = 63;
/// URL parameters that would say what `tls` and `ca_file` say.
const TLS_PARAMETERS: [&str; 9] =
    ["sslmode", "ssl-mode", "sslrootcert", "ssl-root-cert", "ssl-ca", "sslcert", "ssl-cert", "sslkey", "ssl-key"];

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    url: Option<String>,
    table: Option<String>,
    #[serde(default)]
    create_table: bool,
    #[serde(default)]
    transactional_cursor: bool,
    #[serde(default)]
    tls: bool,
    ca_file: Option<PathBuf>,
    max_connections: Option<u32>,
}

/// Debug shows the URL as errors do: without its password.
#[derive(Clone)]
pub struct PostgresConfig {
    /// `postgres://` or `postgresql://`, as configured.
    pub url: String,
    /// `None`: the connection's `current_schema()`.
    pub schema: Option<String>,
    pub table: String,
    pub create_table: bool,
    pub transactional_cursor: bool,
    /// `sslmode=verify-full`: TLS with the server's certificate checked
    /// against the platform's roots and `ca_file`, and its name against
    /// the URL's host. Off: no TLS.
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub max_connections: u32,
    /// The URL's password (userinfo or `password=`), both as written and
    /// percent-decoded.
    secrets: Secrets,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.shown_url())
            .field("schema", &self.schema)
            .field("table", &self.table)
            .field("create_table", &self.create_table)
            .field("transactional_cursor", &self.transactional_cursor)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("max_connections", &self.max_connections)
            .finish()
    }
}

impl PostgresConfig {
    pub fn validate(value: serde_json::Value) -> Result<Self, ConfigError> {
        let raw: Raw = crate::parse(value)?;
        let url = raw.url.filter(|u| !u.is_empty()).ok_or(ConfigError::Missing {
            field: "config.url",
            fix: "set it to the database's URL (e.g. \"postgres://ferry:PASSWORD@127.0.0.1:5432/audit\")",
        })?;
        let secrets = check_url(&url)?;
        let table = raw.table.filter(|t| !t.is_empty()).ok_or(ConfigError::Missing {
            field: "config.table",
            fix: "set it to the table the entries go to (`audit_log` or `schema.audit_log`)",
        })?;
        let (schema, table) = match table.split_once('.') {
            Some((schema, table)) => (Some(identifier(schema)?), identifier(table)?),
            None => (None, identifier(&table)?),
        };
        if table == super::sql::CURSORS_TABLE {
            return Err(ConfigError::Invalid {
                field: "config.table".into(),
                problem: format!("{table} is where ferry keeps its cursors"),
                fix: "name another table",
            });
        }
        if raw.ca_file.is_some() && !raw.tls {
            return Err(ConfigError::Invalid {
                field: "config.ca_file".into(),
                problem: "is only used with tls = true".into(),
                fix: "set tls = true, or remove ca_file",
            });
        }
        let max_connections = raw.max_connections.unwrap_or(MAX_CONNECTIONS_DEFAULT);
        if !(1..=MAX_CONNECTIONS_MAX).contains(&max_connections) {
            return Err(ConfigError::Invalid {
                field: "config.max_connections".into(),
                problem: format!("{max_connections} is not within 1..={MAX_CONNECTIONS_MAX}"),
                fix: "set it to the connections the sink may hold (the default is 4)",
            });
        }
        Ok(Self {
            url,
            schema,
            table,
            create_table: raw.create_table,
            transactional_cursor: raw.transactional_cursor,
            tls: raw.tls,
            ca_file: raw.ca_file,
            max_connections,
            secrets,
        })
    }

    /// The URL as messages show it: without userinfo or query.
    pub fn shown_url(&self) -> String {
        shown_url_text(&self.url)
    }

    /// The password, as written in the URL and percent-decoded.
    pub fn secrets(&self) -> Secrets {
        self.secrets.clone()
    }

    /// `schema.table` as configured (the schema resolved at connection
    /// time when not given), for messages.
    pub fn shown_table(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.table),
            None => self.table.clone(),
        }
    }
}

/// Checks the URL's scheme and shape, and returns its password(s) as
/// secrets. Touches no network.
fn check_url(text: &str) -> Result<Secrets, ConfigError> {
    let url = reqwest::Url::parse(text).map_err(|e| ConfigError::Invalid {
        field: "config.url".into(),
        problem: format!("{:?} is not a URL: {e}", shown_url_text(text)),
        fix: "write postgres://USER:PASSWORD@HOST:PORT/DATABASE",
    })?;
    if !matches!(url.scheme(), "postgres" | "postgresql") {
        return Err(ConfigError::Invalid {
            field: "config.url".into(),
            problem: format!("scheme {:?} is not postgres or postgresql", url.scheme()),
            fix: "write postgres://USER:PASSWORD@HOST:PORT/DATABASE",
        });
    }
    let mut secrets = Secrets::default();
    if let Some(password) = url.password() {
        secrets.add(password);
        if let Ok(decoded) = percent_decode(password) {
            secrets.add(&decoded);
        }
    }
    for (key, value) in url.query_pairs() {
        if key == "password" {
            secrets.add(&value);
            let written = url.query().into_iter().flat_map(|q| q.split('&')).filter_map(|p| p.split_once('='));
            for (_, raw) in written.filter(|(k, _)| *k == "password") {
                secrets.add(raw);
            }
        }
        if TLS_PARAMETERS.contains(&key.as_ref()) {
            return Err(ConfigError::Invalid {
                field: "config.url".into(),
                problem: format!("the URL sets {key}"),
                fix: "remove it: set tls = true (sslmode verify-full) and ca_file for the server's CA instead",
            });
        }
    }
    Ok(secrets)
}

/// `%XX` escapes decoded, as sqlx decodes the password it sends.
fn percent_decode(text: &str) -> Result<String, ()> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).map_err(|_| ())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

/// A URL as an error may show it: scheme, host, port and path only.
pub(crate) fn shown_url_text(text: &str) -> String {
    let text = ferry_export::redact::redact_userinfo(text);
    match text.split_once('?') {
        Some((before, _)) => format!("{before}?{REDACTED}"),
        None => text,
    }
}

/// A strict SQL identifier: lower-case ASCII letters, digits and `_`, not
/// starting with a digit, at most 63 bytes. So it means the same quoted or
/// not, and needs no escaping.
fn identifier(name: &str) -> Result<String, ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= IDENTIFIER_BYTES_MAX
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(name.to_owned())
    } else {
        Err(ConfigError::Invalid {
            field: "config.table".into(),
            problem: format!("{name:?} is not a plain identifier"),
            fix: "use lower-case letters, digits and '_' (not first), at most 63 bytes, as `table` or `schema.table`",
        })
    }
}
