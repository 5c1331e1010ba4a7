//! The listener: accepts at most `max_connections` connections at once,
//! serves each with hyper's HTTP/1.1 or HTTP/2 (over TLS when configured),
//! and ends the ones that stall.
//!
//! Why not `axum::serve`: it accepts without bound (every idle socket costs
//! a descriptor the store may need) and has no header-read timeout. Here a
//! connection slot is taken *before* `accept`, so past the cap new clients
//! wait in the kernel's backlog, costing no descriptor of ours, until a
//! connection ends. Two clocks end stalled connections:
//! - the header-read timeout (hyper's) runs whenever the connection waits
//!   for a request head, so it also ends a kept-alive connection that
//!   sends nothing more;
//! - the idle timeout ends a connection on which no byte has moved either
//!   way for that long (a stalled upload, a client that stopped reading).

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use ferry_core::limits::{H2_HEADER_LIST_BYTES_MAX, H2_PENDING_RESETS_MAX, H2_STREAMS_MAX};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::tls::ServerTls;

/// The `[server]` limits on connections.
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// How long a connection may take to send a whole request head, from
    /// the moment it is ready for one (also after a previous request: this
    /// bounds idle kept-alive connections) and for a TLS handshake.
    pub header_read_timeout: Duration,
    /// How long a connection may move no byte in either direction.
    pub idle_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            max_connections: ferry_core::limits::CONNECTIONS_MAX_DEFAULT,
            header_read_timeout: ferry_core::limits::HEADER_READ_TIMEOUT_DEFAULT,
            idle_timeout: ferry_core::limits::IDLE_TIMEOUT_DEFAULT,
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then stops
/// accepting, asks every connection to finish its request in flight, and
/// returns once all have ended.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    tls: Option<Arc<ServerTls>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS);
    let slots = Arc::new(Semaphore::new(max));
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let limits = Arc::new(limits);
    let mut accept_errors = AcceptErrors::default();
    let mut shutdown = pin!(shutdown);
    loop {
        // Shutdown first: a stop that came before serving began (or while
        // connections queue up) is not raced against them.
        let slot = tokio::select! {
            biased;
            () = &mut shutdown => break,
            slot = slots.clone().acquire_owned() => slot.expect("the slot semaphore is never closed"),
        };
        let (tcp, _) = tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if let Some(pause) = accept_errors.record(&e) {
                        tokio::time::sleep(pause).await;
                    }
                    continue;
                }
            },
        };
        accept_errors.clear();
        // Answers are small and latency-bound: never hold them back (Nagle).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let (router, limits, tls, closing) = (router.clone(), limits.clone(), tls.clone(), closing.clone());
        tokio::spawn(async move {
            connection(tcp, router, &limits, tls.as_deref(), closing).await;
            drop(slot);
        });
    }
    drop(listener);
    let _ = closing_tx.send(true);
    // Every connection gives its slot back when it ends: holding all slots
    // means none is left.
    let _all = slots.acquire_many(max as u32).await;
    Ok(())
}

/// Serves one connection to its end: the client closed it, it stalled past
/// a timeout, or the server is shutting down and its request in flight is
/// answered.
async fn connection(
    tcp: TcpStream,
    router: Router,
    limits: &ConnectionLimits,
    tls: Option<&ServerTls>,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let activity = Activity::new();
    let io = Watched { io: tcp, activity: activity.clone() };
    match tls {
        None => http(io, router, limits, &activity, closing).await,
        Some(tls) => {
            let handshake = tokio::time::timeout(limits.header_read_timeout, tls.acceptor().accept(io));
            match unless_closing(&mut closing, handshake).await {
                Some(Ok(Ok(stream))) => http(stream, router, limits, &activity, closing).await,
                Some(Ok(Err(e))) => tracing::debug!(error = %e, "TLS handshake failed"),
                Some(Err(_)) => tracing::debug!("TLS handshake timed out"),
                None => tracing::debug!("closing a connection in its TLS handshake: the server is shutting down"),
            }
        }
    }
}

