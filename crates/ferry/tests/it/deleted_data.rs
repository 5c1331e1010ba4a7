//! Issue #13 item 11: once `DELETE /v1/ledgers/{ledger}` has answered, no
//! file under the data directory holds the deleted ledger's payloads, keys
//! or idempotency keys (`docs/durability.md`, "Deleting a ledger"), and the
//! other ledgers lose nothing, across a `kill -9` too.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::{Env, Server, now_ms};

/// 4-entry chunks: the deleted ledger has packs (removed by the sweep),
/// records of frozen chunks still sitting dead in the WAL, and live hot
/// records, all in the segment being written.
const CONFIG: &str = "[storage]\nchunk_entries = 4\n";

/// Every file under `dir` whose bytes contain `needle`, with the offset of
/// the first occurrence.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<(PathBuf, usize)> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for item in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("list {}: {e}", d.display())) {
            let path = item.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
                continue;
            }
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            if let Some(at) = bytes.windows(needle.len()).position(|w| w == needle) {
                found.push((path, at));
            }
        }
    }
    found
}

async fn wait_for_file(path: &Path, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{what}: {} did not appear within 30 s", path.display());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The payloads of every entry of a ledger, in id order, with their ids.
async fn payloads(server: &Server, ledger: &str) -> Vec<(u64, serde_json::Value)> {
    let r = server.get(&format!("/v1/ledgers/{ledger}/entries?from=1&limit=1000")).await;
    assert_eq!(r.status, 200, "read {ledger}: {}", r.text);
    let entries = r.json()["entries"].as_array().expect("entries").clone();
    entries.into_iter().map(|e| (e["id"].as_u64().expect("id"), e["payload"].clone())).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deleted_ledgers_data_is_in_no_file_once_the_delete_answers_and_the_others_lose_nothing() {
    let env = Env::new();
    let data = env.data_dir();
    let server = env.serve_with(CONFIG).await;
    let marker = format!("deleted-marker-{}-{}", std::process::id(), now_ms());

    // A's batches and B's entries interleave in the WAL, so A's records
    // share a segment (and its pages) with records that must survive.
    let mut kept = Vec::new();
    for round in 0..5u64 {
        let a = format!(
            r#"{{"entries":[{{"payload":{{"secret":"{marker}-{round}a"}},"key":"{marker}-key-{round}","idempotency_key":"{marker}-idem-{round}"}},{{"payload":"{marker}-{round}b"}}]}}"#
        );
        assert_eq!(server.append("gone", a).await.status, 201, "append to gone");
        for i in 0..3 {
            let n = round * 3 + i;
            let b = format!(r#"{{"payload":{{"n":{n},"text":"kept-{n}"}},"key":"k{n}"}}"#);
            let r = server.append("kept", b).await;
            assert_eq!(r.ids(), [n + 1], "append to kept: {}", r.text);
            kept.push((n + 1, serde_json::json!({"n": n, "text": format!("kept-{n}")})));
        }
    }
    // Chunks 0 and 1 of `gone` are frozen: their WAL records are dead, but
    // still in the segment being written, as are the hot ids 9 and 10.
    wait_for_file(&data.join("ledgers/gone/00000/00000001.pack"), "gone's chunk 1 frozen").await;
    assert!(
        files_containing(&data.join("hot"), marker.as_bytes()).len() == 1,
        "the marker is in the WAL before the deletion (else this test proves nothing)"
    );

    let r = server.send(server.http.delete(server.url("/v1/ledgers/gone"))).await;
    assert_eq!(r.status, 204, "DELETE /v1/ledgers/gone: {}", r.text);
    let left = files_containing(&data, marker.as_bytes());
    assert!(left.is_empty(), "the deleted ledger's data is still in {left:?} after the DELETE answered");
    assert_eq!(payloads(&server, "kept").await, kept, "the other ledger is intact");

    // The name is taken again: the new ledger's entries are not scrubbed.
    let reborn = format!("reborn-{}", now_ms());
    assert_eq!(server.append("gone", format!(r#"{{"payload":"{reborn}"}}"#)).await.ids(), [1]);

    server.kill();
    let server = env.serve_with(CONFIG).await;
    assert_eq!(payloads(&server, "kept").await, kept, "the other ledger is intact after kill -9");
    assert_eq!(
        payloads(&server, "gone").await,
        [(1, serde_json::json!(reborn))],
        "the ledger created again under the name has its one entry"
    );
    let left = files_containing(&data, marker.as_bytes());
    assert!(left.is_empty(), "the deleted ledger's data came back in {left:?}");
}
