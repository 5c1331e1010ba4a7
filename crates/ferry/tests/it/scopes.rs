//! Scoped tokens (issue #14) against a real server: every `/v1` route ×
//! every scope × a ledger inside and outside the token's globs answers
//! 2xx, 401 or 403 as the scope says, and a refusal changes nothing; a
//! watch and the events stream show only what the scope covers; admin
//! actions name their actor; SIGHUP swaps the token set, keeping it when
//! the new file is bad and ending the streams of a revoked token.

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use reqwest::Method;
use serde_json::Value;

use crate::support::{Env, Server, assert_exit, ferry, run_to_exit};

/// `(name, secret, ledgers, can)` of the scoped tokens under test.
const SCOPED: [(&str, &str, &str, &str); 4] = [
    ("reader", "reader-secret", "t-*", "read"),
    ("appender", "appender-secret", "t-*", "append"),
    ("watcher", "watcher-secret", "t-*", "watch"),
    ("scraper", "scraper-secret", "t-*", "metrics"),
];

fn config() -> String {
    let mut text = String::from("[server]\nmetrics_auth = true\ntokens = [\"root-secret\"]\n");
    for (name, secret, ledgers, can) in SCOPED {
        text.push_str(&format!(
            "[[server.scoped_tokens]]\nname = \"{name}\"\nsecret = \"{secret}\"\nledgers = [\"{ledgers}\"]\ncan = [\"{can}\"]\n"
        ));
    }
    text.push_str(
        "[[server.scoped_tokens]]\nname = \"ops\"\nsecret = \"ops-secret\"\nledgers = [\"*\"]\ncan = [\"admin\"]\n\
         [[exporters]]\nname = \"ex\"\nsink = \"stdout\"\nledgers = [\"none-*\"]\n",
    );
    text
}

/// Who calls: no header, an unknown secret, or a token's secret and scope.
#[derive(Clone, Copy, Debug)]
enum Who {
    Nobody,
    Stranger,
    Token(&'static str, &'static str),
}

/// One route and what it needs.
struct Route {
    method: Method,
    /// `{l}` stands for the ledger under test.
    path: &'static str,
    body: Option<&'static str>,
    /// The scope it needs.
    scope: &'static str,
    /// Whether the ledger in the path decides (false: a route without one,
    /// or an admin route).
    per_ledger: bool,
    /// What a caller allowed gets.
    ok: u16,
}

