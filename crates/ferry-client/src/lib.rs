//! An async client of ferry's HTTP API (`/v1`):
//! typed requests and answers, one error type carrying the server's error
//! code, watches that resume by themselves, and appends that can be retried
//! without appending twice.
//!
//! ```no_run
//! use ferry_client::{Append, Client, NewEntry, ReadQuery, WatchEvent, WatchOptions};
//!
//! # async fn demo() -> Result<(), ferry_client::Error> {
//! let client = Client::new("http://127.0.0.1:7070")?.with_token("s3cret");
//!
//! // Retried on a dropped connection or 503 with generated idempotency
//! // keys, so the entry is appended once whatever happens on the way.
//! let entry = NewEntry::new(&serde_json::json!({"user": "u-7", "action": "login"}))?.key("u-7");
//! let appended = client.append_with_retry("audit", Append::one(entry)).await?;
//! println!("appended as {:?}", appended.ids);
//!
//! // A conditional append: only if nothing was appended since id 41.
//! let next = Append::one(NewEntry::from_json(r#"{"n":42}"#)?).expected_head(41);
//! match client.append("audit", &next).await {
//!     Ok(a) => println!("{:?}", a.ids),
//!     Err(e) if e.code() == Some("head_mismatch") => {
//!         println!("someone else appended; head is {:?}", e.api().and_then(|a| a.head()))
//!     }
//!     Err(e) => return Err(e),
//! }
//!
//! let page = client.read("audit", &ReadQuery { from: Some(1), limit: Some(100), ..Default::default() }).await?;
//! for entry in &page.entries {
//!     println!("{} {}", entry.id, entry.payload.get());
//! }
//!
//! // Follows every ledger starting with "audit"; reconnects and resumes
//! // with no gap and no duplicate, also across a server restart.
//! let mut watch = client.watch(WatchOptions::prefix("audit")).await?;
//! loop {
//!     match watch.next().await? {
//!         WatchEvent::Entry(e) => println!("{} {} {}", e.ledger, e.id, e.payload.get()),
//!         WatchEvent::LedgerDeleted { ledger, .. } => println!("{ledger} was deleted"),
//!         _ => {} // lagged, reconnecting: handled by the watch
//!     }
//! }
//! # }
//! ```
//!
//! # TLS
//!
//! The crate uses reqwest built without a TLS provider of its own (the
//! `rustls-no-provider` feature), so an application that talks to an
//! `https://` server installs one once at start, as the `ferry` binary
//! does:
//!
//! ```ignore
//! let _ = rustls::crypto::ring::default_provider().install_default();
//! ```
//!
//! or builds its own `reqwest::Client` (its roots, timeouts, proxy) and
//! hands it to [`Client::with_http`]. reqwest needs the provider to build
//! any client, even for `http://`: without one, [`Client::new`] panics.
//!
//! # Errors and retries
//!
//! Every call returns [`Error`]: [`Error::Api`] carries the status, `code`,
//! `message` and extra fields of the server's `{"error":{…}}` body;
//! [`Error::is_retryable`] tells what a later attempt may fix. Only
//! [`Client::append_with_retry`] retries by itself, and it gives each entry
//! an idempotency key first: an append whose answer was lost may have been
//! applied, and only the key makes sending it again safe. So does
//! [`Client::import`], which needs no key: its entries carry their ids, and
//! entries already stored are answered as present.
//!
//! # Backups
//!
//! [`Client::create_pin`] takes a snapshot pin (renew it with
//! [`Client::renew_pin`] while the backup runs),
//! [`Client::read_pinned_lines`] reads a ledger as the pin cut it, as
//! backup lines, and [`Client::import`] writes such lines back, to this
//! server or another.

#![deny(missing_docs)]

mod append;
mod error;
mod pins;
mod read;
mod types;
mod watch;

use std::sync::Arc;

use serde::Serialize;

pub use append::{Append, Appended, NewEntry, RetryPolicy};
pub use error::{ApiError, Error};
pub use pins::{Imported, Pin, PinnedLines};
pub use read::{EntryLines, ReadPage, ReadQuery};
pub use types::{
    Entry, ExporterCheck, ExporterHealth, ExporterLedger, ExporterStatus, Health, Ledger, LedgerCheck, LedgerPage,
    SourceHealth, SourceStatus, StuckLedger, SystemEvent,
};
pub use watch::{SystemEvents, SystemNotice, Watch, WatchEvent, WatchOptions};

use append::{decode, segment};

