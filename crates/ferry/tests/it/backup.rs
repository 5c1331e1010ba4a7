//! `ferry backup create | verify | restore` (SPEC §7) against real servers
//! and data directories: a backup checks with `sha256sum -c` and `jq`
//! alone, restores exactly (ids, ts, keys, idempotency keys, chain hashes),
//! merges into a prefix and names a conflict, continues through
//! incremental backups, is consistent with its pin while appends, freezes,
//! retention and an exporter run, refuses every kind of tampering naming
//! the file, and a killed one leaves no manifest and a pin that expires.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::{Env, Exited, Server, assert_exit, eventually, ferry, run_to_exit};

const CHAINED: &str = "[storage]\nchunk_entries = 64\nhash_chain = [\"*\"]\n";

fn backup<I, S>(args: I) -> Exited
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = ferry();
    cmd.arg("backup").args(args);
    run_to_exit(cmd, None)
}

/// Appends `n` entries (keys and idempotency keys `{ledger}-{i}`) in batches.
async fn fill(server: &Server, ledger: &str, from: usize, n: usize) {
    for start in (from..from + n).step_by(500) {
        let end = (start + 500).min(from + n);
        let entries: Vec<String> = (start..end)
            .map(|i| {
                format!(
                    r#"{{"key":"k-{}","idempotency_key":"{ledger}-{i}","payload":{{"i":{i},"text":"{}"}}}}"#,
                    i % 7,
                    "x".repeat(i % 50)
                )
            })
            .collect();
        let r = server.append(ledger, format!(r#"{{"entries":[{}]}}"#, entries.join(","))).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
}

/// Appends `n` entries without idempotency keys (a chunk holding keys is
/// kept for their 24 h window, whatever retention says).
async fn fill_plain(server: &Server, ledger: &str, n: usize) {
    for start in (0..n).step_by(500) {
        let entries: Vec<String> =
            (start..(start + 500).min(n)).map(|i| format!(r#"{{"key":"k","payload":{{"i":{i}}}}}"#)).collect();
        let r = server.append(ledger, format!(r#"{{"entries":[{}]}}"#, entries.join(","))).await;
        assert_eq!(r.status, 201, "{}", r.text);
    }
}

/// A ledger's entries as the server reads them, parsed.
async fn entries(server: &Server, ledger: &str) -> Vec<Value> {
    let (first, head) = server.first_and_head(ledger).await.expect("the ledger exists");
    let lines = server.read_from(ledger, first).await;
    assert_eq!(lines.len() as u64, head + 1 - first, "{ledger}");
    lines.iter().map(|l| serde_json::from_str(l).expect("an entry line")).collect()
}

/// A backup's lines of one ledger, parsed, without their idempotency keys.
fn backup_entries(dir: &Path, ledger: &str) -> Vec<Value> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("ledgers").join(ledger))
        .map(|d| d.map(|e| e.unwrap().path()).filter(|p| p.extension() == Some(OsStr::new("jsonl"))).collect())
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(&f).unwrap().lines() {
            let mut v: Value = serde_json::from_str(line).expect("a backup line");
            v.as_object_mut().unwrap().remove("idempotency_key");
            out.push(v);
        }
    }
    out
}

fn manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("MANIFEST.json")).expect("MANIFEST.json")).unwrap()
}

fn sh(dir: &Path, script: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(script).current_dir(dir).output().expect("run sh");
    assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_checks_with_sha256sum_and_jq_and_restores_exactly_through_an_incremental_chain() {
    let env = Env::new();
    let a = env.serve_with(CHAINED).await;
    fill(&a, "audit", 0, 1_050).await;
    fill(&a, "orders", 0, 30).await;
    assert_eq!(a.put("/v1/ledgers/idle").await.status, 201);
    let full = env.dir.path().join("full");
    let out = backup([OsStr::new("create"), full.as_os_str(), OsStr::new("--server"), OsStr::new(&a.base)]);
    assert_exit(&out, 0, "backup create");
    let report: Value = serde_json::from_str(out.stdout.trim()).expect("one JSON line");
    assert_eq!((report["ledgers"].as_u64(), report["entries"].as_u64()), (Some(3), Some(1_080)), "{report}");

    // Without ferry: sha256sum, sed and jq.
    assert!(sh(&full, "sha256sum -c CHECKSUMS").lines().all(|l| l.ends_with(": OK")));
    let own = sh(
        &full,
        r#"sed 's/"manifest_sha256": "[0-9a-f]*"/"manifest_sha256": ""/' MANIFEST.json | sha256sum | cut -d' ' -f1"#,
    );
    assert_eq!(own.trim(), sh(&full, "jq -r .manifest_sha256 MANIFEST.json").trim());
    let checksums = sh(&full, "sha256sum CHECKSUMS | cut -d' ' -f1");
    assert_eq!(checksums.trim(), sh(&full, "jq -r .checksums_sha256 MANIFEST.json").trim());
    assert_eq!(sh(&full, "cat ledgers/audit/entries-*.jsonl | jq -s length").trim(), "1050");
    assert_eq!(sh(&full, "jq -r .head ledgers/audit/ledger.json").trim(), "1050");
    assert_eq!(
        sh(&full, r#"jq -r 'select(.id == 7) | .idempotency_key' ledgers/audit/entries-*.jsonl"#).trim(),
        "audit-6"
    );
    assert_exit(&backup([OsStr::new("verify"), full.as_os_str()]), 0, "verify");

    // The backup is what the server reads, line for line (hashes included).
    for ledger in ["audit", "orders"] {
        assert_eq!(backup_entries(&full, ledger), entries(&a, ledger).await, "{ledger}");
    }

    // More entries, a new ledger: an incremental backup, and a full one.
    fill(&a, "audit", 1_050, 20).await;
    fill(&a, "late", 0, 5).await;
    let inc = env.dir.path().join("inc");
    let out = backup([
        OsStr::new("create"),
        inc.as_os_str(),
        OsStr::new("--server"),
        OsStr::new(&a.base),
        OsStr::new("--incremental-from"),
        full.as_os_str(),
    ]);
    assert_exit(&out, 0, "incremental backup");
    let m = manifest(&inc);
    assert_eq!(m["ledgers"]["audit"]["from"], 1_051, "{m}");
    assert_eq!(m["ledgers"]["audit"]["count"], 20, "{m}");
    assert_eq!(m["ledgers"]["late"]["from"], 1, "{m}");
    assert_eq!(m["incremental_from"]["manifest_sha256"], manifest(&full)["manifest_sha256"]);
    assert_exit(&backup([OsStr::new("verify"), full.as_os_str(), inc.as_os_str()]), 0, "verify the chain");
    let out = backup([OsStr::new("verify"), inc.as_os_str(), full.as_os_str()]);
    assert_exit(&out, 1, "a chain out of order");
    assert!(out.stderr.contains("MANIFEST.json"), "{}", out.stderr);
    let full2 = env.dir.path().join("full2");
    assert_exit(
        &backup([OsStr::new("create"), full2.as_os_str(), OsStr::new("--server"), OsStr::new(&a.base)]),
        0,
        "second full backup",
    );

    // The chain restored into an empty node equals the source.
    let b_env = Env::new();
    let b = b_env.serve().await;
    let out =
        backup([OsStr::new("restore"), full.as_os_str(), inc.as_os_str(), OsStr::new("--server"), OsStr::new(&b.base)]);
    assert_exit(&out, 0, "restore the chain");
    for ledger in ["audit", "orders", "late"] {
        assert_eq!(entries(&b, ledger).await, entries(&a, ledger).await, "{ledger}");
    }
    assert_eq!(b.first_and_head("idle").await, Some((1, 0)));
    // A client's retry on the restored node answers the original id.
    let retry = b.append("audit", r#"{"payload":{"again":true},"idempotency_key":"audit-6"}"#).await;
    assert_eq!((retry.status, retry.ids()), (200, vec![7]), "{}", retry.text);
    // The full backup taken later restores to the same thing.
    let c_env = Env::new();
    let c = c_env.serve().await;
    assert_exit(
        &backup([OsStr::new("restore"), full2.as_os_str(), OsStr::new("--server"), OsStr::new(&c.base)]),
        0,
        "restore the later full backup",
    );
    for ledger in ["audit", "orders", "late"] {
        assert_eq!(entries(&c, ledger).await, entries(&b, ledger).await, "{ledger}");
    }
    // Again into the same node: refused by default, a no-op with merge.
    let out = backup([OsStr::new("restore"), full2.as_os_str(), OsStr::new("--server"), OsStr::new(&c.base)]);
    assert_exit(&out, 1, "restore over existing ledgers");
    assert!(out.stderr.contains("exist in the target"), "{}", out.stderr);
    let out = backup([
        OsStr::new("restore"),
        full2.as_os_str(),
        OsStr::new("--server"),
        OsStr::new(&c.base),
        OsStr::new("--mode"),
        OsStr::new("merge"),
    ]);
    assert_exit(&out, 0, "merge the same backup");
    let report: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!((report["imported"].as_u64(), report["present"].as_u64()), (Some(0), Some(1_105)), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_fills_a_prefix_names_a_conflict_and_data_dirs_back_up_and_restore_offline() {
    let env = Env::new();
    let a = env.serve_with(&format!("{CHAINED}[server]\ntokens = [\"secret\"]\n")).await;
    let http = crate::support::http();
    let auth = |req: reqwest::RequestBuilder| req.bearer_auth("secret");
    let append = async |ledger: &str, from: usize, n: usize| {
        let entries: Vec<String> =
            (from..from + n).map(|i| format!(r#"{{"idempotency_key":"m-{i}","payload":{{"i":{i}}}}}"#)).collect();
        let r = auth(http.post(a.url(&format!("/v1/ledgers/{ledger}/entries"))))
            .header("content-type", "application/json")
            .body(format!(r#"{{"entries":[{}]}}"#, entries.join(",")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    };
    append("m", 0, 100).await;
    let prefix = env.dir.path().join("prefix");
    let token = ["--token", "secret"];
    let create = |dest: &Path| {
        backup(
            [OsStr::new("create"), dest.as_os_str(), OsStr::new("--server"), OsStr::new(&a.base)]
                .into_iter()
                .chain(token.map(OsStr::new)),
        )
    };
    let out = backup([OsStr::new("create"), prefix.as_os_str(), OsStr::new("--server"), OsStr::new(&a.base)]);
    assert_exit(&out, 1, "a backup without a token");
    assert!(out.stderr.contains("401"), "{}", out.stderr);
    assert_exit(&create(&prefix), 0, "backup of the prefix");
    append("m", 100, 200).await;
    let whole = env.dir.path().join("whole");
    assert_exit(&create(&whole), 0, "backup of the whole");

    // Offline: restore the prefix into a data directory, then merge the whole.
    let b = env.dir.path().join("b-data");
    let restore = |dirs: &[&Path], data: &Path, mode: &str| {
        let mut args: Vec<&OsStr> = vec![OsStr::new("restore")];
        args.extend(dirs.iter().map(|d| d.as_os_str()));
        args.extend([OsStr::new("--data-dir"), data.as_os_str(), OsStr::new("--mode"), OsStr::new(mode)]);
        backup(args)
    };
    assert_exit(&restore(&[&prefix], &b, "fail-if-exists"), 0, "restore the prefix offline");
    let out = restore(&[&whole], &b, "merge");
    assert_exit(&out, 0, "merge the whole into the prefix");
    let report: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!((report["imported"].as_u64(), report["present"].as_u64()), (Some(200), Some(100)), "{report}");
    let mut verify = ferry();
    verify.arg("verify").arg("--data-dir").arg(&b);
    assert_exit(&run_to_exit(verify, None), 0, "ferry verify of the restored node");
    // A backup of the stopped node equals the backup of the source.
    let offline = env.dir.path().join("offline");
    let out = backup([OsStr::new("create"), offline.as_os_str(), OsStr::new("--data-dir"), b.as_os_str()]);
    assert_exit(&out, 0, "backup of a stopped node");
    assert_eq!(backup_entries(&offline, "m"), backup_entries(&whole, "m"));

    // A node whose entry 101 differs: the conflict names the backup line.
    let d = env.dir.path().join("d-data");
    assert_exit(&restore(&[&prefix], &d, "fail-if-exists"), 0, "restore the prefix");
    let d_server = Server::start(&d, None).await;
    assert_eq!(d_server.append("m", r#"{"payload":{"other":true}}"#).await.ids(), vec![101]);
    // Its data directory is locked while it runs.
    let out = restore(&[&whole], &d, "merge");
    assert_exit(&out, 1, "restore into a running node's directory");
    assert!(out.stderr.contains("locked"), "{}", out.stderr);
    let out = backup([
        OsStr::new("restore"),
        whole.as_os_str(),
        OsStr::new("--server"),
        OsStr::new(&d_server.base),
        OsStr::new("--mode"),
        OsStr::new("merge"),
    ]);
    assert_exit(&out, 1, "merge over a conflicting entry");
    assert!(out.stderr.contains("ledgers/m/entries-000001.jsonl line 101"), "{}", out.stderr);
    assert_eq!(d_server.head("m").await, Some(101), "nothing of the conflicting request was imported");
}

/// Damages a copy of a backup.
type Tamper = Box<dyn Fn(&Path)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampering_is_refused_by_verify_and_restore_naming_the_file() {
    let env = Env::new();
    let a = env.serve_with(CHAINED).await;
    fill(&a, "audit", 0, 400).await;
    let good = env.dir.path().join("good");
    let out = backup([
        OsStr::new("create"),
        good.as_os_str(),
        OsStr::new("--server"),
        OsStr::new(&a.base),
        OsStr::new("--max-file-bytes"),
        OsStr::new("8KiB"),
    ]);
    assert_exit(&out, 0, "backup in small files");
    let files = manifest(&good)["ledgers"]["audit"]["files"].as_array().unwrap().len();
    assert!(files >= 3, "{files} files");
    let target_env = Env::new();
    let target = target_env.serve().await;

    let copy = |name: &str| {
        let dir = env.dir.path().join(name);
        let ok = Command::new("cp").arg("-a").arg(&good).arg(&dir).status().unwrap().success();
        assert!(ok);
        dir
    };
    let second = "ledgers/audit/entries-000002.jsonl";
    let cases: Vec<(&str, Tamper, String)> = vec![
        (
            "flipped",
            Box::new(move |d: &Path| {
                // A digit of a payload in the file's third line changes.
                let path = d.join(second);
                let mut bytes = std::fs::read(&path).unwrap();
                let line_starts: Vec<usize> = std::iter::once(0)
                    .chain(bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1))
                    .collect();
                let third = &bytes[line_starts[2]..line_starts[3]];
                let at = line_starts[2] + third.windows(4).position(|w| w == b"\"i\":").unwrap() + 4;
                bytes[at] = if bytes[at] == b'1' { b'2' } else { b'1' };
                std::fs::write(&path, bytes).unwrap();
            }),
            format!("{second} line 3: ledger audit id"),
        ),
        (
            "truncated",
            Box::new(move |d: &Path| {
                let path = d.join(second);
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
            }),
            format!("{second} line"),
        ),
        (
            "dropped",
            Box::new(move |d: &Path| {
                let path = d.join(second);
                let text = std::fs::read_to_string(&path).unwrap();
                let kept: Vec<&str> = text.lines().enumerate().filter(|(i, _)| *i != 4).map(|(_, l)| l).collect();
                std::fs::write(&path, format!("{}\n", kept.join("\n"))).unwrap();
            }),
            format!("{second} line 5: id"),
        ),
        (
            "no-manifest",
            Box::new(|d: &Path| std::fs::remove_file(d.join("MANIFEST.json")).unwrap()),
            "no MANIFEST.json".to_owned(),
        ),
        (
            "edited-manifest",
            Box::new(|d: &Path| {
                let path = d.join("MANIFEST.json");
                let text = std::fs::read_to_string(&path).unwrap();
                let edited = text.replacen("\"head\": 400", "\"head\": 399", 1);
                assert_ne!(edited, text);
                std::fs::write(&path, edited).unwrap();
            }),
            "MANIFEST.json: the manifest was changed".to_owned(),
        ),
        (
            "checksums",
            Box::new(|d: &Path| {
                let path = d.join("CHECKSUMS");
                let mut bytes = std::fs::read(&path).unwrap();
                bytes[0] = if bytes[0] == b'a' { b'b' } else { b'a' };
                std::fs::write(&path, bytes).unwrap();
            }),
            "CHECKSUMS: its SHA-256".to_owned(),
        ),
    ];
    for (name, tamper, expected) in cases {
        let dir = copy(name);
        tamper(&dir);
        let out = backup([OsStr::new("verify"), dir.as_os_str()]);
        assert_exit(&out, 1, name);
        assert!(out.stderr.contains(&expected), "{name}: expected {expected:?} in\n{}", out.stderr);
        let out = backup([OsStr::new("restore"), dir.as_os_str(), OsStr::new("--server"), OsStr::new(&target.base)]);
        assert_exit(&out, 1, name);
        assert!(out.stderr.contains(&expected), "{name}: restore: expected {expected:?} in\n{}", out.stderr);
        assert_eq!(target.head("audit").await, None, "{name}: nothing restored");
    }
    assert_exit(&backup([OsStr::new("verify"), good.as_os_str()]), 0, "the original is intact");
    // A backup never goes over another one.
    let out = backup([OsStr::new("create"), good.as_os_str(), OsStr::new("--server"), OsStr::new(&a.base)]);
    assert_exit(&out, 1, "create into a full directory");
    assert!(out.stderr.contains("is not empty"), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_is_its_pin_while_appends_freezes_retention_and_an_exporter_run() {
    let env = Env::new();
    let sink = env.dir.path().join("sink");
    let config = format!(
        "{CHAINED}[retention]\nmax_age = \"2s\"\nrespect_exporters = false\n\n[[exporters]]\nname = \"files\"\nsink = \"file\"\n\
         [exporters.config]\ndir = \"{}\"\n",
        sink.display()
    );
    let a = env.serve_with(&config).await;
    for ledger in ["l1", "l2", "l3"] {
        fill_plain(&a, ledger, 2_000).await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, base) = (stop.clone(), a.base.clone());
        tokio::spawn(async move {
            let http = crate::support::http();
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for ledger in ["l1", "l2", "l3"] {
                    let body = format!(r#"{{"entries":[{{"payload":{{"n":{n}}}}},{{"payload":{{"n":{n},"b":1}}}}]}}"#);
                    let r = http
                        .post(format!("{base}/v1/ledgers/{ledger}/entries"))
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 201);
                }
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dest = env.dir.path().join("hot");
    let args =
        [OsStr::new("create"), dest.as_os_str(), OsStr::new("--server"), OsStr::new(&a.base)].map(|s| s.to_owned());
    let out = tokio::task::spawn_blocking(move || backup(args)).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rounds = writer.await.unwrap();
    assert_exit(&out, 0, "backup under load");
    assert!(rounds > 0);
    assert_exit(&backup([OsStr::new("verify"), dest.as_os_str()]), 0, "verify");
    let m = manifest(&dest);
    for ledger in ["l1", "l2", "l3"] {
        let l = &m["ledgers"][ledger];
        let (first, head) = (l["first"].as_u64().unwrap(), l["head"].as_u64().unwrap());
        assert_eq!(m["pin"]["heads"][ledger].as_u64(), Some(head));
        assert!(head >= 2_000, "{ledger}: the pin is after the fill");
        // Every backed-up entry still retained reads the same from the
        // server; what retention pruned since was in the backup.
        let lines = backup_entries(&dest, ledger);
        assert_eq!(lines.len() as u64, head - first + 1, "{ledger}");
        let (from, now) = a.read_retained_from(ledger, first).await;
        let now: Vec<Value> = now
            .iter()
            .take_while(|l| crate::support::parse_line(l).id <= head)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(&lines[(from - first) as usize..(from - first) as usize + now.len()], &now[..], "{ledger}");
    }
    // Retention goes on once the pin is gone.
    eventually("retention prunes past the backup's First", async || {
        let (first, _) = a.first_and_head("l1").await.unwrap();
        first > m["ledgers"]["l1"]["first"].as_u64().unwrap()
    })
    .await;
}

/// Waits for a `ferry backup create` child, with what it printed.
fn wait_child(mut child: std::process::Child, stderr: std::fs::File) -> (Option<i32>, String) {
    use std::io::{Read as _, Seek as _};
    let status = child.wait().unwrap();
    let mut stderr = stderr;
    let mut text = String::new();
    stderr.rewind().unwrap();
    stderr.read_to_string(&mut text).unwrap();
    (status.code(), text)
}

/// `ferry backup create DEST --server URL ARGS…` as a child, with stderr kept.
fn spawn_create(
    dest: &Path,
    server: &Server,
    args: &[&str],
    env: &[(&str, &str)],
) -> (std::process::Child, std::fs::File) {
    let mut cmd = ferry();
    cmd.args(["backup", "create"]).arg(dest).args(["--server", &server.base]).args(args);
    cmd.envs(env.iter().copied());
    let stderr = tempfile::tempfile().unwrap();
    cmd.stdout(Stdio::null()).stderr(stderr.try_clone().unwrap());
    (cmd.spawn().unwrap(), stderr)
}

async fn pins(server: &Server) -> usize {
    server.get("/v1/pins").await.json().as_array().map_or(0, Vec::len)
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backup_leaves_no_manifest_and_its_pin_expires() {
    let env = Env::new();
    let a = env.serve_with(&format!("{CHAINED}[retention]\nmax_age = \"1s\"\nrespect_exporters = false\n")).await;
    fill_plain(&a, "big", 3_000).await;
    // Killed just before the manifest: every other file is there.
    let dest = env.dir.path().join("killed");
    let (mut child, _) =
        spawn_create(&dest, &a, &["--pin-ttl", "2s"], &[("FAILPOINTS", "backup::before_manifest=sleep(60000)")]);
    eventually("the backup writes its checksums", async || dest.join("CHECKSUMS").exists()).await;
    let pinned_first = a.get("/v1/pins").await.json()[0]["firsts"]["big"].as_u64().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!dest.join("MANIFEST.json").exists());
    for args in [vec!["verify"], vec!["restore", "--data-dir", "/nonexistent-ferry-target"]] {
        let mut all: Vec<&OsStr> = vec![OsStr::new(args[0]), dest.as_os_str()];
        all.extend(args[1..].iter().map(OsStr::new));
        let out = backup(all);
        assert_exit(&out, 1, args[0]);
        assert!(out.stderr.contains("no MANIFEST.json"), "{}", out.stderr);
    }
    assert!(!Path::new("/nonexistent-ferry-target").exists(), "a refused restore creates nothing");
    // The pin was not renewed: it expires and retention goes on past it.
    eventually("the pin expires", async || pins(&a).await == 0).await;
    eventually("retention prunes past the pin's First", async || {
        a.first_and_head("big").await.unwrap().0 > pinned_first
    })
    .await;

    // Killed at random points: a directory either holds a backup that
    // verifies, or no manifest at all.
    for round in 0..4u64 {
        let dest = env.dir.path().join(format!("random-{round}"));
        let (mut child, _) = spawn_create(&dest, &a, &["--pin-ttl", "2s"], &[]);
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..250))).await;
        let _ = child.kill();
        child.wait().unwrap();
        let out = backup([OsStr::new("verify"), dest.as_os_str()]);
        if dest.join("MANIFEST.json").exists() {
            assert_exit(&out, 0, "a complete backup verifies");
        } else {
            assert_exit(&out, 1, "an incomplete backup is refused");
        }
    }
    eventually("every pin is released or expired", async || pins(&a).await == 0).await;
}

#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pinned_ledger_aborts_the_backup_naming_it() {
    let env = Env::new();
    let a = env.serve_with(CHAINED).await;
    fill(&a, "kept", 0, 100).await;
    fill(&a, "doomed", 0, 10).await;
    let dest = env.dir.path().join("aborted");
    let (child, stderr) = spawn_create(&dest, &a, &[], &[("FAILPOINTS", "backup::pinned=sleep(1500)")]);
    eventually("the backup takes its pin", async || pins(&a).await == 1).await;
    let r = a.send(a.http.delete(a.url("/v1/ledgers/doomed"))).await;
    assert_eq!(r.status, 204, "{}", r.text);
    let (code, stderr) = tokio::task::spawn_blocking(move || wait_child(child, stderr)).await.unwrap();
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("ledger doomed was deleted after snapshot pin"), "{stderr}");
    assert!(stderr.contains("no MANIFEST.json"), "{stderr}");
    assert!(!dest.join("MANIFEST.json").exists());
    eventually("the aborted backup deleted its pin", async || pins(&a).await == 0).await;
}
