//! The server's edge (issue #13 items 1 and 2) against a real `ferry
//! serve`: clients that never finish a request head, stall a body or hold
//! sockets open are closed by the `[server]` timeouts; the connection cap
//! keeps the descriptors the store needs; the bytes of request bodies
//! buffered at once are bounded.

use std::io::{BufRead as _, BufReader, ErrorKind, Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{Env, Server, free_port, send_signal, serve_command, wait_or_kill};

/// Reads from `s` until the server closes it (EOF or reset) and returns how
/// long that took, or `None` if it was still open after `limit`. Bytes the
/// server sends first (an error answer) are skipped.
fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        s.set_read_timeout(Some(left.max(Duration::from_millis(1)))).expect("set the read timeout");
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => return None,
            Err(_) => return Some(start.elapsed()),
        }
    }
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).expect("connect")
}

/// Open descriptors of process `pid`.
fn open_descriptors(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("list /proc/PID/fd").count()
}

fn pack_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "pack") {
                n += 1;
            }
        }
    }
    n
}

#[tokio::test]
async fn a_client_that_sends_nothing_or_trickles_its_head_is_closed_after_the_header_read_timeout() {
    let env = Env::new();
    let server = env.serve_with("[server]\nheader_read_timeout = \"1s\"\nidle_timeout = \"30s\"\n").await;

    let mut silent = connect(server.addr);
    let mut slowloris = connect(server.addr);
    let trickle = {
        let mut s = slowloris.try_clone().expect("clone the socket");
        std::thread::spawn(move || {
            // A head that never ends: one byte every 200 ms.
            for b in b"GET /healthz HTTP/1.1\r\nhost: x\r\nx-slow: ".iter().chain(std::iter::repeat(&b'a')).take(200) {
                if s.write_all(&[*b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        })
    };
    let silent_after = closed_within(&mut silent, Duration::from_secs(10));
    let slow_after = closed_within(&mut slowloris, Duration::from_secs(10));
    assert!(silent_after.is_some(), "a socket that sent nothing was still open after 10 s");
    assert!(slow_after.is_some(), "a socket trickling its head was still open after 10 s");
    trickle.join().expect("the trickling thread");

    // A kept-alive connection idle between requests ends the same way.
    let mut kept = connect(server.addr);
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").expect("send a request");
    assert!(closed_within(&mut kept, Duration::from_secs(10)).is_some(), "an idle kept-alive connection stayed open");

    // The server serves on.
    assert_eq!(server.get("/healthz").await.status, 200);
    server.stop();
}

/// SIGTERM does not wait out the header-read timeout of connections that
/// have not started a request: one that sent nothing (as a browser's or a
/// pooled client's spare connection does), one that sent only the first
/// bytes of the HTTP/2 preface, and one kept alive between requests all
/// end at once and the server exits.
#[tokio::test]
async fn shutdown_does_not_wait_for_connections_without_a_request() {
    let env = Env::new();
    let server = env.serve_with("[server]\nheader_read_timeout = \"60s\"\nidle_timeout = \"120s\"\n").await;
    let mut silent = connect(server.addr);
    let mut partial = connect(server.addr);
    partial.write_all(b"PRI * HTTP/2").expect("send part of the HTTP/2 preface");
    let mut kept = connect(server.addr);
    kept.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n").expect("send a request");
    let mut answer = [0u8; 12];
    kept.read_exact(&mut answer).expect("read the answer's status line");
    assert_eq!(&answer, b"HTTP/1.1 200", "the kept-alive connection was served");
    // Let the server accept the silent ones.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let started = Instant::now();
    server.stop();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(20),
        "SIGTERM took {took:?} with connections that sent no request (header_read_timeout 60 s)"
    );
    for (what, s) in [("silent", &mut silent), ("partial", &mut partial), ("kept-alive", &mut kept)] {
        assert!(closed_within(s, Duration::from_secs(5)).is_some(), "the {what} connection stayed open");
    }
}

/// SIGTERM while `ferry serve` is still starting stops it cleanly (exit 0)
/// instead of killing it: the signal handlers are in place before anything
/// slow starts. Here the slow part is a nats exporter whose server accepts
/// the connection and never answers; the signal comes while ferry waits for
/// it, so storage is never opened.
#[test]
fn sigterm_while_starting_exits_cleanly_before_storage_opens() {
    let env = Env::new();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a silent listener");
    let config = env.config(
        "ferry.toml",
        &format!(
            "[[exporters]]\nname = \"n\"\nsink = \"nats\"\n[exporters.config]\nurl = \"nats://{}\"\nstream = \"S\"\n",
            silent.local_addr().expect("its address")
        ),
    );
    let stderr_path = env.dir.path().join("serve.stderr");
    let mut child = serve_command(&env.data_dir(), Some(&config), free_port())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn ferry serve");
    // Once the exporter's client connects, ferry is inside its start.
    silent.set_nonblocking(true).expect("non-blocking accept");
    let deadline = Instant::now() + Duration::from_secs(30);
    let _held = loop {
        match silent.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => {
                let _ = child.kill();
                panic!("the nats exporter did not connect: {e}");
            }
        }
    };
    send_signal(child.id(), "TERM");
    let status = wait_or_kill(&mut child, || "ferry serve did not stop after SIGTERM during its start".to_owned());
    let stderr = std::fs::read_to_string(&stderr_path).unwrap_or_default();
    assert!(status.success(), "ferry serve exited with {status} after SIGTERM during its start:\n{stderr}");
    assert!(stderr.contains("before serving"), "{stderr}");
    assert!(!env.data_dir().exists(), "storage was opened:\n{stderr}");
}

#[tokio::test]
async fn a_stalled_request_body_is_closed_after_the_idle_timeout() {
    let env = Env::new();
    let server = env.serve_with("[server]\nheader_read_timeout = \"30s\"\nidle_timeout = \"1s\"\n").await;
    let mut s = connect(server.addr);
    s.write_all(
        b"POST /v1/ledgers/a/entries HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
          content-length: 100\r\n\r\n{\"payload\":",
    )
    .expect("send a head and part of a body");
    assert!(closed_within(&mut s, Duration::from_secs(10)).is_some(), "a stalled body kept its connection");
    assert_eq!(server.head("a").await, None, "the stalled request appended nothing");
    server.stop();
}

#[tokio::test]
async fn past_max_connections_new_clients_wait_until_a_connection_ends() {
    let env = Env::new();
    let server = env.serve_with("[server]\nmax_connections = 4\nheader_read_timeout = \"60s\"\n").await;
    let held: Vec<TcpStream> = (0..4).map(|_| connect(server.addr)).collect();
    // Let the server accept them.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let quick = reqwest::Client::builder().timeout(Duration::from_millis(1500)).build().expect("client");
    let r = quick.get(server.url("/healthz")).send().await;
    assert!(r.is_err(), "a fifth connection was served while four were open: {r:?}");

    drop(held);
    let r = quick.get(server.url("/healthz")).send().await.expect("served once a connection ended");
    assert_eq!(r.status(), 200);
    assert!(server.stderr().contains("max_connections"), "the limit is logged at start:\n{}", server.stderr());
    server.stop();
}

/// Issue #13 item 1 under `ulimit -n 200`: 260 sockets that send nothing
/// do not take the descriptors the store needs; appends go on over a
/// kept-alive connection and chunks are frozen while the sockets are held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_under_a_low_open_file_limit_leave_the_store_its_descriptors() {
    const LIMIT: u64 = 200;
    let env = Env::new();
    let config = env.config(
        "ferry.toml",
        "[server]\nheader_read_timeout = \"60s\"\nidle_timeout = \"60s\"\n[storage]\nchunk_entries = 4\n",
    );
    let server = Server::start_with_open_files(&env.data_dir(), Some(&config), LIMIT, LIMIT).await;
    // One kept-alive connection, opened before the flood.
    let mut kept = KeptAlive::connect(server.addr);
    assert_eq!(kept.request("GET", "/readyz", "").0, 200);

    let sockets: Vec<TcpStream> = (0..260).map(|_| connect(server.addr)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let open = open_descriptors(server.pid());
    assert!(
        open < LIMIT as usize - 32,
        "{open} descriptors open under a limit of {LIMIT}: connections ate the reserve"
    );

    for n in 0..40 {
        let (status, body) =
            kept.request("POST", "/v1/ledgers/tenant/entries", &format!(r#"{{"payload":{{"n":{n}}}}}"#));
        assert_eq!(status, 201, "append {n} while 260 sockets are held: {body}\n{}", server.stderr());
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while pack_files(&env.data_dir()) < 9 {
        assert!(
            Instant::now() < deadline,
            "chunks were not frozen while the sockets were held: {} packs\n{}",
            pack_files(&env.data_dir()),
            server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = kept.request("GET", "/readyz", "");
    assert_eq!(status, 200, "{body}");
    let accept_errors = server.stderr().matches("accept").count();
    assert!(accept_errors <= 2, "accept errors flood the log ({accept_errors} lines):\n{}", server.stderr());
    drop(sockets);
    server.stop();
}

/// One kept-alive HTTP/1.1 connection, used request after request (a
/// pooling client might open a new one, which waits in the backlog while
/// the server is at `max_connections`).
struct KeptAlive {
    reader: BufReader<TcpStream>,
}

impl KeptAlive {
    fn connect(addr: SocketAddr) -> Self {
        let s = connect(addr);
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("set the read timeout");
        Self { reader: BufReader::new(s) }
    }

    /// Sends one request and reads its answer (`content-length` framed).
    fn request(&mut self, method: &str, path: &str, body: &str) -> (u16, String) {
        let req = format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        self.reader.get_mut().write_all(req.as_bytes()).expect("send a request");
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("read the status line");
        let status = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status");
        let mut length = 0;
        loop {
            line.clear();
            self.reader.read_line(&mut line).expect("read a header");
            if line.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                length = v.trim().parse().expect("a content-length");
            }
        }
        let mut answer = vec![0; length];
        self.reader.read_exact(&mut answer).expect("read the body");
        (status, String::from_utf8_lossy(&answer).into_owned())
    }
}

/// Starts a POST whose head declares `len` body bytes and sends half.
fn half_sent_upload(addr: SocketAddr, len: usize) -> TcpStream {
    let mut s = connect(addr);
    let head = format!(
        "POST /v1/ledgers/big/entries HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         content-length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("send the head");
    s.write_all(&vec![b' '; len / 2]).expect("send half the body");
    s
}

#[tokio::test]
async fn request_bodies_buffered_at_once_are_bounded() {
    let env = Env::new();
    let server = env
        .serve_with(
            "[server]\nmax_body_bytes = \"1MiB\"\nmax_buffered_body_bytes = \"2MiB\"\nidle_timeout = \"60s\"\n\
             [storage]\nmax_entry_bytes = \"1MiB\"\n",
        )
        .await;
    // Two uploads of the largest body take the whole budget and stall.
    let stalled: Vec<TcpStream> = (0..2).map(|_| half_sent_upload(server.addr, 1 << 20)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    let r = server.append("small", r#"{"payload":1}"#).await;
    r.assert_error(503, "busy");
    assert_eq!(server.head("small").await, None, "the refused append changed nothing");

    drop(stalled);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = server.append("small", r#"{"payload":1}"#).await;
        if r.status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "the budget was not given back when the uploads ended: {}", r.text);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.stop();
}
