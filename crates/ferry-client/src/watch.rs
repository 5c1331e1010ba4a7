//! `/v1/watch` with its resume protocol, and `/v1/events`.
//!
//! A [`Watch`] keeps the last resume token (each event's `id:`) and
//! reconnects with `Last-Event-ID` after a dropped connection, an `event:
//! lagged` close or a server restart, so its caller sees no gap and no
//! duplicate. A token the server lost in a crash answers 410
//! `token_expired` naming an earlier position (`resume_from`); the watch
//! resumes there and drops what it already delivered: per ledger, every id
//! up to the last one delivered, until the ledger's deletion is announced
//! (the name's next incarnation starts at id 1).

use std::collections::HashMap;
use std::pin::Pin;
use std::time::Duration;

use eventsource_stream::Eventsource as _;
use futures_util::{Stream, StreamExt as _};
use reqwest::StatusCode;

use crate::{Client, Entry, Error, SystemEvent};

/// Waits between reconnects grow from this to `RECONNECT_MAX`, and start
/// over once a connection delivered an entry.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

type Events = Pin<Box<dyn Stream<Item = Result<eventsource_stream::Event, Error>> + Send>>;

/// Where a watch starts.
#[derive(Debug, Clone, Default)]
pub struct WatchOptions {
    /// Ledgers whose name starts with this (empty: every ledger).
    pub prefix: String,
    /// Starts one ledger at an id: `(ledger, id)`. Ignored with a token.
    pub from: Option<(String, u64)>,
    /// Starts at the first entry stamped at or after these unix
    /// milliseconds. Ignored with a token.
    pub from_ts: Option<u64>,
    /// Resumes after the event of this token (a [`Watch::token`] kept from
    /// an earlier watch of the same prefix).
    pub token: Option<String>,
}

impl WatchOptions {
    /// Every new entry of the ledgers starting with `prefix`.
    pub fn prefix(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into(), ..Self::default() }
    }
}

/// What [`Watch::next`] hands out.
#[derive(Debug)]
#[non_exhaustive]
pub enum WatchEvent {
    /// A new entry (each one once, in id order per ledger).
    Entry(Entry),
    /// The ledger was deleted; entries of a ledger created again under the
    /// name follow from id 1.
    LedgerDeleted {
        /// The ledger's name.
        ledger: String,
        /// The deleted incarnation.
        incarnation: u64,
    },
    /// The server cut the stream off because the watch fell behind; the
    /// watch resumes from storage at the next call. Nothing is lost.
    Lagged,
    /// The connection failed or ended (`error` is `None` when the server
    /// closed it, e.g. on shutdown); the next call waits and reconnects.
    Reconnecting {
        /// Why.
        error: Option<Error>,
    },
    /// The server lost the last position (410 `token_expired`, after a
    /// crash) and offered an earlier one: the watch resumes there and drops
    /// what it delivered already.
    ResumingEarlier,
}

/// A live watch. Created by [`Client::watch`]; see the module docs for
/// what it guarantees.
pub struct Watch {
    client: Client,
    options: WatchOptions,
    token: Option<String>,
    events: Option<Events>,
    delivered: Delivered,
    /// Whether the current connection delivered an entry.
    progressed: bool,
    reconnect_after: Option<Duration>,
    wait: Duration,
    /// What the first connect reported, for the first `next`.
    pending: Option<WatchEvent>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch").field("options", &self.options).field("token", &self.token).finish_non_exhaustive()
    }
}

/// What the watch delivered, per ledger: a resume from an earlier position
/// sends some of it again.
#[derive(Debug, Default)]
struct Delivered {
    ledgers: HashMap<String, Progress>,
}

#[derive(Debug, Default)]
struct Progress {
    /// The last id delivered of the ledger's current incarnation.
    last_id: u64,
    /// The newest incarnation whose deletion was announced.
    deleted: u64,
}

