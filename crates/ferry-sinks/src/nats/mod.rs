//! `nats`: each entry is one JetStream message on `{prefix}.{ledger}` (a
//! ledger name with dots spans several subject tokens), its body the
//! entry's JSON line, with headers `Nats-Msg-Id: {ledger}:{incarnation}:{id}`,
//! `Ferry-Ledger`, `Ferry-Incarnation`, `Ferry-Id`, `Ferry-Ts` and, on a
//! ledger with a hash chain, `Ferry-Hash`. Publishes are pipelined (at most
//! `max_in_flight` PubAcks pending) and their acks awaited in order.
//!
//! **Why exactly once in effect, without relying on the duplicate window.**
//! The sink keeps its position at the destination: the subject's last
//! message names its incarnation and id. `prepare` (run before a ledger's
//! first delivery in a process and after every failed, cancelled or
//! abandoned one) reads that last message: of this incarnation, its id is
//! where deliveries resume ([`Prepared::DestinationThrough`]), whatever the
//! durable cursor says (a lost PubAck, a `kill -9` after the publish and
//! before the cursor commit); of an older incarnation (a ledger deleted and
//! created again publishes after the old one's messages), or none, the
//! subject holds nothing of this incarnation: 0 (the subject was purged or
//! the stream created again: the ledger is published again), except on a
//! stream whose limits remove messages (`max_age`, or limits with
//! `discard = old`), where they may have aged out and the runtime's cursor
//! is kept. So a retry after any outage publishes exactly the ids after
//! the last one stored.
//!
//! The position is read from the last message only, which is sound while
//! ferry is the only publisher on the subject and the subject holds a
//! prefix of the ledger. Two mechanisms keep it so:
//!
//! - **A fence per batch.** The batch's first message carries
//!   `Nats-Expected-Last-Subject-Sequence` = the stream sequence of the
//!   subject's last message as the sink last saw it (read by `prepare`, or
//!   the previous batch's last PubAck), and is published alone; the rest
//!   follow only after its PubAck. If anything landed on the subject in
//!   between (a publish of an abandoned attempt that the client sent after a
//!   reconnect, another publisher), the server refuses the first message,
//!   nothing of the batch is stored, and the retry's `prepare` reads the
//!   position again. Messages of one connection reach the stream in order,
//!   so an earlier attempt's publishes cannot land after the fence.
//! - **No gap in a pipelined run.** After a failed publish the sink sends
//!   nothing more, waits for the PubAcks in flight and acknowledges the
//!   contiguous run before the failure (`Ack { through }`). The messages in
//!   flight behind a failed one are refused too when the failure is the
//!   connection or the stream; a stream that refuses one message and takes
//!   the next (`discard = new` with `max_bytes`) gets one publish at a
//!   time, and messages too large are refused before publishing. Should a
//!   message still be stored after a refused one, the ledger fails with
//!   the stream sequences to remove (deleting them is not safe on
//!   nats-server 2.9, which then misreports the subject's last message).
//!
//! `Nats-Msg-Id` deduplication within `duplicate_window` is kept as a
//! second line of defence only; the kill -9 test runs with a 100 ms window.
//!
//! **Errors.** Not connected, timeouts, no responders while connected to a
//! server without the stream's leader: retryable. The stream gone, the
//! subject not captured by `stream`, a message larger than the server's
//! `max_payload` or the stream's `max_msg_size`, a ledger name that makes an
//! empty subject token, a subject whose last message belongs to a newer
//! incarnation or has no ferry headers: permanent, saying what to change.
//!
//! **Secrets.** Messages show the URL without userinfo and never the token
//! or password.

mod config;

use std::collections::{HashMap, VecDeque};
use std::future::IntoFuture as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use async_nats::HeaderMap;
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{LastRawMessageErrorKind, StorageType};
use async_nats::jetstream::{self, ErrorCode};
use bytes::Bytes;
pub use config::{Credentials, NatsConfig};
use ferry_core::{EntryId, LedgerName};
use ferry_export::check::ChainWalk;
use ferry_export::sink::ChainStart;
use ferry_export::{Ack, Batch, Holding, Prepared, Secrets, SinkError, Target};

use crate::ConfigError;
use crate::error::error_chain;
use crate::file::ChainLine;

