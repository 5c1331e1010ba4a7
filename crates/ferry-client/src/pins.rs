//! Backups over the API: snapshot pins (`/v1/pins`), a ledger read as a
//! pin cut it (backup lines, NDJSON), and the import that writes backup
//! lines back (`/v1/ledgers/{ledger}/import`). All admin scope.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::append::{decode, segment};
use crate::{Client, EntryLines, Error};

/// The header of a pinned read that names the pinned head.
const PINNED_HEAD_HEADER: &str = "ferry-pinned-head";

/// A snapshot pin: a consistent cut of every ledger (its First, head and
/// incarnation at one instant), held from retention until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// The pin's id, a decimal string (it may not fit a JavaScript number).
    pub pin: String,
    /// Each ledger's head at the cut (`first - 1` when it was empty).
    pub heads: BTreeMap<String, u64>,
    /// Each ledger's First at the cut.
    pub firsts: BTreeMap<String, u64>,
    /// Each ledger's incarnation at the cut: a ledger deleted since is not
    /// read through the pin any more (409 `pinned_ledger_gone`).
    pub incarnations: BTreeMap<String, u64>,
    /// Unix milliseconds of the cut.
    pub created_at: u64,
    /// Unix milliseconds: the pin holds nothing from then on.
    pub expires_at: u64,
    /// Milliseconds since the cut, when the server answered.
    pub age_ms: u64,
    /// The name of the token that took it, when auth is on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

/// The answer to an import.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Imported {
    /// The ledger imported into.
    pub ledger: String,
    /// Entries appended.
    pub imported: u64,
    /// Entries that were already stored, identical (nothing changed).
    pub present: u64,
    /// The ledger's head after the import.
    pub head: u64,
    /// The ledger's incarnation on this server.
    pub incarnation: u64,
    /// True when the import created the ledger (false on a retried
    /// attempt whose first try had created it).
    pub created: bool,
}

/// The backup lines of a pinned read, as they arrive.
#[derive(Debug)]
pub struct PinnedLines {
    lines: EntryLines,
    pinned_head: Option<u64>,
}

impl PinnedLines {
    /// The ledger's head at the pin (the `Ferry-Pinned-Head` header): the
    /// read ends with this id. A read that ends sooner without an error was
    /// not cut by the server; one cut by a failed page ends with an error.
    pub fn pinned_head(&self) -> Option<u64> {
        self.pinned_head
    }

    /// The next backup line (without its `\n`), exactly as the server sent
    /// it: an entry's JSON form with its `idempotency_key` while the key is
    /// kept, what [`Client::import`] takes. `None` at the end of the read.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, Error> {
        self.lines.next_line().await
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[derive(Serialize)]
struct Ttl {
    ttl_ms: u64,
}

impl Client {
    /// Takes a snapshot pin held for `ttl` (1 s to 1 day; else 422
    /// `invalid_ttl`); 429 `too_many_pins` at the server's `max_pins`.
    pub async fn create_pin(&self, ttl: Duration) -> Result<Pin, Error> {
        let req = self.request(reqwest::Method::POST, "/v1/pins").json(&Ttl { ttl_ms: millis(ttl) });
        decode(self.send(req).await?, "a snapshot pin").await
    }

    /// Moves a pin's deadline to `ttl` from now; 404 `pin_not_found` once
    /// it expired.
    pub async fn renew_pin(&self, pin: &str, ttl: Duration) -> Result<Pin, Error> {
        let req = self
            .request(reqwest::Method::POST, &format!("/v1/pins/{}/renew", segment(pin)))
            .json(&Ttl { ttl_ms: millis(ttl) });
        decode(self.send(req).await?, "a snapshot pin").await
    }

    /// Deletes a pin, freeing what it held from retention.
    pub async fn delete_pin(&self, pin: &str) -> Result<(), Error> {
        self.send(self.request(reqwest::Method::DELETE, &format!("/v1/pins/{}", segment(pin)))).await?;
        Ok(())
    }

    /// Every pin, with its age.
    pub async fn pins(&self) -> Result<Vec<Pin>, Error> {
        self.get_json("/v1/pins", "a snapshot pin list").await
    }

    /// Reads `ledger` as pin `pin` cut it, from `from` (default: the pinned
    /// First) through the pinned head, as backup lines streamed one per
    /// line. Errors of the start (404 `pin_not_found`,
    /// `ledger_not_in_pin`, 409 `pinned_ledger_gone`, 410 `below_first`)
    /// come back from this call, before any line.
    pub async fn read_pinned_lines(&self, pin: &str, ledger: &str, from: Option<u64>) -> Result<PinnedLines, Error> {
        let mut req = self
            .request(reqwest::Method::GET, &format!("/v1/pins/{}/ledgers/{}/entries", segment(pin), segment(ledger)));
        if let Some(from) = from {
            req = req.query(&[("from", from)]);
        }
        let resp = self.send(req).await?;
        let pinned_head =
            resp.headers().get(PINNED_HEAD_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        Ok(PinnedLines { lines: EntryLines::new(resp), pinned_head })
    }

    /// Imports backup lines (`ndjson`, one per line, contiguous ids) into
    /// `ledger`, all or nothing. Entries already stored must be identical
    /// and are counted as present; new ones must follow the head. A ledger
    /// the import creates chains from `prev_hash` (64 hex digits: the
    /// chain hash before the first line, the source ledger's
    /// `first_prev_hash` when the lines start at its First). Refused: 409
    /// `import_conflict` (with the id), 422 `invalid_entry` (naming the
    /// line), 413 `body_too_large` past the server's `max_body_bytes` and
    /// `batch_too_large` past 10,000 lines: send a large ledger in runs.
    ///
    /// Retried like [`Client::append_with_retry`]: an attempt applied
    /// whose answer was lost makes the next one find the entries present.
    pub async fn import(&self, ledger: &str, ndjson: Bytes, prev_hash: Option<&str>) -> Result<Imported, Error> {
        let path = format!("/v1/ledgers/{}/import", segment(ledger));
        self.retrying(|| async {
            let mut req = self
                .request(reqwest::Method::POST, &path)
                .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                .body(ndjson.clone());
            if let Some(hash) = prev_hash {
                req = req.query(&[("prev_hash", hash)]);
            }
            decode(self.send(req).await?, "an import answer").await
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_reads_the_servers_form_with_and_without_by() {
        let text = r#"{"pin":"18446744073709551615","heads":{"audit":3,"empty":0},"firsts":{"audit":1,"empty":1},
            "incarnations":{"audit":2,"empty":5},"created_at":10,"expires_at":60010,"age_ms":4}"#;
        let pin: Pin = serde_json::from_str(text).unwrap();
        assert_eq!(
            (pin.pin.as_str(), pin.heads["audit"], pin.firsts["empty"], pin.by),
            ("18446744073709551615", 3, 1, None)
        );
        let by: Pin = serde_json::from_str(&text.replace(r#""age_ms":4"#, r#""age_ms":4,"by":"ops""#)).unwrap();
        assert_eq!(by.by.as_deref(), Some("ops"));
    }

    #[test]
    fn a_ttl_is_sent_in_milliseconds() {
        assert_eq!(
            serde_json::to_string(&Ttl { ttl_ms: millis(Duration::from_secs(90)) }).unwrap(),
            r#"{"ttl_ms":90000}"#
        );
        assert_eq!(millis(Duration::MAX), u64::MAX);
    }
}
