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
        let in_url = url_credentials(&url).is_some();
        if in_url && (raw.token.is_some() || raw.user.is_some()) {
            return Err(ConfigError::Invalid {
                field: "config.url".into(),
                problem: "the URL carries credentials and token/user are set too".into(),
                fix: "give the credentials once: in the URL (nats://user:password@host or nats://token@host) or as keys",
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

    /// The credentials to send: the keys, else the URL's userinfo
    /// (`user:password@` or `token@`, percent-decoded; the client library
    /// does not read it itself).
    pub fn credentials(&self) -> Option<Credentials> {
        if let Some(token) = &self.token {
            return Some(Credentials::Token(token.clone()));
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            return Some(Credentials::UserPassword(user.clone(), password.clone()));
        }
        url_credentials(&self.url)
    }

    /// The server addresses without userinfo, for the client.
    pub fn addresses(&self) -> Vec<String> {
        self.url
            .split(',')
            .map(str::trim)
            .map(|one| match one.split_once("://") {
                Some((scheme, rest)) => format!("{scheme}://{}", rest.rsplit_once('@').map_or(rest, |(_, h)| h)),
                None => one.to_owned(),
            })
            .collect()
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
        for one in self.url.split(',') {
            if let Some((userinfo, _)) = one.trim().split_once("://").and_then(|(_, rest)| rest.rsplit_once('@')) {
                // `nats://TOKEN@host`: the whole userinfo is the token.
                let secret = userinfo.split_once(':').map_or(userinfo, |(_, password)| password);
                secrets.add(secret);
                secrets.add(&percent_decode(secret));
            }
        }
        secrets
    }
}

/// How the sink authenticates.
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    Token(String),
    UserPassword(String, String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(***)"),
            Self::UserPassword(user, _) => write!(f, "UserPassword({user:?}, ***)"),
        }
    }
}

/// The first address's userinfo as credentials, percent-decoded.
pub(crate) fn url_credentials(url: &str) -> Option<Credentials> {
    url.split(',').find_map(|one| {
        let (_, rest) = one.trim().split_once("://")?;
        let (userinfo, _) = rest.rsplit_once('@')?;
        Some(match userinfo.split_once(':') {
            Some((user, password)) => Credentials::UserPassword(percent_decode(user), percent_decode(password)),
            None => Credentials::Token(percent_decode(userinfo)),
        })
    })
}

/// `%XX` escapes decoded (invalid ones kept as written).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(hi), Some(lo)) =
                (bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex))
        {
            out.push((hi * 16 + lo) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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