impl Delivered {
    /// True when the entry is new (and notes it).
    fn is_new(&mut self, ledger: &str, id: u64) -> bool {
        let p = self.ledgers.entry(ledger.to_owned()).or_default();
        let new = id > p.last_id;
        p.last_id = p.last_id.max(id);
        new
    }

    /// True when the deletion is new (the next incarnation starts over).
    fn deleted(&mut self, ledger: &str, incarnation: u64) -> bool {
        let p = self.ledgers.entry(ledger.to_owned()).or_default();
        let new = incarnation > p.deleted;
        if new {
            *p = Progress { last_id: 0, deleted: incarnation };
        }
        new
    }
}

impl Client {
    /// Opens a watch. The first connection is made here, so a request the
    /// server refuses (400 `invalid_from`, 410 `below_first`, 401, …) is an
    /// error of this call; later ones are handled by [`Watch::next`].
    pub async fn watch(&self, options: WatchOptions) -> Result<Watch, Error> {
        let mut watch = Watch {
            client: self.clone(),
            token: options.token.clone(),
            options,
            events: None,
            delivered: Delivered::default(),
            progressed: false,
            reconnect_after: None,
            wait: RECONNECT_MIN,
            pending: None,
        };
        match watch.connect().await {
            Ok(events) => watch.events = Some(events),
            Err(e) => watch.pending = Some(watch.on_refused(e)?),
        }
        Ok(watch)
    }

    /// Opens `/v1/events`: live system events whose key starts with
    /// `prefix` (not replayed; nothing to resume).
    pub async fn events(&self, prefix: &str) -> Result<SystemEvents, Error> {
        let req = self.request(reqwest::Method::GET, "/v1/events").query(&[("prefix", prefix)]);
        let resp = self.send(req).await?;
        Ok(SystemEvents { events: Box::pin(resp.bytes_stream().eventsource().map(|e| e.map_err(sse_error))) })
    }
}

impl Watch {
    /// The token of the last event received: keep it to resume in another
    /// watch ([`WatchOptions::token`]).
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// The next event. Reconnects by itself (reporting it as
    /// [`WatchEvent::Reconnecting`]); errors only with an answer that
    /// retrying cannot change (a 4xx other than 429, e.g. 401 or a token of
    /// another prefix), after which the watch is done.
    ///
    /// Cancel safe: dropping the future loses no event.
    pub async fn next(&mut self) -> Result<WatchEvent, Error> {
        if let Some(e) = self.pending.take() {
            return Ok(e);
        }
        loop {
            let events = match self.events.as_mut() {
                Some(events) => events,
                None => {
                    if let Some(wait) = self.reconnect_after {
                        tokio::time::sleep(wait).await;
                        self.reconnect_after = None;
                    }
                    match self.connect().await {
                        Ok(events) => self.events.insert(events),
                        Err(e) => return self.on_refused(e),
                    }
                }
            };
            let event = match events.next().await {
                Some(Ok(event)) => event,
                Some(Err(e)) => return Ok(self.disconnected(Some(e))),
                None => return Ok(self.disconnected(None)),
            };
            if let Some(e) = self.on_event(event)? {
                return Ok(e);
            }
        }
    }

    async fn connect(&self) -> Result<Events, Error> {
        let mut query = vec![("prefix", self.options.prefix.clone())];
        if self.token.is_none() {
            if let Some((ledger, id)) = &self.options.from {
                query.push(("from", format!("{ledger}:{id}")));
            }
            if let Some(ts) = self.options.from_ts {
                query.push(("from_ts", ts.to_string()));
            }
        }
        let mut req = self.client.request(reqwest::Method::GET, "/v1/watch").query(&query);
        if let Some(t) = &self.token {
            req = req.header("last-event-id", t.as_str());
        }
        let resp = self.client.send(req).await?;
        Ok(Box::pin(resp.bytes_stream().eventsource().map(|e| e.map_err(sse_error))))
    }

