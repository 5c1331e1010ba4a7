//! The status page at `/` (docs/status-page.md), end to end: a real `ferry
//! serve` with auth on and an `http` exporter whose receiver the test takes
//! down and up, and Debian's headless chromium driven through chromedriver
//! (WebDriver). The page asks for the token, shows the ledgers, shows an
//! exporter's lag rise (ids and seconds) and the stuck banner while its sink
//! is down, and the lag fall back to 0 once the sink is up; a scoped token
//! sees its sections and is told which ones it may not see; a restart of
//! the server under the page is survived (the events stream reconnects).
//!
//! Without chromium or chromedriver the browser test fails (`.ci/run`
//! installs both from Debian's packages); it never skips.
//!
//! `FERRY_SCREENSHOT=docs/status-page.png` (a path from the workspace root)
//! writes a screenshot of the page while the exporter lags.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use futures_util::FutureExt as _;
use serde_json::{Value, json};

use crate::support::{Env, Server, Webhook, free_port};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const ADMIN_TOKEN: &str = "page-admin-secret";
const READER_TOKEN: &str = "page-reader-secret";
/// How long the page may take to show what the test waits for (it
/// refreshes every 2 s, and on every system event).
const DOM_WAIT: Duration = Duration::from_secs(20);

/// Auth on (an admin token and a scoped one that may read and watch); `warehouse` posts
/// to the test's sink and is stuck 2 s after it falls behind; `archive`
/// writes files and keeps up.
fn config(sink: SocketAddr, archive: &Path) -> String {
    format!(
        r#"
[server]
tokens = ["{ADMIN_TOKEN}"]

[[server.scoped_tokens]]
name = "reader"
secret = "{READER_TOKEN}"
ledgers = ["*"]
can = ["read", "watch"]

[[exporters]]
name = "warehouse"
sink = "http"
max_lag = "2s"
batch = {{ max_entries = 100, linger = "5ms" }}
retry = {{ initial = "50ms", max = "250ms" }}
[exporters.config]
url = "http://{sink}/in"
timeout = "2s"

[[exporters]]
name = "archive"
sink = "file"
batch = {{ max_entries = 100, linger = "5ms" }}
[exporters.config]
dir = "{}"
"#,
        archive.display()
    )
}

