//! Real `ferry` processes for the tests: a temp directory per test, a
//! `ferry serve` child on a free loopback port (ready once `/readyz` says
//! so, SIGKILLed on drop), plain HTTP helpers and a raw-socket client for
//! paths an URL library would normalise (`..`).

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The binary under test.
pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

/// How long a server may take to become ready, or a command to exit.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// A `ferry` command with none of the caller's `FERRY_*` environment.
pub fn ferry() -> Command {
    let mut cmd = Command::new(FERRY);
    for var in ["FERRY_SERVER", "FERRY_TOKEN", "FERRY_LOG"] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// An HTTP client for the tests (reqwest is built without a TLS provider,
/// so the process installs one, as the binary does).
pub fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("build the HTTP client")
}

/// An HTTPS client that trusts only the certificate(s) in `root_pem` and
/// opens a new connection for every request (so each one handshakes).
pub fn https_client(root_pem: &[u8], timeout: Duration) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let root = reqwest::Certificate::from_pem(root_pem).expect("a PEM certificate");
    reqwest::Client::builder()
        .tls_certs_only([root])
        .pool_max_idle_per_host(0)
        .timeout(timeout)
        .build()
        .expect("build the HTTPS client")
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// One test's scratch space: `{dir}/data` is the data dir by default.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self { dir: tempfile::Builder::new().prefix("ferry-it-").tempdir().expect("create a temp dir") }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Writes a config file and returns its path.
    pub fn config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("write the config file");
        path
    }

    pub async fn serve(&self) -> Server {
        Server::start(&self.data_dir(), None).await
    }

    pub async fn serve_with(&self, config_text: &str) -> Server {
        let config = self.config("ferry.toml", config_text);
        Server::start(&self.data_dir(), Some(&config)).await
    }
}

/// Asserts a finished `ferry` command's exit code, showing its output.
#[track_caller]
pub fn assert_exit(out: &Exited, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit code {code}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.stdout,
        out.stderr
    );
}

/// What a `ferry` process printed and how it ended.
#[derive(Debug)]
pub struct Exited {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// A running `ferry serve`.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub base: String,
    pub http: reqwest::Client,
    stderr_path: PathBuf,
    stdout_path: PathBuf,
}

static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// Files next to the data dir that receive a child's output.
fn output_files(data_dir: &Path) -> (PathBuf, PathBuf) {
    let n = LAUNCHES.fetch_add(1, Ordering::Relaxed);
    let parent = data_dir.parent().unwrap_or(Path::new("."));
    (parent.join(format!("serve-{n}.stdout")), parent.join(format!("serve-{n}.stderr")))
}

fn read_lossy(path: &Path) -> String {
    std::fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
}

/// `ferry serve --data-dir D --listen 127.0.0.1:PORT [--config F]`.
pub fn serve_command(data_dir: &Path, config: Option<&Path>, port: u16) -> Command {
    let mut cmd = ferry();
    cmd.arg("serve").arg("--data-dir").arg(data_dir).arg("--listen").arg(format!("127.0.0.1:{port}"));
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    cmd
}

/// Runs a command that is expected to exit on its own (within the startup
/// timeout; it is killed and the test fails otherwise).
pub fn run_to_exit(mut cmd: Command, stdin: Option<&[u8]>) -> Exited {
    let dir = tempfile::tempdir().expect("temp dir for command output");
    let (stdout_path, stderr_path) = (dir.path().join("stdout"), dir.path().join("stderr"));
    cmd.stdout(File::create(&stdout_path).expect("stdout file"));
    cmd.stderr(File::create(&stderr_path).expect("stderr file"));
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("spawn ferry");
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("stdin pipe");
        pipe.write_all(input).expect("write stdin");
        drop(pipe);
    }
    let status = wait_or_kill(&mut child, || format!("{cmd:?} did not exit; stderr:\n{}", read_lossy(&stderr_path)));
    Exited { status, stdout: read_lossy(&stdout_path), stderr: read_lossy(&stderr_path) }
}

/// Sends signal `name` (`TERM`, `INT`, `HUP`) to process `pid`.
pub fn send_signal(pid: u32, name: &str) {
    let sent = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).status().expect("run kill");
    assert!(sent.success(), "kill -{name} {pid} failed");
}