    /// A refused (re)connect: resume earlier on 410 with `resume_from`,
    /// wait and retry what may pass later, give up on the rest.
    fn on_refused(&mut self, e: Error) -> Result<WatchEvent, Error> {
        if let Some(earlier) = e.api().filter(|a| a.status == StatusCode::GONE).and_then(|a| a.resume_from()) {
            self.token = Some(earlier.to_owned());
            self.schedule_reconnect();
            return Ok(WatchEvent::ResumingEarlier);
        }
        let fatal = e.status().is_some_and(|s| s.is_client_error() && s != StatusCode::TOO_MANY_REQUESTS);
        if fatal {
            return Err(e);
        }
        self.schedule_reconnect();
        Ok(WatchEvent::Reconnecting { error: Some(e) })
    }

    fn disconnected(&mut self, error: Option<Error>) -> WatchEvent {
        self.events = None;
        self.schedule_reconnect();
        WatchEvent::Reconnecting { error }
    }

    /// The next connection waits `wait`, which doubles up to the maximum
    /// and starts over after a connection that delivered an entry.
    fn schedule_reconnect(&mut self) {
        if std::mem::take(&mut self.progressed) {
            self.wait = RECONNECT_MIN;
        }
        self.reconnect_after = Some(self.wait);
        self.wait = (self.wait * 2).min(RECONNECT_MAX);
    }

    /// What an SSE event means for the caller, if anything.
    fn on_event(&mut self, event: eventsource_stream::Event) -> Result<Option<WatchEvent>, Error> {
        let decode = |source| Error::Decode { what: "a watch event's data", source };
        match event.event.as_str() {
            "entry" => {
                let entry: Entry = serde_json::from_str(&event.data).map_err(decode)?;
                self.token = Some(event.id);
                self.progressed = true;
                Ok(self.delivered.is_new(&entry.ledger, entry.id).then_some(WatchEvent::Entry(entry)))
            }
            "ledger.deleted" => {
                #[derive(serde::Deserialize)]
                struct Deleted {
                    ledger: String,
                    incarnation: u64,
                }
                let d: Deleted = serde_json::from_str(&event.data).map_err(decode)?;
                self.token = Some(event.id);
                Ok(self
                    .delivered
                    .deleted(&d.ledger, d.incarnation)
                    .then_some(WatchEvent::LedgerDeleted { ledger: d.ledger, incarnation: d.incarnation }))
            }
            "lagged" => {
                self.token = Some(event.id);
                self.events = None;
                self.schedule_reconnect();
                Ok(Some(WatchEvent::Lagged))
            }
            _ => Ok(None),
        }
    }
}

/// What [`SystemEvents::next`] hands out.
#[derive(Debug)]
#[non_exhaustive]
pub enum SystemNotice {
    /// A system event.
    Event(SystemEvent),
    /// The stream fell behind and the server closed it; events were lost
    /// (they are not replayed).
    Lagged,
}

/// A live `/v1/events` stream.
pub struct SystemEvents {
    events: Events,
}

impl std::fmt::Debug for SystemEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SystemEvents").finish_non_exhaustive()
    }
}

impl SystemEvents {
    /// The next event; `None` when the server closed the stream.
    pub async fn next(&mut self) -> Result<Option<SystemNotice>, Error> {
        while let Some(event) = self.events.next().await {
            let event = event?;
            match event.event.as_str() {
                "lagged" => return Ok(Some(SystemNotice::Lagged)),
                "" | "message" => continue,
                _ => {
                    let e = serde_json::from_str(&event.data)
                        .map_err(|source| Error::Decode { what: "a system event", source })?;
                    return Ok(Some(SystemNotice::Event(e)));
                }
            }
        }
        Ok(None)
    }
}

fn sse_error(e: eventsource_stream::EventStreamError<reqwest::Error>) -> Error {
    match e {
        eventsource_stream::EventStreamError::Transport(e) => Error::Transport(e),
        other => Error::Protocol(format!("a malformed event stream: {other}")),
    }
}