/// `work`'s output, or `None` once the server is shutting down: a
/// connection that has not started a request (TLS handshake, first bytes)
/// is closed at once rather than holding shutdown up for its timeout.
async fn unless_closing<F: Future>(closing: &mut tokio::sync::watch::Receiver<bool>, work: F) -> Option<F::Output> {
    tokio::select! {
        out = work => Some(out),
        // Resolves once the flag is true, or the sender is gone (shutdown too).
        _ = closing.wait_for(|closing| *closing) => None,
    }
}

/// The HTTP/2 connection preface, which an HTTP/2 client sends first.
const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serves HTTP/1.1 (pipelined requests answered in order; hyper's
/// `pipeline_flush` stays off: it held a streamed answer's chunks past the
/// socket's backpressure, so a watcher that stopped reading never lagged)
/// or HTTP/2 on one port: a connection that opens with
/// the HTTP/2 preface (h2c with prior knowledge, or h2 chosen by ALPN under
/// TLS) is served as HTTP/2, any other as HTTP/1.1. Telling them apart is
/// bounded by the header-read timeout like a request head, so a client
/// that sends nothing, or trickles its first bytes, is closed in time, and
/// at once when the server shuts down.
async fn http<I>(
    mut io: I,
    router: Router,
    limits: &ConnectionLimits,
    activity: &Activity,
    mut closing: tokio::sync::watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let first = tokio::time::timeout(limits.header_read_timeout, sniff(&mut io));
    let first = match unless_closing(&mut closing, first).await {
        Some(Ok(Ok(Some(first)))) => first,
        Some(Ok(Ok(None))) => return,
        Some(Ok(Err(e))) => {
            tracing::debug!(error = %e, "connection ended before its first request");
            return;
        }
        Some(Err(_)) => {
            tracing::debug!("closing a connection that sent no request head in time");
            return;
        }
        None => {
            tracing::debug!("closing a connection that sent no request: the server is shutting down");
            return;
        }
    };
    let h2 = first.as_ref() == H2_PREFACE;
    let io = TokioIo::new(Rewind { first: Some(first), io });
    let service = TowerToHyperService::new(router);
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_STREAMS_MAX)
            .max_header_list_size(H2_HEADER_LIST_BYTES_MAX)
            .max_pending_accept_reset_streams(H2_PENDING_RESETS_MAX);
        drive(builder.serve_connection(io, service), limits, activity, closing).await;
    } else {
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout)
            .serve_connection(io, service);
        drive(conn, limits, activity, closing).await;
    }
}

/// Reads a connection's first bytes until they either are the HTTP/2
/// preface or differ from it; `None` when the client closed first.
async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<Option<Bytes>> {
    use tokio::io::AsyncReadExt as _;
    let mut first = [0u8; H2_PREFACE.len()];
    let mut n = 0;
    while n < first.len() {
        let read = io.read(&mut first[n..]).await?;
        if read == 0 {
            return Ok(None);
        }
        n += read;
        if first[..n] != H2_PREFACE[..n] {
            break;
        }
    }
    Ok(Some(Bytes::copy_from_slice(&first[..n])))
}

/// A served connection of either protocol.
trait Served: Future<Output = Result<(), hyper::Error>> {
    /// Finish the requests in flight, take no more.
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>);
}

impl<I, S, B> Served for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http1::Connection::graceful_shutdown(self);
    }
}

impl<I, S, B, E> Served for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: hyper::body::Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn graceful_shutdown(self: std::pin::Pin<&mut Self>) {
        hyper::server::conn::http2::Connection::graceful_shutdown(self);
    }
}