/// How long a connection attempt, a JetStream API request or a PubAck may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

pub const HEADER_LEDGER: &str = "Ferry-Ledger";
pub const HEADER_INCARNATION: &str = "Ferry-Incarnation";
pub const HEADER_ID: &str = "Ferry-Id";
pub const HEADER_TS: &str = "Ferry-Ts";
pub const HEADER_HASH: &str = "Ferry-Hash";
pub const HEADER_MSG_ID: &str = "Nats-Msg-Id";

pub struct NatsSink {
    config: Box<NatsConfig>,
    shown_url: String,
    secrets: Secrets,
    /// Connected lazily (at build when the server answers, otherwise at the
    /// first call that needs it); the client reconnects by itself after.
    conn: tokio::sync::Mutex<Option<Arc<Conn>>>,
    /// Per ledger: the stream sequence of the subject's last message as the
    /// sink last saw it (the fence of the next batch), with the incarnation.
    last_seq: Mutex<HashMap<LedgerName, (u64, u64)>>,
}

struct Conn {
    client: async_nats::Client,
    js: jetstream::Context,
    /// The stream's `max_msg_size` (-1: none), read when it was checked.
    max_msg_size: i64,
    /// One publish at a time: the stream refuses messages that do not fit
    /// (`discard = new` with `max_bytes`), so a refused message could be
    /// followed by a smaller one it takes, leaving a gap.
    serial: bool,
    /// The stream removes messages by itself (`max_age`, or limits with
    /// `discard = old`): a subject without this incarnation's messages may
    /// have expired rather than been purged.
    expires: bool,
}

/// Why a connection attempt failed.
enum ConnectFailure {
    /// The server answered and refused (credentials, TLS): a config error.
    Refused { field: &'static str, message: String },
    /// Nobody answered (yet).
    Unreachable(String),
}

/// What a message's headers say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub incarnation: u64,
    pub id: EntryId,
}

