//! `ferry tail PREFIX [--from LEDGER:ID]`: follows `/v1/watch` through
//! `ferry-client`'s `Watch`, printing entries as JSON lines. The watch
//! keeps the last resume token and reconnects with `Last-Event-ID` after a
//! dropped connection, a `lagged` close or a server restart, and after a
//! crash that lost its position (410 `token_expired`) resumes from the
//! earlier one the server offers, dropping what it already delivered: the
//! output has no gap and no duplicate. This file prints what happens.

use std::io::Write as _;

use ferry_client::{WatchEvent, WatchOptions};

use crate::UsageError;
use crate::client::Client;

pub async fn tail(client: &Client, prefix: &str, from: Option<&str>) -> anyhow::Result<()> {
    let from = match from {
        None => None,
        Some(f) => Some(
            f.split_once(':')
                .and_then(|(l, id)| Some((ferry_core::LedgerName::parse(l).ok()?, id.parse::<u64>().ok()?)))
                .ok_or_else(|| UsageError(format!("--from {f:?} must be LEDGER:ID")))?,
        ),
    };
    let options = WatchOptions {
        prefix: prefix.to_owned(),
        from: from.map(|(l, id)| (l.as_str().to_owned(), id)),
        ..WatchOptions::default()
    };
    let mut watch = client.api().watch(options).await.map_err(|e| client.failure(e))?;
    let mut out = std::io::stdout().lock();
    loop {
        match watch.next().await.map_err(|e| client.failure(e))? {
            WatchEvent::Entry(entry) => {
                writeln!(out, "{}", serde_json::to_string(&entry)?)?;
                out.flush()?;
            }
            WatchEvent::LedgerDeleted { ledger, incarnation } => {
                eprintln!("ferry tail: ledger {ledger} (incarnation {incarnation}) was deleted");
            }
            WatchEvent::Lagged => eprintln!("ferry tail: fell behind the server; resuming from storage"),
            WatchEvent::Reconnecting { error: Some(e) } => {
                eprintln!("ferry tail: {:#}; reconnecting", client.failure(e));
            }
            WatchEvent::ResumingEarlier => eprintln!(
                "ferry tail: the server lost the last position; resuming from an earlier one, skipping what was printed"
            ),
            _ => {}
        }
    }
}
