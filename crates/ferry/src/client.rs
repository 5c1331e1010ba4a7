//! Client commands: `append`, `read`, `ledgers` over the HTTP API.

use std::io::{BufRead as _, Write as _};

use anyhow::{Context as _, bail};
use ferry_core::limits::READ_LIMIT_MAX;
use ferry_core::{LedgerName, Payload};

use crate::UsageError;

/// stdin lines sent per append request.
const STDIN_BATCH_ENTRIES: usize = 1_000;
/// Payload bytes sent per append request from stdin.
const STDIN_BATCH_BYTES: usize = 4 * 1024 * 1024;

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client of the server at `server` (`--server`), with `token`
    /// (`--token`) as bearer token.
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().build().context("build the HTTP client")?;
        let base = server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(UsageError(format!("--server {base:?} must start with http:// or https://")).into());
        }
        Ok(Self { http, base, token })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// A GET of `path` with the token, for callers that stream the answer.
    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    /// Sends a request; returns the body of a 2xx answer, else the
    /// server's error as a failure.
    async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<Vec<u8>> {
        let resp = req.send().await.with_context(|| format!("reach the ferry server at {}", self.base))?;
        let status = resp.status();
        let body = resp.bytes().await.context("read the server's answer")?;
        if status.is_success() {
            return Ok(body.to_vec());
        }
        let err: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        match (err["error"]["code"].as_str(), err["error"]["message"].as_str()) {
            (Some(code), Some(msg)) => bail!("{status}: {code}: {msg}"),
            _ => bail!("{status}: {}", String::from_utf8_lossy(&body)),
        }
    }

    pub async fn append(
        &self,
        ledger: &str,
        payload: Option<&str>,
        key: Option<String>,
        idempotency_key: Option<String>,
        mut expected_head: Option<u64>,
    ) -> anyhow::Result<()> {
        let ledger = LedgerName::parse(ledger).map_err(|e| UsageError(e.to_string()))?;
        let path = format!("/v1/ledgers/{ledger}/entries");
        if let Some(text) = payload {
            let payload = Payload::from_json(text).map_err(|e| UsageError(e.to_string()))?;
            let mut body = entry_json(&payload, key.as_deref(), idempotency_key.as_deref());
            if let Some(head) = expected_head {
                body.pop();
                body.push_str(&format!(",\"expected_head\":{head}}}"));
            }
            let answer = self.send(self.post_json(&path, body)).await?;
            println!("{}", String::from_utf8_lossy(&answer));
            return Ok(());
        }
        let mut batch = Vec::new();
        let (mut bytes, mut line_no) = (0, 0u64);
        let mut total = 0u64;
        for line in std::io::stdin().lock().lines() {
            let line = line.context("read stdin")?;
            line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            let payload = Payload::from_json(&line).map_err(|e| UsageError(format!("stdin line {line_no}: {e}")))?;
            let idem = idempotency_key.as_ref().map(|k| format!("{k}:{line_no}"));
            bytes += payload.len();
            batch.push(entry_json(&payload, key.as_deref(), idem.as_deref()));
            if batch.len() >= STDIN_BATCH_ENTRIES || bytes >= STDIN_BATCH_BYTES {
                total += self.append_batch(&path, std::mem::take(&mut batch), &mut expected_head).await?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            total += self.append_batch(&path, batch, &mut expected_head).await?;
        }
        eprintln!("appended {total} entries to {ledger}");
        Ok(())
    }

    /// Sends one batch, conditional on `expected_head` when given, which
    /// it then moves to the head the batch left: its highest new id (a
    /// repeat's original id is below the head it was checked against).
    async fn append_batch(
        &self,
        path: &str,
        entries: Vec<String>,
        expected_head: &mut Option<u64>,
    ) -> anyhow::Result<u64> {
        let n = entries.len() as u64;
        let condition = expected_head.map(|h| format!(",\"expected_head\":{h}")).unwrap_or_default();
        let body = format!("{{\"entries\":[{}]{condition}}}", entries.join(","));
        let answer = self.send(self.post_json(path, body)).await?;
        println!("{}", String::from_utf8_lossy(&answer));
        if let Some(head) = expected_head {
            #[derive(serde::Deserialize)]
            struct Ids {
                ids: Vec<u64>,
            }
            let Ids { ids } = serde_json::from_slice(&answer).context("the server's answer holds no ids")?;
            *head = ids.into_iter().fold(*head, u64::max);
        }
        Ok(n)
    }

    fn post_json(&self, path: &str, body: String) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path).header("content-type", "application/json").body(body)
    }

    /// Pages through the ledger with NDJSON reads, copying lines through
    /// unchanged (payload bytes exactly as stored).
    pub async fn read(&self, ledger: &str, start: ReadStart, limit: Option<u64>) -> anyhow::Result<()> {
        let ledger = LedgerName::parse(ledger).map_err(|e| UsageError(e.to_string()))?;
        if limit == Some(0) {
            return Ok(());
        }
        let (mut from, mut since) = match start {
            ReadStart::From(from) => (from, None),
            ReadStart::Since(ms) => (None, Some(ms)),
        };
        let mut left = limit.unwrap_or(u64::MAX);
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        while left > 0 {
            let page = left.min(READ_LIMIT_MAX as u64);
            let mut path = format!("/v1/ledgers/{ledger}/entries?limit={page}");
            if let Some(f) = from {
                path.push_str(&format!("&from={f}"));
            }
            // Only the first page starts by time; the next ones by id.
            if let Some(ms) = since.take() {
                path.push_str(&format!("&from_ts={ms}"));
            }
            let req = self.request(reqwest::Method::GET, &path).header("accept", "application/x-ndjson");
            let body = self.send(req).await?;
            let mut last_id = None;
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                #[derive(serde::Deserialize)]
                struct Id {
                    id: u64,
                }
                let Id { id } = serde_json::from_slice(line).context("the server sent a line that is not an entry")?;
                last_id = Some(id);
                out.write_all(line)?;
                out.write_all(b"\n")?;
                left -= 1;
            }
            match last_id {
                Some(id) => from = Some(id + 1),
                None => break,
            }
        }
        out.flush()?;
        Ok(())
    }

    /// `ferry exporters status [NAME]`.
    pub async fn exporter_status(&self, name: Option<&str>) -> anyhow::Result<()> {
        let path = match name {
            None => "/v1/exporters".to_owned(),
            Some(n) => format!("/v1/exporters/{}", exporter_name(n)?),
        };
        self.print_answer(self.request(reqwest::Method::GET, &path)).await
    }

    /// `ferry exporters reset NAME [--ledger L] [--from-id N]`.
    pub async fn exporter_reset(&self, name: &str, ledger: Option<&str>, from_id: Option<u64>) -> anyhow::Result<()> {
        if let Some(l) = ledger {
            LedgerName::parse(l).map_err(|e| UsageError(format!("--ledger: {e}")))?;
        }
        let body = serde_json::json!({ "ledger": ledger, "from_id": from_id }).to_string();
        self.print_answer(self.post_json(&format!("/v1/exporters/{}/reset", exporter_name(name)?), body)).await
    }

    /// `ferry exporters pause|resume NAME`: `action` is the path's last step.
    pub async fn exporter_control(&self, name: &str, action: ExporterControl) -> anyhow::Result<()> {
        let path = format!("/v1/exporters/{}/{}", exporter_name(name)?, action.as_str());
        self.print_answer(self.request(reqwest::Method::POST, &path)).await
    }

    /// `ferry exporters delete NAME`.
    pub async fn exporter_delete(&self, name: &str) -> anyhow::Result<()> {
        let path = format!("/v1/exporters/{}", exporter_name(name)?);
        self.print_answer(self.request(reqwest::Method::DELETE, &path)).await
    }

    /// Sends `request` and prints the server's JSON answer, if any.
    async fn print_answer(&self, request: reqwest::RequestBuilder) -> anyhow::Result<()> {
        let body = self.send(request).await?;
        if !body.is_empty() {
            let value: serde_json::Value = serde_json::from_slice(&body).context("parse the server's answer")?;
            println!("{}", serde_json::to_string_pretty(&value)?);
        }
        Ok(())
    }

    pub async fn ledgers(&self) -> anyhow::Result<()> {
        let body = self.send(self.request(reqwest::Method::GET, "/v1/ledgers")).await?;
        let list: Vec<serde_json::Value> = serde_json::from_slice(&body).context("parse the ledger list")?;
        for l in list {
            println!("{l}");
        }
        Ok(())
    }
}

/// Where `ferry read` starts.
#[derive(Debug, Clone, Copy)]
pub enum ReadStart {
    /// `--from ID` (default: First).
    From(Option<u64>),
    /// `--since TIME`, as unix milliseconds.
    Since(u64),
}

/// A time as unix milliseconds (0 for a time before 1970).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What `ferry exporters pause|resume` asks of an exporter.
#[derive(Debug, Clone, Copy)]
pub enum ExporterControl {
    Pause,
    Resume,
}

impl ExporterControl {
    fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
        }
    }
}

fn exporter_name(name: &str) -> Result<LedgerName, UsageError> {
    LedgerName::parse(name).map_err(|e| UsageError(format!("exporter name: {e}")))
}

/// One entry of an append body, with the payload's text kept byte for byte
/// (a `serde_json::Value` would reorder keys and round numbers).
fn entry_json(payload: &Payload, key: Option<&str>, idempotency_key: Option<&str>) -> String {
    let mut e = format!("{{\"payload\":{}", payload.as_str());
    for (name, value) in [("key", key), ("idempotency_key", idempotency_key)] {
        if let Some(v) = value {
            e.push_str(&format!(",\"{name}\":{}", serde_json::Value::from(v)));
        }
    }
    e.push('}');
    e
}
