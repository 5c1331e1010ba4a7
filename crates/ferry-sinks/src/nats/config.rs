//! `sink = "nats"`: `url` ("nats://127.0.0.1:4222"), `stream` (required),
//! `subject` ("ferry.{ledger}"), `create_stream` (false), `duplicate_window`
//! ("2m"), `max_in_flight` (256), `tls` (false), `ca_file`, `token`, `user`,
//! `password`. Validation touches no network and no file.

use std::path::PathBuf;
use std::time::Duration;

use ferry_core::LedgerName;
use ferry_core::units::Seconds;
use ferry_export::Secrets;
use ferry_export::redact::REDACTED;
use serde::Deserialize;

use crate::ConfigError;

pub const URL_DEFAULT: &str = "nats://127.0.0.1:4222";
pub const SUBJECT_DEFAULT: &str = "ferry.{ledger}";
pub const DUPLICATE_WINDOW_DEFAULT: Duration = Duration::from_secs(120);
pub const MAX_IN_FLIGHT_DEFAULT: usize = 256;
/// More unacknowledged publishes than this buy nothing on one connection.
pub const MAX_IN_FLIGHT_MAX: usize = 65_536;
/// The placeholder a subject template must end with.
const LEDGER: &str = "{ledger}";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    url: Option<String>,
    stream: Option<String>,
    subject: Option<String>,
    #[serde(default)]
    create_stream: bool,
    duplicate_window: Option<Seconds>,
    max_in_flight: Option<usize>,
    #[serde(default)]
    tls: bool,
    ca_file: Option<PathBuf>,
    token: Option<String>,
    user: Option<String>,
    password: Option<String>,
}

/// Debug shows the URL without userinfo and no token or password.
#[derive(Clone)]
pub struct NatsConfig {
    /// As configured (userinfo included: the client authenticates with it).
    pub url: String,
    pub stream: String,
    /// The subject tokens before `{ledger}` (`ferry` for the default).
    pub prefix: String,
    pub create_stream: bool,
    pub duplicate_window: Duration,
    pub max_in_flight: usize,
    /// TLS required (also when the URL is `tls://`).
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    pub token: Option<String>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConfig")
            .field("url", &self.shown_url())
            .field("stream", &self.stream)
            .field("prefix", &self.prefix)
            .field("create_stream", &self.create_stream)
            .field("duplicate_window", &self.duplicate_window)
            .field("max_in_flight", &self.max_in_flight)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .field("token", &self.token.as_ref().map(|_| REDACTED))
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| REDACTED))
            .finish()
    }
}

impl NatsConfig {
    pub fn validate(value: serde_json::Value) -> Result<Self, ConfigError> {
        let raw: Raw = crate::parse(value)?;
        let url = raw.url.unwrap_or_else(|| URL_DEFAULT.to_owned());
        check_url(&url)?;
        let stream = raw.stream.ok_or(ConfigError::Missing {
            field: "config.stream",
            fix: "name the JetStream stream to publish into (e.g. \"FERRY\")",
        })?;
        check_stream_name(&stream)?;
        let prefix = subject_prefix(raw.subject.as_deref().unwrap_or(SUBJECT_DEFAULT))?;
        let duplicate_window = raw.duplicate_window.map_or(DUPLICATE_WINDOW_DEFAULT, |d| d.0);
        if duplicate_window.is_zero() {
            return Err(ConfigError::Invalid {
                field: "config.duplicate_window".into(),
                problem: "must be longer than 0".into(),
                fix: "set a duration such as \"2m\" (the default)",
            });
        }
        let max_in_flight = raw.max_in_flight.unwrap_or(MAX_IN_FLIGHT_DEFAULT);
        if !(1..=MAX_IN_FLIGHT_MAX).contains(&max_in_flight) {
            return Err(ConfigError::Invalid {
                field: "config.max_in_flight".into(),
                problem: format!("{max_in_flight} is out of range"),
                fix: "set it between 1 and 65536 (default 256)",
            });
        }
        if raw.token.is_some() && (raw.user.is_some() || raw.password.is_some()) {
            return Err(ConfigError::Invalid {
                field: "config.token".into(),
                problem: "a token and a user/password were both set".into(),
                fix: "use either token or user and password",
            });
        }
        if raw.user.is_some() != raw.password.is_some() {
            let field = if raw.user.is_some() { "config.password" } else { "config.user" };
            return Err(ConfigError::Invalid {
                field: field.into(),
                problem: "user and password go together".into(),
                fix: "set both user and password, or neither",
            });
        }
        if raw.ca_file.is_some() && !raw.tls && !url.starts_with("tls://") {
            return Err(ConfigError::Invalid {
                field: "config.ca_file".into(),
                problem: "a CA file without TLS".into(),
                fix: "set tls = true (or use a tls:// URL), or remove ca_file",
            });
        }
        let tls = raw.tls || url.starts_with("tls://");
        Ok(Self {
            url,
            stream,
            prefix,
            create_stream: raw.create_stream,
            duplicate_window,
            max_in_flight,
            tls,
            ca_file: raw.ca_file,
            token: raw.token,
            user: raw.user,
            password: raw.password,
        })
    }

