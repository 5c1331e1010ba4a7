//! `ferry tail PREFIX [--from LEDGER:ID]`: follows `/v1/watch`, printing
//! entries as JSON lines. It keeps the last resume token and reconnects
//! with `Last-Event-ID` after a dropped connection, a `lagged` close or a
//! server restart, so the output has no gap and no duplicate.
//!
//! A token the server lost in a crash answers 410 `token_expired` naming an
//! earlier position (`resume_from`); tail resumes there and skips what it
//! already printed: per ledger, every id up to the last one printed, until
//! the ledger's deletion is announced (the name's next incarnation starts
//! at id 1).

use std::collections::HashMap;
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
    let mut printed = Printed::default();
    let mut wait = RETRY_MIN;
    let mut out = std::io::stdout().lock();
    loop {
        match follow(client, prefix, from, &mut token, &mut printed, &mut out).await {
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

/// What tail printed, per ledger: a resume from an earlier position sends
/// some of it again.
#[derive(Default)]
struct Printed {
    ledgers: HashMap<String, Progress>,
}

#[derive(Default)]
struct Progress {
    /// The last id printed of the ledger's current incarnation.
    last_id: u64,
    /// The newest incarnation whose deletion was announced.
    deleted: u64,
}

#[derive(serde::Deserialize)]
struct EntryPosition {
    ledger: String,
    id: u64,
}

#[derive(serde::Deserialize)]
struct Deleted {
    ledger: String,
    incarnation: u64,
}

impl Printed {
    /// True when the entry is new to the output (and notes it).
    fn is_new(&mut self, e: &EntryPosition) -> bool {
        let p = self.ledgers.entry(e.ledger.clone()).or_default();
        let new = e.id > p.last_id;
        p.last_id = p.last_id.max(e.id);
        new
    }

    /// True when the deletion is new (the next incarnation starts over).
    fn deleted(&mut self, d: &Deleted) -> bool {
        let p = self.ledgers.entry(d.ledger.clone()).or_default();
        let new = d.incarnation > p.deleted;
        if new {
            *p = Progress { last_id: 0, deleted: d.incarnation };
        }
        new
    }
}

/// The earlier token a 410 `token_expired` answer offers, if any.
fn resume_from(body: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    (v["error"]["code"] == "token_expired").then(|| v["error"]["resume_from"].as_str().map(str::to_owned))?
}

/// One connection: prints entries until the stream ends. Returns whether
/// any entry was delivered.
async fn follow(
    client: &Client,
    prefix: &str,
    from: Option<&str>,
    token: &mut Option<String>,
    printed: &mut Printed,
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
        if status.as_u16() == 410
            && let Some(earlier) = resume_from(&body)
        {
            eprintln!(
                "ferry tail: the server lost the last position; resuming from an earlier one, skipping what was printed"
            );
            *token = Some(earlier);
            return Ok(false);
        }
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
                let entry: EntryPosition = serde_json::from_str(&event.data).context("an entry event's data")?;
                if printed.is_new(&entry) {
                    writeln!(out, "{}", event.data)?;
                    out.flush()?;
                }
                *token = Some(event.id);
                delivered = true;
            }
            "ledger.deleted" => {
                let deleted: Deleted = serde_json::from_str(&event.data).context("a deletion event's data")?;
                if printed.deleted(&deleted) {
                    eprintln!(
                        "ferry tail: ledger {} (incarnation {}) was deleted",
                        deleted.ledger, deleted.incarnation
                    );
                }
                *token = Some(event.id);
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
