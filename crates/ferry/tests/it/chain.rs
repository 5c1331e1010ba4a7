//! The per-ledger hash chain (issue #21) through a real `ferry serve`: every
//! entry's `hash` is recomputed here from the construction `docs/format.md`
//! documents, with the `sha2` crate and nothing of ferry's code, over hot
//! and frozen ranges, across a kill -9, after retention (from
//! `first_prev_hash`); the head route and the checkpoint events anchor it;
//! `ferry verify` names the ledger and id where a pack was edited.

use std::path::Path;

use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::support::*;
use crate::tools::{pack, verify};

/// Every ledger chained; small chunks, so a dozen entries span packs and
/// the WAL.
const CONFIG: &str = "[storage]\nhash_chain = [\"*\"]\nchunk_entries = 4\ncheckpoint_every = 5\n";

/// `h_0 = SHA-256("ferry-chain:" ‖ ledger ‖ ":" ‖ u64_be(incarnation))`.
fn genesis(ledger: &str, incarnation: u64) -> [u8; 32] {
    let mut sha = Sha256::new();
    sha.update(b"ferry-chain:");
    sha.update(ledger.as_bytes());
    sha.update(b":");
    sha.update(incarnation.to_be_bytes());
    sha.finalize().into()
}

/// `h_n = SHA-256(h_{n-1} ‖ u64_be(id) ‖ u64_be(ts) ‖ u32_be(len key) ‖ key
/// ‖ u32_be(len payload) ‖ payload)`, the payload as the line carries it.
fn link(prev: &[u8; 32], line: &str) -> [u8; 32] {
    let e = parse_line(line);
    let key = e.key.as_deref().unwrap_or("").as_bytes();
    let payload = e.payload.get().as_bytes();
    let mut sha = Sha256::new();
    sha.update(prev);
    sha.update(e.id.to_be_bytes());
    sha.update(e.ts.to_be_bytes());
    sha.update((key.len() as u32).to_be_bytes());
    sha.update(key);
    sha.update((payload.len() as u32).to_be_bytes());
    sha.update(payload);
    sha.finalize().into()
}

/// Walks `lines` from `prev`, checking each line's `hash` and that ids
/// follow on from `first`; returns the last hash.
fn check_chain(prev: [u8; 32], first: u64, lines: &[String]) -> [u8; 32] {
    let mut prev = prev;
    for (i, line) in lines.iter().enumerate() {
        let e = parse_line(line);
        assert_eq!(e.id, first + i as u64, "ids are dense: {line}");
        let expected = link(&prev, line);
        assert_eq!(e.hash.as_deref(), Some(hex::encode(expected).as_str()), "the hash of id {}: {line}", e.id);
        prev = expected;
    }
    prev
}

fn info(server_info: &Value) -> (u64, u64, String) {
    (
        server_info["incarnation"].as_u64().expect("incarnation"),
        server_info["first"].as_u64().expect("first"),
        server_info["first_prev_hash"].as_str().expect("first_prev_hash").to_owned(),
    )
}

