//! `GET /v1/health` (a stuck pipeline named with its ledger and age, from
//! memory), `max_lag` in the config and in `--exporter` JSON, and the paged
//! listings (`GET /v1/ledgers?after=&limit=`, an exporter's ledgers), with
//! their bad parameters refused precisely.

use std::net::SocketAddr;

use serde_json::Value;

use crate::support::{Env, Server, Webhook, free_port, now_ms, run_to_exit, serve_command};

fn hooks(addr: SocketAddr, max_lag: &str) -> String {
    format!(
        r#"
[[exporters]]
name = "hooks"
sink = "http"
max_lag = "{max_lag}"
batch = {{ max_entries = 100, linger = "0ms" }}
retry = {{ initial = "20ms", max = "100ms" }}
[exporters.config]
url = "http://{addr}/in"
timeout = "2s"
"#
    )
}

async fn health(s: &Server) -> Value {
    let r = s.get("/v1/health").await;
    assert_eq!(r.status, 200, "{}", r.text);
    r.json()
}

#[tokio::test]
async fn a_stuck_exporter_is_named_with_its_ledger_and_age_and_clears_when_it_catches_up() {
    let env = Env::new();
    let hook = Webhook::start(false).await;
    let s = env.serve_with(&hooks(hook.addr, "300ms")).await;

    let h = health(&s).await;
    assert_eq!((h["status"].as_str(), &h["reason"]), (Some("ok"), &Value::Null), "{h}");
    assert_eq!(h["exporters"][0]["name"], "hooks");
    assert_eq!(h["exporters"][0]["max_lag_ms"], 300);

    hook.set_down(true);
    let before = now_ms();
    for ledger in ["audit", "orders"] {
        assert_eq!(s.append(ledger, r#"{"entries":[{"payload":1},{"payload":2}]}"#).await.status, 201);
    }
    let mut stuck = Value::Null;
    crate::support::eventually("health names both ledgers stuck", async || {
        stuck = health(&s).await;
        stuck["status"] == "stuck" && stuck["exporters"][0]["stuck_ledgers"] == 2
    })
    .await;
    let asked = now_ms();
    let e = &stuck["exporters"][0];
    assert_eq!(e["lag"], 4, "{stuck}");
    let names: Vec<&str> = e["stuck"].as_array().unwrap().iter().map(|l| l["ledger"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2);
    assert!(names.contains(&"audit") && names.contains(&"orders"), "{stuck}");
    for l in e["stuck"].as_array().unwrap() {
        let age = l["age_ms"].as_u64().unwrap();
        // Stamped after `before`: the age can be no more than that.
        assert!(age > 300 && age <= asked - before, "{l}");
        assert_eq!(l["lag"], 2);
        assert_eq!(l["state"], "backing_off", "{l}");
        assert!(l["last_error"].as_str().unwrap().contains("down for maintenance"), "{l}");
    }
    // The exporter's own status says the same, per ledger and in total.
    let status = s.exporter("hooks").await;
    assert_eq!((status["stuck_ledgers"].as_u64(), status["lag"].as_u64()), (Some(2), Some(4)), "{status}");
    assert!(status["ledgers"].as_array().unwrap().iter().all(|l| l["stuck"] == true));

    hook.set_down(false);
    let mut ok = Value::Null;
    crate::support::eventually("health is ok again", async || {
        ok = health(&s).await;
        ok["status"] == "ok"
    })
    .await;
    assert_eq!(ok["exporters"][0]["stuck"], Value::Array(vec![]), "{ok}");
    assert_eq!(ok["exporters"][0]["oldest_unexported_age_ms"], 0, "{ok}");
    let status = s.exporter("hooks").await;
    assert!(status["ledgers"].as_array().unwrap().iter().all(|l| l["oldest_unexported_age_ms"] == 0), "{status}");
}

#[tokio::test]
async fn without_max_lag_a_lagging_exporter_is_never_stuck_and_health_needs_the_admin_scope() {
    let env = Env::new();
    let hook = Webhook::start(true).await;
    let config = "[server]\ntokens = [\"root-secret\"]\n[[server.scoped_tokens]]\nname = \"reader\"\n\
                  secret = \"reader-secret\"\nledgers = [\"*\"]\ncan = [\"read\"]\n"
        .to_owned()
        + &hooks(hook.addr, "1ms").replace("max_lag = \"1ms\"\n", "");
    let s = env.serve_with(&config).await;
    let append = s.http.post(s.url("/v1/ledgers/audit/entries")).bearer_auth("root-secret").body(r#"{"payload":1}"#);
    assert_eq!(s.send(append).await.status, 201);
    let get = |token: &'static str| s.http.get(s.url("/v1/health")).bearer_auth(token);
    let mut h = Value::Null;
    crate::support::eventually("the exporter has tried and failed", async || {
        h = s.send(get("root-secret")).await.json();
        h["exporters"][0]["lag"] == 1 && h["exporters"][0]["oldest_unexported_age_ms"].as_u64() > Some(0)
    })
    .await;
    assert_eq!((h["status"].as_str(), &h["exporters"][0]["max_lag_ms"]), (Some("ok"), &Value::Null), "{h}");
    assert_eq!(h["exporters"][0]["stuck_ledgers"], 0);
    s.get("/v1/health").await.assert_error(401, "unauthorized");
    s.send(get("reader-secret")).await.assert_error(403, "forbidden");
}

#[test]
fn a_bad_max_lag_stops_serve_naming_the_key() {
    let env = Env::new();
    let bad = env.config("bad.toml", "[[exporters]]\nname = \"out\"\nsink = \"stdout\"\nmax_lag = \"soon\"\n");
    let out = run_to_exit(serve_command(&env.data_dir(), Some(&bad), free_port()), None);
    assert!(!out.status.success() && out.stderr.contains("max_lag"), "a max_lag that is no duration: {}", out.stderr);
    assert!(out.stderr.contains("line 4"), "{}", out.stderr);
    let mut cmd = serve_command(&env.data_dir(), None, free_port());
    cmd.args(["--exporter", r#"out=stdout:{"max_lag":[]}"#]);
    let flag = run_to_exit(cmd, None);
    assert!(!flag.status.success() && flag.stderr.contains("max_lag"), "a max_lag of the wrong type: {}", flag.stderr);
}

#[tokio::test]
async fn ledgers_list_in_pages_that_a_client_follows_and_bad_pages_are_refused() {
    let env = Env::new();
    let s = env
        .serve_with(
            "[server]\ntokens = [\"root-secret\"]\n[[server.scoped_tokens]]\nname = \"a\"\n\
             secret = \"a-secret\"\nledgers = [\"a*\"]\ncan = [\"read\"]\n",
        )
        .await;
    let client = s.client().with_token("root-secret");
    let mut names = Vec::new();
    for i in 0..1_205 {
        let name = if i % 2 == 0 { format!("a{i:04}") } else { format!("b{i:04}") };
        names.push(name.clone());
    }
    // Created concurrently: 1,205 one-by-one round trips would be slow.
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in names.chunks(100) {
        let (client, chunk) = (client.clone(), chunk.to_vec());
        tasks.spawn(async move {
            for n in chunk {
                client.create_ledger(&n).await.expect("create");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    names.sort();

    // The default page is 1,000: two pages, the client follows them.
    let first = client.ledgers_page(None, None).await.expect("page");
    assert_eq!(first.ledgers.len(), 1_000);
    assert_eq!(first.next.as_deref(), Some(names[999].as_str()));
    let all: Vec<String> = client.ledgers().await.expect("all").into_iter().map(|l| l.name).collect();
    assert_eq!(all, names, "every ledger once, in name order");

    // Small pages, followed by hand.
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = client.ledgers_page(after.as_deref(), Some(97)).await.expect("page");
        assert!(page.ledgers.len() <= 97);
        seen.extend(page.ledgers.into_iter().map(|l| l.name));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, names);

    // A scoped token's pages hold only its ledgers, and are full ones.
    let scoped = s.client().with_token("a-secret");
    let page = scoped.ledgers_page(None, Some(10)).await.expect("page");
    let expected: Vec<&String> = names.iter().filter(|n| n.starts_with('a')).take(10).collect();
    assert_eq!(page.ledgers.iter().map(|l| &l.name).collect::<Vec<_>>(), expected);
    let theirs = scoped.ledgers().await.expect("all of a*");
    assert_eq!(theirs.len(), 603);
    assert!(theirs.iter().all(|l| l.name.starts_with('a')));

    for (query, says) in [
        ("limit=0", "limit"),
        ("limit=10001", "limit"),
        ("limit=x", "limit"),
        ("after=..%2Fetc", "after"),
        ("after=a&after=b", "after"),
        ("page=2", "page"),
    ] {
        let r = s.send(s.http.get(s.url(&format!("/v1/ledgers?{query}"))).bearer_auth("root-secret")).await;
        r.assert_error(400, "invalid_query");
        assert!(r.text.contains(says), "{query}: {}", r.text);
    }
    let r = s.send(s.http.get(s.url("/v1/exporters/nope?limit=0")).bearer_auth("root-secret")).await;
    r.assert_error(400, "invalid_query");
}
