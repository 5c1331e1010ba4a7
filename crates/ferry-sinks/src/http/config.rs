//! `sink = "http"`: `url` (required), `format` ("json" | "ndjson"),
//! `secret`, `timeout` ("10s"), `headers` (a table of extra headers).

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::units::Seconds;
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

#[derive(Debug, Clone)]
pub struct HttpConfig {
    pub url: reqwest::Url,
    pub format: BodyFormat,
    /// Signs each body (`Ferry-Signature`) when set.
    pub secret: Option<String>,
    pub timeout: Duration,
    pub headers: HeaderMap,
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
            problem: format!("{url:?} is not a URL: {e}"),
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