    /// The URL as messages show it: without userinfo.
    pub fn shown_url(&self) -> String {
        ferry_export::redact::redact_userinfo(&self.url)
    }

    /// The stream subject that captures every ledger's subject.
    pub fn stream_subject(&self) -> String {
        format!("{}.>", self.prefix)
    }

    /// `{prefix}.{ledger}`; a ledger name with an empty subject token (a
    /// trailing dot, `..`) has no subject: the error says why.
    pub fn subject(&self, ledger: &LedgerName) -> Result<String, String> {
        subject_for(&self.prefix, ledger.as_str())
    }

    /// Values no message may show: the token, the password and the URL's.
    pub fn secrets(&self) -> Secrets {
        let mut secrets = Secrets::default();
        for value in [&self.token, &self.password].into_iter().flatten() {
            secrets.add(value);
        }
        if let Some((userinfo, _)) = self.url.split_once("://").and_then(|(_, rest)| rest.rsplit_once('@')) {
            match userinfo.split_once(':') {
                Some((_, password)) => secrets.add(password),
                // `nats://TOKEN@host`: the whole userinfo is the token.
                None => secrets.add(userinfo),
            }
        }
        secrets
    }
}

fn check_url(url: &str) -> Result<(), ConfigError> {
    let invalid = |problem: String| ConfigError::Invalid {
        field: "config.url".into(),
        problem,
        fix: "write nats://HOST:PORT or tls://HOST:PORT (several servers separated by commas)",
    };
    for one in url.split(',').map(str::trim) {
        let shown = ferry_export::redact::redact_userinfo(one);
        let Some((scheme, rest)) = one.split_once("://") else {
            return Err(invalid(format!("{shown:?} has no scheme")));
        };
        if !matches!(scheme, "nats" | "tls") {
            return Err(invalid(format!("scheme {scheme:?} is not nats or tls")));
        }
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        if host.is_empty() || host.contains('/') || host.contains(' ') {
            return Err(invalid(format!("{shown:?} has no host[:port]")));
        }
    }
    Ok(())
}

/// JetStream stream names: no spaces, dots, wildcards or path separators.
fn check_stream_name(name: &str) -> Result<(), ConfigError> {
    let bad = name.is_empty()
        || name.len() > 255
        || name.chars().any(|c| c.is_whitespace() || c.is_control() || ".*>/\\".contains(c));
    if bad {
        return Err(ConfigError::Invalid {
            field: "config.stream".into(),
            problem: format!("{name:?} is not a stream name"),
            fix: "use letters, digits, '-' and '_' (no spaces, '.', '*', '>', '/' or '\\')",
        });
    }
    Ok(())
}

/// The tokens before `.{ledger}`: the template must end with it (a ledger
/// name with dots spans several tokens, which only a trailing `>` captures),
/// and every token before it must be a literal subject token.
pub(crate) fn subject_prefix(template: &str) -> Result<String, ConfigError> {
    let invalid = |problem: String| ConfigError::Invalid {
        field: "config.subject".into(),
        problem,
        fix: "write PREFIX.{ledger}, e.g. \"ferry.{ledger}\" (the default), with no wildcard or empty token in PREFIX",
    };
    let Some(prefix) = template.strip_suffix(&format!(".{LEDGER}")) else {
        return Err(invalid(format!("{template:?} does not end with \".{LEDGER}\"")));
    };
    if prefix.contains(LEDGER) {
        return Err(invalid(format!("{template:?} has {LEDGER} more than once")));
    }
    for token in prefix.split('.') {
        if let Some(problem) = token_problem(token) {
            return Err(invalid(format!("{template:?}: {problem}")));
        }
    }
    Ok(prefix.to_owned())
}

/// Why `token` cannot be a literal subject token, if it cannot.
fn token_problem(token: &str) -> Option<String> {
    if token.is_empty() {
        return Some("an empty subject token (a leading, trailing or doubled '.')".into());
    }
    if token == "*" || token == ">" || token.contains(['*', '>']) {
        return Some(format!("token {token:?} holds a wildcard"));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some(format!("token {token:?} holds a space or control character"));
    }
    None
}

/// `{prefix}.{ledger}`, or why this ledger name makes no subject.
pub(crate) fn subject_for(prefix: &str, ledger: &str) -> Result<String, String> {
    for token in ledger.split('.') {
        if let Some(problem) = token_problem(token) {
            return Err(format!(
                "ledger {ledger:?} cannot be a NATS subject: {problem}; rename the ledger (no trailing '.' or '..') \
                 or export it with another sink"
            ));
        }
    }
    Ok(format!("{prefix}.{ledger}"))
}