/// A client of one ferry server. Cheap to clone (the connection pool is
/// shared). Its `Debug` form never shows the token.
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: Arc<str>,
    token: Option<Arc<str>>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("base", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client of the server at `base_url` (`http://host:port` or
    /// `https://…`, without `/v1`), with a default `reqwest::Client`.
    ///
    /// # Panics
    ///
    /// When no rustls crypto provider is installed in the process (see
    /// "TLS" in the crate docs): reqwest refuses to build a client without
    /// one, even for `http://`.
    pub fn new(base_url: &str) -> Result<Self, Error> {
        let http = reqwest::Client::builder().build().map_err(Error::Transport)?;
        Self::with_http(http, base_url)
    }

    /// A client that sends its requests with `http` (for its own timeouts,
    /// TLS roots or proxy).
    pub fn with_http(http: reqwest::Client, base_url: &str) -> Result<Self, Error> {
        let base = base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::InvalidInput(format!("the server URL {base:?} must start with http:// or https://")));
        }
        Ok(Self { http, base: base.into(), token: None, retry: RetryPolicy::default() })
    }

    /// Sends `Authorization: Bearer <token>` with every request (servers
    /// with `[server] tokens`).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into().into());
        self
    }

    /// Sets how [`Client::append_with_retry`] retries.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// The server's base URL.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// A request of `path` (from `/`), with the token.
    pub(crate) fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// Sends a request: the answer when it is a success, else its error.
    pub(crate) async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, Error> {
        let resp = req.send().await?;
        if resp.status().is_success() { Ok(resp) } else { Err(Error::from_response(resp).await) }
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str, what: &'static str) -> Result<T, Error> {
        decode(self.send(self.request(reqwest::Method::GET, path)).await?, what).await
    }

    /// Every ledger the token may read, following the pages of `GET
    /// /v1/ledgers`.
    pub async fn ledgers(&self) -> Result<Vec<Ledger>, Error> {
        let mut all = Vec::new();
        let mut after = None;
        loop {
            let page = self.ledgers_page(after.as_deref(), None).await?;
            all.extend(page.ledgers);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// One page of ledgers: those named after `after`, at most `limit`
    /// (the server's default when `None`).
    pub async fn ledgers_page(&self, after: Option<&str>, limit: Option<usize>) -> Result<LedgerPage, Error> {
        let req = self.request(reqwest::Method::GET, "/v1/ledgers").query(&page_query(after, limit));
        decode(self.send(req).await?, "a ledger page").await
    }

    /// One ledger; 404 `ledger_not_found` when there is none.
    pub async fn ledger(&self, name: &str) -> Result<Ledger, Error> {
        self.get_json(&format!("/v1/ledgers/{}", segment(name)), "a ledger").await
    }

    /// Creates a ledger; true when it is new, false when it existed.
    pub async fn create_ledger(&self, name: &str) -> Result<bool, Error> {
        let resp = self.send(self.request(reqwest::Method::PUT, &format!("/v1/ledgers/{}", segment(name)))).await?;
        Ok(resp.status() == reqwest::StatusCode::CREATED)
    }

    /// Deletes a ledger: its entries, packs, cursors and metadata.
    pub async fn delete_ledger(&self, name: &str) -> Result<(), Error> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/v1/ledgers/{}", segment(name)))).await?;
        Ok(())
    }

    /// Every exporter (configured ones, then orphaned ones), each with the
    /// first page of its ledgers and totals over all of them; `next` on
    /// each says where `exporter_page` continues.
    pub async fn exporters(&self) -> Result<Vec<ExporterStatus>, Error> {
        self.get_json("/v1/exporters", "an exporter list").await
    }

    /// One exporter's status with all its ledgers, following the pages.
    pub async fn exporter(&self, name: &str) -> Result<ExporterStatus, Error> {
        let mut status = self.exporter_page(name, None, None).await?;
        while let Some(after) = status.next.take() {
            let page = self.exporter_page(name, Some(&after), None).await?;
            status.ledgers.extend(page.ledgers);
            status.next = page.next;
        }
        Ok(status)
    }

    /// One exporter's status with one page of its ledgers: those named
    /// after `after`, at most `limit`.
    pub async fn exporter_page(
        &self,
        name: &str,
        after: Option<&str>,
        limit: Option<usize>,
    ) -> Result<ExporterStatus, Error> {
        let req = self
            .request(reqwest::Method::GET, &format!("/v1/exporters/{}", segment(name)))
            .query(&page_query(after, limit));
        decode(self.send(req).await?, "an exporter status").await
    }

    /// Whether data moves (`GET /v1/health`): each exporter's stuck
    /// ledgers (older than its `max_lag`) and each source's state.
    pub async fn pipeline_health(&self) -> Result<Health, Error> {
        self.get_json("/v1/health", "a health report").await
    }

    /// The range check: whether the destination holds exactly ids
    /// First..=cursor of every ledger (or `ledger`).
    pub async fn check_exporter(&self, name: &str, ledger: Option<&str>) -> Result<ExporterCheck, Error> {
        let mut req = self.request(reqwest::Method::GET, &format!("/v1/exporters/{}/check", segment(name)));
        if let Some(l) = ledger {
            req = req.query(&[("ledger", l)]);
        }
        decode(self.send(req).await?, "an exporter check").await
    }

    /// Re-exports from `from_id` (default 1) every ledger, or `ledger`.
    /// A reset that fails changes nothing and leaves the exporter stopped.
    pub async fn reset_exporter(
        &self,
        name: &str,
        ledger: Option<&str>,
        from_id: Option<u64>,
    ) -> Result<ExporterStatus, Error> {
        #[derive(Serialize)]
        struct Reset<'a> {
            ledger: Option<&'a str>,
            from_id: Option<u64>,
        }
        let req = self
            .request(reqwest::Method::POST, &format!("/v1/exporters/{}/reset", segment(name)))
            .json(&Reset { ledger, from_id });
        decode(self.send(req).await?, "an exporter status").await
    }

    /// Starts no new batches until resumed (not kept across restarts).
    pub async fn pause_exporter(&self, name: &str) -> Result<ExporterStatus, Error> {
        self.exporter_action(name, "pause").await
    }

    /// Ends a pause or stop, and retries failed ledgers.
    pub async fn resume_exporter(&self, name: &str) -> Result<ExporterStatus, Error> {
        self.exporter_action(name, "resume").await
    }

    async fn exporter_action(&self, name: &str, action: &str) -> Result<ExporterStatus, Error> {
        let req = self.request(reqwest::Method::POST, &format!("/v1/exporters/{}/{action}", segment(name)));
        decode(self.send(req).await?, "an exporter status").await
    }

    /// Deletes an orphaned exporter's cursors (409 `exporter_configured`
    /// for a configured one).
    pub async fn delete_exporter(&self, name: &str) -> Result<(), Error> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/v1/exporters/{}", segment(name)))).await?;
        Ok(())
    }

    /// Every outbox source's status, in configuration order (`[]` when
    /// none are configured).
    pub async fn sources(&self) -> Result<Vec<SourceStatus>, Error> {
        self.get_json("/v1/sources", "a source list").await
    }

    /// One outbox source's status; 404 `source_not_found` when there is
    /// none.
    pub async fn source(&self, name: &str) -> Result<SourceStatus, Error> {
        self.get_json(&format!("/v1/sources/{}", segment(name)), "a source status").await
    }

    /// Liveness (`/healthz`): Ok while the process answers.
    pub async fn health(&self) -> Result<(), Error> {
        self.send(self.request(reqwest::Method::GET, "/healthz")).await.map(drop)
    }

    /// Readiness (`/readyz`): Ok after recovery; 503 `store_unavailable`
    /// once the store is poisoned.
    pub async fn ready(&self) -> Result<(), Error> {
        self.send(self.request(reqwest::Method::GET, "/readyz")).await.map(drop)
    }
}