/// `chromedriver` on a loopback port, killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        for tool in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: the status page test needs Debian's chromium and chromium-driver \
                 (`apt-get install chromium chromium-driver`; .ci/run installs them)"
            );
        }
        let port = free_port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let driver = Driver { child, url: format!("http://127.0.0.1:{port}") };
        let probe = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("probe client");
        let deadline = Instant::now() + DOM_WAIT;
        loop {
            let ready = probe.get(format!("{}/status", driver.url)).send().await.ok();
            if let Some(r) = ready
                && let Ok(v) = r.json::<Value>().await
                && v["value"]["ready"] == true
            {
                return driver;
            }
            assert!(Instant::now() < deadline, "chromedriver did not answer /status on port {port}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// A session of headless chromium with its own profile in `profile`.
    async fn browser(&self, profile: &Path) -> Client {
        let mut caps = fantoccini::wd::Capabilities::new();
        caps.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    // The tests run as root, where chromium's sandbox cannot start.
                    "--no-sandbox",
                    "--disable-dev-shm-usage",
                    "--disable-gpu",
                    "--no-first-run",
                    "--window-size=1280,1000",
                    format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .expect("start a chromium session through chromedriver")
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `script` in the page and returns what it returns.
async fn js(c: &Client, script: &str) -> Value {
    c.execute(script, Vec::new()).await.unwrap_or_else(|e| panic!("run {script:?} in the page: {e}"))
}

/// Polls the page until `probe` (a script returning a value or null) gives
/// a value `accept` takes; fails with the page's text after `DOM_WAIT`.
async fn wait_dom(c: &Client, what: &str, probe: &str, accept: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DOM_WAIT;
    loop {
        let v = js(c, probe).await;
        if !v.is_null() && accept(&v) {
            return v;
        }
        if Instant::now() > deadline {
            let text = js(c, "return document.body.innerText").await;
            panic!(
                "the page did not show {what} within {DOM_WAIT:?}; last probe: {v}\npage text:\n{}",
                text.as_str().unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The exporter's block as the page draws it: its data attributes.
fn exporter_probe(name: &str) -> String {
    format!(
        r#"const e = document.querySelector('[data-exporter="{name}"]');
        if (!e) return null;
        const row = e.querySelector('tr[data-exporter-ledger="orders"]');
        return {{ lag: Number(e.dataset.lag), seconds: e.dataset.lagSeconds === '' ? null : Number(e.dataset.lagSeconds),
                 stuck: Number(e.dataset.stuck), row_lag: row ? Number(row.dataset.lag) : null,
                 row_stuck: row ? row.dataset.stuck : null }};"#
    )
}

const BANNER_PROBE: &str = r#"const b = document.getElementById('health-banner');
    return { hidden: b.hidden, status: b.dataset.status || '', text: b.innerText };"#;

/// Whether the element with this id is drawn (not `display: none`).
fn shown(id: &str) -> String {
    format!("return getComputedStyle(document.getElementById('{id}')).display !== 'none';")
}

async fn enter_token(c: &Client, token: &str) {
    wait_dom(c, "the token box", &shown("token-form"), |v| v == true).await;
    c.find(Locator::Css("#token-input")).await.expect("the token box").send_keys(token).await.expect("type the token");
    c.find(Locator::Css("#token-submit")).await.expect("the token button").click().await.expect("submit the token");
}

/// Appends `n` entries to `ledger` as the admin.
async fn append(s: &Server, ledger: &str, n: usize) {
    let entries: Vec<Value> = (0..n).map(|i| json!({ "payload": { "n": i, "ledger": ledger } })).collect();
    let req = s
        .http
        .post(s.url(&format!("/v1/ledgers/{ledger}/entries")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "entries": entries }));
    let r = s.send(req).await;
    assert_eq!(r.status, 201, "append to {ledger}: {}", r.text);
}

/// Where `FERRY_SCREENSHOT` asks for the screenshot, from the workspace root.
fn screenshot_path() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("FERRY_SCREENSHOT")?);
    Some(if p.is_absolute() { p } else { Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").join(p) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_shows_lag_rising_while_the_sink_is_down_and_falling_after() {
    let env = Env::new();
    let archive = env.dir.path().join("archive");
    std::fs::create_dir_all(&archive).expect("archive dir");
    let sink = Webhook::start(false).await;
    let sink_addr = sink.addr;
    let config = env.config("ferry.toml", &config(sink_addr, &archive));
    let s = Server::start(&env.data_dir(), Some(&config)).await;
    for (ledger, n) in [("orders", 120), ("payments", 45), ("audit", 300), ("sessions", 8)] {
        append(&s, ledger, n).await;
    }
    let driver = Driver::start().await;
    let profile = tempfile::tempdir().expect("a chromium profile dir");
    let c = driver.browser(profile.path()).await;
    // Close the session (and its chromium) whatever the test's outcome.
    let outcome = AssertUnwindSafe(async {
        drive_the_page(&c, &s, &sink).await;
        a_restart_drops_the_stream_and_the_page_recovers(&c, s, &env.data_dir(), &config).await;
    })
    .catch_unwind()
    .await;
    let _ = c.close().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

async fn drive_the_page(c: &Client, s: &Server, sink: &Webhook) {
    c.goto(&s.url("/")).await.expect("open the status page");

    // A wrong token is refused and asked for again; the right one is kept
    // in the tab's session storage, never in the URL.
    enter_token(c, "not-the-token").await;
    wait_dom(c, "that the token was refused", "return document.getElementById('token-error').innerText || null", |v| {
        v.as_str().is_some_and(|t| t.contains("refused"))
    })
    .await;
    enter_token(c, ADMIN_TOKEN).await;
    let orders = wait_dom(
        c,
        "the ledger orders",
        r#"const r = document.querySelector('tr[data-ledger="orders"]'); return r ? Number(r.dataset.head) : null;"#,
        |_| true,
    )
    .await;
    assert_eq!(orders, 120, "the head of orders as shown");
    assert_eq!(js(c, &shown("token-form")).await, false, "the token box is gone once the token works");
    assert_eq!(js(c, "return sessionStorage.getItem('ferry.token')").await, ADMIN_TOKEN);
    let url = c.current_url().await.expect("the page's URL");
    assert!(!url.as_str().contains(ADMIN_TOKEN), "the token is in the URL: {url}");
    wait_dom(c, "both exporters caught up", &exporter_probe("warehouse"), |v| v["lag"] == 0).await;
    wait_dom(c, "the archive exporter", &exporter_probe("archive"), |v| v["lag"] == 0).await;
    assert_eq!(js(c, &shown("health-banner")).await, false, "no banner while nothing is stuck");

    // A pin appears on the page (live, through its pin.created event or
    // the periodic refresh).
    let pin = s.send(s.http.post(s.url("/v1/pins")).bearer_auth(ADMIN_TOKEN).json(&json!({ "ttl_ms": 600_000 }))).await;
    assert_eq!(pin.status, 201, "create a pin: {}", pin.text);
    let pin = pin.json()["pin"].as_str().expect("the pin's id").to_owned();
    let probe = format!("const r = document.querySelector('tr[data-pin=\"{pin}\"]'); return r ? r.innerText : null;");
    wait_dom(c, "the pin", &probe, |_| true).await;

    // The sink goes down: appends pile up behind the warehouse exporter.
    sink.set_down(true);
    let appending = Arc::new(AtomicBool::new(true));
    let traffic = tokio::spawn(keep_appending(s.http.clone(), s.url(""), appending.clone()));
    append(s, "orders", 30).await;
    let lagging = wait_dom(c, "the warehouse lag rise", &exporter_probe("warehouse"), |v| {
        v["lag"].as_u64().is_some_and(|l| l >= 30)
            && v["seconds"].as_f64().is_some_and(|sec| sec > 0.0)
            && v["row_lag"].as_u64().is_some_and(|l| l >= 30)
    })
    .await;
    assert!(lagging["seconds"].as_f64().unwrap() > 0.0, "{lagging}");
    let banner =
        wait_dom(c, "the stuck banner", BANNER_PROBE, |v| v["hidden"] == false && v["status"] == "stuck").await;
    let text = banner["text"].as_str().unwrap_or_default();
    assert!(text.contains("warehouse") && text.contains("orders"), "the banner names the exporter and ledger: {text}");
    let stuck = wait_dom(c, "orders stuck in the warehouse table", &exporter_probe("warehouse"), |v| {
        v["row_stuck"] == "true" && v["stuck"].as_u64().is_some_and(|n| n >= 1)
    })
    .await;
    assert_eq!(stuck["row_stuck"], "true");
    wait_dom(c, "the archive exporter keeping up", &exporter_probe("archive"), |v| v["lag"].is_u64()).await;

    if let Some(path) = screenshot_path() {
        // A longer lag history makes the sparkline worth looking at.
        wait_dom(c, "a few seconds of lag", &exporter_probe("warehouse"), |v| {
            v["seconds"].as_f64().is_some_and(|sec| sec > 8.0)
        })
        .await;
        // The window as tall as the page (the window's frame takes some of
        // its height, so measure twice).
        for _ in 0..2 {
            let gap = js(c, "return document.documentElement.scrollHeight - window.innerHeight").await;
            let (_, _, w, h) = c.get_window_rect().await.expect("the window's size");
            let h = (h as i64 + gap.as_i64().unwrap_or(0)).clamp(600, 2400);
            c.set_window_size(w as u32, h as u32).await.expect("resize the window");
        }
        tokio::time::sleep(Duration::from_millis(300)).await; // a settled layout for the picture, not an assertion
        let png = c.screenshot().await.expect("take a screenshot");
        std::fs::write(&path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    // The sink comes back: the lag falls to 0 and the banner goes.
    appending.store(false, Ordering::SeqCst);
    traffic.await.expect("the appender");
    sink.set_down(false);
    wait_dom(c, "the warehouse lag fall to 0", &exporter_probe("warehouse"), |v| {
        v["lag"] == 0 && v["row_lag"] == 0 && v["stuck"] == 0
    })
    .await;
    wait_dom(c, "the banner gone", BANNER_PROBE, |v| v["hidden"] == true).await;

    // A scoped token sees the ledgers and is told what it may not see; the
    // rest of the page still works.
    c.find(Locator::Css("#forget-token")).await.expect("the forget button").click().await.expect("forget the token");
    enter_token(c, READER_TOKEN).await;
    let denied = wait_dom(
        c,
        "the sections a reader may not see",
        r#"const x = document.getElementById('exporters');
           if (x.dataset.denied !== 'true' || !document.querySelector('tr[data-ledger="orders"]')) return null;
           return x.querySelector('.note').innerText;"#,
        |_| true,
    )
    .await;
    assert_eq!(denied, "This token may not see exporters.");
    assert_eq!(js(c, "return document.getElementById('pins').dataset.denied").await, "true");
    assert_eq!(js(c, "return sessionStorage.getItem('ferry.token')").await, READER_TOKEN);
    wait_dom(c, "the reader's live stream", LIVE_PROBE, |v| v == "on").await;
}

const LIVE_PROBE: &str = "return document.getElementById('live').dataset.live;";

/// The server goes away under the page and comes back on the same port:
/// the page says so, keeps what it showed, and reconnects its events
/// stream by itself.
async fn a_restart_drops_the_stream_and_the_page_recovers(c: &Client, s: Server, data_dir: &Path, config: &Path) {
    let port = s.addr.port();
    s.kill();
    wait_dom(c, "the stream reconnecting", LIVE_PROBE, |v| v == "reconnecting").await;
    wait_dom(c, "the server unreachable", "return document.getElementById('updated').innerText", |v| {
        v.as_str().is_some_and(|t| t.contains("unreachable"))
    })
    .await;
    assert_eq!(js(c, r#"return !!document.querySelector('tr[data-ledger="orders"]')"#).await, true);
    let s = Server::start_on(data_dir, Some(config), port).await;
    wait_dom(c, "the stream back", LIVE_PROBE, |v| v == "on").await;
    // A ledger created now shows (its event, or the periodic refresh).
    let r = s.send(s.http.put(s.url("/v1/ledgers/refunds")).bearer_auth(ADMIN_TOKEN)).await;
    assert!(r.status == 201 || r.status == 200, "create refunds: {} {}", r.status, r.text);
    wait_dom(
        c,
        "the new ledger",
        r#"return document.querySelector('tr[data-ledger="refunds"]') ? true : null"#,
        |_| true,
    )
    .await;
}

/// A few entries every 100 ms to two ledgers while `on`, so the page shows
/// entries/s and a rising lag.
async fn keep_appending(http: reqwest::Client, base: String, on: Arc<AtomicBool>) {
    let mut n = 0u64;
    while on.load(Ordering::SeqCst) {
        for (ledger, count) in [("orders", 7), ("payments", 3)] {
            let entries: Vec<Value> = (0..count).map(|i| json!({ "payload": { "tick": n, "i": i } })).collect();
            let r = http
                .post(format!("{base}/v1/ledgers/{ledger}/entries"))
                .bearer_auth(ADMIN_TOKEN)
                .json(&json!({ "entries": entries }))
                .send()
                .await
                .expect("append while the sink is down");
            assert_eq!(r.status(), 201, "append to {ledger} while the sink is down");
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn status_page_is_open_and_its_assets_carry_a_strict_policy() {
    let env = Env::new();
    let s = env.serve_with(&format!("[server]\ntokens = [\"{ADMIN_TOKEN}\"]\n")).await;
    let page = s.get("/").await;
    assert_eq!(page.status, 200, "the page needs no token: {}", page.text);
    assert_eq!(page.content_type, "text/html; charset=utf-8");
    let r = s.http.get(s.url("/")).send().await.expect("GET /");
    let csp = r.headers().get("content-security-policy").expect("a CSP on /").to_str().expect("ASCII").to_owned();
    for directive in ["default-src 'none'", "script-src 'self'", "style-src 'self'", "connect-src 'self'"] {
        assert!(csp.contains(directive), "the CSP lacks {directive}: {csp}");
    }
    assert!(!csp.contains("unsafe"), "the CSP allows unsafe sources: {csp}");
    // Everything the page runs or styles comes from these two files.
    assert!(!page.text.contains("<script>") && !page.text.contains("style="), "inline script or style in /");
    for (path, content_type) in
        [("/assets/app.js", "text/javascript; charset=utf-8"), ("/assets/style.css", "text/css; charset=utf-8")]
    {
        assert!(page.text.contains(path), "/ does not load {path}");
        let r = s.get(path).await;
        assert_eq!((r.status, r.content_type.as_str()), (200, content_type), "{path}");
        assert!(!r.text.contains("innerHTML"), "{path} writes markup; values must go in as text");
    }
    let r = s.http.get(s.url("/assets/app.js")).send().await.expect("GET app.js");
    assert_eq!(r.headers().get("cache-control").map(|v| v.to_str().unwrap()), Some("no-cache"));
    assert_eq!(s.get("/assets/other.js").await.status, 404);
}
