//! `sink = "http"`: `url` (required), `format` ("json" | "ndjson"),
//! `secret`, `timeout` ("10s"), `headers` (a table of extra headers).

use std::collections::BTreeMap;
use std::time::Duration;

use ferry_core::units::Seconds;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;

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
    pub fn validate(value: serde_json::Value) -> Result<Self, String> {
        let raw: Raw = crate::parse(value)?;
        let url = raw.url.ok_or("config.url: required (e.g. \"http://127.0.0.1:8080/ingest\")")?;
        let url = reqwest::Url::parse(&url).map_err(|e| format!("config.url: {url:?} is not a URL: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("config.url: scheme {:?} is not http or https", url.scheme()));
        }
        let timeout = raw.timeout.map_or(TIMEOUT_DEFAULT, |t| t.0);
        if timeout.is_zero() {
            return Err("config.timeout: must be longer than 0".into());
        }
        let mut headers = HeaderMap::new();
        for (name, value) in raw.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("config.headers: {name:?} is not a header name"))?;
            if RESERVED.contains(&header.as_str()) {
                return Err(format!("config.headers: {name} is set by ferry"));
            }
            let value = HeaderValue::from_str(&value)
                .map_err(|_| format!("config.headers.{name}: the value is not a valid header value"))?;
            headers.insert(header, value);
        }
        let secret = Some(raw.secret).filter(|s| !s.is_empty());
        Ok(Self { url, format: raw.format, secret, timeout, headers })
    }
}