/// Runs a served connection to its end: the client closed it, it moved no
/// byte for the idle timeout, or the server is closing and its requests in
/// flight are answered.
async fn drive<C: Served>(
    conn: C,
    limits: &ConnectionLimits,
    activity: &Activity,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let mut conn = pin!(conn);
    let mut asked_to_close = *closing.borrow();
    if asked_to_close {
        conn.as_mut().graceful_shutdown();
    }
    loop {
        tokio::select! {
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = activity.idle_for(limits.idle_timeout) => {
                tracing::debug!(idle = ?limits.idle_timeout, "closing a connection that moved no byte");
                return;
            }
            changed = closing.changed(), if !asked_to_close => {
                asked_to_close = true;
                if changed.is_ok() {
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// A stream whose first bytes were read to tell the protocol: they are
/// read again first.
struct Rewind<T> {
    first: Option<Bytes>,
    io: T,
}

impl<T: AsyncRead + Unpin> AsyncRead for Rewind<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(first) = self.first.as_mut() {
            let n = first.len().min(buf.remaining());
            buf.put_slice(&first.split_to(n));
            if first.is_empty() {
                self.first = None;
            }
            return Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Rewind<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// When a connection last moved a byte, in milliseconds since `start`.
#[derive(Clone)]
struct Activity {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// Resolves once no byte has moved for `idle`. One timer, re-armed only
    /// when it fires early.
    async fn idle_for(&self, idle: Duration) {
        loop {
            let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = last + idle;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline).await;
        }
    }
}

/// An I/O stream that notes in `activity` each time bytes move.
struct Watched<T> {
    io: T,
    activity: Activity,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Failed `accept` calls: counted in `ferry_accept_errors_total`, logged
/// once when a run of them starts and then at most every `SUMMARY_EVERY`,
/// and paced so a listener out of descriptors does not spin.
#[derive(Default)]
struct AcceptErrors {
    /// Failures since the last log line, and when that was.
    unlogged: u64,
    logged_at: Option<std::time::Instant>,
    /// Consecutive failures that called for a pause.
    run: u32,
}

impl AcceptErrors {
    const SUMMARY_EVERY: Duration = Duration::from_secs(30);

    /// Notes a failure; returns how long to pause before the next accept.
    fn record(&mut self, e: &std::io::Error) -> Option<Duration> {
        metrics::counter!(ferry_core::metric_names::ACCEPT_ERRORS_TOTAL).increment(1);
        // A peer that reset before we accepted it is its business, not ours.
        if matches!(
            e.kind(),
            std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::Interrupted
        ) {
            return None;
        }
        self.unlogged += 1;
        let due = self.logged_at.is_none_or(|at| at.elapsed() >= Self::SUMMARY_EVERY);
        if due {
            let hint = if ferry_fs::descriptors::exhausted(e) {
                "out of file descriptors: lower server.max_connections or raise the open-file limit"
            } else {
                "the listener could not take a connection"
            };
            tracing::warn!(error = %e, failures = self.unlogged, "accepting a connection failed: {hint}");
            self.unlogged = 0;
            self.logged_at = Some(std::time::Instant::now());
        }
        self.run = self.run.saturating_add(1);
        // 10 ms doubling to 1 s: connections waiting in the backlog are
        // taken soon after descriptors free up, without a busy loop.
        Some(Duration::from_millis(10u64 << self.run.min(7)).min(Duration::from_secs(1)))
    }

    fn clear(&mut self) {
        self.run = 0;
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt as _;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_for_waits_from_the_last_byte() {
        let activity = Activity::new();
        let waiting = activity.idle_for(Duration::from_secs(10));
        tokio::pin!(waiting);
        tokio::time::advance(Duration::from_secs(6)).await;
        activity.touch();
        assert!(waiting.as_mut().now_or_never().is_none());
        tokio::time::advance(Duration::from_secs(6)).await;
        assert!(waiting.as_mut().now_or_never().is_none(), "a byte moved 6 s ago");
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(waiting.as_mut().now_or_never().is_some());
    }

    #[test]
    fn accept_errors_pause_longer_while_they_last_and_are_logged_once_per_period() {
        let mut errors = AcceptErrors::default();
        let emfile = std::io::Error::from_raw_os_error(24);
        let pauses: Vec<_> = (0..10).map(|_| errors.record(&emfile).expect("a pause")).collect();
        assert!(pauses.windows(2).all(|w| w[0] <= w[1]), "{pauses:?}");
        assert_eq!(*pauses.last().expect("pauses"), Duration::from_secs(1));
        assert_eq!(errors.unlogged, 9, "only the first of a run is logged at once");
        errors.clear();
        assert_eq!(errors.record(&emfile), Some(Duration::from_millis(20)));
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionAborted);
        assert_eq!(errors.record(&reset), None, "a peer's abort needs no pause");
    }
}
