//! Data directories written by earlier versions of the store, committed
//! under `tests/fixtures/format-v{N}/`: today's code must verify them
//! clean, open them, and serve every entry exactly as it was written, and
//! today's pure codecs must decode their pack and WAL files. A change that
//! cannot read what an older ferry wrote fails here.
//!
//! A fixture is written once, by `write_format_fixture` (ignored; run it
//! deliberately), and never regenerated: a new format version gets a new
//! directory. See `tests/fixtures/format-v1/README.md`; `FIXTURES` lists
//! every version.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_core::bus::Received;
use ferry_core::limits::{FORMAT_VERSION, IDEMPOTENCY_WINDOW_MS};
use ferry_core::{Entry, NewEntry, now_ms};
use ferry_format::chain;
use ferry_format::pack::decode_pack;
use ferry_format::wal::{SEGMENT_HEADER_BYTES, decode_record, decode_segment_header};
use ferry_store::verify::verify;
use ferry_store::{
    CursorUpdate, Store, StoreConfig, WatchPosition, WatchPositionRecord, WatchSessionRecord, WatchWrite,
};

use crate::support::*;

const CHUNK_ENTRIES: u64 = 4;
/// The cursor of `audit` the generator commits from format 3 on:
/// (exporter, id, sent_to).
const FIXTURE_CURSOR: (&str, u64, u64) = ("ship", 2, 4);
/// The watch session the generator commits from format 4 on: its id, and
/// its position in `audit` (at flush 2, moved from id 5 to 7).
const FIXTURE_WATCH_SESSION: u64 = 0x7f3a_9c2e_41d0_b8e5;

fn fixture_watch_session() -> WatchSessionRecord {
    WatchSessionRecord {
        prefix: "a".into(),
        cut_ts: 1_796_400_000_000,
        start_incarnation: 0,
        from: None,
        created_at: 1_796_400_000_000,
        active_at: 1_796_400_000_500,
        epoch: 1,
        branches: vec![(1, 2)],
        flush: 2,
        at: 6,
        before: Some(4),
        complete: true,
    }
}

fn fixture_watch_position() -> WatchPositionRecord {
    WatchPositionRecord {
        at: Some(WatchPosition { incarnation: 1, next: 7 }),
        flush: 2,
        before: Some(WatchPosition { incarnation: 1, next: 5 }),
    }
}

/// One committed fixture: the format version that wrote it and its entries.
struct Fixture {
    version: u32,
    rows: &'static [Row],
}

/// Every fixture, oldest first: format 1 (commit 903d965), format 2
/// (durable incarnations), format 3 (idempotency-key fingerprints in
/// `keys:`, a cursor naming a batch in flight), format 4 (a watch
/// session), format 5 (the hash chain: every record carries its hash) and
/// format 6 (a snapshot pin, expired by the time any test opens it).
/// Each was written by the same requests (`REQUESTS`) and differs only in
/// what its version put on disk (format 3 on also commits
/// `FIXTURE_CURSOR`, format 4 on a watch session).
const FIXTURES: [Fixture; 6] = [
    Fixture { version: 1, rows: V1_ROWS },
    Fixture { version: 2, rows: V2_ROWS },
    Fixture { version: 3, rows: V3_ROWS },
    Fixture { version: 4, rows: V4_ROWS },
    Fixture { version: 5, rows: V5_ROWS },
    Fixture { version: 6, rows: V6_ROWS },
];

impl Fixture {
    fn dir(&self) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/format-v{}", self.version))
    }

    fn rows_of(&self, ledger_name: &str) -> Vec<Row> {
        self.rows.iter().filter(|r| r.ledger == ledger_name).copied().collect()
    }
}

/// One entry as it was appended, with the ts the store gave it.
#[derive(Debug, Clone, Copy)]
struct Row {
    ledger: &'static str,
    id: u64,
    ts: u64,
    key: Option<&'static str>,
    idempotency_key: Option<&'static str>,
    payload: &'static str,
}

