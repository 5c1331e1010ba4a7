//! `sink = "http"`: `url` (required), `format` ("json" | "ndjson"),
//! `secret`, `timeout` ("10s"), `headers` (a table of extra headers).

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::units::Seconds;
use ferry_export::Secrets;
use ferry_export::redact::REDACTED;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

use crate::ConfigError;

/// Requests give up after this long unless configured.
pub const TIMEOUT_DEFAULT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// `[entry, …]`
    #[default]
    Json,
    /// One entry per line.
    Ndjson,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    url: Option<String>,
    #[serde(default)]
    format: BodyFormat,
    #[serde(default)]
    secret: String,
    timeout: Option<Seconds>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Debug shows the URL as errors do, and no secret or header value.
#[derive(Clone)]
pub struct HttpConfig {
    pub url: reqwest::Url,
    pub format: BodyFormat,
    /// Signs each body (`Ferry-Signature`) when set.
    pub secret: Option<String>,
    pub timeout: Duration,
    pub headers: HeaderMap,
}

impl std::fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConfig")
            .field("url", &self.shown_url())
            .field("format", &self.format)
            .field("secret", &self.secret.as_ref().map(|_| REDACTED))
            .field("timeout", &self.timeout)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Headers ferry sets itself; configuring them would break the contract.
const RESERVED: [&str; 3] = ["content-type", "idempotency-key", "ferry-signature"];

impl HttpConfig {
    pub fn validate(value: serde_json::Value) -> Result<Self, ConfigError> {
        let raw: Raw = crate::parse(value)?;
        let url = raw.url.ok_or(ConfigError::Missing {
            field: "config.url",
            fix: "set it to the receiver's URL (e.g. \"http://127.0.0.1:8080/ingest\")",
        })?;
        let url = reqwest::Url::parse(&url).map_err(|e| ConfigError::Invalid {
            field: "config.url".into(),
            problem: format!("{:?} is not a URL: {e}", shown_url_text(&url)),
            fix: "write an absolute http:// or https:// URL",
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(ConfigError::Invalid {
                field: "config.url".into(),
                problem: format!("scheme {:?} is not http or https", url.scheme()),
                fix: "use an http:// or https:// URL",
            });
        }
        let timeout = raw.timeout.map_or(TIMEOUT_DEFAULT, |t| t.0);
        if timeout.is_zero() {
            return Err(ConfigError::Invalid {
                field: "config.timeout".into(),
                problem: "must be longer than 0".into(),
                fix: "set a duration such as \"10s\" (the default)",
            });
        }
        let headers = headers(raw.headers)?;
        let secret = Some(raw.secret).filter(|s| !s.is_empty());
        Ok(Self { url, format: raw.format, secret, timeout, headers })
    }

    /// The URL as messages show it: without userinfo, each query value
    /// replaced by `***` (a query often carries an API key).
    pub fn shown_url(&self) -> String {
        let mut url = self.url.clone();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        if url.query().is_some() {
            let keys: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
            url.query_pairs_mut().clear().extend_pairs(keys.iter().map(|k| (k, REDACTED)));
        }
        url.to_string()
    }

    /// Every configured value that must not appear in a message: the
    /// signing secret, the URL's password, its query values and every
    /// header value (headers are where receivers want their API keys).
    pub fn secrets(&self) -> Secrets {
        let mut secrets = Secrets::default();
        if let Some(secret) = &self.secret {
            secrets.add(secret);
        }
        if let Some(password) = self.url.password() {
            secrets.add(password);
        }
        if let Some(query) = self.url.query() {
            for pair in query.split('&') {
                secrets.add(pair.split_once('=').map_or("", |(_, v)| v));
            }
            for (_, value) in self.url.query_pairs() {
                secrets.add(&value);
            }
        }
        for value in self.headers.values() {
            if let Ok(text) = value.to_str() {
                secrets.add(text);
                // `Bearer <token>`: the credentials alone, as an echo may
                // quote them.
                if let Some((_scheme, credentials)) = text.split_once(' ') {
                    secrets.add(credentials.trim());
                }
            }
        }
        secrets
    }
}

/// A URL that did not parse, as an error may quote it: without userinfo
/// and without its query.
fn shown_url_text(text: &str) -> String {
    let text = ferry_export::redact::redact_userinfo(text);
    match text.split_once('?') {
        Some((before, _)) => format!("{before}?{REDACTED}"),
        None => text,
    }
}

/// The extra headers as a `HeaderMap`, refusing bad names and values and
/// the headers ferry sets itself.
fn headers(raw: BTreeMap<String, String>) -> Result<HeaderMap, ConfigError> {
    let mut headers = HeaderMap::new();
    for (name, value) in raw {
        let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| ConfigError::Invalid {
            field: "config.headers".into(),
            problem: format!("{name:?} is not a header name"),
            fix: "use letters, digits and '-' only",
        })?;
        if RESERVED.contains(&header.as_str()) {
            return Err(ConfigError::Invalid {
                field: "config.headers".into(),
                problem: format!("{name} is set by ferry"),
                fix: "remove it (ferry sets Content-Type, Idempotency-Key and Ferry-Signature itself)",
            });
        }
        let value = HeaderValue::from_str(&value).map_err(|_| ConfigError::Invalid {
            field: format!("config.headers.{name}"),
            problem: "the value is not a valid header value".into(),
            fix: "use visible ASCII characters and spaces only",
        })?;
        headers.insert(header, value);
    }
    Ok(headers)
}
