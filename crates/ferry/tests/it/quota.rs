//! One tenant cannot fill the disk for all (issue #13 item 2b): retention
//! by size (`[retention] max_bytes`, for the whole store and per ledger)
//! and a per-ledger quota (`[storage] max_ledger_bytes`, 507
//! `quota_exceeded`), through a real `ferry serve`. The unit both count in
//! is a ledger's `bytes` as `GET /v1/ledgers/{ledger}` reports it.

use std::path::Path;
use std::time::Duration;

use crate::support::*;

/// A ledger's `bytes`, `first` and `head`.
async fn stats(server: &Server, ledger: &str) -> (u64, u64, u64) {
    let r = server.get(&format!("/v1/ledgers/{ledger}")).await;
    assert_eq!(r.status, 200, "GET /v1/ledgers/{ledger}: {}", r.text);
    let v = r.json();
    let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} is a number in {v}"));
    (n("bytes"), n("first"), n("head"))
}

/// The sizes of a ledger's pack files, in chunk order.
fn pack_sizes(data: &Path, ledger: &str) -> Vec<u64> {
    let dir = data.join("ledgers").join(ledger).join("00000");
    let mut packs: Vec<_> = std::fs::read_dir(&dir)
        .map(|d| {
            d.map(|e| e.expect("dir entry").path()).filter(|p| p.extension().is_some_and(|x| x == "pack")).collect()
        })
        .unwrap_or_default();
    packs.sort();
    packs.iter().map(|p| std::fs::metadata(p).expect("pack metadata").len()).collect()
}