/// Waits up to `STARTUP_TIMEOUT` for the child to exit; past that, kills it
/// and panics with `why()`.
pub fn wait_or_kill(child: &mut Child, why: impl FnOnce() -> String) -> ExitStatus {
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("poll the child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("after {STARTUP_TIMEOUT:?}: {}", why());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Why a server did not come up.
#[derive(Debug)]
pub enum StartError {
    /// The process exited before it was ready.
    Exited(Exited),
}

impl Server {
    /// Starts `ferry serve` on a free port and waits until `/readyz` is 200.
    /// Panics (with the server's stderr) if it does not come up.
    pub async fn start(data_dir: &Path, config: Option<&Path>) -> Server {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::try_start(data_dir, config).await {
                Ok(server) => return server,
                // Another process took the port between our probe and the
                // child's bind: take another one.
                Err(StartError::Exited(e)) if attempt < 5 && e.stderr.contains("listen on") => continue,
                Err(StartError::Exited(e)) => panic!(
                    "ferry serve --data-dir {} exited before it was ready ({}):\n{}",
                    data_dir.display(),
                    e.status,
                    e.stderr
                ),
            }
        }
    }

    /// Starts `ferry serve`; an exit before readiness is an `Err` with what
    /// the process printed (for tests of refusals to start).
    pub async fn try_start(data_dir: &Path, config: Option<&Path>) -> Result<Server, StartError> {
        Self::try_start_on(data_dir, config, free_port()).await
    }

    /// Starts `ferry serve` on `port` (to restart a server where its clients
    /// expect it) and waits until it is ready.
    pub async fn start_on(data_dir: &Path, config: Option<&Path>, port: u16) -> Server {
        match Self::try_start_on(data_dir, config, port).await {
            Ok(server) => server,
            Err(StartError::Exited(e)) => panic!("ferry serve on port {port} exited ({}):\n{}", e.status, e.stderr),
        }
    }

    pub async fn try_start_on(data_dir: &Path, config: Option<&Path>, port: u16) -> Result<Server, StartError> {
        Self::try_start_env(data_dir, config, port, &[]).await
    }

    /// Starts `ferry serve` with extra environment (e.g. `FAILPOINTS`).
    pub async fn start_env(data_dir: &Path, config: Option<&Path>, env: &[(&str, &str)]) -> Server {
        match Self::try_start_env(data_dir, config, free_port(), env).await {
            Ok(server) => server,
            Err(StartError::Exited(e)) => panic!("ferry serve exited ({}):\n{}", e.status, e.stderr),
        }
    }

    pub async fn try_start_env(
        data_dir: &Path,
        config: Option<&Path>,
        port: u16,
        env: &[(&str, &str)],
    ) -> Result<Server, StartError> {
        let mut cmd = serve_command(data_dir, config, port);
        cmd.envs(env.iter().copied());
        Self::try_start_command(cmd, data_dir, port).await
    }

    /// Starts `ferry serve` with the open-file limit (`ulimit -n`) set to
    /// `soft` and `hard` (through `sh`, which then execs ferry: the server's
    /// pid is the shell's).
    pub async fn start_with_open_files(data_dir: &Path, config: Option<&Path>, soft: u64, hard: u64) -> Server {
        let port = free_port();
        let serve = serve_command(data_dir, config, port);
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"ulimit -S -n "$1" && ulimit -H -n "$2" && shift 2 && exec "$@""#)
            .arg("sh")
            .arg(soft.to_string())
            .arg(hard.to_string())
            .arg(serve.get_program())
            .args(serve.get_args());
        for var in ["FERRY_SERVER", "FERRY_TOKEN", "FERRY_LOG"] {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null());
        match Self::try_start_command(cmd, data_dir, port).await {
            Ok(server) => server,
            Err(StartError::Exited(e)) => {
                panic!("ferry serve under ulimit -n {soft}/{hard} exited ({}):\n{}", e.status, e.stderr)
            }
        }
    }

    /// Spawns `cmd` (a `ferry serve` listening on `port`) and waits until
    /// it is ready.
    async fn try_start_command(cmd: Command, data_dir: &Path, port: u16) -> Result<Server, StartError> {
        // `http()` first: it installs the TLS provider the probe needs too.
        let client = http();
        let probe = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("probe client");
        Self::try_start_scheme(cmd, data_dir, port, "http", client, probe).await
    }

    /// Starts `ferry serve` with `[server] tls_cert`/`tls_key` set in its
    /// config: the server's base is `https://`, and its client (and the
    /// readiness probe) trust only `root_pem`.
    pub async fn start_https(data_dir: &Path, config: &Path, root_pem: &[u8]) -> Server {
        let port = free_port();
        let client = https_client(root_pem, Duration::from_secs(30));
        let probe = https_client(root_pem, Duration::from_secs(2));
        match Self::try_start_scheme(
            serve_command(data_dir, Some(config), port),
            data_dir,
            port,
            "https",
            client,
            probe,
        )
        .await
        {
            Ok(server) => server,
            Err(StartError::Exited(e)) => panic!("ferry serve with TLS exited ({}):\n{}", e.status, e.stderr),
        }
    }

    async fn try_start_scheme(
        mut cmd: Command,
        data_dir: &Path,
        port: u16,
        scheme: &str,
        http: reqwest::Client,
        probe: reqwest::Client,
    ) -> Result<Server, StartError> {
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let (stdout_path, stderr_path) = output_files(data_dir);
        cmd.stdout(File::create(&stdout_path).expect("stdout file"));
        cmd.stderr(File::create(&stderr_path).expect("stderr file"));
        let child = cmd.spawn().expect("spawn ferry serve");
        let mut server =
            Server { child: Some(child), addr, base: format!("{scheme}://{addr}"), http, stderr_path, stdout_path };
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let child = server.child.as_mut().expect("child");
            if let Some(status) = child.try_wait().expect("poll the child") {
                server.child = None;
                return Err(StartError::Exited(Exited {
                    status,
                    stdout: read_lossy(&server.stdout_path),
                    stderr: read_lossy(&server.stderr_path),
                }));
            }
            // Ours only once our child says it bound the port: under load
            // another test's server can hold it for a moment (the child then
            // exits on its bind, and the caller tries another port).
            if let Ok(resp) = probe.get(server.url("/readyz")).send().await
                && resp.status() == 200
                && read_lossy(&server.stderr_path).contains("ferry listening")
            {
                return Ok(server);
            }
            if Instant::now() > deadline {
                let log = server.stderr();
                drop(server);
                panic!("ferry serve was not ready within {STARTUP_TIMEOUT:?}; stderr:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends the server SIGHUP (a reload).
    pub fn sighup(&self) {
        send_signal(self.pid(), "HUP");
    }

    /// The server process's id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server is running").id()
    }

    /// A `ferry-client` of this server, on the tests' HTTP client.
    pub fn client(&self) -> ferry_client::Client {
        ferry_client::Client::with_http(self.http.clone(), &self.base).expect("the server's base URL")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the server wrote to stdout so far.
    pub fn stdout(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().expect("poll the child").is_none(),
            None => false,
        }
    }

    /// SIGKILL (what `Child::kill` sends on Unix), then reap.
    pub fn kill(mut self) {
        self.kill_now();
    }

    fn kill_now(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit (status 0).
    pub fn stop(mut self) {
        let mut child = self.child.take().expect("server is running");
        send_signal(child.id(), "TERM");
        let status = wait_or_kill(&mut child, || format!("ferry serve did not stop after SIGTERM:\n{}", self.stderr()));
        assert!(status.success(), "ferry serve exited with {status} after SIGTERM:\n{}", self.stderr());
    }

    /// Sends a request built on `self.http` (for custom headers).
    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        Resp::from(req.send().await.expect("send the request"), self).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        Resp::from(self.http.get(self.url(path)).send().await.expect("GET"), self).await
    }

    pub async fn put(&self, path: &str) -> Resp {
        Resp::from(self.http.put(self.url(path)).send().await.expect("PUT"), self).await
    }

    /// POSTs a JSON body (given as text, sent byte for byte).
    pub async fn post(&self, path: &str, body: impl Into<String>) -> Resp {
        let req = self.http.post(self.url(path)).header("content-type", "application/json").body(body.into());
        Resp::from(req.send().await.expect("POST"), self).await
    }

    pub async fn append(&self, ledger: &str, body: impl Into<String>) -> Resp {
        self.post(&format!("/v1/ledgers/{ledger}/entries"), body).await
    }

    /// The ledger's `head`, or None when it does not exist.
    pub async fn head(&self, ledger: &str) -> Option<u64> {
        let r = self.get(&format!("/v1/ledgers/{ledger}")).await;
        match r.status {
            200 => Some(r.json()["head"].as_u64().expect("head is a number")),
            404 => None,
            s => panic!("GET /v1/ledgers/{ledger}: {s} {}", r.text),
        }
    }

    /// A ledger's First and head, or `None` when it does not exist.
    pub async fn first_and_head(&self, ledger: &str) -> Option<(u64, u64)> {
        let r = self.get(&format!("/v1/ledgers/{ledger}")).await;
        match r.status {
            200 => {
                let v = r.json();
                Some((v["first"].as_u64().expect("first is a number"), v["head"].as_u64().expect("head is a number")))
            }
            404 => None,
            s => panic!("GET /v1/ledgers/{ledger}: {s} {}", r.text),
        }
    }

    /// One NDJSON read page.
    pub async fn ndjson(&self, ledger: &str, query: &str) -> Resp {
        let req = self
            .http
            .get(self.url(&format!("/v1/ledgers/{ledger}/entries?{query}")))
            .header("accept", "application/x-ndjson");
        Resp::from(req.send().await.expect("GET ndjson"), self).await
    }

    /// Every entry of a ledger as the NDJSON lines the server sends.
    pub async fn read_all(&self, ledger: &str) -> Vec<String> {
        self.read_from(ledger, 1).await
    }

    /// Like `read_from`, for a ledger whose retention may prune while it is
    /// read: on a 410 it starts over from the First the answer names.
    /// Returns the id the returned lines start at.
    pub async fn read_retained_from(&self, ledger: &str, from: u64) -> (u64, Vec<String>) {
        let mut start = from;
        loop {
            let mut lines: Vec<String> = Vec::new();
            let pruned = loop {
                let at = start + lines.len() as u64;
                let r = self.ndjson(ledger, &format!("from={at}&limit=10000")).await;
                if r.status == 410 {
                    break Some(r.json()["error"]["first"].as_u64().expect("410 names first"));
                }
                assert_eq!(r.status, 200, "NDJSON read of {ledger} from {at}: {}", r.text);
                let before = lines.len();
                lines.extend(r.text.lines().map(str::to_owned));
                if lines.len() == before {
                    break None;
                }
            };
            match pruned {
                None => return (start, lines),
                Some(first) => start = start.max(first),
            }
        }
    }

    /// The NDJSON lines of every entry from `first` to the head.
    pub async fn read_from(&self, ledger: &str, first: u64) -> Vec<String> {
        let mut lines = Vec::new();
        loop {
            let from = first + lines.len() as u64;
            let r = self.ndjson(ledger, &format!("from={from}&limit=10000")).await;
            assert_eq!(r.status, 200, "NDJSON read of {ledger} from {from}: {}", r.text);
            let before = lines.len();
            lines.extend(r.text.lines().map(str::to_owned));
            if lines.len() == before {
                return lines;
            }
        }
    }

    /// `GET /v1/exporters/{name}`.
    pub async fn exporter(&self, name: &str) -> Value {
        let r = self.get(&format!("/v1/exporters/{name}")).await;
        assert_eq!(r.status, 200, "GET /v1/exporters/{name}: {}", r.text);
        r.json()
    }

    /// Polls the exporter's status until `done` holds (30 s at most).
    pub async fn wait_exporter(&self, name: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            let status = self.exporter(name).await;
            if done(&status) {
                return status;
            }
            if Instant::now() >= deadline {
                let log = self.stderr();
                let tail: Vec<&str> = log.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect();
                panic!(
                    "exporter {name}: {what} did not happen within 30 s: {status:#}\nlast log lines:\n{}",
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// What a client can observe of every ledger: the list and each
    /// ledger's entries. Equal snapshots mean nothing changed.
    pub async fn snapshot(&self) -> String {
        let list = self.get("/v1/ledgers").await;
        assert_eq!(list.status, 200, "{}", list.text);
        let mut out = list.text.clone();
        for l in list.json()["ledgers"].as_array().expect("a page of ledgers") {
            let name = l["name"].as_str().expect("name");
            out.push_str(&format!("\n== {name}\n"));
            out.push_str(&self.read_all(name).await.join("\n"));
        }
        out
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill_now();
    }
}

/// A response with its body read.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub content_type: String,
    pub text: String,
    /// The server's stderr at the time, for failure messages.
    pub server_log: String,
}

impl Resp {
    async fn from(r: reqwest::Response, server: &Server) -> Resp {
        let status = r.status().as_u16();
        let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let text = r.text().await.expect("read the response body");
        let server_log = if status >= 500 { server.stderr() } else { String::new() };
        Resp { status, content_type, text, server_log }
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", self.text))
    }

    /// The `ids` of an append answer.
    pub fn ids(&self) -> Vec<u64> {
        let v = self.json();
        v["ids"]
            .as_array()
            .unwrap_or_else(|| panic!("no ids in {:?}", self.text))
            .iter()
            .map(|i| i.as_u64().expect("id is a u64"))
            .collect()
    }

    /// Asserts the status and the error body
    /// `{"error":{"code":CODE,"message":"…"}}`.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "expected {status} {code}, got: {}{}", self.text, self.server_log);
        let v = self.json();
        assert_eq!(v["error"]["code"], code, "error code of {}", self.text);
        let msg = v["error"]["message"].as_str().unwrap_or_default();
        assert!(!msg.is_empty(), "error without a message: {}", self.text);
    }
}

/// Sends one HTTP/1.1 request over a plain socket, with the path exactly as
/// given (no normalisation of `.`/`..`), and returns status and body.
pub fn raw_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut out = Vec::new();
    s.read_to_end(&mut out).expect("read the answer");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (status, body.to_owned())
}

/// One line of the entries' JSON form, strictly: exactly these fields.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryLine<'a> {
    pub ledger: String,
    pub id: u64,
    pub ts: u64,
    #[serde(default)]
    pub key: Option<String>,
    /// The entry's chain hash (issue #21), on ledgers with a chain.
    #[serde(default)]
    pub hash: Option<String>,
    #[serde(borrow)]
    pub payload: &'a serde_json::value::RawValue,
}

pub fn parse_line(line: &str) -> EntryLine<'_> {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not an entry line ({e}): {line:?}"))
}

/// Polls `cond` every 50 ms until it holds; fails the test after 20 s.
pub async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Milliseconds since the unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_millis() as u64
}