impl NatsSink {
    /// Connects and checks (or creates) the stream. A server that answers
    /// no (credentials, TLS, a missing stream, a stream that does not
    /// capture the subjects) is a config error naming the field; one that
    /// cannot be reached is not: the sink connects when it is first used.
    pub async fn new(config: NatsConfig) -> Result<Self, ConfigError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        if let Some(ca) = &config.ca_file {
            check_ca_file(ca)?;
        }
        let sink = Self {
            shown_url: config.shown_url(),
            secrets: config.secrets(),
            config: Box::new(config),
            conn: tokio::sync::Mutex::new(None),
            last_seq: Mutex::new(HashMap::new()),
        };
        match sink.connect().await {
            Ok(client) => match sink.ready(client).await {
                Ok(conn) => *sink.conn.lock().await = Some(Arc::new(conn)),
                Err(StreamProblem::Refused(message)) => {
                    return Err(ConfigError::Refused { field: "config.stream".into(), message: sink.redact(message) });
                }
                // No answer about the stream (JetStream not ready yet): ask
                // again when the sink is first used.
                Err(StreamProblem::Transient(message)) => tracing::warn!(
                    url = %sink.shown_url,
                    error = %sink.redact(message),
                    "the NATS server did not answer about the stream: the nats sink asks again when it is used"
                ),
            },
            Err(ConnectFailure::Refused { field, message }) => {
                return Err(ConfigError::Refused { field: field.into(), message: sink.redact(message) });
            }
            Err(ConnectFailure::Unreachable(message)) => {
                tracing::warn!(
                    url = %sink.shown_url,
                    error = %sink.redact(message),
                    "the NATS server cannot be reached now: the nats sink connects when it answers, its ledgers back off until then"
                );
            }
        }
        Ok(sink)
    }

    pub fn secrets(&self) -> Secrets {
        self.secrets.clone()
    }

    fn redact(&self, message: String) -> String {
        self.secrets.redact(&message)
    }

    fn retryable(&self, message: String) -> SinkError {
        SinkError::retryable(self.redact(message))
    }

    fn permanent(&self, message: String) -> SinkError {
        SinkError::permanent(self.redact(message))
    }

    async fn connect(&self) -> Result<async_nats::Client, ConnectFailure> {
        let c = &self.config;
        let mut options = async_nats::ConnectOptions::new()
            .name("ferry")
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(REQUEST_TIMEOUT))
            .require_tls(c.tls);
        if let Some(ca) = &c.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        match c.credentials() {
            Some(Credentials::Token(token)) => options = options.token(token),
            Some(Credentials::UserPassword(user, password)) => options = options.user_and_password(user, password),
            None => {}
        }
        let addrs = c.addresses();
        let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
        let connecting = async_nats::connect_with_options(addrs.as_slice(), options);
        let result = tokio::time::timeout(CONNECT_TIMEOUT * 2, connecting)
            .await
            .map_err(|_| ConnectFailure::Unreachable(format!("connecting to {} timed out", self.shown_url)))?;
        result.map_err(|e| {
            use async_nats::ConnectErrorKind as K;
            let message = format!("connect to {}: {}", self.shown_url, error_chain(&e));
            match e.kind() {
                K::AuthorizationViolation | K::Authentication => {
                    let field = if c.token.is_some() {
                        "config.token"
                    } else if c.user.is_some() {
                        "config.password"
                    } else {
                        "config.url"
                    };
                    ConnectFailure::Refused { field, message: format!("{message}: check the credentials") }
                }
                K::Tls | K::Io if is_tls_failure(&e) => ConnectFailure::Refused {
                    field: if c.ca_file.is_some() { "config.ca_file" } else { "config.tls" },
                    message: format!("{message}: check tls and ca_file against the server's certificate"),
                },
                K::ServerParse => ConnectFailure::Refused { field: "config.url", message },
                _ => ConnectFailure::Unreachable(message),
            }
        })
    }

    /// Checks (or creates) the stream on a new connection.
    async fn ready(&self, client: async_nats::Client) -> Result<Conn, StreamProblem> {
        let js = jetstream::ContextBuilder::new().timeout(REQUEST_TIMEOUT).build(client.clone());
        let c = &self.config;
        let wanted = c.stream_subject();
        let info = match js.get_stream(&c.stream).await {
            Ok(mut stream) => Some(stream.info().await.map_err(|e| StreamProblem::Transient(error_chain(&e)))?.clone()),
            Err(e) => match e.kind() {
                jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                {
                    None
                }
                jetstream::context::GetStreamErrorKind::JetStream(j) => {
                    return Err(StreamProblem::Refused(format!("stream {:?}: {j}", c.stream)));
                }
                _ => return Err(StreamProblem::Transient(format!("stream {:?}: {}", c.stream, error_chain(&e)))),
            },
        };
        let serial = info
            .as_ref()
            .is_some_and(|i| i.config.discard == jetstream::stream::DiscardPolicy::New && i.config.max_bytes > 0);
        let expires = info.as_ref().is_some_and(|i| {
            let c = &i.config;
            !c.max_age.is_zero()
                || (c.discard == jetstream::stream::DiscardPolicy::Old
                    && (c.max_bytes > 0 || c.max_messages > 0 || c.max_messages_per_subject > 0))
        });
        let max_msg_size = match info {
            Some(info) => {
                let covered = info.config.subjects.iter().any(|s| covers(s, &wanted));
                if covered && (!c.create_stream || info.config.duplicate_window == c.duplicate_window) {
                    i64::from(info.config.max_message_size)
                } else if c.create_stream {
                    let mut config = info.config.clone();
                    if !covered {
                        config.subjects.push(wanted.clone());
                    }
                    config.duplicate_window = c.duplicate_window;
                    let updated = js.update_stream(config).await.map_err(|e| {
                        StreamProblem::Refused(format!(
                            "stream {:?}: could not update it to capture {wanted} with duplicate_window {:?}: {}",
                            c.stream,
                            c.duplicate_window,
                            error_chain(&e)
                        ))
                    })?;
                    i64::from(updated.config.max_message_size)
                } else {
                    return Err(StreamProblem::Refused(format!(
                        "stream {:?} captures {:?}, not {wanted}: add {wanted} to its subjects, set subject to a \
                         template it captures, or set create_stream = true",
                        c.stream, info.config.subjects
                    )));
                }
            }
            None if c.create_stream => {
                let config = jetstream::stream::Config {
                    name: c.stream.clone(),
                    subjects: vec![wanted.clone()],
                    duplicate_window: c.duplicate_window,
                    storage: StorageType::File,
                    ..Default::default()
                };
                let created = js.create_stream(config).await.map_err(|e| {
                    StreamProblem::Refused(format!(
                        "could not create stream {:?} over {wanted}: {}",
                        c.stream,
                        error_chain(&e)
                    ))
                })?;
                i64::from(created.cached_info().config.max_message_size)
            }
            None => {
                return Err(StreamProblem::Refused(format!(
                    "stream {:?} does not exist: create it over {wanted} (file storage), or set create_stream = true",
                    c.stream
                )));
            }
        };
        Ok(Conn { client, js, max_msg_size, serial, expires })
    }

    /// The connection, made (and its stream checked) when there is none.
    async fn conn(&self) -> Result<Arc<Conn>, SinkError> {
        let mut guard = self.conn.lock().await;
        if let Some(conn) = guard.as_ref() {
            return Ok(Arc::clone(conn));
        }
        let client = self.connect().await.map_err(|e| match e {
            ConnectFailure::Refused { message, .. } => self.permanent(message),
            ConnectFailure::Unreachable(message) => self.retryable(message),
        })?;
        let conn = self.ready(client).await.map_err(|e| match e {
            StreamProblem::Refused(message) => self.permanent(message),
            StreamProblem::Transient(message) => self.retryable(message),
        })?;
        let conn = Arc::new(conn);
        *guard = Some(Arc::clone(&conn));
        Ok(conn)
    }

    fn subject(&self, ledger: &LedgerName) -> Result<String, SinkError> {
        self.config.subject(ledger).map_err(SinkError::permanent)
    }

    /// The subject's last message's stream sequence and stamp, or None.
    async fn last_message(&self, conn: &Conn, subject: &str) -> Result<Option<(u64, Option<Stamp>)>, SinkError> {
        let stream = self.stream(conn).await?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(Some((message.sequence, parse_stamp(&message.headers)))),
            Err(e) => match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => Ok(None),
                LastRawMessageErrorKind::JetStream(j) => Err(self.api_error(&j, subject)),
                _ => Err(self.retryable(format!(
                    "read the last message on {subject} from {}: {}",
                    self.shown_url,
                    error_chain(&e)
                ))),
            },
        }
    }

    async fn stream(&self, conn: &Conn) -> Result<jetstream::stream::Stream<()>, SinkError> {
        conn.js
            .get_stream_no_info(&self.config.stream)
            .await
            .map_err(|e| self.permanent(format!("stream {:?}: {e}", self.config.stream)))
    }

    fn api_error(&self, error: &jetstream::Error, subject: &str) -> SinkError {
        if error.error_code() == ErrorCode::STREAM_NOT_FOUND {
            self.permanent(format!(
                "stream {:?} not found on {} (deleted?): create it again, or set create_stream = true, then resume",
                self.config.stream, self.shown_url
            ))
        } else {
            self.retryable(format!("{subject} on {}: {error}", self.shown_url))
        }
    }

    pub async fn prepare(&self, target: &Target, cursor: EntryId) -> Result<Prepared, SinkError> {
        let subject = self.subject(&target.ledger)?;
        let conn = self.conn().await?;
        let last = self.last_message(&conn, &subject).await?;
        let (seq, through) = match last {
            None => (0, 0),
            Some((seq, stamp)) => (seq, position(stamp, target.incarnation, &subject).map_err(SinkError::permanent)?),
        };
        self.last_seq.lock().expect("last_seq lock").insert(target.ledger.clone(), (target.incarnation, seq));
        if through == 0 && cursor > 0 && conn.expires {
            // Nothing of this incarnation left on a stream that expires
            // messages: they aged out (publishing them again would repeat
            // what consumers saw), unless someone purged them.
            tracing::warn!(
                ledger = %target.ledger,
                subject,
                cursor,
                "the subject holds no message of this ledger's incarnation, and stream limits remove messages: \
                 keeping ferry's cursor (reset the exporter to publish them again)"
            );
            return Ok(Prepared::Cursor);
        }
        Ok(Prepared::DestinationThrough(through))
    }

    pub async fn deliver(&self, batch: &Batch) -> Result<Ack, SinkError> {
        let subject = self.subject(&batch.ledger)?;
        let conn = self.conn().await?;
        if conn.client.connection_state() != async_nats::connection::State::Connected {
            return Err(self.retryable(format!("not connected to {} (reconnecting)", self.shown_url)));
        }
        let fence = self.last_seq.lock().expect("last_seq lock").get(&batch.ledger).copied();
        let fence = match fence {
            Some((incarnation, seq)) if incarnation == batch.incarnation => seq,
            // `prepare` always runs first; read the position if it did not.
            _ => self.last_message(&conn, &subject).await?.map_or(0, |(seq, _)| seq),
        };
        let limit = size_limit(&conn);
        let mut messages = Vec::with_capacity(batch.entries.len());
        for entry in &batch.entries {
            let (headers, body) = message(batch, entry);
            let size = body.len() + headers_len(&headers);
            if size > limit {
                if messages.is_empty() {
                    return Err(self.permanent(format!(
                        "entry {} of {} is a {size}-byte message; the server or stream {:?} takes at most {limit} \
                         bytes: raise max_payload / max_msg_size, or dead-letter it",
                        entry.id, batch.ledger, self.config.stream
                    )));
                }
                break;
            }
            messages.push((entry.id, headers, body));
        }
        let outcome = self.publish_all(&conn, &subject, fence, messages).await;
        match outcome {
            Published { through: Some((id, seq)), error } => {
                self.last_seq.lock().expect("last_seq lock").insert(batch.ledger.clone(), (batch.incarnation, seq));
                if let Some(e) = error {
                    tracing::debug!(ledger = %batch.ledger, through = id, error = %e, "nats: a part of the batch was published");
                }
                Ok(Ack { through: id })
            }
            Published { through: None, error } => {
                self.last_seq.lock().expect("last_seq lock").remove(&batch.ledger);
                Err(error.unwrap_or_else(|| self.retryable("nothing was published".into())))
            }
        }
    }

    /// Publishes the fenced first message, then the rest pipelined; stops
    /// at the first failure and acknowledges the contiguous run before it.
    async fn publish_all(
        &self,
        conn: &Conn,
        subject: &str,
        fence: u64,
        messages: Vec<(EntryId, HeaderMap, Bytes)>,
    ) -> Published {
        let mut through: Option<(EntryId, u64)> = None;
        let mut in_flight: VecDeque<(EntryId, Instant, PublishAckFuture)> = VecDeque::new();
        let mut error: Option<SinkError> = None;
        // A message the stream refused (as opposed to one whose PubAck did
        // not come: that one was likely stored, in order).
        let mut refused = false;
        let mut stored_after_failure: Vec<u64> = Vec::new();
        let mut rest = messages.into_iter();
        // The fence: alone, awaited.
        if let Some((id, headers, body)) = rest.next() {
            let publish = PublishMessage::build()
                .headers(headers)
                .payload(body)
                .expected_stream(&self.config.stream)
                .expected_last_subject_sequence(fence);
            let sent = Instant::now();
            match self.send(conn, subject, publish).await {
                Ok(ack) => match self.settle(subject, id, sent, ack).await {
                    Ok(seq) => through = Some((id, seq)),
                    Err((e, was_refused)) => (error, refused) = (Some(e), was_refused),
                },
                Err(e) => error = Some(e),
            }
        }
        if error.is_none() {
            let max_in_flight = if conn.serial { 1 } else { self.config.max_in_flight };
            for (id, headers, body) in rest {
                if in_flight.len() >= max_in_flight {
                    let (id, sent, ack) = in_flight.pop_front().expect("in flight");
                    match self.settle(subject, id, sent, ack).await {
                        Ok(seq) => through = Some((id, seq)),
                        Err((e, was_refused)) => {
                            (error, refused) = (Some(e), was_refused);
                            break;
                        }
                    }
                }
                let publish =
                    PublishMessage::build().headers(headers).payload(body).expected_stream(&self.config.stream);
                let sent = Instant::now();
                match self.send(conn, subject, publish).await {
                    Ok(ack) => in_flight.push_back((id, sent, ack)),
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                }
            }
        }
        // Each PubAck is due `REQUEST_TIMEOUT` after its publish, so
        // draining them takes that long at most, however many there are.
        while let Some((id, sent, ack)) = in_flight.pop_front() {
            match self.settle(subject, id, sent, ack).await {
                Ok(seq) if error.is_none() => through = Some((id, seq)),
                Ok(seq) if refused => stored_after_failure.push(seq),
                Ok(_) => {}
                Err((e, was_refused)) => {
                    if error.is_none() {
                        (error, refused) = (Some(e), was_refused);
                    }
                }
            }
        }
        if !stored_after_failure.is_empty() {
            // The stream took a message after refusing an earlier one: the
            // subject has a gap, and its last message no longer tells where
            // ferry stopped. Deleting them is not safe on every server
            // (nats-server 2.9 then misreports the subject's last message),
            // so the ledger stops for a person to look.
            return Published {
                through: None,
                error: Some(self.permanent(format!(
                    "{subject}: the stream stored {} message(s) (stream sequences {:?}) after refusing an earlier \
                     one ({}): the subject has a gap; delete those messages or purge the subject, then reset the \
                     exporter for this ledger",
                    stored_after_failure.len(),
                    stored_after_failure,
                    error.map(|e| e.to_string()).unwrap_or_default()
                ))),
            };
        }
        Published { through, error }
    }

    /// The stream sequence a PubAck gives, waiting until `REQUEST_TIMEOUT`
    /// after the publish was sent (not after the wait began: PubAcks
    /// awaited in turn must not add up their timeouts). The error says
    /// whether the stream refused the message (rather than no answer).
    async fn settle(
        &self,
        subject: &str,
        id: EntryId,
        sent: Instant,
        ack: PublishAckFuture,
    ) -> Result<u64, (SinkError, bool)> {
        match tokio::time::timeout_at(sent + REQUEST_TIMEOUT, ack.into_future()).await {
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(e)) => {
                let refused = !matches!(e.kind(), PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe);
                Err((self.publish_error(subject, id, &e), refused))
            }
            Err(_) => Err((
                self.retryable(format!(
                    "publish id {id} to {subject} on {}: no PubAck within {REQUEST_TIMEOUT:?}",
                    self.shown_url
                )),
                false,
            )),
        }
    }

    async fn send(&self, conn: &Conn, subject: &str, publish: PublishMessage) -> Result<PublishAckFuture, SinkError> {
        conn.js.send_publish(subject.to_owned(), publish).await.map_err(|e| {
            let message = format!("publish to {subject} on {}: {}", self.shown_url, error_chain(&e));
            match e.kind() {
                PublishErrorKind::MaxPayloadExceeded => self.permanent(message),
                _ => self.retryable(message),
            }
        })
    }

    fn publish_error(&self, subject: &str, id: EntryId, e: &jetstream::context::PublishError) -> SinkError {
        let what = format!("publish id {id} to {subject} on {}", self.shown_url);
        match e.kind() {
            PublishErrorKind::StreamNotFound => self.permanent(format!(
                "{what}: no stream captures the subject (stream {:?} deleted, or its subjects changed): create it \
                 again or set create_stream = true, then resume",
                self.config.stream
            )),
            PublishErrorKind::WrongLastSequence => self.retryable(format!(
                "{what}: the subject changed since its last message was read (a publish of an earlier attempt, or \
                 another publisher): the position is read again"
            )),
            PublishErrorKind::MaxPayloadExceeded => self.permanent(format!("{what}: {}", error_chain(e))),
            PublishErrorKind::Other => {
                let source = std::error::Error::source(e).and_then(|s| s.downcast_ref::<jetstream::Error>());
                match source.map(jetstream::Error::error_code) {
                    Some(ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM) => self.permanent(format!(
                        "{what}: the message exceeds stream {:?}'s max_msg_size: raise it, or dead-letter the entry",
                        self.config.stream
                    )),
                    Some(code) if code.0 == STREAM_NOT_MATCH => self.permanent(format!(
                        "{what}: the subject is captured by another stream than {:?}: change subject or the streams",
                        self.config.stream
                    )),
                    _ => self.retryable(format!("{what}: {}", error_chain(e))),
                }
            }
            _ => self.retryable(format!("{what}: {}", error_chain(e))),
        }
    }

    pub fn keeps_position(&self) -> bool {
        true
    }

    /// Walks the subject's messages from the first, counting those of this
    /// incarnation; memory stays constant (the greatest id seen decides
    /// whether an id is new: the subject holds ids in order, so an id not
    /// above it is a repeat or a step back). For a chained ledger the
    /// bodies (the entry's JSON, payload as stored) also go through the
    /// chain walk, until it breaks or passes the cursor.
    pub async fn check(&self, target: &Target, start: &ChainStart, cursor: EntryId) -> Result<Holding, SinkError> {
        let first = start.first;
        let mut walk = ChainWalk::new(start, cursor);
        let mut walking = walk.is_some();
        let subject = self.subject(&target.ledger)?;
        let conn = self.conn().await?;
        let stream = self.stream(&conn).await?;
        let mut holding = Holding::default();
        let mut greatest: EntryId = 0;
        let mut seq = 1;
        loop {
            let message = stream.raw_message_builder().sequence(seq).next_by_subject(subject.clone()).send().await;
            let message = match message {
                Ok(m) => m,
                Err(e) => match e.kind() {
                    LastRawMessageErrorKind::NoMessageFound => break,
                    LastRawMessageErrorKind::JetStream(j) => return Err(self.api_error(&j, &subject)),
                    _ => {
                        return Err(self.retryable(format!(
                            "read {subject} from sequence {seq} on {}: {}",
                            self.shown_url,
                            error_chain(&e)
                        )));
                    }
                },
            };
            seq = message.sequence + 1;
            let Some(stamp) = parse_stamp(&message.headers) else { continue };
            if stamp.incarnation != target.incarnation {
                continue;
            }
            count(&mut holding, &mut greatest, stamp.id, first, cursor);
            if let Some(walk) = walk.as_mut().filter(|_| walking) {
                // A body that is not the entry its headers name: a message
                // published by something else under ferry's headers.
                walking = match serde_json::from_slice::<ChainLine<'_>>(&message.payload) {
                    Ok(entry) if entry.row().id == stamp.id => walk.push(entry.row()),
                    Ok(entry) => walk.unreadable(stamp.id, &format!("its body is the entry of id {}", entry.row().id)),
                    Err(e) => walk.unreadable(stamp.id, &format!("its body is not an entry's JSON: {e}")),
                };
            }
        }
        holding.chain = walk.map(ChainWalk::finish);
        Ok(holding)
    }
}

