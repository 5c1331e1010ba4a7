//! Packs, retention and ledger deletion through a real `ferry serve`.
//! (The kill -9 loop with constant freezing and pruning is in crash.rs.)

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_prunes_old_chunks_and_reads_below_first_answer_410() {
    let env = Env::new();
    let server = env.serve_with("[storage]\nchunk_entries = 4\n[retention]\nmax_age = \"1s\"\n").await;
    for i in 0..10 {
        assert_eq!(server.append("old", format!(r#"{{"payload":{i}}}"#)).await.status, 201);
    }
    let pack = env.data_dir().join("ledgers/old/00000/00000000.pack");
    eventually("chunk 0 frozen", async || pack.exists()).await;
    eventually("chunks 0 and 1 pruned", async || server.first_and_head("old").await == Some((9, 10))).await;
    assert!(!pack.exists(), "the pruned pack is gone");
    let r = server.get("/v1/ledgers/old/entries?from=1").await;
    r.assert_error(410, "below_first");
    assert_eq!(r.json()["error"]["first"], 9);
    assert_eq!(server.read_from("old", 9).await.len(), 2, "entries 9 and 10 stay (chunk 2 is not full)");
    // Issue #13 item 8: a watch says when it cannot deliver what was asked,
    // as reads do: from below First is 410, not a silent later start; a
    // resume token past the head or naming a ledger twice is 400.
    let w = server.get("/v1/watch?from=old:1").await;
    w.assert_error(410, "below_first");
    assert_eq!(w.json()["error"]["first"], 9);
    let token = |t: &str| server.http.get(server.url("/v1/watch")).header("last-event-id", t.to_owned());
    for bad in ["1/old:12", "1/old:9,old:10"] {
        server.send(token(bad)).await.assert_error(400, "invalid_resume_token");
    }
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_files_and_metadata_and_the_name_starts_over() {
    let env = Env::new();
    let server = env.serve_with("[storage]\nchunk_entries = 4\n").await;
    for i in 0..9 {
        server.append("gone", format!(r#"{{"payload":{i},"idempotency_key":"k{i}"}}"#)).await;
    }
    server.append("kept", r#"{"payload":1}"#).await;
    let dir = env.data_dir().join("ledgers/gone");
    eventually("two chunks frozen", async || dir.join("00000/00000001.pack").exists()).await;

    let r = server.send(server.http.delete(server.url("/v1/ledgers/gone"))).await;
    assert_eq!(r.status, 204, "{}", r.text);
    assert!(!dir.exists(), "the ledger's directory is gone");
    server.get("/v1/ledgers/gone").await.assert_error(404, "ledger_not_found");
    server.send(server.http.delete(server.url("/v1/ledgers/gone"))).await.assert_error(404, "ledger_not_found");
    assert_eq!(server.read_all("kept").await.len(), 1, "other ledgers are untouched");

    // The name starts over, and an old idempotency key is new to it.
    let r = server.append("gone", r#"{"payload":"again","idempotency_key":"k0"}"#).await;
    assert_eq!((r.status, r.ids()), (201, vec![1]));
    server.stop();
    let server = env.serve_with("[storage]\nchunk_entries = 4\n").await;
    let lines = server.read_all("gone").await;
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains(r#""payload":"again""#), "{}", lines[0]);
    server.stop();
}