/// Appends `n` entries one by one (64-byte payloads, so every record has
/// the same size).
async fn append_n(server: &Server, ledger: &str, n: usize) {
    for i in 0..n {
        let r = server.append(ledger, format!(r#"{{"payload":{{"i":"{i:04}","pad":"{}"}}}}"#, "x".repeat(40))).await;
        assert_eq!(r.status, 201, "append {i} to {ledger}: {}{}", r.text, r.server_log);
    }
}

/// Waits until every full chunk of the ledger is frozen and its `bytes`
/// are exactly its packs' sizes (nothing hot is left); returns the sizes.
async fn all_frozen(server: &Server, data: &Path, ledger: &str, chunks: usize) -> Vec<u64> {
    let mut sizes = Vec::new();
    eventually(&format!("{ledger}: {chunks} chunks frozen"), async || {
        sizes = pack_sizes(data, ledger);
        sizes.len() == chunks && stats(server, ledger).await.0 == sizes.iter().sum::<u64>()
    })
    .await;
    sizes
}

#[tokio::test]
async fn size_retention_prunes_the_oldest_chunks_across_ledgers_and_per_ledger_and_reads_below_first_answer_410() {
    let env = Env::new();
    let data = env.data_dir();
    let server = env.serve_with("[storage]\nchunk_entries = 4\n").await;
    append_n(&server, "z-old", 12).await;
    let old = all_frozen(&server, &data, "z-old", 3).await;
    // The newer ledger's chunks are younger by a clear margin.
    tokio::time::sleep(Duration::from_millis(50)).await;
    append_n(&server, "a-new", 12).await;
    let new = all_frozen(&server, &data, "a-new", 3).await;
    let total: u64 = old.iter().chain(&new).sum();
    server.stop();

    // The whole store over its limit by less than two chunks of `z-old`:
    // the two oldest chunks of all go, both `z-old`'s (by age, not by
    // name: `a-new` sorts first); `a-new` is untouched.
    let limit = total - old[0] - old[1];
    let config = format!("[storage]\nchunk_entries = 4\n[retention]\nmax_bytes = {limit}\n");
    let server = env.serve_with(&config).await;
    eventually("z-old's two oldest chunks pruned", async || stats(&server, "z-old").await.1 == 9).await;
    assert_eq!(stats(&server, "a-new").await, (new.iter().sum(), 1, 12), "the younger ledger keeps everything");
    let r = server.get("/v1/ledgers/z-old/entries?from=8").await;
    r.assert_error(410, "below_first");
    assert_eq!(r.json()["error"]["first"], 9);
    assert_eq!(server.read_from("z-old", 9).await.len(), 4);
    assert!(!data.join("ledgers/z-old/00000/00000000.pack").exists(), "the pruned pack is gone");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(stats(&server, "z-old").await.1, 9, "nothing more goes once the store is under its limit");
    server.stop();

    // A per-ledger limit, beside an old-style override (a string is
    // `max_age`): `a-new` keeps its two newest chunks.
    let config = format!(
        "[storage]\nchunk_entries = 4\n[retention]\nmax_bytes = {limit}\n[retention.ledgers]\n\
         \"z-old\" = \"3650d\"\n\"a-new\" = {{ max_age = \"3650d\", max_bytes = {} }}\n",
        new[1] + new[2]
    );
    let server = env.serve_with(&config).await;
    eventually("a-new's oldest chunk pruned", async || stats(&server, "a-new").await.1 == 5).await;
    server.get("/v1/ledgers/a-new/entries?from=4").await.assert_error(410, "below_first");
    assert_eq!(stats(&server, "a-new").await, (new[1] + new[2], 5, 12));
    assert_eq!(stats(&server, "z-old").await.1, 9);
    server.stop();
}

#[tokio::test]
async fn size_retention_keeps_what_an_exporter_holds_and_chunks_with_young_idempotency_keys() {
    let env = Env::new();
    let data = env.data_dir();
    // The exporter of `held*` can never deliver (nothing listens there).
    let config = format!(
        "[storage]\nchunk_entries = 4\n[retention]\nmax_bytes = 1\n\
         [retention.ledgers]\nheld = {{ max_bytes = 1 }}\n\
         [[exporters]]\nname = \"h\"\nsink = \"http\"\nledgers = [\"held*\"]\n\
         retry = {{ initial = \"50ms\", max = \"200ms\" }}\n\
         [exporters.config]\nurl = \"http://127.0.0.1:{}/x\"\ntimeout = \"200ms\"\n",
        free_port()
    );
    let server = env.serve_with(&config).await;
    append_n(&server, "held", 12).await;
    for i in 0..12 {
        let r = server.append("keyed", format!(r#"{{"payload":{i},"idempotency_key":"k{i}"}}"#)).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
    append_n(&server, "free", 12).await;
    eventually("free pruned to nothing", async || stats(&server, "free").await == (0, 13, 12)).await;
    eventually("held and keyed frozen", async || {
        pack_sizes(&data, "held").len() == 3 && pack_sizes(&data, "keyed").len() == 3
    })
    .await;
    // Retention passes run every second; give it several.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(stats(&server, "held").await.1, 1, "chunks the exporter has not exported are kept");
    assert_eq!(stats(&server, "keyed").await.1, 1, "chunks with idempotency keys younger than 24 h are kept");
    let r = server.append("keyed", r#"{"payload":0,"idempotency_key":"k0"}"#).await;
    assert_eq!((r.status, r.ids()), (200, vec![1]), "a retried append is still recognised");
    assert_eq!(server.exporter("h").await["ledgers"][0]["state"], "backing_off");
    server.stop();
}

/// The quota used below: room for exactly 10 of `record`'s entries.
const QUOTA_ENTRIES: u64 = 10;

/// One entry of `tenant` (every one encodes to the same size).
fn record(i: u64) -> String {
    format!(r#"{{"payload":{{"i":"{i:04}","pad":"{}"}},"idempotency_key":"k{i:04}"}}"#, "x".repeat(200))
}

/// The size one `record` takes, as `bytes` counts it, measured on a
/// server without a quota.
async fn record_bytes() -> u64 {
    let env = Env::new();
    let server = env.serve().await;
    assert_eq!(server.append("tenant", record(1)).await.status, 201);
    let bytes = stats(&server, "tenant").await.0;
    server.stop();
    bytes
}

#[tokio::test]
async fn the_quota_refuses_one_ledger_with_507_quota_exceeded_changing_nothing_while_others_append() {
    let size = record_bytes().await;
    let quota = QUOTA_ENTRIES * size + size / 2;
    let env = Env::new();
    let server = env.serve_with(&format!("[storage]\nmax_ledger_bytes = {quota}\n")).await;
    for i in 1..=QUOTA_ENTRIES {
        let r = server.append("tenant", record(i)).await;
        assert_eq!((r.status, r.ids()), (201, vec![i]), "{}", r.text);
    }
    let before = server.snapshot().await;
    let r = server.append("tenant", record(QUOTA_ENTRIES + 1)).await;
    r.assert_error(507, "quota_exceeded");
    let message = r.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("tenant") && message.contains(&quota.to_string()), "{message}");
    assert_eq!(r.json()["error"]["max_ledger_bytes"], quota);
    // A batch that would pass the quota is refused whole.
    let batch = format!(r#"{{"entries":[{},{}]}}"#, record(QUOTA_ENTRIES + 1), record(QUOTA_ENTRIES + 2));
    server.append("tenant", batch).await.assert_error(507, "quota_exceeded");
    assert_eq!(server.snapshot().await, before, "a refused append changes nothing");
    assert_eq!(server.get("/readyz").await.status, 200, "a ledger over its quota leaves the server ready");

    // A retry of an append the ledger already holds is answered, not refused.
    let r = server.append("tenant", record(3)).await;
    assert_eq!((r.status, r.ids()), (200, vec![3]), "{}", r.text);
    // Other ledgers append as before, up to their own quota.
    for i in 1..=QUOTA_ENTRIES {
        assert_eq!(server.append("other", record(i)).await.ids(), vec![i]);
    }
    server.append("other", record(QUOTA_ENTRIES + 1)).await.assert_error(507, "quota_exceeded");
    assert_eq!(stats(&server, "tenant").await, (QUOTA_ENTRIES * size, 1, QUOTA_ENTRIES));
    server.stop();
}

#[tokio::test]
async fn a_restart_after_kill_9_keeps_the_byte_accounting_and_the_quota() {
    let size = record_bytes().await;
    let quota = 3 * size + size / 2;
    let env = Env::new();
    let data = env.data_dir();
    // `tenant` fills its quota before its first chunk fills (all hot);
    // `mixed` has two frozen chunks and two hot entries.
    let config = env.config("ferry.toml", &format!("[storage]\nchunk_entries = 4\nmax_ledger_bytes = {quota}\n"));
    let server = Server::start(&data, Some(&config)).await;
    for i in 1..=3 {
        assert_eq!(server.append("tenant", record(i)).await.status, 201);
    }
    server.append("tenant", record(4)).await.assert_error(507, "quota_exceeded");
    // Every `mixed` record has the size of the first (one-digit payloads).
    assert_eq!(server.append("mixed", r#"{"payload":0}"#).await.status, 201);
    let mixed_size = stats(&server, "mixed").await.0;
    for i in 1..10 {
        assert_eq!(server.append("mixed", format!(r#"{{"payload":{i}}}"#)).await.status, 201);
    }
    eventually("mixed: two chunks frozen, two entries hot", async || {
        let packs = pack_sizes(&data, "mixed");
        packs.len() == 2 && stats(&server, "mixed").await.0 == packs.iter().sum::<u64>() + 2 * mixed_size
    })
    .await;
    let before = (stats(&server, "tenant").await, stats(&server, "mixed").await);
    server.kill();

    let server = Server::start(&data, Some(&config)).await;
    assert_eq!((stats(&server, "tenant").await, stats(&server, "mixed").await), before);
    server.append("tenant", record(4)).await.assert_error(507, "quota_exceeded");
    let r = server.append("tenant", record(2)).await;
    assert_eq!((r.status, r.ids()), (200, vec![2]));
    assert_eq!(server.append("mixed", r#"{"payload":10}"#).await.ids(), vec![11]);
    server.stop();
}

#[test]
fn bad_size_limits_stop_serve_naming_the_key_and_line() {
    let env = Env::new();
    let cases: &[(&str, &[&str])] = &[
        ("[storage]\nmax_ledger_bytes = -1\n", &["max_ledger_bytes", "line 2", "negative"]),
        ("[storage]\nmax_ledger_bytes = \"lots\"\n", &["max_ledger_bytes", "line 2", "invalid size"]),
        ("[retention]\nmax_age = \"30d\"\nmax_bytes = -5\n", &["max_bytes", "line 3", "negative"]),
        ("[retention]\nmax_bytes = \"10 parsecs\"\n", &["max_bytes", "line 2", "invalid size"]),
        ("[retention]\nmax_bytes = 1.5\n", &["max_bytes", "line 2"]),
        ("[retention.ledgers]\na = { max_age = \"7d\", max_size = \"1GiB\" }\n", &["max_size", "line 2", "unknown"]),
        ("[retention.ledgers]\na = \"7d\"\nb = { max_bytes = -1 }\n", &["max_bytes", "line 3", "negative"]),
        ("[retention.ledgers]\na = { max_age = \"soon\" }\n", &["max_age", "line 2", "invalid duration"]),
        ("[retention.ledgers]\na = 7\n", &["key a", "line 2", "a max_age like"]),
        ("[retention.ledgers]\n\"Not A Name\" = { max_bytes = \"1MiB\" }\n", &["retention.ledgers", "Not A Name"]),
    ];
    for (text, needles) in cases {
        let config = env.config("bad.toml", text);
        let out = run_to_exit(serve_command(&env.data_dir(), Some(&config), free_port()), None);
        assert_exit(&out, 1, text);
        for needle in *needles {
            assert!(out.stderr.contains(needle), "{text:?}: stderr should contain {needle:?}:\n{}", out.stderr);
        }
        assert!(!env.data_dir().exists(), "{text:?}: storage was opened");
    }
}