/// Adds one message's id to the counts.
pub(crate) fn count(holding: &mut Holding, greatest: &mut EntryId, id: EntryId, first: EntryId, cursor: EntryId) {
    if id < first {
        holding.below_first += 1;
    } else if id > cursor {
        holding.above_cursor += 1;
    } else {
        holding.in_range += 1;
        if id > *greatest {
            holding.distinct += 1;
        }
    }
    *greatest = (*greatest).max(id);
    holding.min = Some(holding.min.map_or(id, |m| m.min(id)));
    holding.max = Some(holding.max.map_or(id, |m| m.max(id)));
}

/// The position a subject's last message gives this incarnation.
pub(crate) fn position(stamp: Option<Stamp>, incarnation: u64, subject: &str) -> Result<EntryId, String> {
    match stamp {
        None => Err(format!(
            "the last message on {subject} has no Ferry-Incarnation/Ferry-Id headers: something other than ferry \
             publishes there, so ferry cannot tell where it stopped; give this exporter a subject of its own"
        )),
        Some(s) if s.incarnation == incarnation => Ok(s.id),
        // An older incarnation's messages come before this one's: none yet.
        Some(s) if s.incarnation < incarnation => Ok(0),
        Some(s) => Err(format!(
            "the last message on {subject} belongs to incarnation {} of the ledger, newer than this one ({incarnation}): \
             another ferry (or a restored one) publishes there; give this exporter a subject or stream of its own",
            s.incarnation
        )),
    }
}

