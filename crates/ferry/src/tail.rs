//! `ferry tail PREFIX [--from LEDGER:ID]`: follows `/v1/watch`, printing
//! entries as JSON lines. It keeps the last resume token and reconnects
//! with `Last-Event-ID` after a dropped connection, a `lagged` close or a
//! server restart, so the output has no gap and no duplicate.

use std::time::Duration;

use anyhow::Context as _;
use eventsource_stream::Eventsource as _;
use futures_util::StreamExt as _;

use crate::UsageError;
use crate::client::Client;

/// Waits between reconnects grow from this to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

pub async fn tail(client: &Client, prefix: &str, from: Option<&str>) -> anyhow::Result<()> {
    if let Some(f) = from
        && f.split_once(':')
            .is_none_or(|(l, id)| ferry_core::LedgerName::parse(l).is_err() || id.parse::<u64>().is_err())
    {
        return Err(UsageError(format!("--from {f:?} must be LEDGER:ID")).into());
    }
    let mut token: Option<String> = None;
    let mut wait = RETRY_MIN;
    let mut out = std::io::stdout().lock();
    loop {
        match follow(client, prefix, from, &mut token, &mut out).await {
            Ok(delivered) if delivered => wait = RETRY_MIN,
            Ok(_) => {}
            Err(e) if e.downcast_ref::<Fatal>().is_some() => return Err(e),
            Err(e) => eprintln!("ferry tail: {e:#}; reconnecting"),
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// An answer that retrying cannot fix (bad request, auth).
#[derive(Debug)]
struct Fatal(String);

impl std::fmt::Display for Fatal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Fatal {}

/// One connection: prints entries until the stream ends. Returns whether
/// any entry was delivered.
async fn follow(
    client: &Client,
    prefix: &str,
    from: Option<&str>,
    token: &mut Option<String>,
    out: &mut impl std::io::Write,
) -> anyhow::Result<bool> {
    let mut query = vec![("prefix", prefix.to_owned())];
    if let (Some(f), None) = (from, token.as_ref()) {
        query.push(("from", f.to_owned()));
    }
    let mut req = client.get("/v1/watch").query(&query);
    if let Some(t) = token.as_ref() {
        req = req.header("last-event-id", t.as_str());
    }
    let resp = req.send().await.context("connect to the ferry server")?;
    let status = resp.status();
    if !status.is_success() {
        let body = resp.text().await.unwrap_or_default();
        let msg = format!("{status}: {body}");
        return Err(if status.is_client_error() && status.as_u16() != 429 {
            Fatal(msg).into()
        } else {
            anyhow::anyhow!(msg)
        });
    }
    let mut events = resp.bytes_stream().eventsource();
    let mut delivered = false;
    while let Some(event) = events.next().await {
        let event = event.context("read the event stream")?;
        match event.event.as_str() {
            "entry" => {
                writeln!(out, "{}", event.data)?;
                out.flush()?;
                *token = Some(event.id);
                delivered = true;
            }
            "lagged" => {
                *token = Some(event.id);
                eprintln!("ferry tail: fell behind the server; resuming from storage");
                return Ok(delivered);
            }
            _ => {}
        }
    }
    Ok(delivered)
}
