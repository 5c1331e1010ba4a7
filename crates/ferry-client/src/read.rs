//! Reads: one JSON page, or an NDJSON stream of entry lines.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use serde::Serialize;

use crate::append::{decode, segment};
use crate::{Client, Entry, Error};

/// Where a read starts and how much it returns. Every field is optional;
/// the default reads from the ledger's First, 1,000 entries.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ReadQuery {
    /// The first id (below the ledger's First: 410 `below_first`, with
    /// [`ApiError::first`](crate::ApiError::first)).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<u64>,
    /// Starts at the first entry stamped at or after these unix
    /// milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_ts: Option<u64>,
    /// At most this many entries (1–10,000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Long-poll: when nothing at `from` exists yet, the server answers as
    /// soon as it does, or after this wait (≤ 60 s) with an empty page.
    /// Sent as milliseconds (`wait=1500ms`).
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "as_millis")]
    pub wait: Option<Duration>,
}

fn as_millis<S: serde::Serializer>(wait: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match wait {
        Some(w) => s.serialize_str(&format!("{}ms", w.as_millis())),
        None => s.serialize_none(),
    }
}

/// One page of a JSON read.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ReadPage {
    /// The entries, in id order.
    pub entries: Vec<Entry>,
    /// The id to continue from.
    pub next: u64,
}

impl Client {
    /// Reads one page (`{"entries":[…],"next":ID}`).
    pub async fn read(&self, ledger: &str, query: &ReadQuery) -> Result<ReadPage, Error> {
        let req = self.request(reqwest::Method::GET, &entries_path(ledger)).query(query);
        decode(self.send(req).await?, "a read page {\"entries\":[…],\"next\":ID}").await
    }

    /// Reads as NDJSON (`Accept: application/x-ndjson`): the server streams
    /// one entry per line, so a large `limit` costs no page in memory here.
    /// Errors (unknown ledger, below First) come back from this call, before
    /// any line.
    pub async fn read_lines(&self, ledger: &str, query: &ReadQuery) -> Result<EntryLines, Error> {
        let req = self
            .request(reqwest::Method::GET, &entries_path(ledger))
            .query(query)
            .header(reqwest::header::ACCEPT, "application/x-ndjson");
        Ok(EntryLines::new(self.send(req).await?))
    }
}

fn entries_path(ledger: &str) -> String {
    format!("/v1/ledgers/{}/entries", segment(ledger))
}

/// The lines of an NDJSON read, as they arrive.
#[derive(Debug)]
pub struct EntryLines {
    resp: reqwest::Response,
    buf: BytesMut,
    done: bool,
}

impl EntryLines {
    /// The lines of an NDJSON answer.
    pub(crate) fn new(resp: reqwest::Response) -> Self {
        Self { resp, buf: BytesMut::new(), done: false }
    }

    /// The next line (without its `\n`), exactly as the server sent it:
    /// an entry's JSON form. `None` at the end of the read.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, Error> {
        loop {
            if let Some(at) = self.buf.iter().position(|b| *b == b'\n') {
                let line = self.buf.split_to(at + 1).freeze();
                if line.len() > 1 {
                    return Ok(Some(line.slice(..line.len() - 1)));
                }
                continue;
            }
            if self.done {
                return Ok((!self.buf.is_empty()).then(|| self.buf.split().freeze()));
            }
            match self.resp.chunk().await? {
                Some(chunk) => self.buf.extend_from_slice(&chunk),
                None => self.done = true,
            }
        }
    }

    /// The next entry, parsed.
    pub async fn next_entry(&mut self) -> Result<Option<Entry>, Error> {
        match self.next_line().await? {
            Some(line) => serde_json::from_slice(&line)
                .map(Some)
                .map_err(|source| Error::Decode { what: "an entry line", source }),
            None => Ok(None),
        }
    }
}