/// `Ferry-Incarnation` and `Ferry-Id`, else `Nats-Msg-Id`
/// (`{ledger}:{incarnation}:{id}`).
pub fn parse_stamp(headers: &HeaderMap) -> Option<Stamp> {
    let get = |name: &str| headers.get(name).map(|v| v.as_str().trim().to_owned());
    if let (Some(incarnation), Some(id)) = (get(HEADER_INCARNATION), get(HEADER_ID))
        && let (Ok(incarnation), Ok(id)) = (incarnation.parse(), id.parse())
    {
        return Some(Stamp { incarnation, id });
    }
    let msg_id = get(HEADER_MSG_ID)?;
    let mut parts = msg_id.rsplitn(3, ':');
    let id = parts.next()?.parse().ok()?;
    let incarnation = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(Stamp { incarnation, id })
}

/// One entry's headers and body.
pub(crate) fn message(batch: &Batch, entry: &ferry_core::Entry) -> (HeaderMap, Bytes) {
    let mut headers = HeaderMap::new();
    let (ledger, incarnation, id) = (batch.ledger.as_str(), batch.incarnation, entry.id);
    headers.insert(HEADER_MSG_ID, format!("{ledger}:{incarnation}:{id}").as_str());
    headers.insert(HEADER_LEDGER, ledger);
    headers.insert(HEADER_INCARNATION, incarnation.to_string().as_str());
    headers.insert(HEADER_ID, id.to_string().as_str());
    headers.insert(HEADER_TS, entry.ts.to_string().as_str());
    if let Some(hash) = &entry.hash {
        headers.insert(HEADER_HASH, hex::encode(hash).as_str());
    }
    let mut body = Vec::with_capacity(entry.json_len_max());
    entry.write_json(&mut body);
    (headers, Bytes::from(body))
}

