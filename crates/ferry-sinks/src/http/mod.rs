//! `http`: each batch is one POST (a JSON array, or NDJSON), with
//! `Idempotency-Key: {exporter}/{ledger}/{incarnation}/{first_id}-{last_id}`
//! and, when a secret is set, `Ferry-Signature: t={unix seconds},v1={hex
//! HMAC-SHA256 of "{t}.{body}"}`. 2xx acknowledges the batch; 408, 429 and
//! 5xx, timeouts and connection errors are retried (after `Retry-After`
//! when sent); any other status is a permanent failure.
//!
//! **Why exactly once in effect.** The runtime re-sends a batch until a 2xx
//! arrives, so the receiver sees every entry at least once. A batch the
//! sink was given and did not acknowledge is sent again with the same ids,
//! so the same `Idempotency-Key` and body, however many entries were
//! appended meanwhile; after a restart too, unless the head had cut it
//! short (a linger batch), in which case it may come again from the same
//! id with more entries under another key (`docs/sinks.md`). The key names
//! the ledger's incarnation, so a ledger deleted and created again (ids
//! from 1 again) never repeats an old key. Every entry carries its
//! `(ledger, id)`: a receiver that records the highest id applied per
//! ledger and incarnation drops every repeat, restarts included; one that
//! records keys drops every repeat but that one. That dedup is the
//! receiver's half of the contract, and the signature lets it trust the
//! body.
//!
//! **Secrets.** Errors name the URL without its userinfo and with every
//! query value replaced, and never show the `secret`, a header value, the
//! password or a query value, even when the receiver's answer quotes them
//! (`HttpConfig::secrets`).

mod config;

use std::time::{Duration, SystemTime};

pub use config::{BodyFormat, HttpConfig};
use ferry_core::limits::RETRY_WAIT_MS_MAX;
use ferry_core::{EntryId, LedgerName};
use ferry_export::{Ack, Batch, Secrets, SinkError};
use hmac::{Hmac, KeyInit as _, Mac as _};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};

use crate::ConfigError;
use crate::error::error_chain;

/// Response bytes quoted in an error.
const ERROR_BODY_BYTES_MAX: usize = 256;

pub struct HttpSink {
    config: HttpConfig,
    client: reqwest::Client,
    shown: Box<Shown>,
}

/// What error messages may say about the configuration.
struct Shown {
    /// The URL: no userinfo, query values replaced.
    url: String,
    /// Removed from every error message (the receiver's answer may quote
    /// what it was sent).
    secrets: Secrets,
}

impl HttpSink {
    pub fn new(config: HttpConfig) -> Result<Self, ConfigError> {
        // reqwest is built without a TLS provider; ferry uses ring. Installing
        // it twice is a no-op, so a sink built outside `ferry serve` works too.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .timeout(config.timeout)
            // A redirect is an answer to act on (a 3xx is a permanent
            // failure), not something to follow with a re-sent body.
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(config.headers.clone())
            .build()
            .map_err(|error| ConfigError::HttpClient { error: error.without_url() })?;
        let shown = Box::new(Shown { url: config.shown_url(), secrets: config.secrets() });
        Ok(Self { config, client, shown })
    }

    /// What the runtime removes from this sink's errors again.
    pub fn secrets(&self) -> Secrets {
        self.shown.secrets.clone()
    }

    /// `message` with this sink's secrets and any URL userinfo removed.
    fn error_message(&self, message: String) -> String {
        self.shown.secrets.redact(&message)
    }

    pub async fn prepare(&self, _ledger: &LedgerName, _cursor: EntryId) -> Result<(), SinkError> {
        Ok(())
    }

    pub async fn deliver(&self, batch: &Batch) -> Result<Ack, SinkError> {
        let (body, content_type) = match self.config.format {
            BodyFormat::Json => (json_array(batch), "application/json"),
            BodyFormat::Ndjson => (crate::json_lines(batch), "application/x-ndjson"),
        };
        let mut request = self
            .client
            .post(self.config.url.clone())
            .header(CONTENT_TYPE, content_type)
            .header("Idempotency-Key", batch.idempotency_key());
        if let Some(secret) = &self.config.secret {
            let t = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            request = request.header("Ferry-Signature", signature(secret, t, &body));
        }
        let response = request.body(body).send().await.map_err(|e| {
            let what = if e.is_timeout() { "timed out" } else { "failed" };
            // reqwest's error carries the URL, query and all: drop it and
            // name the shown URL instead, with the causes (e.g. "connection
            // refused") that its own Display leaves out.
            let cause = error_chain(&e.without_url());
            SinkError::retryable(self.error_message(format!("POST {} {what}: {cause}", self.shown.url)))
        })?;
        let status = response.status();
        if status.is_success() {
            return Ok(Ack { through: batch.last_id() });
        }
        let retry_after = response.headers().get(RETRY_AFTER).and_then(parse_retry_after);
        let snippet = error_snippet(response).await;
        let message = self.error_message(format!("POST {} answered {status}: {snippet}", self.shown.url));
        if retryable(status) {
            Err(SinkError::Retryable { message, retry_after })
        } else {
            Err(SinkError::permanent(message))
        }
    }
}

/// The start of an error answer's body, read no further than needed.
async fn error_snippet(mut response: reqwest::Response) -> String {
    let mut body = Vec::new();
    while body.len() < ERROR_BODY_BYTES_MAX {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            _ => break,
        }
    }
    String::from_utf8_lossy(&body[..body.len().min(ERROR_BODY_BYTES_MAX)]).into_owned()
}

fn retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

fn json_array(batch: &Batch) -> Vec<u8> {
    let mut out = Vec::with_capacity(batch.entries.iter().map(|e| e.payload.len() + 96).sum::<usize>() + 2);
    out.push(b'[');
    for (i, e) in batch.entries.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        e.write_json(&mut out);
    }
    out.push(b']');
    out
}

/// `t={t},v1={hex(HMAC-SHA256(secret, "{t}." + body))}`.
pub fn signature(secret: &str, t: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    format!("t={t},v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// `Retry-After` as delay-seconds or an HTTP date, capped.
fn parse_retry_after(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    let wait = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => httpdate::parse_http_date(text).ok()?.duration_since(SystemTime::now()).unwrap_or_default(),
    };
    Some(wait.min(Duration::from_millis(RETRY_WAIT_MS_MAX)))
}

#[cfg(test)]
mod tests;
