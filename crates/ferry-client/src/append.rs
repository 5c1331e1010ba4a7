//! Appends: the request (one entry or a batch, `expected_head`), its
//! answer, and the retrying path that makes a repeat safe by giving every
//! entry an idempotency key.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use serde::Serialize;
use serde_json::value::RawValue;

use crate::{Client, Error};

/// One entry to append.
#[derive(Debug, Clone, Serialize)]
pub struct NewEntry {
    payload: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    idempotency_key: Option<String>,
}

impl NewEntry {
    /// An entry whose payload is `value` serialized as JSON.
    pub fn new(value: &impl Serialize) -> Result<Self, Error> {
        let text = serde_json::to_string(value).map_err(|e| Error::InvalidInput(format!("the payload: {e}")))?;
        Self::from_json(text)
    }

    /// An entry whose payload is the JSON text `text`, sent byte for byte
    /// (ferry stores it as sent, minus whitespace outside strings).
    pub fn from_json(text: impl Into<String>) -> Result<Self, Error> {
        let payload = RawValue::from_string(text.into())
            .map_err(|e| Error::InvalidInput(format!("the payload is not JSON: {e}")))?;
        Ok(Self { payload, key: None, idempotency_key: None })
    }

    /// Sets the routing key stored with the entry.
    pub fn key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sets the idempotency key: a repeat of it (per ledger, kept ≥ 24 h)
    /// answers the original id and appends nothing.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// The idempotency key, if set.
    pub fn get_idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
}

/// An append request: one entry or a batch (all or nothing, contiguous
/// ids), optionally conditional on the ledger's head.
#[derive(Debug, Clone)]
pub struct Append {
    entries: Vec<NewEntry>,
    expected_head: Option<u64>,
}

impl Append {
    /// Appends one entry.
    pub fn one(entry: NewEntry) -> Self {
        Self { entries: vec![entry], expected_head: None }
    }

    /// Appends a batch (at most 10,000 entries; an empty one is 422
    /// `empty_batch`).
    pub fn batch(entries: Vec<NewEntry>) -> Self {
        Self { entries, expected_head: None }
    }

    /// Applies the append only if the ledger's head is `head` when it
    /// commits (0: the ledger is empty or absent); otherwise the server
    /// answers 412 `head_mismatch` and [`ApiError::head`](crate::ApiError::head)
    /// names the head it found. Repeats of idempotency keys answer their
    /// original ids even if the head moved since.
    pub fn expected_head(mut self, head: u64) -> Self {
        self.expected_head = Some(head);
        self
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[NewEntry] {
        &self.entries
    }

    /// Gives every entry without an idempotency key a fresh random one
    /// (`{32 hex digits}-{index}`), so that sending the request again cannot
    /// append anything twice.
    pub fn with_idempotency_keys(mut self) -> Self {
        let batch = format!("{:032x}", rand::random::<u128>());
        for (i, e) in self.entries.iter_mut().enumerate() {
            if e.idempotency_key.is_none() {
                e.idempotency_key = Some(format!("{batch}-{i}"));
            }
        }
        self
    }

    /// The body: the single-entry form for one entry, `{"entries":[…]}` for
    /// a batch.
    pub(crate) fn body(&self) -> Result<Vec<u8>, Error> {
        #[derive(Serialize)]
        struct Batch<'a> {
            entries: &'a [NewEntry],
            #[serde(skip_serializing_if = "Option::is_none")]
            expected_head: Option<u64>,
        }
        #[derive(Serialize)]
        struct One<'a> {
            #[serde(flatten)]
            entry: &'a NewEntry,
            #[serde(skip_serializing_if = "Option::is_none")]
            expected_head: Option<u64>,
        }
        let body = match self.entries.as_slice() {
            [entry] => serde_json::to_vec(&One { entry, expected_head: self.expected_head }),
            entries => serde_json::to_vec(&Batch { entries, expected_head: self.expected_head }),
        };
        body.map_err(|e| Error::InvalidInput(format!("the append body: {e}")))
    }
}

/// The answer to an append.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Appended {
    /// The entries' ids, in the request's order.
    pub ids: Vec<u64>,
    /// True when every entry repeated a known idempotency key (200):
    /// nothing was appended and `ids` are the original ones.
    #[serde(skip)]
    pub repeated: bool,
}

/// How [`Client::append_with_retry`] and [`Client::import`] retry: exponential backoff with
/// jitter from `min_delay` to `max_delay`, at most `max_retries` times; a
/// `Retry-After` from the server (503 `busy`) is waited at least.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// The first wait.
    pub min_delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// 6 retries from 100 ms to 5 s: about 10 s in all, the time a server
    /// restart takes.
    fn default() -> Self {
        Self { max_retries: 6, min_delay: Duration::from_millis(100), max_delay: Duration::from_secs(5) }
    }
}

impl Client {
    /// Sends an append once: no retry (a failed attempt whose answer was
    /// lost may still have been applied; see [`Client::append_with_retry`]).
    pub async fn append(&self, ledger: &str, append: &Append) -> Result<Appended, Error> {
        let body = append.body()?;
        let req = self
            .request(reqwest::Method::POST, &format!("/v1/ledgers/{}/entries", segment(ledger)))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        let resp = self.send(req).await?;
        let repeated = resp.status() == reqwest::StatusCode::OK;
        let mut appended: Appended = decode(resp, "an append answer {\"ids\":[…]}").await?;
        appended.repeated = repeated;
        Ok(appended)
    }

    /// Appends, retrying what [`Error::is_retryable`] allows per the
    /// client's [`RetryPolicy`].
    ///
    /// A retried append without an idempotency key could be applied twice
    /// (the first attempt may have committed before its answer was lost),
    /// so every entry without one first gets a generated key
    /// ([`Append::with_idempotency_keys`]): whatever the attempts did, the
    /// entries are appended once, and the answer names their ids.
    pub async fn append_with_retry(&self, ledger: &str, append: Append) -> Result<Appended, Error> {
        let append = append.with_idempotency_keys();
        self.retrying(|| self.append(ledger, &append)).await
    }

    /// Runs `attempt` until it succeeds, fails for good, or the client's
    /// [`RetryPolicy`] gives up. Only for requests that are safe to send
    /// twice: an attempt whose answer was lost may have been applied.
    pub(crate) async fn retrying<T, Fut>(&self, attempt: impl FnMut() -> Fut) -> Result<T, Error>
    where
        Fut: std::future::Future<Output = Result<T, Error>>,
    {
        let policy = self.retry;
        let backoff = ExponentialBuilder::default()
            .with_min_delay(policy.min_delay)
            .with_max_delay(policy.max_delay)
            .with_max_times(policy.max_retries)
            .with_jitter();
        attempt
            .retry(backoff)
            .sleep(tokio::time::sleep)
            .when(Error::is_retryable)
            .adjust(|e, wait| wait.map(|w| e.retry_after().map_or(w, |after| after.max(w))))
            .await
    }
}

/// A path segment: ledger and exporter names are `[a-z0-9._-]`, which need
/// no escaping; anything else is escaped so that it cannot change the path
/// (the server then refuses the name).
pub(crate) fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, b) in name.bytes().enumerate() {
        // A leading `.` is escaped too: `.` and `..` would move up the path.
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-') || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Reads a success answer's JSON body.
pub(crate) async fn decode<T: serde::de::DeserializeOwned>(
    resp: reqwest::Response,
    what: &'static str,
) -> Result<T, Error> {
    let body = resp.bytes().await?;
    serde_json::from_slice(&body).map_err(|source| Error::Decode { what, source })
}