/// Every durable exporter cursor, `(exporter, ledger) → id`, read offline
/// with `ferry inspect` (the server must be stopped).
pub fn durable_cursors(data_dir: &Path) -> std::collections::BTreeMap<(String, String), u64> {
    let mut cmd = ferry();
    cmd.arg("inspect").arg("--data-dir").arg(data_dir);
    let out = run_to_exit(cmd, None);
    assert_exit(&out, 0, "ferry inspect");
    let mut map = std::collections::BTreeMap::new();
    for line in out.stdout.lines() {
        let Some(rest) = line.strip_prefix("cursor:") else { continue };
        let (key, value) = rest.split_once(' ').expect("cursor line");
        let (exporter, ledger) = key.split_once(':').expect("cursor key");
        let id = serde_json::from_str::<Value>(value).expect("cursor value")["id"].as_u64().expect("id");
        map.insert((exporter.to_owned(), ledger.to_owned()), id);
    }
    map
}

/// The durable cursors of one exporter, `ledger → id` (see `durable_cursors`).
pub fn durable_cursors_of(data_dir: &Path, exporter: &str) -> std::collections::BTreeMap<String, u64> {
    durable_cursors(data_dir).into_iter().filter(|((e, _), _)| e == exporter).map(|((_, l), id)| (l, id)).collect()
}

/// A loopback webhook for the `http` sink, at `http://{addr}/in`: 200 while
/// up, 503 (with a message the sink quotes in its error) while down; it
/// counts the batches it accepted.
pub struct Webhook {
    pub addr: SocketAddr,
    down: std::sync::atomic::AtomicBool,
    accepted: std::sync::atomic::AtomicU64,
}

impl Webhook {
    pub async fn start(down: bool) -> std::sync::Arc<Webhook> {
        use axum::extract::State;
        use axum::http::StatusCode;
        async fn receive(State(hook): State<std::sync::Arc<Webhook>>) -> (StatusCode, &'static str) {
            if hook.down.load(Ordering::SeqCst) {
                return (StatusCode::SERVICE_UNAVAILABLE, "warehouse loader is down for maintenance");
            }
            hook.accepted.fetch_add(1, Ordering::SeqCst);
            (StatusCode::OK, "")
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the webhook");
        let hook = std::sync::Arc::new(Webhook {
            addr: listener.local_addr().expect("webhook address"),
            down: down.into(),
            accepted: 0.into(),
        });
        let app = axum::Router::new().route("/in", axum::routing::post(receive)).with_state(hook.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.expect("the webhook stopped") });
        hook
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Batches answered 200.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}