/// `after` and `limit` as query pairs, leaving out what is `None`.
fn page_query(after: Option<&str>, limit: Option<usize>) -> Vec<(&'static str, String)> {
    let mut q = Vec::new();
    if let Some(a) = after {
        q.push(("after", a.to_owned()));
    }
    if let Some(l) = limit {
        q.push(("limit", l.to_string()));
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn http() -> reqwest::Client {
        let _ = rustls::crypto::ring::default_provider().install_default();
        reqwest::Client::new()
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = Client::with_http(http(), "http://127.0.0.1:7070").unwrap().with_token("s3cret-token");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn one_entry_is_sent_in_the_single_form_and_a_batch_as_entries() {
        let one = Append::one(NewEntry::from_json(r#"{"b":1, "a":2.50}"#).unwrap().key("k")).expected_head(3);
        assert_eq!(
            String::from_utf8(one.body().unwrap()).unwrap(),
            r#"{"payload":{"b":1, "a":2.50},"key":"k","expected_head":3}"#
        );
        let batch = Append::batch(vec![NewEntry::new(&1).unwrap(), NewEntry::new(&2).unwrap().idempotency_key("i")]);
        assert_eq!(
            String::from_utf8(batch.body().unwrap()).unwrap(),
            r#"{"entries":[{"payload":1},{"payload":2,"idempotency_key":"i"}]}"#
        );
    }

    #[test]
    fn generated_idempotency_keys_fill_only_the_missing_ones_and_differ_per_request() {
        let a = Append::batch(vec![NewEntry::new(&1).unwrap(), NewEntry::new(&2).unwrap().idempotency_key("mine")])
            .with_idempotency_keys();
        let keys: Vec<_> = a.entries().iter().map(|e| e.get_idempotency_key().unwrap().to_owned()).collect();
        assert_eq!(keys[1], "mine");
        assert!(keys[0].ends_with("-0") && keys[0].len() <= 256, "{keys:?}");
        let b = Append::one(NewEntry::new(&1).unwrap()).with_idempotency_keys();
        assert_ne!(b.entries()[0].get_idempotency_key(), Some(keys[0].as_str()), "a new request, a new key");
    }

    #[test]
    fn path_segments_cannot_leave_their_place() {
        assert_eq!(append::segment("audit.v1_x-y"), "audit.v1_x-y");
        assert_eq!(append::segment(".."), "%2E.");
        assert_eq!(append::segment("a/b?c"), "a%2Fb%3Fc");
    }

    #[test]
    fn a_wait_is_sent_in_milliseconds() {
        let q = ReadQuery { from: Some(3), wait: Some(std::time::Duration::from_secs(2)), ..Default::default() };
        let req = http().get("http://h/x").query(&q).build().unwrap();
        assert_eq!(req.url().query(), Some("from=3&wait=2000ms"));
    }
}