/// The header block's bytes on the wire (`NATS/1.0\r\n`, `name: value\r\n`
/// each, `\r\n`).
fn headers_len(headers: &HeaderMap) -> usize {
    let fields: usize = headers
        .iter()
        .map(|(name, values)| values.iter().map(|v| name.to_string().len() + v.as_str().len() + 4).sum::<usize>())
        .sum();
    10 + fields + 2
}

/// JetStream's "expected stream does not match" error code.
const STREAM_NOT_MATCH: u64 = 10060;

/// The largest message the server and the stream take.
fn size_limit(conn: &Conn) -> usize {
    let server = conn.client.server_info().max_payload;
    let server = if server == 0 { usize::MAX } else { server };
    match usize::try_from(conn.max_msg_size) {
        Ok(stream) if stream > 0 => server.min(stream),
        _ => server,
    }
}

struct Published {
    /// The last contiguous id stored, with its stream sequence.
    through: Option<(EntryId, u64)>,
    error: Option<SinkError>,
}

enum StreamProblem {
    /// A definite no (missing, not capturing, creation refused).
    Refused(String),
    /// No answer.
    Transient(String),
}

/// Does stream subject `pattern` capture every subject `wanted` (`P.>`) does?
pub(crate) fn covers(pattern: &str, wanted: &str) -> bool {
    let p: Vec<&str> = pattern.split('.').collect();
    let w: Vec<&str> = wanted.split('.').collect();
    for (i, token) in p.iter().enumerate() {
        if *token == ">" {
            return i < w.len();
        }
        match w.get(i) {
            Some(&">") | None => return false,
            Some(t) if *token == "*" || token == t => {}
            Some(_) => return false,
        }
    }
    false
}

/// The CA file must be readable PEM holding a certificate (read at build).
fn check_ca_file(path: &std::path::Path) -> Result<(), ConfigError> {
    let invalid = |problem: String| ConfigError::Invalid {
        field: "config.ca_file".into(),
        problem,
        fix: "point it at a PEM file holding the CA certificate that signed the server's",
    };
    let text = std::fs::read(path).map_err(|e| invalid(format!("{}: {e}", path.display())))?;
    if !String::from_utf8_lossy(&text).contains("-----BEGIN CERTIFICATE-----") {
        return Err(invalid(format!("{} holds no PEM certificate", path.display())));
    }
    Ok(())
}

/// Did the TLS handshake fail (a certificate not trusted, a server without
/// TLS)? The server answered: that is a config problem, not an outage.
fn is_tls_failure(error: &async_nats::ConnectError) -> bool {
    if error.kind() == async_nats::ConnectErrorKind::Tls {
        return true;
    }
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if e.is::<rustls::Error>() {
            return true;
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && io.get_ref().is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests;