async fn append_n(server: &Server, ledger: &str, ids: std::ops::RangeInclusive<u64>) {
    for i in ids {
        let body = if i % 3 == 0 {
            format!(r#"{{"payload":{{"n":{i},"s":"ünï \"q\""}}}}"#)
        } else {
            format!(r#"{{"key":"k-{i}","payload":[{i}, 1.50, {{"a" : null}}]}}"#)
        };
        assert_eq!(server.append(ledger, body).await.ids(), [i]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_entry_carries_a_hash_recomputed_independently_across_packs_and_a_kill_9() {
    let env = Env::new();
    let server = env.serve_with(CONFIG).await;
    let events =
        server.http.get(server.url("/v1/events?prefix=ledger.checkpoint/audit/")).send().await.expect("events");
    assert_eq!(events.status(), 200);
    append_n(&server, "audit", 1..=10).await;
    // A batch: one request, three entries, one chain.
    let batch = r#"{"entries":[{"payload":11},{"key":"k","payload":"twelve"},{"payload":{"n":13}}]}"#;
    assert_eq!(server.append("audit", batch).await.ids(), [11, 12, 13]);
    eventually("chunks 0..=2 frozen", async || pack(&env.data_dir(), "audit", 2).exists()).await;

    let ledger = server.get("/v1/ledgers/audit").await.json();
    let (incarnation, first, first_prev) = info(&ledger);
    assert_eq!((first, first_prev.as_str()), (1, hex::encode(genesis("audit", incarnation)).as_str()));
    let lines = server.read_all("audit").await;
    assert_eq!(lines.len(), 13);
    let last = check_chain(genesis("audit", incarnation), 1, &lines);
    let head = server.get("/v1/ledgers/audit/head").await.json();
    assert_eq!(head, serde_json::json!({"id": 13, "hash": hex::encode(last)}));

    // The JSON form of a single-entry read carries it too.
    let one = server.get("/v1/ledgers/audit/entries?from=5&limit=1").await.json();
    assert_eq!(one["entries"][0]["hash"], parse_line(&lines[4]).hash.expect("hash").as_str());

    // A checkpoint at ids 5 and 10: `{ledger, id, hash}`.
    let mut body = String::new();
    let mut stream = events;
    let checkpoints = |body: &str| -> Vec<Value> {
        body.lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| serde_json::from_str::<Value>(d.trim()).expect("event JSON"))
            .filter(|v| v["kind"] == "ledger.checkpoint")
            .map(|v| v["data"].clone())
            .collect()
    };
    while checkpoints(&body).len() < 2 {
        let chunk = tokio::time::timeout(std::time::Duration::from_secs(20), stream.chunk())
            .await
            .expect("checkpoint events in time")
            .expect("event stream")
            .expect("stream open");
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    let expected: Vec<Value> = [5usize, 10]
        .iter()
        .map(|&id| serde_json::json!({"ledger": "audit", "id": id, "hash": parse_line(&lines[id - 1]).hash}))
        .collect();
    assert_eq!(checkpoints(&body), expected, "a checkpoint at every 5th id");

    // kill -9, start again: the chain goes on from the stored head hash.
    server.kill();
    let server = env.serve_with(CONFIG).await;
    assert_eq!(server.get("/v1/ledgers/audit/head").await.json()["hash"], hex::encode(last));
    append_n(&server, "audit", 14..=15).await;
    let lines = server.read_all("audit").await;
    let last = check_chain(genesis("audit", incarnation), 1, &lines);
    assert_eq!(
        server.get("/v1/ledgers/audit/head").await.json(),
        serde_json::json!({"id": 15, "hash": hex::encode(last)})
    );
    server.stop();
    assert_exit(&verify(&env.data_dir()), 0, "verify of a chained data directory");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_retention_the_rest_verifies_from_first_prev_hash() {
    let env = Env::new();
    let config = format!("{CONFIG}[retention]\nmax_age = \"1s\"\n");
    let server = env.serve_with(&config).await;
    append_n(&server, "old", 1..=10).await;
    let all = server.read_all("old").await;
    eventually("chunks 0 and 1 pruned", async || server.first_and_head("old").await == Some((9, 10))).await;
    let (_, first, first_prev) = info(&server.get("/v1/ledgers/old").await.json());
    assert_eq!(first, 9);
    assert_eq!(Some(first_prev.clone()), parse_line(&all[7]).hash, "the hash of id 8, the entry before First");
    let prev: [u8; 32] = hex::decode(&first_prev).expect("hex").try_into().expect("32 bytes");
    let rest = server.read_from("old", 9).await;
    check_chain(prev, 9, &rest);
    // Recovered from the catalog after a restart too.
    server.stop();
    let server = env.serve_with(&config).await;
    assert_eq!(info(&server.get("/v1/ledgers/old").await.json()).2, first_prev);
    // A backup of what retention left restores from First, chained from
    // the hash before it.
    let backup = env.dir.path().join("backup");
    let mut create = ferry();
    create.args(["backup", "create"]).arg(&backup).args(["--server", &server.base]);
    assert_exit(&run_to_exit(create, None), 0, "backup of a pruned ledger");
    server.stop();
    let target = Env::new();
    let mut restore = ferry();
    restore.args(["backup", "restore"]).arg(&backup).arg("--data-dir").arg(target.data_dir());
    restore.arg("--config").arg(target.config("t.toml", CONFIG));
    assert_exit(&run_to_exit(restore, None), 0, "restore of a pruned ledger");
    let restored = target.serve_with(CONFIG).await;
    assert_eq!(info(&restored.get("/v1/ledgers/old").await.json()).1, 9);
    assert_eq!(info(&restored.get("/v1/ledgers/old").await.json()).2, first_prev);
    assert_eq!(restored.read_from("old", 9).await, rest);
    check_chain(prev, 9, &restored.read_from("old", 9).await);
    restored.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledgers_outside_hash_chain_have_no_hash_and_a_bad_glob_is_refused() {
    let env = Env::new();
    let server = env.serve_with("[storage]\nhash_chain = [\"audit*\"]\n").await;
    server.append("audit.eu", r#"{"payload":1}"#).await;
    server.append("metrics", r#"{"payload":1}"#).await;
    assert!(parse_line(&server.read_all("audit.eu").await[0]).hash.is_some());
    assert!(parse_line(&server.read_all("metrics").await[0]).hash.is_none());
    let ledger = server.get("/v1/ledgers/metrics").await.json();
    assert!(ledger.get("first_prev_hash").is_none(), "{ledger}");
    assert_eq!(server.get("/v1/ledgers/metrics/head").await.json(), serde_json::json!({"id": 1, "hash": null}));
    server.get("/v1/ledgers/nope/head").await.assert_error(404, "ledger_not_found");
    server.stop();

    let config = env.config("bad.toml", "[storage]\nhash_chain = [\"[audit\"]\n");
    let out = run_to_exit(serve_command(&env.data_dir(), Some(&config), free_port()), None);
    assert!(!out.status.success(), "serve with a bad hash_chain glob:\n{}", out.stderr);
    assert!(out.stderr.contains("hash_chain") && out.stderr.contains("[audit"), "{}", out.stderr);
}

/// Rewrites chunk `chunk` of `ledger` with one payload byte changed and
/// every checksum computed again (record CRC-32C, zstd frame, trailer, and
/// the catalog's length and SHA-256): only the chain can tell.
fn edit_payload_in_pack(data: &Path, ledger: &str, chunk: u64, id: u64) {
    use ferry_format::pack::{PackWriter, decode_pack};
    let path = pack(data, ledger, chunk);
    let bytes = std::fs::read(&path).expect("read the pack");
    let mut records = Vec::new();
    let decoded = decode_pack(&bytes, |r| {
        let mut payload = r.payload.to_vec();
        if r.id == id {
            let at = payload.iter().position(u8::is_ascii_digit).expect("a digit in the payload");
            payload[at] = if payload[at] == b'9' { b'8' } else { payload[at] + 1 };
        }
        records.push((r.id, r.ts, r.key.map(str::to_owned), r.hash, payload));
    })
    .expect("decode the pack");
    let mut writer = PackWriter::new(Vec::new(), decoded.header).expect("pack header");
    for (rid, ts, key, hash, payload) in &records {
        let record = ferry_format::wal::WalRecord {
            ledger,
            id: *rid,
            ts: *ts,
            key: key.as_deref(),
            idempotency_key: None,
            batch_continues: false,
            group_start: false,
            relocated: false,
            hash: *hash,
            payload,
        };
        writer.push(&record).expect("push");
    }
    let (bytes, len, _) = writer.finish().expect("finish");
    std::fs::write(&path, &bytes).expect("write the edited pack");
    // The catalog's length and digest of the pack, to match.
    use ferry_store::Catalog as _;
    let catalog = ferry_store::RedbCatalog::open(&data.join("catalog")).expect("open the catalog");
    let key = ferry_format::keys::CatalogKey::Chunk(ferry_core::LedgerName::parse(ledger).expect("ledger"), chunk);
    let mut value: Value = serde_json::from_slice(&catalog.get(&key).expect("get").expect("chunk key")).expect("json");
    value["len"] = len.into();
    value["sha256"] = hex::encode(Sha256::digest(&bytes)).into();
    let op = ferry_store::CatalogOp::Put(key, serde_json::to_vec(&value).expect("json"));
    catalog.commit(&[op]).expect("commit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_ledger_and_id_of_a_payload_edited_inside_a_pack() {
    let env = Env::new();
    let server = env.serve_with(CONFIG).await;
    append_n(&server, "audit", 1..=10).await;
    append_n(&server, "other", 1..=2).await;
    eventually("chunk 1 frozen", async || pack(&env.data_dir(), "audit", 1).exists()).await;
    server.stop();
    assert_exit(&verify(&env.data_dir()), 0, "verify before the edit");

    edit_payload_in_pack(&env.data_dir(), "audit", 1, 6);
    let out = verify(&env.data_dir());
    assert_exit(&out, 1, "verify after a payload was edited");
    assert!(out.stdout.contains("ledger audit: the hash chain breaks at id 6"), "{}", out.stdout);
    assert_eq!(out.stdout.matches("fault:").count(), 1, "only the chain catches it:\n{}", out.stdout);
}

/// `ferry backup …` / `ferry chain …` with these arguments.
fn cli(args: &[&std::ffi::OsStr]) -> Exited {
    let mut cmd = ferry();
    cmd.args(args);
    run_to_exit(cmd, None)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_ledger_keeps_its_chain_and_a_backup_proves_an_anchored_head() {
    use std::ffi::OsStr;
    let env = Env::new();
    let a = env.serve_with(CONFIG).await;
    // Incarnation 2 of `audit`: its chain starts from a genesis no fresh
    // node would give it.
    append_n(&a, "audit", 1..=3).await;
    assert_eq!(a.send(a.http.delete(a.url("/v1/ledgers/audit"))).await.status, 204);
    append_n(&a, "audit", 1..=14).await;
    let (incarnation, _, _) = info(&a.get("/v1/ledgers/audit").await.json());
    let anchor = a.get("/v1/ledgers/audit/head").await.json();
    let backup = env.dir.path().join("backup");
    let out = cli(&[
        OsStr::new("backup"),
        OsStr::new("create"),
        backup.as_os_str(),
        OsStr::new("--server"),
        OsStr::new(&a.base),
    ]);
    assert_exit(&out, 0, "backup");
    // The anchor kept outside ferry proves the backup.
    let expect = format!("{}:{}", anchor["id"], anchor["hash"].as_str().unwrap());
    let prove = |expect: &str| {
        cli(&[
            OsStr::new("chain"),
            OsStr::new("verify"),
            OsStr::new("--from-backup"),
            backup.as_os_str(),
            OsStr::new("--expect"),
            OsStr::new(expect),
        ])
    };
    assert_exit(&prove(&expect), 0, "the anchored head");
    let checkpoint = format!("5:{}", parse_line(&a.read_all("audit").await[4]).hash.unwrap());
    assert_exit(&prove(&checkpoint), 0, "a checkpoint inside the backup");
    let out = prove(&format!("14:{}", "0".repeat(64)));
    assert_exit(&out, 1, "a head the backup does not have");
    assert!(out.stderr.contains("ledger audit id 14: the backup's chain hash is"), "{}", out.stderr);

    // Restored into a fresh node, the chain recomputes from the source
    // incarnation's genesis, and the head is the anchored one.
    let b_env = Env::new();
    let b = b_env.serve().await;
    let out = cli(&[
        OsStr::new("backup"),
        OsStr::new("restore"),
        backup.as_os_str(),
        OsStr::new("--server"),
        OsStr::new(&b.base),
    ]);
    assert_exit(&out, 0, "restore");
    let lines = b.read_all("audit").await;
    assert_eq!(lines, a.read_all("audit").await);
    let last = check_chain(genesis("audit", incarnation), 1, &lines);
    assert_eq!(b.get("/v1/ledgers/audit/head").await.json(), serde_json::json!({"id": 14, "hash": hex::encode(last)}));
    assert_eq!(b.get("/v1/ledgers/audit/head").await.json(), anchor);
    // And it goes on from there, across a restart, for `ferry verify` too.
    append_n(&b, "audit", 15..=16).await;
    b.stop();
    let b = b_env.serve().await;
    check_chain(genesis("audit", incarnation), 1, &b.read_all("audit").await);
    b.stop();
    assert_exit(&verify(&b_env.data_dir()), 0, "verify of the restored node");
}