/// Every entry of the format-v1 fixture, in the order they were appended.
/// `audit` 1..=4 are frozen in pack `ledgers/audit/00000/00000000.pack`;
/// `audit` 5..=6 and both `payments.eu` entries are hot, in segment
/// `hot/00000000000000000001.wal` (which still holds the dead records of
/// `audit` 1..=4 too).
const V1_ROWS: &[Row] = &[
    Row {
        ledger: "audit",
        id: 1,
        ts: 1796383722748,
        key: Some("user-7"),
        idempotency_key: Some("req-1"),
        payload: r#"{"user":"u-7","action":"login"}"#,
    },
    Row {
        ledger: "payments.eu",
        id: 1,
        ts: 1796383722753,
        key: Some("order-1"),
        idempotency_key: Some("pay-1"),
        payload: r#"{"amount":"12.30","currency":"EUR"}"#,
    },
    Row {
        ledger: "audit",
        id: 2,
        ts: 1796383722759,
        key: None,
        idempotency_key: None,
        payload: r#"{"n":1.50,"big":1e3}"#,
    },
    Row {
        ledger: "audit",
        id: 3,
        ts: 1796383722759,
        key: Some("k-3"),
        idempotency_key: None,
        payload: r#""quotes \" and ünïcode ✓""#,
    },
    Row {
        ledger: "audit",
        id: 4,
        ts: 1796383722761,
        key: None,
        idempotency_key: Some("req-4"),
        payload: r#"[1,2,{"deep":null}]"#,
    },
    Row {
        ledger: "payments.eu",
        id: 2,
        ts: 1796383722765,
        key: None,
        idempotency_key: None,
        payload: r#"{"refund":true}"#,
    },
    Row {
        ledger: "audit",
        id: 5,
        ts: 1796383722770,
        key: Some("user-8"),
        idempotency_key: Some("req-5"),
        payload: r#"{"action":"logout"}"#,
    },
    Row { ledger: "audit", id: 6, ts: 1796383722775, key: None, idempotency_key: None, payload: r#"true"# },
];

/// Every entry of the format-v2 fixture (the same requests, the same
/// layout of pack and segment), written when format 2 was introduced.
const V2_ROWS: &[Row] = &[
    Row {
        ledger: "audit",
        id: 1,
        ts: 1796385605152,
        key: Some("user-7"),
        idempotency_key: Some("req-1"),
        payload: r#"{"user":"u-7","action":"login"}"#,
    },
    Row {
        ledger: "payments.eu",
        id: 1,
        ts: 1796385605153,
        key: Some("order-1"),
        idempotency_key: Some("pay-1"),
        payload: r#"{"amount":"12.30","currency":"EUR"}"#,
    },
    Row {
        ledger: "audit",
        id: 2,
        ts: 1796385605154,
        key: None,
        idempotency_key: None,
        payload: r#"{"n":1.50,"big":1e3}"#,
    },
    Row {
        ledger: "audit",
        id: 3,
        ts: 1796385605154,
        key: Some("k-3"),
        idempotency_key: None,
        payload: r#""quotes \" and ünïcode ✓""#,
    },
    Row {
        ledger: "audit",
        id: 4,
        ts: 1796385605154,
        key: None,
        idempotency_key: Some("req-4"),
        payload: r#"[1,2,{"deep":null}]"#,
    },
    Row {
        ledger: "payments.eu",
        id: 2,
        ts: 1796385605154,
        key: None,
        idempotency_key: None,
        payload: r#"{"refund":true}"#,
    },
    Row {
        ledger: "audit",
        id: 5,
        ts: 1796385605154,
        key: Some("user-8"),
        idempotency_key: Some("req-5"),
        payload: r#"{"action":"logout"}"#,
    },
    Row { ledger: "audit", id: 6, ts: 1796385605155, key: None, idempotency_key: None, payload: r#"true"# },
];

/// Every entry of the format-v3 fixture (the same requests, the same
/// layout of pack and segment), written when format 3 was introduced.
const V3_ROWS: &[Row] = &[
    Row {
        ledger: "audit",
        id: 1,
        ts: 1796395680827,
        key: Some("user-7"),
        idempotency_key: Some("req-1"),
        payload: r#"{"user":"u-7","action":"login"}"#,
    },
    Row {
        ledger: "payments.eu",
        id: 1,
        ts: 1796395680829,
        key: Some("order-1"),
        idempotency_key: Some("pay-1"),
        payload: r#"{"amount":"12.30","currency":"EUR"}"#,
    },
    Row {
        ledger: "audit",
        id: 2,
        ts: 1796395680830,
        key: None,
        idempotency_key: None,
        payload: r#"{"n":1.50,"big":1e3}"#,
    },
    Row {
        ledger: "audit",
        id: 3,
        ts: 1796395680830,
        key: Some("k-3"),
        idempotency_key: None,
        payload: r#""quotes \" and ünïcode ✓""#,
    },
    Row {
        ledger: "audit",
        id: 4,
        ts: 1796395680830,
        key: None,
        idempotency_key: Some("req-4"),
        payload: r#"[1,2,{"deep":null}]"#,
    },
    Row {
        ledger: "payments.eu",
        id: 2,
        ts: 1796395680832,
        key: None,
        idempotency_key: None,
        payload: r#"{"refund":true}"#,
    },
    Row {
        ledger: "audit",
        id: 5,
        ts: 1796395680832,
        key: Some("user-8"),
        idempotency_key: Some("req-5"),
        payload: r#"{"action":"logout"}"#,
    },
    Row { ledger: "audit", id: 6, ts: 1796395680833, key: None, idempotency_key: None, payload: r#"true"# },
];

/// Every entry of the format-v4 fixture (the same requests, the same
/// layout of pack and segment), written when format 4 was introduced.
const V4_ROWS: &[Row] = &[
    Row {
        ledger: "audit",
        id: 1,
        ts: 1796403234360,
        key: Some("user-7"),
        idempotency_key: Some("req-1"),
        payload: r#"{"user":"u-7","action":"login"}"#,
    },
    Row {
        ledger: "payments.eu",
        id: 1,
        ts: 1796403234363,
        key: Some("order-1"),
        idempotency_key: Some("pay-1"),
        payload: r#"{"amount":"12.30","currency":"EUR"}"#,
    },
    Row {
        ledger: "audit",
        id: 2,
        ts: 1796403234364,
        key: None,
        idempotency_key: None,
        payload: r#"{"n":1.50,"big":1e3}"#,
    },
    Row {
        ledger: "audit",
        id: 3,
        ts: 1796403234364,
        key: Some("k-3"),
        idempotency_key: None,
        payload: r#""quotes \" and ünïcode ✓""#,
    },
    Row {
        ledger: "audit",
        id: 4,
        ts: 1796403234364,
        key: None,
        idempotency_key: Some("req-4"),
        payload: r#"[1,2,{"deep":null}]"#,
    },
    Row {
        ledger: "payments.eu",
        id: 2,
        ts: 1796403234367,
        key: None,
        idempotency_key: None,
        payload: r#"{"refund":true}"#,
    },
    Row {
        ledger: "audit",
        id: 5,
        ts: 1796403234371,
        key: Some("user-8"),
        idempotency_key: Some("req-5"),
        payload: r#"{"action":"logout"}"#,
    },
    Row { ledger: "audit", id: 6, ts: 1796403234375, key: None, idempotency_key: None, payload: r#"true"# },
];

/// Every entry of the format-v5 fixture (the same requests, the same
/// layout of pack and segment), written when format 5 (the hash chain)
/// was introduced: every record carries its chain hash.
#[rustfmt::skip]
const V5_ROWS: &[Row] = &[
    Row { ledger: "audit", id: 1, ts: 1796407867430, key: Some("user-7"), idempotency_key: Some("req-1"), payload: r#"{"user":"u-7","action":"login"}"# },
    Row { ledger: "payments.eu", id: 1, ts: 1796407867432, key: Some("order-1"), idempotency_key: Some("pay-1"), payload: r#"{"amount":"12.30","currency":"EUR"}"# },
    Row { ledger: "audit", id: 2, ts: 1796407867432, key: None, idempotency_key: None, payload: r#"{"n":1.50,"big":1e3}"# },
    Row { ledger: "audit", id: 3, ts: 1796407867432, key: Some("k-3"), idempotency_key: None, payload: r#""quotes \" and ünïcode ✓""# },
    Row { ledger: "audit", id: 4, ts: 1796407867433, key: None, idempotency_key: Some("req-4"), payload: r#"[1,2,{"deep":null}]"# },
    Row { ledger: "payments.eu", id: 2, ts: 1796407867433, key: None, idempotency_key: None, payload: r#"{"refund":true}"# },
    Row { ledger: "audit", id: 5, ts: 1796407867433, key: Some("user-8"), idempotency_key: Some("req-5"), payload: r#"{"action":"logout"}"# },
    Row { ledger: "audit", id: 6, ts: 1796407867434, key: None, idempotency_key: None, payload: r#"true"# },
];

/// Every entry of the format-v6 fixture (the same requests, the same
/// layout, hash chains as in format 5), written when format 6 (snapshot
/// pins) was introduced.
#[rustfmt::skip]
const V6_ROWS: &[Row] = &[
    Row { ledger: "audit", id: 1, ts: 1796413407065, key: Some("user-7"), idempotency_key: Some("req-1"), payload: r#"{"user":"u-7","action":"login"}"# },
    Row { ledger: "payments.eu", id: 1, ts: 1796413407073, key: Some("order-1"), idempotency_key: Some("pay-1"), payload: r#"{"amount":"12.30","currency":"EUR"}"# },
    Row { ledger: "audit", id: 2, ts: 1796413407073, key: None, idempotency_key: None, payload: r#"{"n":1.50,"big":1e3}"# },
    Row { ledger: "audit", id: 3, ts: 1796413407073, key: Some("k-3"), idempotency_key: None, payload: r#""quotes \" and ünïcode ✓""# },
    Row { ledger: "audit", id: 4, ts: 1796413407073, key: None, idempotency_key: Some("req-4"), payload: r#"[1,2,{"deep":null}]"# },
    Row { ledger: "payments.eu", id: 2, ts: 1796413407073, key: None, idempotency_key: None, payload: r#"{"refund":true}"# },
    Row { ledger: "audit", id: 5, ts: 1796413407076, key: Some("user-8"), idempotency_key: Some("req-5"), payload: r#"{"action":"logout"}"# },
    Row { ledger: "audit", id: 6, ts: 1796413407077, key: None, idempotency_key: None, payload: r#"true"# },
];

/// The appends the generator makes, in order: (ledger, entries of one
/// request as (key, idempotency key, payload)). Chunk 0 of `audit` (ids
/// 1..=4) fills during the fourth request; the rest stays hot.
type Request = (&'static str, &'static [(Option<&'static str>, Option<&'static str>, &'static str)]);
const REQUESTS: &[Request] = &[
    ("audit", &[(Some("user-7"), Some("req-1"), r#"{"user":"u-7","action":"login"}"#)]),
    ("payments.eu", &[(Some("order-1"), Some("pay-1"), r#"{"amount":"12.30","currency":"EUR"}"#)]),
    ("audit", &[(None, None, r#"{"n":1.50,"big":1e3}"#), (Some("k-3"), None, r#""quotes \" and ünïcode ✓""#)]),
    ("audit", &[(None, Some("req-4"), r#"[1,2,{"deep":null}]"#)]),
    ("payments.eu", &[(None, None, r#"{"refund":true}"#)]),
    ("audit", &[(Some("user-8"), Some("req-5"), r#"{"action":"logout"}"#)]),
    ("audit", &[(None, None, "true")]),
];

fn new_entry((key, idempotency_key, payload): (Option<&str>, Option<&str>, &str)) -> NewEntry {
    NewEntry {
        key: key.map(str::to_owned),
        idempotency_key: idempotency_key.map(str::to_owned),
        payload: crate::support::payload(payload),
    }
}

fn fixture_config(dir: &Path) -> StoreConfig {
    let mut c = config(dir);
    c.chunk_entries = Some(CHUNK_ENTRIES);
    // From format 5 the fixture's ledgers have the hash chain.
    c.hash_chain = vec!["*".into()];
    c
}

/// Writes `tests/fixtures/format-v{FORMAT_VERSION}` with today's store.
/// Refuses to overwrite: a committed fixture is never regenerated. Run with
/// `cargo nextest run -p ferry-store --run-ignored only write_format_fixture`,
/// then paste the printed rows into the version's test table.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "writes a new fixture directory; run deliberately for a new format version"]
async fn write_format_fixture() {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/format-v{FORMAT_VERSION}"));
    assert!(
        !out.exists(),
        "{} exists: never regenerate a fixture; a new format version gets a new directory",
        out.display()
    );
    let store = open_with(fixture_config(&out));
    let mut frozen = store.events().subscribe("chunk.frozen/audit/00000000", 16);
    let mut written = Vec::new();
    for (ledger_name, request) in REQUESTS {
        let l = ledger(ledger_name);
        let outcome = store.append(&l, request.iter().copied().map(new_entry).collect()).await.unwrap();
        for (id, e) in outcome.ids.into_iter().zip(request.iter()) {
            written.push((*ledger_name, id, *e));
        }
    }
    let event = tokio::time::timeout(Duration::from_secs(20), frozen.recv()).await.expect("chunk 0 frozen in time");
    assert!(matches!(event, Some(Received::Message(_))), "{event:?}");
    // Format 3: a cursor naming a batch in flight (`sent_to`).
    let audit = ledger("audit");
    let incarnation = store.ledger_info(&audit).unwrap().incarnation;
    let (exporter, id, sent_to) = FIXTURE_CURSOR;
    let update =
        CursorUpdate::Set { exporter: ledger(exporter), ledger: audit, incarnation, id, sent_to: Some(sent_to) };
    store.commit_cursors(vec![update]).await.unwrap();
    // Format 4: a watch session, its header and one position.
    let id = FIXTURE_WATCH_SESSION;
    let session = WatchWrite::Session(id, fixture_watch_session());
    let position = WatchWrite::Position(id, ledger("audit"), fixture_watch_position());
    store.commit_watch_sessions(vec![session, position]).await.unwrap();
    // Format 6: a snapshot pin, alive for a minute (so a later start finds
    // it expired and deletes it).
    store.create_pin(60_000, 4, Some("fixture")).await.unwrap();
    let rows: Vec<String> = written
        .into_iter()
        .map(|(ledger_name, id, (key, idempotency_key, payload))| {
            let e = store.read_blocking(&ledger(ledger_name), Some(id), 1).unwrap().entries.remove(0);
            assert_eq!((e.id, e.key.as_deref(), e.payload.as_str()), (id, key, payload));
            format!(
                "    Row {{ ledger: {ledger_name:?}, id: {id}, ts: {}, key: {key:?}, idempotency_key: {idempotency_key:?}, payload: r#\"{payload}\"# }},",
                e.ts
            )
        })
        .collect();
    close(store).await;
    remove_lock_files(&out);
    let report = verify(&fixture_config(&out)).unwrap();
    assert!(report.findings.is_empty(), "{:?}", report.findings);
    remove_lock_files(&out);
    println!("const V{FORMAT_VERSION}_ROWS: &[Row] = &[");
    for row in rows {
        println!("{row}");
    }
    println!("];");
}

/// Lock files belong to a running store, not to a fixture (the store
/// creates them when it opens the directory).
#[allow(clippy::disallowed_methods, reason = "deletes the generator's lock files, not store data")]
fn remove_lock_files(dir: &Path) {
    for lock in ["ferry.lock", "catalog/.ferry.lock", "hot/.ferry.lock", "ledgers/.ferry.lock"] {
        match std::fs::remove_file(dir.join(lock)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("remove {lock}: {e}"),
        }
    }
}

/// A copy of a fixture in a temp dir, so no test writes to the committed one.
fn copy_of(fixture: &Path) -> tempfile::TempDir {
    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let target = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &target);
            } else if e.file_name() != "README.md" {
                std::fs::copy(e.path(), target).unwrap();
            }
        }
    }
    let dir = tempfile::tempdir().unwrap();
    copy_dir(fixture, dir.path());
    dir
}

fn assert_entries(got: &[Entry], want: &[Row]) {
    let got: Vec<_> =
        got.iter().map(|e| (e.ledger.as_str(), e.id, e.ts, e.key.as_deref(), e.payload.as_str())).collect();
    let want: Vec<_> = want.iter().map(|r| (r.ledger, r.id, r.ts, r.key, r.payload)).collect();
    assert_eq!(got, want);
}

/// Every ledger of the fixture reads back exactly as written: ids, ts, keys
/// and payloads, from the pack and from the hot tier.
fn assert_contents(store: &Store, fixture: &Fixture) {
    assert_eq!(store.chunk_entries(), CHUNK_ENTRIES, "the pinned chunk size");
    let names: Vec<String> = store.list_ledgers().into_iter().map(|i| i.name.as_str().to_owned()).collect();
    assert_eq!(names, ["audit", "payments.eu"]);
    for name in ["audit", "payments.eu"] {
        let l = ledger(name);
        let want = fixture.rows_of(name);
        let info = store.ledger_info(&l).unwrap();
        assert_eq!((info.first, info.head, info.entries), (1, want.len() as u64, want.len() as u64), "{name}");
        assert_entries(&read_all(store, &l), &want);
    }
    // A read that starts in the pack runs on into the hot tier.
    let page = store.read_blocking(&ledger("audit"), Some(3), 10).unwrap();
    assert_entries(&page.entries, &fixture.rows_of("audit")[2..]);
    assert_eq!(page.next, 7);
}

/// An older fixture is healthy but due for migration; the first open
/// migrates it (format 1 -> 2 gives every ledger a durable incarnation),
/// after which it verifies clean like today's.
fn verify_before_open(dir: &Path, fixture: &Fixture) {
    let report = verify(&config(dir)).unwrap();
    let messages: Vec<String> = report.findings.iter().map(|f| f.message.clone()).collect();
    let expected: Vec<String> = if fixture.version < FORMAT_VERSION {
        vec![format!("config:format_version is {}; the next start migrates it to {FORMAT_VERSION}", fixture.version)]
    } else {
        Vec::new()
    };
    assert_eq!(messages, expected, "verify of the v{} fixture", fixture.version);
    assert!(report.is_ok());
    assert_eq!((report.ledgers, report.packs, report.entries, report.segments), (2, 1, 8, 1), "{}", report.summary());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_fixture_verifies_and_reads_back_as_written_across_a_migration_and_a_restart() {
    for fixture in &FIXTURES {
        let dir = copy_of(&fixture.dir());
        verify_before_open(dir.path(), fixture);
        let store = open(dir.path());
        assert_contents(&store, fixture);
        let incarnations: Vec<u64> = store.list_ledgers().iter().map(|i| i.incarnation).collect();
        assert_eq!(incarnations, [1, 2], "v{}: one incarnation each, in creation (and name) order", fixture.version);
        close(store).await;

        let report = verify(&config(dir.path())).unwrap();
        assert!(report.findings.is_empty(), "v{} after its first open: {:?}", fixture.version, report.findings);
        let store = open(dir.path());
        assert_contents(&store, fixture);
        let again: Vec<u64> = store.list_ledgers().iter().map(|i| i.incarnation).collect();
        assert_eq!(again, incarnations, "v{}: incarnations are durable", fixture.version);
        // The old files take new appends after their entries.
        let outcome = store.append(&ledger("audit"), vec![entry("7")]).await.unwrap();
        assert_eq!((outcome.ids, outcome.created), (vec![7], true));
        close(store).await;
    }
}

/// What a retry of a fixture key must answer, given how old the key is now.
/// `None` near the window's edge, where the clock of the check and the
/// flusher's clock could disagree.
fn retry_expectation(row: &Row, now: u64) -> Option<bool> {
    const MARGIN_MS: u64 = 10 * 60 * 1000;
    let age = now.saturating_sub(row.ts);
    if age + MARGIN_MS < IDEMPOTENCY_WINDOW_MS {
        Some(true)
    } else if age > IDEMPOTENCY_WINDOW_MS + MARGIN_MS {
        Some(false)
    } else {
        None
    }
}

/// A retry of a key recorded in the fixture (frozen or hot) answers the
/// original id while the key's 24 h window lasts and appends a new entry
/// once it has passed; either way the recorded entries stay as they were,
/// and a key used again is remembered from then on.
#[tokio::test(flavor = "multi_thread")]
async fn a_retry_of_a_fixture_idempotency_key_is_recognised_only_within_its_window() {
    for fixture in &FIXTURES {
        retry_fixture_keys(fixture).await;
    }
}

async fn retry_fixture_keys(fixture: &Fixture) {
    let dir = copy_of(&fixture.dir());
    let store = open(dir.path());
    for row in fixture.rows.iter().filter(|r| r.idempotency_key.is_some()) {
        let (l, k) = (ledger(row.ledger), row.idempotency_key.unwrap());
        let head_before = head(&store, &l);
        let expectation = retry_expectation(row, now_ms());
        let retry = store.append(&l, vec![with_idempotency_key(k, r#""retry""#)]).await.unwrap();
        match expectation {
            Some(true) => assert_eq!((retry.ids.clone(), retry.created), (vec![row.id], false), "{k} is in its window"),
            Some(false) => {
                assert_eq!((retry.ids.clone(), retry.created), (vec![head_before + 1], true), "{k} has expired")
            }
            None => assert!(retry.ids == vec![row.id] || retry.ids == vec![head_before + 1], "{k}: {retry:?}"),
        }
        // Whatever the first retry got, the next one gets the same id.
        let again = store.append(&l, vec![with_idempotency_key(k, r#""again""#)]).await.unwrap();
        assert_eq!((again.ids, again.created), (retry.ids, false), "{k} retried twice");
    }
    // The recorded entries never change, whatever the retries did.
    for name in ["audit", "payments.eu"] {
        let l = ledger(name);
        let want = fixture.rows_of(name);
        assert_entries(&read_all(&store, &l)[..want.len()], &want);
    }
    close(store).await;
}

/// The fixture's files decode with today's pure codecs alone: the pack
/// through `decode_pack`, the WAL segment record by record to its last byte.
#[test]
fn every_fixtures_pack_and_wal_segment_decode_with_todays_codecs() {
    for fixture in &FIXTURES {
        decode_fixture_files(fixture);
    }
}

fn decode_fixture_files(fixture: &Fixture) {
    // (row, whether the record ends its request, whether it starts it)
    let mut flags = Vec::new();
    for (_, request) in REQUESTS {
        for (i, _) in request.iter().enumerate() {
            flags.push((i + 1 < request.len(), i == 0));
        }
    }
    assert_eq!(flags.len(), fixture.rows.len());
    for (row, request_entry) in
        fixture.rows.iter().zip(REQUESTS.iter().flat_map(|(l, r)| r.iter().map(move |e| (*l, *e))))
    {
        assert_eq!(
            (row.ledger, (row.key, row.idempotency_key, row.payload)),
            request_entry,
            "the table follows the requests"
        );
    }
    let record_of = |r: &ferry_format::wal::WalRecord<'_>| {
        (
            r.ledger.to_owned(),
            r.id,
            r.ts,
            r.key.map(str::to_owned),
            r.idempotency_key.map(str::to_owned),
            r.payload.to_vec(),
        )
    };
    let row_of = |r: &Row| {
        (
            r.ledger.to_owned(),
            r.id,
            r.ts,
            r.key.map(str::to_owned),
            r.idempotency_key.map(str::to_owned),
            r.payload.as_bytes().to_vec(),
        )
    };

    let pack = std::fs::read(fixture.dir().join("ledgers/audit/00000/00000000.pack")).unwrap();
    let mut in_pack = Vec::new();
    let decoded =
        decode_pack(&pack, |r| in_pack.push((record_of(r), r.batch_continues, r.group_start, r.relocated))).unwrap();
    assert_eq!(decoded.header.format_version, fixture.version);
    assert_eq!((decoded.header.ledger.as_str(), decoded.header.chunk), ("audit", 0));
    assert_eq!((decoded.header.first_id, decoded.header.count), (1, CHUNK_ENTRIES));
    // A pack keeps no batch or group flags: those matter only in the WAL.
    let want_pack: Vec<_> = fixture
        .rows
        .iter()
        .filter(|r| r.ledger == "audit" && r.id <= CHUNK_ENTRIES)
        .map(|r| (row_of(r), false, false, false))
        .collect();
    assert_eq!(in_pack, want_pack);

    let segment = std::fs::read(fixture.dir().join("hot/00000000000000000001.wal")).unwrap();
    assert_eq!(decode_segment_header(&segment).unwrap(), fixture.version);
    let mut offset = SEGMENT_HEADER_BYTES;
    let mut in_segment = Vec::new();
    while offset < segment.len() {
        let (r, len) = decode_record(&segment[offset..]).unwrap_or_else(|e| panic!("record at offset {offset}: {e}"));
        in_segment.push((record_of(&r), r.batch_continues, r.group_start, r.relocated));
        offset += len;
    }
    let want_segment: Vec<_> = fixture
        .rows
        .iter()
        .zip(&flags)
        .map(|(r, (continues, starts))| (row_of(r), *continues, *starts, false))
        .collect();
    assert_eq!(in_segment, want_segment, "every record, the frozen chunk's dead ones included, in append order");
}

/// What format 3 added, as the v3 fixture holds it: the fingerprints of
/// the frozen chunk's idempotency keys (`keys:audit:00000000`: `req-1` at
/// offset 0 and `req-4` at offset 3, under the fixture's own secret) and a
/// cursor naming a batch in flight (`sent_to`), read back by today's store.
#[tokio::test(flavor = "multi_thread")]
async fn the_format_3_fixture_keeps_its_key_fingerprints_and_its_cursor_in_flight() {
    use ferry_core::LedgerName;
    use ferry_format::fingerprints;
    use ferry_format::keys::{CatalogKey, ConfigName};
    use ferry_store::{Catalog, RedbCatalog};

    let fixture = FIXTURES.iter().find(|f| f.version == 3).expect("a v3 fixture");
    let dir = copy_of(&fixture.dir());
    {
        let catalog = RedbCatalog::open(&dir.path().join("catalog")).unwrap();
        let secret = catalog.get(&CatalogKey::Config(ConfigName::FingerprintKey)).unwrap().expect("a secret");
        let secret: u64 = std::str::from_utf8(&secret).unwrap().parse().unwrap();
        let audit = LedgerName::parse("audit").unwrap();
        let value = catalog.get(&CatalogKey::Keys(audit, 0)).unwrap().expect("keys:audit:00000000");
        let expected =
            [(0, fingerprints::fingerprint(secret, "req-1")), (3, fingerprints::fingerprint(secret, "req-4"))];
        assert_eq!(fingerprints::decode(&value, CHUNK_ENTRIES).unwrap(), expected);
    }
    let store = open(dir.path());
    let cursors = store.cursors().await.unwrap();
    let (exporter, id, sent_to) = FIXTURE_CURSOR;
    let found: Vec<_> = cursors.iter().map(|c| (c.exporter.as_str(), c.ledger.as_str(), c.id, c.sent_to)).collect();
    assert_eq!(found, [(exporter, "audit", id, Some(sent_to))]);
    close(store).await;
}

/// What format 5 added, as the v5 fixture holds it: every entry's chain
/// hash, recomputed here from the stored entries, `first_prev_hash` (`h_0`)
/// and the head hash; the ledgers of the older fixtures have no chain, and
/// keep none after their migration to format 5.
#[tokio::test(flavor = "multi_thread")]
async fn the_format_5_fixture_keeps_its_hash_chains_and_older_ledgers_stay_chainless() {
    for fixture in &FIXTURES {
        let dir = copy_of(&fixture.dir());
        let store = open(dir.path());
        for name in ["audit", "payments.eu"] {
            let l = ledger(name);
            let info = store.ledger_info(&l).unwrap();
            let entries = read_all(&store, &l);
            let head = store.chain_head(&l).unwrap();
            if fixture.version < 5 {
                assert!(entries.iter().all(|e| e.hash.is_none()), "v{}: {name} has no chain", fixture.version);
                assert_eq!((info.first_prev_hash, head.hash), (None, None));
                continue;
            }
            let mut prev = chain::genesis(name, info.incarnation);
            assert_eq!(info.first_prev_hash, Some(chain::to_hex(&prev)));
            for e in &entries {
                prev = chain::link(&prev, e.id, e.ts, e.key.as_deref(), e.payload.as_str().as_bytes());
                assert_eq!(e.hash, Some(prev), "v5: {name} id {}", e.id);
            }
            assert_eq!(head.hash, Some(chain::to_hex(&prev)));
        }
        close(store).await;
    }
}

/// What format 4 added, as the v4 fixture holds it: a watch session's
/// header and its position in `audit`, read back by today's store.
#[tokio::test(flavor = "multi_thread")]
async fn the_format_4_fixture_keeps_its_watch_session() {
    let fixture = FIXTURES.iter().find(|f| f.version == 4).expect("a v4 fixture");
    let dir = copy_of(&fixture.dir());
    let store = open(dir.path());
    let sessions = store.watch_sessions().await.unwrap();
    assert_eq!(sessions, [(FIXTURE_WATCH_SESSION, fixture_watch_session())]);
    let positions = store.watch_positions(FIXTURE_WATCH_SESSION).await.unwrap();
    assert_eq!(positions, [(ledger("audit"), fixture_watch_position())]);
    close(store).await;
}

/// What format 6 added, as the v6 fixture holds it: a snapshot pin of both
/// ledgers at their heads, long expired: today's store loads it, it holds
/// nothing, and the expiry pass deletes it and says so.
#[tokio::test(flavor = "multi_thread")]
async fn the_format_6_fixture_keeps_its_snapshot_pin_until_the_expiry_pass() {
    let fixture = FIXTURES.iter().find(|f| f.version == 6).expect("a v6 fixture");
    let dir = copy_of(&fixture.dir());
    let store = open(dir.path());
    let pins = store.pins();
    assert_eq!(pins.len(), 1, "{pins:?}");
    let pin = &pins[0].1;
    assert_eq!(pin.by.as_deref(), Some("fixture"));
    let heads: Vec<(&str, u64, u64, u64)> =
        pin.ledgers.iter().map(|(l, p)| (l.as_str(), p.incarnation, p.first, p.head)).collect();
    assert_eq!(heads, [("audit", 1, 1, 6), ("payments.eu", 2, 1, 2)]);
    assert_eq!(pin.expires_at, pin.created_at + 60_000);
    assert_eq!(store.live_pins(), 0, "long expired");
    let mut expired = store.events().subscribe("pin.expired", 4);
    assert_eq!(store.expire_pins().await.unwrap(), 1);
    assert!(store.pins().is_empty());
    assert!(matches!(expired.recv().await, Some(Received::Message(_))));
    close(store).await;
    let store = open(dir.path());
    assert!(store.pins().is_empty(), "the deletion was durable");
    close(store).await;
}