fn routes() -> Vec<Route> {
    let r = |method: Method, path, body, scope, per_ledger, ok| Route { method, path, body, scope, per_ledger, ok };
    vec![
        r(Method::GET, "/v1/ledgers", None, "read", false, 200),
        r(Method::GET, "/v1/ledgers/{l}", None, "read", true, 200),
        r(Method::GET, "/v1/ledgers/{l}/entries", None, "read", true, 200),
        r(Method::GET, "/v1/ledgers/{l}/head", None, "read", true, 200),
        r(Method::POST, "/v1/ledgers/{l}/entries", Some(r#"{"payload":{"n":1}}"#), "append", true, 201),
        r(Method::PUT, "/v1/ledgers/{l}", None, "append", true, 200),
        // A watch's prefix may be wider than the scope, or outside it: it
        // is filtered, never refused by ledger (that would leak names).
        r(Method::GET, "/v1/watch?prefix={l}", None, "watch", false, 200),
        r(Method::GET, "/v1/watch?prefix=", None, "watch", false, 200),
        r(Method::GET, "/v1/events", None, "watch", false, 200),
        r(Method::GET, "/v1/exporters", None, "admin", false, 200),
        r(Method::GET, "/v1/exporters/ex", None, "admin", false, 200),
        r(Method::POST, "/v1/exporters/ex/pause", None, "admin", false, 200),
        r(Method::POST, "/v1/exporters/ex/resume", None, "admin", false, 200),
        r(Method::POST, "/v1/exporters/ex/reset", Some("{}"), "admin", false, 200),
        r(Method::GET, "/v1/exporters/ex/check", None, "admin", false, 200),
        // None configured: the list is empty, a name is not found.
        r(Method::GET, "/v1/sources", None, "admin", false, 200),
        r(Method::GET, "/v1/sources/app", None, "admin", false, 404),
        r(Method::GET, "/v1/pins", None, "admin", false, 200),
        r(Method::POST, "/v1/pins/1/renew", None, "admin", false, 404),
        r(Method::DELETE, "/v1/pins/1", None, "admin", false, 404),
        r(Method::GET, "/v1/pins/1/ledgers/{l}/entries", None, "admin", false, 404),
        // A body that is no backup line: the import stops at 422 and
        // creates nothing, for the admin too.
        r(Method::POST, "/v1/ledgers/{l}/import", Some("{}"), "admin", false, 422),
        r(Method::DELETE, "/v1/exporters/ex", None, "admin", false, 409),
        r(Method::GET, "/v1/nothing-here", None, "any", false, 404),
        r(Method::GET, "/metrics", None, "metrics", false, 200),
    ]
}

/// What `who` gets on `route` for a ledger inside (`inside`) or outside
/// its globs.
fn expected(route: &Route, who: Who, inside: bool) -> u16 {
    let (scope, admin) = match who {
        Who::Nobody | Who::Stranger => return 401,
        Who::Token(_, scope) => (scope, scope == "admin"),
    };
    if route.scope == "any" {
        return route.ok;
    }
    let scoped = admin || scope == route.scope;
    let covered = admin || inside || !route.per_ledger;
    if scoped && covered { route.ok } else { 403 }
}

/// Everything a refusal must leave as it was: the ledgers and the
/// exporter's state, as the admin token sees them.
async fn snapshot(server: &Server) -> String {
    let ledgers = send(server, Who::Token("root-secret", "admin"), Method::GET, "/v1/ledgers", None).await.1;
    let exporter = send(server, Who::Token("root-secret", "admin"), Method::GET, "/v1/exporters/ex", None).await.1;
    let exporter: Value = serde_json::from_str(&exporter).expect("exporter JSON");
    format!("{ledgers}\n{}", exporter["state"])
}

async fn send(server: &Server, who: Who, method: Method, path: &str, body: Option<&str>) -> (u16, String) {
    let mut req = server.http.request(method, server.url(path)).timeout(Duration::from_secs(10));
    match who {
        Who::Nobody => {}
        Who::Stranger => req = req.bearer_auth("not-a-token"),
        Who::Token(secret, _) => req = req.bearer_auth(secret),
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b.to_owned());
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    // Streams answer their status at once; their bodies never end.
    let stream = path.starts_with("/v1/watch") || path.starts_with("/v1/events");
    let text = if stream && status == 200 { String::new() } else { resp.text().await.unwrap_or_default() };
    (status, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_scope_inside_and_outside_its_ledgers_and_refusals_change_nothing() {
    let env = Env::new();
    let server = env.serve_with(&config()).await;
    for l in ["t-in", "x-out"] {
        let (status, _) =
            send(&server, Who::Token("root-secret", "admin"), Method::PUT, &format!("/v1/ledgers/{l}"), None).await;
        assert_eq!(status, 201);
    }
    let mut callers = vec![Who::Nobody, Who::Stranger, Who::Token("ops-secret", "admin")];
    callers.extend(SCOPED.iter().map(|(_, secret, _, can)| Who::Token(secret, can)));
    let mut failures = Vec::new();
    for route in routes() {
        for &who in &callers {
            // A ledger inside the globs, one outside that exists and one
            // outside that does not: the answer must not tell them apart.
            for (ledger, inside) in [("t-in", true), ("x-out", false), ("x-absent", false)] {
                if !route.path.contains("{l}") && ledger != "t-in" {
                    continue;
                }
                let path = route.path.replace("{l}", ledger);
                let want = expected(&route, who, inside);
                // An absent ledger proves that refusals do not tell it from
                // an existing one; allowed callers would create or miss it.
                if ledger == "x-absent" && want < 400 {
                    continue;
                }
                let before = snapshot(&server).await;
                let (got, body) = send(&server, who, route.method.clone(), &path, route.body).await;
                if got != want {
                    failures.push(format!("{} {path} as {who:?}: {got}, expected {want}: {body}", route.method));
                }
                if got >= 400 {
                    let after = snapshot(&server).await;
                    if before != after {
                        failures
                            .push(format!("{} {path} as {who:?} was refused ({got}) but changed state", route.method));
                    }
                    if (got == 401 || got == 403) && !path.starts_with("/metrics") {
                        let code = serde_json::from_str::<Value>(&body).ok().map(|v| v["error"]["code"].clone());
                        let want_code = if got == 401 { "unauthorized" } else { "forbidden" };
                        if code != Some(Value::from(want_code)) {
                            failures.push(format!(
                                "{} {path} as {who:?}: error code {code:?}, expected {want_code}",
                                route.method
                            ));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} wrong answers:\n{}", failures.len(), failures.join("\n"));

    // Deleting is admin's, and the event names the actor, never a secret.
    let (status, _) =
        send(&server, Who::Token("reader-secret", "read"), Method::DELETE, "/v1/ledgers/t-in", None).await;
    assert_eq!(status, 403);
    let events = server.http.get(server.url("/v1/events?prefix=ledger.deleted")).bearer_auth("ops-secret").send().await;
    let mut events = events.expect("events").bytes_stream();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, _) = send(&server, Who::Token("ops-secret", "admin"), Method::DELETE, "/v1/ledgers/t-in", None).await;
    assert_eq!(status, 204);
    let text = sse_until(&mut events, |t| t.contains("actor")).await;
    assert!(text.contains(r#""actor":"ops""#), "the deletion names its actor: {text}");
    assert!(!text.contains("ops-secret"), "{text}");
    assert!(server.stderr().contains("actor=\"ops\"") || server.stderr().contains("actor=ops"), "{}", server.stderr());
    server.stop();
}

/// Reads SSE bytes until `done` says so or the deadline passes.
async fn sse_until(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<impl AsRef<[u8]>>> + Unpin),
    done: impl Fn(&str) -> bool,
) -> String {
    sse_within(stream, done, Duration::from_secs(10)).await
}

async fn sse_within(
    stream: &mut (impl futures_util::Stream<Item = reqwest::Result<impl AsRef<[u8]>>> + Unpin),
    done: impl Fn(&str) -> bool,
    within: Duration,
) -> String {
    let mut text = String::new();
    let deadline = tokio::time::Instant::now() + within;
    while !done(&text) {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(chunk))) => text.push_str(&String::from_utf8_lossy(chunk.as_ref())),
            _ => break,
        }
    }
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_and_the_events_stream_show_only_what_the_scope_covers() {
    let env = Env::new();
    let text = "[server]\ntokens = [\"root-secret\"]\n[[server.scoped_tokens]]\nname = \"tenant\"\n\
                secret = \"tenant-secret\"\nledgers = [\"t-*\"]\ncan = [\"watch\"]\n";
    let server = env.serve_with(text).await;
    let watch = server.http.get(server.url("/v1/watch?prefix=")).bearer_auth("tenant-secret").send().await;
    let mut watch = watch.expect("watch").bytes_stream();
    let events = server.http.get(server.url("/v1/events")).bearer_auth("tenant-secret").send().await;
    let mut events = events.expect("events").bytes_stream();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for l in ["x-secret-tenant", "t-mine"] {
        let r = server
            .http
            .post(server.url(&format!("/v1/ledgers/{l}/entries")))
            .bearer_auth("root-secret")
            .body(format!(r#"{{"payload":"{l}"}}"#))
            .send()
            .await
            .expect("append");
        assert_eq!(r.status(), 201);
    }
    let seen = sse_until(&mut watch, |t| t.contains("t-mine")).await;
    assert!(seen.contains(r#""ledger":"t-mine""#), "{seen}");
    let seen_events = sse_until(&mut events, |t| t.contains("ledger.created/t-mine")).await;
    assert!(seen_events.contains("ledger.created/t-mine"), "{seen_events}");
    // Give anything out of scope the time to arrive too, then look.
    let late = sse_within(&mut watch, |_| false, Duration::from_secs(1)).await;
    let late_events = sse_within(&mut events, |_| false, Duration::from_secs(1)).await;
    for text in [&seen, &late, &seen_events, &late_events] {
        assert!(!text.contains("x-secret-tenant"), "an out-of-scope ledger leaked: {text}");
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_tokens_keeps_them_on_a_bad_file_and_ends_a_revoked_tokens_streams() {
    let env = Env::new();
    let file = env.dir.path().join("tokens");
    std::fs::write(&file, "alpha-secret name=alpha\nkept-secret name=kept ledgers=* can=read,watch\n").expect("write");
    let config = env.config("ferry.toml", &format!("[server]\ntoken_file = \"{}\"\n", file.display()));
    let mut server = Server::start(&env.data_dir(), Some(&config)).await;
    let status = |secret: &'static str| {
        let req = server.http.get(server.url("/v1/ledgers")).bearer_auth(secret);
        async move { req.send().await.expect("send").status().as_u16() }
    };
    assert_eq!(status("alpha-secret").await, 200);
    assert_eq!(status("beta-secret").await, 401);
    let watch = server.http.get(server.url("/v1/watch?prefix=")).bearer_auth("alpha-secret").send().await;
    let mut alpha_watch = watch.expect("watch").bytes_stream();
    let watch = server.http.get(server.url("/v1/watch?prefix=")).bearer_auth("kept-secret").send().await;
    let mut kept_watch = watch.expect("watch").bytes_stream();

    let wait_log = |server: &Server, needle: &str, count: usize| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while server.stderr().matches(needle).count() < count {
            assert!(Instant::now() < deadline, "no {needle:?} in the log:\n{}", server.stderr());
            std::thread::sleep(Duration::from_millis(50));
        }
    };

    // A bad file: the old set stays, and the log says why without the line.
    std::fs::write(&file, "beta-secret name=beta\nalpha-secret colour=red\n").expect("write");
    server.sighup();
    wait_log(&server, "the tokens were not reloaded", 1);
    assert!(server.stderr().contains("line 2"), "{}", server.stderr());
    assert!(!server.stderr().contains("beta-secret"), "a secret in the log:\n{}", server.stderr());
    assert_eq!(status("alpha-secret").await, 200);
    assert_eq!(status("beta-secret").await, 401);

    // An empty file never turns auth off.
    std::fs::write(&file, "# nobody\n").expect("write");
    server.sighup();
    wait_log(&server, "the tokens were not reloaded", 2);
    assert_eq!(status("alpha-secret").await, 200);
    assert_eq!(status("not-a-token").await, 401);

    // A good file: alpha is revoked (its stream ends), kept keeps its stream.
    std::fs::write(&file, "beta-secret name=beta\nkept-secret name=kept ledgers=* can=read,watch\n").expect("write");
    server.sighup();
    wait_log(&server, "reloaded the tokens", 1);
    assert_eq!(status("alpha-secret").await, 401);
    assert_eq!(status("beta-secret").await, 200);
    assert_eq!(status("kept-secret").await, 200);
    let ended =
        tokio::time::timeout(Duration::from_secs(10), async { while let Some(Ok(_)) = alpha_watch.next().await {} })
            .await;
    assert!(ended.is_ok(), "the revoked token's watch was not closed");
    let r = server
        .http
        .post(server.url("/v1/ledgers/after/entries"))
        .bearer_auth("beta-secret")
        .body(r#"{"payload":1}"#)
        .send()
        .await
        .expect("append");
    assert_eq!(r.status(), 201);
    let seen = sse_until(&mut kept_watch, |t| t.contains(r#""ledger":"after""#)).await;
    assert!(seen.contains(r#""ledger":"after""#), "the kept token's watch goes on: {seen}");
    assert!(server.is_running());
    server.stop();
}

#[tokio::test]
async fn ferry_token_hash_prints_the_digest_a_secret_sha256_token_accepts() {
    let out = run_to_exit(
        {
            let mut c = ferry();
            c.args(["token", "hash"]);
            c
        },
        Some(b"auditor-secret\n"),
    );
    assert_exit(&out, 0, "ferry token hash");
    let digest = out.stdout.trim().to_owned();
    assert_eq!(digest, "0510bbdc800a8133002bb0d89df94045ad9f85f041755a9ac81de67d0df80fc4");
    let env = Env::new();
    let text = format!(
        "[server]\n[[server.scoped_tokens]]\nname = \"auditor\"\nsecret_sha256 = \"{digest}\"\n\
         ledgers = [\"*\"]\ncan = [\"read\"]\n"
    );
    let server = env.serve_with(&text).await;
    let r = server.http.get(server.url("/v1/ledgers")).bearer_auth("auditor-secret").send().await.expect("send");
    assert_eq!(r.status(), 200);
    let r = server.http.get(server.url("/v1/ledgers")).bearer_auth(&digest).send().await.expect("send");
    assert_eq!(r.status(), 401, "the digest itself is not a token");
    let r = server
        .http
        .post(server.url("/v1/ledgers/a/entries"))
        .bearer_auth("auditor-secret")
        .body(r#"{"payload":1}"#)
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 403, "read-only");
    server.stop();
}
