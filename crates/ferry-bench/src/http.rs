//! ferry over HTTP: `POST /v1/ledgers/{ledger}/entries` from N clients
//! sharing one reqwest client, each waiting for its 201 before the next
//! call. The server is started in-process on 127.0.0.1:0 with its own data
//! dir, or is the one given with `--server`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use ferry_api::ApiConfig;
use ferry_store::Store;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Client, StatusCode, Url};
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::driver::{Measurement, Timing, drive};
use crate::workload::{Cell, http_body, ledger_names};

/// A wait longer than this for one response fails the run.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the in-process server gets to drain when a run ends.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the HTTP target sends its requests.
#[derive(Debug, Clone, Default)]
pub struct HttpOptions {
    /// A running ferry; `None` starts one in-process per run.
    pub server: Option<Url>,
    /// Bearer token for a server with auth.
    pub token: Option<String>,
    /// wrk and the `ferry` it serves, for the `http-wrk` target.
    pub wrk: Option<crate::wrk::WrkOptions>,
}

pub async fn run(cell: &Cell, timing: Timing, parent: &Path, options: &HttpOptions) -> anyhow::Result<Measurement> {
    let server = match &options.server {
        Some(url) => Server::External(with_trailing_slash(url.clone())),
        None => Server::start(parent).await?,
    };
    let client = client(cell.clients, options.token.as_deref())?;
    let urls = Arc::new(entry_urls(server.base())?);
    create_ledgers(&client, server.base()).await?;
    let body = Bytes::from(http_body(cell));
    let appender = client.clone();
    let measured = drive(cell.clients, timing, cell.batch as u64, move |worker| {
        let (client, url, body) = (appender.clone(), urls[worker % urls.len()].clone(), body.clone());
        async move { post(&client, url, body).await }
    })
    .await;
    // Idle pooled connections would hold up the server's graceful stop.
    drop(client);
    server.stop().await?;
    measured
}

/// One append call: POST the body and expect 201.
async fn post(client: &Client, url: Url, body: Bytes) -> anyhow::Result<()> {
    let response = client.post(url).body(body).send().await?;
    let status = response.status();
    // Reading the body to its end returns the connection to the pool.
    let answer = response.bytes().await?;
    if status != StatusCode::CREATED {
        bail!("expected 201, got {status}: {}", String::from_utf8_lossy(&answer));
    }
    Ok(())
}

/// One client for all workers, keeping a pooled connection per worker.
pub(crate) fn client(clients: usize, token: Option<&str>) -> anyhow::Result<Client> {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(token) = token {
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).context("the token is not a header value")?;
        value.set_sensitive(true);
        headers.insert(AUTHORIZATION, value);
    }
    Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(clients.max(1))
        .tcp_nodelay(true)
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("build the HTTP client")
}

/// `PUT /v1/ledgers/{ledger}` for every ledger (200 or 201), so no measured
/// call pays for a creation.
pub(crate) async fn create_ledgers(client: &Client, base: &Url) -> anyhow::Result<()> {
    for ledger in ledger_names() {
        let url = base.join(&format!("v1/ledgers/{ledger}"))?;
        let response = client.put(url.clone()).send().await.with_context(|| format!("PUT {url}"))?;
        if !response.status().is_success() {
            bail!("PUT {url}: {}: {}", response.status(), response.text().await.unwrap_or_default());
        }
    }
    Ok(())
}

fn entry_urls(base: &Url) -> anyhow::Result<Vec<Url>> {
    ledger_names().iter().map(|l| Ok(base.join(&format!("v1/ledgers/{l}/entries"))?)).collect()
}

/// So that joining `v1/…` keeps a base path such as `/ferry/`.
fn with_trailing_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    url
}

/// Reads `entries` back through `GET …/entries` (NDJSON pages of 10,000)
/// from an in-process server whose store was filled directly; returns the
/// entries read and the time the reads took.
pub async fn replay(parent: &Path, entries: u64, payload_bytes: usize) -> anyhow::Result<(u64, Duration)> {
    let server = Server::start(parent).await?;
    let Server::InProcess(s) = &server else { unreachable!("started in-process") };
    let ledger = &ledger_names()[0];
    crate::replay::fill(&s.store, ledger, entries, payload_bytes).await?;
    let client = client(1, None)?;
    let url = server.base().join(&format!("v1/ledgers/{ledger}/entries"))?;
    let started = std::time::Instant::now();
    let (mut from, mut read) = (1u64, 0u64);
    loop {
        let response = client
            .get(url.clone())
            .query(&[("from", from), ("limit", 10_000)])
            .header(reqwest::header::ACCEPT, "application/x-ndjson")
            .send()
            .await?;
        let status = response.status();
        let body = response.bytes().await?;
        if status != StatusCode::OK {
            bail!("GET {url}: {status}: {}", String::from_utf8_lossy(&body));
        }
        let lines = body.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count() as u64;
        if lines == 0 {
            break;
        }
        read += lines;
        from += lines;
    }
    let took = started.elapsed();
    drop(client);
    server.stop().await?;
    Ok((read, took))
}

enum Server {
    External(Url),
    InProcess(InProcess),
}

struct InProcess {
    base: Url,
    store: Store,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
    /// Removed once the server and its store have stopped.
    _dir: TempDir,
}

impl Server {
    /// Starts ferry's API on 127.0.0.1:0 over a fresh store, set up as
    /// `ferry serve` sets it up (defaults, Prometheus recorder).
    async fn start(parent: &Path) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new().prefix("http-").tempdir_in(parent).context("create a temp dir")?;
        let store = crate::store::open(dir.path()).await?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("bind 127.0.0.1:0")?;
        let base = Url::parse(&format!("http://{}/", listener.local_addr()?))?;
        let config = ApiConfig { metrics: ferry_api::metrics::install(), ..ApiConfig::default() };
        let router = ferry_api::Api::open(store.clone(), config).await?.router();
        let (stop, stopped) = oneshot::channel::<()>();
        let task =
            tokio::spawn(ferry_api::serve(listener, router, ferry_api::ConnectionLimits::default(), None, async {
                let _ = stopped.await;
            }));
        Ok(Server::InProcess(InProcess { base, store, stop, task, _dir: dir }))
    }

    fn base(&self) -> &Url {
        match self {
            Server::External(base) => base,
            Server::InProcess(s) => &s.base,
        }
    }

    async fn stop(self) -> anyhow::Result<()> {
        let Server::InProcess(s) = self else { return Ok(()) };
        let _ = s.stop.send(());
        tokio::time::timeout(STOP_TIMEOUT, s.task).await.context("the server did not stop")???;
        s.store.shutdown().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_urls_keep_a_base_path() {
        let base = with_trailing_slash(Url::parse("http://h:1/ferry").unwrap());
        let urls = entry_urls(&base).unwrap();
        assert_eq!(urls[0].as_str(), "http://h:1/ferry/v1/ledgers/bench-00/entries");
        let plain = with_trailing_slash(Url::parse("http://h:1").unwrap());
        assert_eq!(entry_urls(&plain).unwrap()[1].as_str(), "http://h:1/v1/ledgers/bench-01/entries");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_run_appends_through_an_in_process_server() {
        crate::install_tls_provider();
        let dir = tempfile::tempdir().unwrap();
        let cell = Cell { clients: 4, payload_bytes: 64, batch: 2 };
        let timing = Timing { warmup: Duration::ZERO, window: Duration::from_millis(300) };
        let m = run(&cell, timing, dir.path(), &HttpOptions::default()).await.unwrap();
        assert!(m.calls > 0);
        assert_eq!(m.entries, m.calls * 2);
    }
}
