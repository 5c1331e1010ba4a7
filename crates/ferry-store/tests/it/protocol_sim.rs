//! Crash tests of the pack protocols (freeze, sweep, ledger directory
//! removal) on the simulated filesystem: each protocol runs once to count
//! its sync points, then once per sync point with a power loss there. Both
//! disk images a power loss can leave (only what was synced; everything
//! written) go through `pack_protocols::finish_interrupted`, and the invariants of SPEC §3 are
//! checked on the result:
//!
//! - every `frozen` key has its file, with the key's length and SHA-256,
//!   decoding as a pack of the right ledger, chunk, ids and records;
//! - no `freezing` or `pruning` key is left;
//! - no file without a key (no `.pack.tmp`, every `.pack` has a `frozen`
//!   key, `Recovered::orphans` is empty);
//! - a second `recover` changes nothing.
//!
//! Hand-broken variants of the protocols (a missing directory fsync, a
//! missing file fsync, a sweep that drops the key first) must be caught,
//! which shows the harness has teeth. A last group kills the process (its
//! page cache survives) in the middle of a protocol, restarts (recover,
//! then redo), and loses power at every sync point of the restart.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_core::LedgerName;
use ferry_core::limits::FORMAT_VERSION;
use ferry_format::keys::CatalogKey;
use ferry_format::pack::{PackHeader, PackWriter, decode_pack};
use ferry_format::wal::WalRecord;
use ferry_store::pack_protocols::{self, ChunkState, OwnedRecord, PackInfo, PackLayout};
use ferry_store::sim::{CrashClock, MemCatalog, SimFs};
use ferry_store::vfs::{Vfs, VfsDir, VfsFile, VfsRead, VfsSegment};
use ferry_store::{Catalog, CatalogOp, LedgerMeta, StoreError};
use sha2::Digest as _;

const CHUNK_ENTRIES: u64 = 4;
const ROOT: &str = "/sim/data/ledgers";

type StoreResult<T> = ferry_store::Result<T>;

fn name(s: &str) -> LedgerName {
    LedgerName::parse(s).expect("valid ledger name")
}

fn layout() -> PackLayout {
    PackLayout { root: PathBuf::from(ROOT) }
}

/// The records of one chunk; deterministic, so the checker knows what a
/// pack must hold.
fn chunk_records(ledger: &LedgerName, chunk: u64) -> Vec<OwnedRecord> {
    let first = chunk * CHUNK_ENTRIES + 1;
    (first..first + CHUNK_ENTRIES)
        .map(|id| OwnedRecord {
            id,
            ts: 1_700_000_000_000 + id,
            key: (id % 2 == 1).then(|| format!("key-{id}")),
            idempotency_key: (id % 3 == 0).then(|| format!("idem-{id}")),
            hash: None,
            payload: format!(r#"{{"ledger":"{ledger}","id":{id},"pad":"{}"}}"#, "x".repeat((id % 7) as usize * 10)),
        })
        .collect()
}

/// One side of the protocols: a filesystem, a catalog and the pack layout.
struct World<'a> {
    vfs: &'a dyn Vfs,
    cat: &'a dyn Catalog,
    layout: &'a PackLayout,
}

/// A fresh simulated machine whose filesystem and catalog share a clock.
struct Env {
    fs: SimFs,
    cat: MemCatalog,
    layout: PackLayout,
    clock: Arc<CrashClock>,
}

impl Env {
    fn new() -> Self {
        let clock = CrashClock::new();
        let layout = layout();
        let fs = SimFs::new(&[layout.root.as_path()], clock.clone());
        let cat = MemCatalog::new(clock.clone());
        Self { fs, cat, layout, clock }
    }

    fn world(&self) -> World<'_> {
        World { vfs: &self.fs, cat: &self.cat, layout: &self.layout }
    }
}

// ---------------------------------------------------------------------------
// The protocol steps the scenarios are made of, as the store runs them.

fn create_ledger(w: &World<'_>, ledger: &str) -> StoreResult<()> {
    let meta =
        LedgerMeta { incarnation: 1, created_at: 1, first: 1, wal_from: (0, 0), chain: false, first_prev_hash: None };
    let value = serde_json::to_vec(&meta).expect("metadata serialises");
    w.cat.commit(&[CatalogOp::Put(CatalogKey::Ledger(name(ledger)), value)])
}

fn freeze(w: &World<'_>, ledger: &str, chunk: u64) -> StoreResult<()> {
    let l = name(ledger);
    let mut records = chunk_records(&l, chunk).into_iter().map(Ok);
    let pinned =
        pack_protocols::Pinned { chunk_entries: CHUNK_ENTRIES, format_version: FORMAT_VERSION, fingerprint_key: 7 };
    pack_protocols::freeze(w.vfs, w.cat, w.layout, &l, chunk, &pinned, &mut records).map(|_| ())
}

fn chunk_state(w: &World<'_>, ledger: &str, chunk: u64) -> StoreResult<Option<ChunkState>> {
    let key = CatalogKey::Chunk(name(ledger), chunk);
    w.cat.get(&key)?.map(|v| ChunkState::decode(&key, &v)).transpose()
}

fn frozen_info(w: &World<'_>, ledger: &str, chunk: u64) -> StoreResult<Option<PackInfo>> {
    Ok(match chunk_state(w, ledger, chunk)? {
        Some(ChunkState::Frozen(info)) => Some(info),
        _ => None,
    })
}

/// Retention's sweep of the oldest chunk, with the ledger's new `first` in
/// the demotion commit.
fn prune(w: &World<'_>, ledger: &str, chunk: u64) -> StoreResult<()> {
    let info = frozen_info(w, ledger, chunk)?.expect("pruning a frozen chunk");
    let meta = LedgerMeta {
        incarnation: 1,
        created_at: 1,
        first: info.last_id() + 1,
        wal_from: (0, 0),
        chain: false,
        first_prev_hash: None,
    };
    let with =
        vec![CatalogOp::Put(CatalogKey::Ledger(name(ledger)), serde_json::to_vec(&meta).expect("metadata serialises"))];
    pack_protocols::sweep(w.vfs, w.cat, w.layout, &name(ledger), chunk, &info, with)
}

/// A ledger's deletion as the freezer does it: one commit removes the
/// ledger key and demotes every frozen chunk, then the sweep removes the
/// files, then the directories go.
fn delete_ledger(w: &World<'_>, ledger: &str) -> StoreResult<()> {
    let l = name(ledger);
    let mut frozen = Vec::new();
    for (key, value) in w.cat.scan(&CatalogKey::chunk_prefix(&l))? {
        if let (CatalogKey::Chunk(_, chunk), ChunkState::Frozen(info)) = (&key, ChunkState::decode(&key, &value)?) {
            frozen.push((*chunk, info));
        }
    }
    let mut ops = vec![CatalogOp::Delete(CatalogKey::Ledger(l.clone()))];
    for (chunk, info) in &frozen {
        ops.push(CatalogOp::Put(CatalogKey::Chunk(l.clone(), *chunk), ChunkState::Pruning(info.clone()).encode()));
    }
    w.cat.commit(&ops)?;
    for (chunk, _) in &frozen {
        pack_protocols::sweep_demoted(w.vfs, w.cat, w.layout, &l, *chunk)?;
    }
    pack_protocols::remove_ledger_dirs(w.vfs, w.layout, &l).map(drop)
}

// ---------------------------------------------------------------------------
// The checker.

/// Everything observable of a machine: file contents and catalog entries.
type Snapshot = (BTreeMap<PathBuf, Vec<u8>>, BTreeMap<String, Vec<u8>>);

fn snapshot(fs: &SimFs, cat: &MemCatalog) -> Result<Snapshot, String> {
    let mut files = BTreeMap::new();
    for path in fs.files() {
        let bytes = fs.read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
        files.insert(path, bytes);
    }
    let keys = cat.scan("").map_err(|e| format!("scan the catalog: {e}"))?;
    Ok((files, keys.into_iter().map(|(k, v)| (k.encode(), v)).collect()))
}

/// Checks the state after recovery: keys against files, files against keys.
fn check_state(fs: &SimFs, cat: &MemCatalog, layout: &PackLayout) -> Result<(), String> {
    let keys = cat.scan(CatalogKey::CHUNK_PREFIX).map_err(|e| format!("scan chunk keys: {e}"))?;
    for (key, value) in &keys {
        let CatalogKey::Chunk(ledger, chunk) = key else { return Err(format!("{key} under the chunk prefix")) };
        let state = ChunkState::decode(key, value).map_err(|e| e.to_string())?;
        let ChunkState::Frozen(info) = state else {
            return Err(format!("{key} is still {state:?} after recovery"));
        };
        check_pack(fs, layout, ledger, *chunk, &info).map_err(|e| format!("{key}: {e}"))?;
    }
    for path in fs.files() {
        let shown = path.display();
        if path.to_string_lossy().ends_with(".pack.tmp") {
            return Err(format!("temporary file {shown} survived recovery"));
        }
        let Some((ledger, chunk)) = pack_protocols::parse_pack_path(layout, &path) else {
            return Err(format!("{shown} is not a pack path"));
        };
        match cat.get(&CatalogKey::Chunk(ledger, chunk)).map_err(|e| e.to_string())? {
            Some(v) if v.starts_with(br#"{"state":"frozen""#) => {}
            Some(v) => return Err(format!("{shown} has key {}", String::from_utf8_lossy(&v))),
            None => return Err(format!("{shown} has no catalog key")),
        }
    }
    Ok(())
}

/// A `frozen` key's file: the key's length and SHA-256, a valid pack of the
/// right chunk, holding exactly the chunk's records.
fn check_pack(fs: &SimFs, layout: &PackLayout, ledger: &LedgerName, chunk: u64, info: &PackInfo) -> Result<(), String> {
    let path = layout.pack_path(ledger, chunk);
    let bytes = fs.read(&path).map_err(|e| format!("its file {}: {e}", path.display()))?;
    if bytes.len() as u64 != info.len {
        return Err(format!("{} has {} bytes, the key says {}", path.display(), bytes.len(), info.len));
    }
    if pack_protocols::hex(&sha2::Sha256::digest(&bytes)) != info.sha256 {
        return Err(format!("{} does not have the key's SHA-256", path.display()));
    }
    let mut seen = Vec::new();
    let pack = decode_pack(&bytes, |r| {
        seen.push((r.id, r.ts, r.key.map(str::to_owned), r.idempotency_key.map(str::to_owned), r.payload.to_vec()))
    })
    .map_err(|e| format!("{} does not decode: {e}", path.display()))?;
    let h = &pack.header;
    let first = chunk * CHUNK_ENTRIES + 1;
    if h.ledger != ledger.as_str()
        || h.chunk != chunk
        || h.first_id != first
        || h.count != CHUNK_ENTRIES
        || info.first_id != first
        || info.count != CHUNK_ENTRIES
    {
        return Err(format!("header {h:?} or key {info:?} is not chunk {chunk} of {ledger}"));
    }
    let expected: Vec<_> = chunk_records(ledger, chunk)
        .into_iter()
        .map(|r| (r.id, r.ts, r.key, r.idempotency_key, r.payload.into_bytes()))
        .collect();
    if seen != expected {
        return Err(format!("{} holds other records than chunk {chunk}'s", path.display()));
    }
    Ok(())
}

/// Recovers a crash image and checks every invariant, including that a
/// second recovery changes nothing.
fn check_image(fs: &SimFs, cat: &MemCatalog, layout: &PackLayout) -> Result<(), String> {
    let first = pack_protocols::finish_interrupted(fs, cat, layout).map_err(|e| format!("recover failed: {e}"))?;
    if !first.orphans.is_empty() {
        return Err(format!("recover left orphans: {:?}", first.orphans));
    }
    check_state(fs, cat, layout)?;
    let before = snapshot(fs, cat)?;
    let second =
        pack_protocols::finish_interrupted(fs, cat, layout).map_err(|e| format!("second recover failed: {e}"))?;
    let after = snapshot(fs, cat)?;
    if before != after {
        return Err("a second recover changed files or keys".into());
    }
    if !second.orphans.is_empty() || format!("{:?}", second.frozen) != format!("{:?}", first.frozen) {
        return Err(format!("a second recover found {second:?} after {first:?}"));
    }
    Ok(())
}

/// Checks both power-loss images of `env` as it is now.
fn check_images(env: &Env, label: &str, violations: &mut Vec<String>) {
    for pessimistic in [true, false] {
        let fs = env.fs.crash_image(pessimistic);
        let cat = env.cat.crash_image();
        if let Err(v) = check_image(&fs, &cat, &env.layout) {
            let kind = if pessimistic { "synced-only" } else { "everything-written" };
            violations.push(format!("{label}, {kind} image: {v}"));
        }
    }
}

type Step = Box<dyn Fn(&World<'_>) -> StoreResult<()>>;

/// A protocol run `op`, after a `setup` that brings a fresh machine to the
/// state it starts from.
struct Scenario {
    name: String,
    setup: Box<dyn Fn(&Env)>,
    op: Step,
}

impl Scenario {
    fn new(name: &str, setup: impl Fn(&World<'_>) -> StoreResult<()> + 'static, op: Step) -> Self {
        Self {
            name: name.into(),
            setup: Box::new(move |env: &Env| setup(&env.world()).expect("setup runs without a crash")),
            op,
        }
    }
}

/// Runs `op` once to count its sync points, then crashes it at each one in
/// turn; returns every invariant violation found.
fn explore(s: &Scenario) -> Vec<String> {
    let mut violations = Vec::new();
    let env = Env::new();
    (s.setup)(&env);
    let before = env.clock.syncs();
    if let Err(e) = (s.op)(&env.world()) {
        return vec![format!("{}: fails without a crash: {e}", s.name)];
    }
    // A restart with nothing left to do has no sync points: only the state
    // after it is checked.
    let total = env.clock.syncs() - before;
    check_images(&env, &format!("{}: after completion", s.name), &mut violations);

    for n in 1..=total {
        let env = Env::new();
        (s.setup)(&env);
        env.clock.crash_at(n);
        let result = (s.op)(&env.world());
        let label = format!("{}: crash at sync point {n} of {total}", s.name);
        if result.is_ok() || !env.clock.crashed() {
            violations.push(format!("{label}: the protocol did not fail with the crash"));
        }
        check_images(&env, &label, &mut violations);
    }
    violations
}

fn assert_no_violations(scenarios: &[Scenario]) {
    let mut all = Vec::new();
    for s in scenarios {
        all.extend(explore(s));
    }
    assert!(all.is_empty(), "{} invariant violations:\n{}", all.len(), all.join("\n"));
}

fn setup_frozen(ledger: &'static str, chunks_: &'static [u64]) -> impl Fn(&World<'_>) -> StoreResult<()> {
    move |w| {
        create_ledger(w, ledger)?;
        chunks_.iter().try_for_each(|c| freeze(w, ledger, *c))
    }
}

// ---------------------------------------------------------------------------
// The real protocols hold every invariant at every crash point.

#[test]
fn freeze_survives_a_crash_at_every_sync_point() {
    assert_no_violations(&[
        Scenario::new(
            "freeze chunk 0 (new ledger dir)",
            setup_frozen("audit", &[]),
            Box::new(|w| freeze(w, "audit", 0)),
        ),
        Scenario::new(
            "freeze chunk 1 (existing bucket)",
            setup_frozen("audit", &[0]),
            Box::new(|w| freeze(w, "audit", 1)),
        ),
        Scenario::new(
            "freeze chunk 1000 (new bucket)",
            setup_frozen("audit", &[0, 1]),
            Box::new(|w| freeze(w, "audit", 1000)),
        ),
        Scenario::new(
            "freeze beside another ledger",
            setup_frozen("other", &[0]),
            Box::new(|w| create_ledger(w, "audit").and_then(|()| freeze(w, "audit", 0))),
        ),
    ]);
}

#[test]
fn sweep_survives_a_crash_at_every_sync_point() {
    assert_no_violations(&[
        Scenario::new("sweep the only chunk", setup_frozen("audit", &[0]), Box::new(|w| prune(w, "audit", 0))),
        Scenario::new(
            "sweep the oldest of three",
            setup_frozen("audit", &[0, 1, 1000]),
            Box::new(|w| prune(w, "audit", 0)),
        ),
        Scenario::new(
            "sweep the last chunk of a bucket",
            setup_frozen("audit", &[1000]),
            Box::new(|w| prune(w, "audit", 1000)),
        ),
    ]);
}

#[test]
fn freeze_then_sweep_sequences_survive_a_crash_at_every_sync_point() {
    assert_no_violations(&[
        Scenario::new(
            "freeze 0, freeze 1, sweep 0, freeze 2, sweep 1",
            setup_frozen("audit", &[]),
            Box::new(|w| {
                freeze(w, "audit", 0)?;
                freeze(w, "audit", 1)?;
                prune(w, "audit", 0)?;
                freeze(w, "audit", 2)?;
                prune(w, "audit", 1)
            }),
        ),
        Scenario::new(
            "two ledgers interleaved, across buckets",
            |w: &World<'_>| create_ledger(w, "audit").and_then(|()| create_ledger(w, "billing")),
            Box::new(|w| {
                freeze(w, "audit", 999)?;
                freeze(w, "billing", 0)?;
                freeze(w, "audit", 1000)?;
                prune(w, "audit", 999)?;
                prune(w, "billing", 0)?;
                freeze(w, "billing", 1)
            }),
        ),
    ]);
}

#[test]
fn ledger_deletion_survives_a_crash_at_every_sync_point() {
    assert_no_violations(&[
        Scenario::new(
            "delete a ledger without packs",
            setup_frozen("audit", &[]),
            Box::new(|w| delete_ledger(w, "audit")),
        ),
        Scenario::new(
            "delete a ledger with packs in two buckets",
            setup_frozen("audit", &[0, 1, 1000]),
            Box::new(|w| delete_ledger(w, "audit")),
        ),
        Scenario::new(
            "delete beside another ledger, then re-create and freeze",
            |w: &World<'_>| setup_frozen("audit", &[0, 1])(w).and_then(|()| setup_frozen("other", &[0])(w)),
            Box::new(|w| {
                delete_ledger(w, "audit")?;
                create_ledger(w, "audit")?;
                freeze(w, "audit", 0)
            }),
        ),
        Scenario::new(
            "prune, then delete",
            setup_frozen("audit", &[0, 1]),
            Box::new(|w| prune(w, "audit", 0).and_then(|()| delete_ledger(w, "audit"))),
        ),
    ]);
}

#[test]
fn remove_ledger_dirs_survives_a_crash_at_every_sync_point() {
    // The directories of a ledger whose chunks were all swept already.
    let setup = |w: &World<'_>| {
        setup_frozen("audit", &[0, 1000])(w)?;
        prune(w, "audit", 0)?;
        prune(w, "audit", 1000)
    };
    assert_no_violations(&[Scenario::new(
        "remove a ledger's empty directories",
        setup,
        Box::new(|w| pack_protocols::remove_ledger_dirs(w.vfs, w.layout, &name("audit")).map(drop)),
    )]);
}

// ---------------------------------------------------------------------------
// The harness has teeth: hand-broken protocols are caught.

#[derive(Clone, Copy, PartialEq)]
enum Broken {
    /// Every step in: the control.
    Nothing,
    NoDirFsync,
    NoFileFsync,
}

/// The mark-then-write protocol written out by hand with one step left out.
fn broken_freeze(w: &World<'_>, ledger: &str, chunk: u64, broken: Broken) -> StoreResult<()> {
    let io = |what: &'static str| move |e: io::Error| StoreError::Io { context: what.into(), source: e };
    let l = name(ledger);
    let key = CatalogKey::Chunk(l.clone(), chunk);
    w.cat.commit(&[CatalogOp::Put(key.clone(), ChunkState::Freezing.encode())])?;
    let (ledger_dir, bucket) = (w.layout.ledger_dir(&l), w.layout.bucket_dir(&l, chunk));
    for dir in [&ledger_dir, &bucket] {
        match w.vfs.create_dir(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create dir")(e)),
        }
    }
    let records = chunk_records(&l, chunk);
    let first_id = chunk * CHUNK_ENTRIES + 1;
    let header =
        PackHeader { format_version: FORMAT_VERSION, ledger: ledger.into(), chunk, first_id, count: CHUNK_ENTRIES };
    let mut writer = PackWriter::new(Vec::new(), header).expect("pack header");
    for r in &records {
        writer
            .push(&WalRecord {
                ledger,
                id: r.id,
                ts: r.ts,
                key: r.key.as_deref(),
                idempotency_key: r.idempotency_key.as_deref(),
                batch_continues: false,
                group_start: false,
                relocated: false,
                hash: None,
                payload: r.payload.as_bytes(),
            })
            .expect("push record");
    }
    let (bytes, len, _crc) = writer.finish().expect("finish pack");
    let info = PackInfo {
        len,
        sha256: pack_protocols::hex(&sha2::Sha256::digest(&bytes)),
        format_version: FORMAT_VERSION,
        first_id,
        count: CHUNK_ENTRIES,
        first_ts: records[0].ts,
        last_ts: records[records.len() - 1].ts,
        idempotency_keys: records.iter().filter(|r| r.idempotency_key.is_some()).count() as u64,
        last_hash: None,
    };
    let (tmp, path) = (w.layout.tmp_path(&l, chunk), w.layout.pack_path(&l, chunk));
    let mut file = w.vfs.create_new(&tmp).map_err(io("create"))?;
    file.write_all(&bytes).map_err(io("write"))?;
    if broken != Broken::NoFileFsync {
        file.sync().map_err(io("fdatasync"))?;
    }
    drop(file);
    w.vfs.rename(&tmp, &path).map_err(io("rename"))?;
    if broken != Broken::NoDirFsync {
        for dir in [&bucket, &ledger_dir, &w.layout.root] {
            w.vfs.sync_dir(dir).map_err(io("fsync dir"))?;
        }
    }
    w.cat.commit(&[CatalogOp::Put(key, ChunkState::Frozen(info).encode())])
}

/// A sweep that deletes the key before the file: "key absent ⇒ file gone"
/// breaks for a moment.
fn key_first_sweep(w: &World<'_>, ledger: &str, chunk: u64) -> StoreResult<()> {
    let l = name(ledger);
    w.cat.commit(&[CatalogOp::Delete(CatalogKey::Chunk(l.clone(), chunk))])?;
    let path = w.layout.pack_path(&l, chunk);
    w.vfs.remove_file(&path).map_err(|e| StoreError::Io { context: "unlink".into(), source: e })?;
    w.vfs.sync_dir(&w.layout.bucket_dir(&l, chunk)).map_err(|e| StoreError::Io { context: "fsync".into(), source: e })
}

#[test]
fn the_harness_catches_a_freeze_without_the_directory_fsync() {
    // The hand-written protocol with every step in passes: the checker does
    // not reject whatever is written by hand.
    let complete = explore(&Scenario::new(
        "hand-written freeze, no step left out",
        setup_frozen("audit", &[]),
        Box::new(|w| broken_freeze(w, "audit", 0, Broken::Nothing)),
    ));
    assert!(complete.is_empty(), "the complete hand-written freeze must pass: {complete:#?}");

    let violations = explore(&Scenario::new(
        "freeze without the directory fsync",
        setup_frozen("audit", &[]),
        Box::new(|w| broken_freeze(w, "audit", 0, Broken::NoDirFsync)),
    ));
    assert!(
        violations.iter().any(|v| v.contains("synced-only") && v.contains("recover failed")),
        "a freeze without the directory fsync must lose the file of a frozen key in the synced-only image: \
         {violations:#?}"
    );
}

#[test]
fn the_harness_catches_a_freeze_without_the_file_fsync() {
    let violations = explore(&Scenario::new(
        "freeze without the file fsync",
        setup_frozen("audit", &[]),
        Box::new(|w| broken_freeze(w, "audit", 0, Broken::NoFileFsync)),
    ));
    assert!(
        violations.iter().any(|v| v.contains("synced-only")),
        "a freeze without the file fsync must leave a frozen key over unsynced bytes: {violations:#?}"
    );
}

#[test]
fn the_harness_catches_a_sweep_that_drops_the_key_first() {
    let violations = explore(&Scenario::new(
        "sweep that deletes the key before the file",
        setup_frozen("audit", &[0]),
        Box::new(|w| key_first_sweep(w, "audit", 0)),
    ));
    assert!(
        violations.iter().any(|v| v.contains("orphans") || v.contains("has no catalog key")),
        "a file whose key is gone must be reported: {violations:#?}"
    );
}

// ---------------------------------------------------------------------------
// A process kill (the page cache survives) in the middle of a protocol,
// a restart (recover, then the work is redone), and a power loss at every
// sync point of the restart.

/// From the `at`-th mutating operation on, every call fails, as if the
/// process had died there; what it did before stays in the simulated page
/// cache (live, not necessarily durable).
struct Kill {
    ops: AtomicU64,
    at: u64,
}

impl Kill {
    fn new(at: u64) -> Arc<Self> {
        Arc::new(Self { ops: AtomicU64::new(0), at })
    }

    fn dead(&self) -> bool {
        self.ops.load(Ordering::SeqCst) >= self.at
    }

    fn alive(&self) -> io::Result<()> {
        if self.dead() { Err(io::Error::other("process killed")) } else { Ok(()) }
    }

    fn step(&self) -> io::Result<()> {
        self.alive()?;
        let n = self.ops.fetch_add(1, Ordering::SeqCst) + 1;
        if n >= self.at { Err(io::Error::other("process killed")) } else { Ok(()) }
    }
}

struct KillFs<'a> {
    fs: &'a SimFs,
    kill: Arc<Kill>,
}

struct KillFile {
    file: Box<dyn VfsFile>,
    kill: Arc<Kill>,
}

impl VfsFile for KillFile {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.kill.step()?;
        self.file.write_all(buf)
    }
    fn sync(&mut self) -> io::Result<()> {
        self.kill.step()?;
        self.file.sync()
    }
}

impl Vfs for KillFs<'_> {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.kill.step()?;
        self.fs.create_dir(path)
    }
    fn create_new(&self, path: &Path) -> io::Result<Box<dyn VfsFile>> {
        self.kill.step()?;
        let file = self.fs.create_new(path)?;
        Ok(Box::new(KillFile { file, kill: self.kill.clone() }))
    }
    fn open_read(&self, path: &Path) -> io::Result<Box<dyn VfsRead>> {
        self.kill.alive()?;
        self.fs.open_read(path)
    }
    // The pack protocols open no segment; the WAL's simulated-disk test
    // (wal_sim.rs) crashes those through the clock.
    fn create_segment(&self, path: &Path) -> io::Result<Arc<dyn VfsSegment>> {
        self.kill.step()?;
        self.fs.create_segment(path)
    }
    fn open_segment(&self, path: &Path) -> io::Result<Arc<dyn VfsSegment>> {
        self.kill.alive()?;
        self.fs.open_segment(path)
    }
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.kill.step()?;
        self.fs.rename(from, to)
    }
    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.kill.step()?;
        self.fs.remove_file(path)
    }
    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.kill.step()?;
        self.fs.remove_dir(path)
    }
    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        self.kill.step()?;
        self.fs.sync_dir(path)
    }
    // The pack protocols sync directories by path; only the WAL holds one open.
    fn open_dir(&self, path: &Path) -> io::Result<Box<dyn VfsDir>> {
        self.kill.alive()?;
        self.fs.open_dir(path)
    }
    fn list_dir(&self, path: &Path) -> io::Result<Vec<String>> {
        self.kill.alive()?;
        self.fs.list_dir(path)
    }
    fn exists(&self, path: &Path) -> bool {
        self.fs.exists(path)
    }
}

struct KillCatalog<'a> {
    cat: &'a MemCatalog,
    kill: Arc<Kill>,
}

impl Catalog for KillCatalog<'_> {
    fn get(&self, key: &CatalogKey) -> StoreResult<Option<Vec<u8>>> {
        self.kill.alive().map_err(|e| StoreError::Catalog(e.to_string()))?;
        self.cat.get(key)
    }
    fn scan(&self, prefix: &str) -> StoreResult<Vec<(CatalogKey, Vec<u8>)>> {
        self.kill.alive().map_err(|e| StoreError::Catalog(e.to_string()))?;
        self.cat.scan(prefix)
    }
    fn commit(&self, ops: &[CatalogOp]) -> StoreResult<()> {
        self.kill.step().map_err(|e| StoreError::Catalog(e.to_string()))?;
        self.cat.commit(ops)
    }
}

type SharedStep = Arc<dyn Fn(&World<'_>) -> StoreResult<()>>;

/// `op` killed at each of its operations in turn; the restart recovers and
/// runs `redo` (what the store does after a restart: the freezer redoes a
/// chunk, retention sweeps again, a user deletes again).
fn killed_scenarios(name: &str, setup: SharedStep, op: SharedStep, redo: SharedStep) -> Vec<Scenario> {
    let count = {
        let env = Env::new();
        setup(&env.world()).expect("setup");
        let kill = Kill::new(u64::MAX);
        let (fs, cat) = (KillFs { fs: &env.fs, kill: kill.clone() }, KillCatalog { cat: &env.cat, kill: kill.clone() });
        op(&World { vfs: &fs, cat: &cat, layout: &env.layout }).expect("op without a kill");
        kill.ops.load(Ordering::SeqCst)
    };
    (1..=count)
        .map(|k| {
            let (setup, op, redo) = (setup.clone(), op.clone(), redo.clone());
            let name = format!("{name}, killed at operation {k} of {count}, restarted");
            let label = name.clone();
            Scenario {
                name,
                setup: Box::new(move |env: &Env| {
                    setup(&env.world()).expect("setup");
                    let kill = Kill::new(k);
                    let fs = KillFs { fs: &env.fs, kill: kill.clone() };
                    let cat = KillCatalog { cat: &env.cat, kill };
                    let result = op(&World { vfs: &fs, cat: &cat, layout: &env.layout });
                    assert!(result.is_err(), "{label}: the killed run must fail");
                }),
                op: Box::new(move |w: &World<'_>| {
                    let recovered = pack_protocols::finish_interrupted(w.vfs, w.cat, w.layout)?;
                    if !recovered.orphans.is_empty() {
                        return Err(StoreError::CatalogCorrupted(format!("orphans {:?}", recovered.orphans)));
                    }
                    redo(w)
                }),
            }
        })
        .collect()
}

fn redo_freeze(ledger: &'static str, chunk: u64) -> SharedStep {
    Arc::new(move |w| if frozen_info(w, ledger, chunk)?.is_none() { freeze(w, ledger, chunk) } else { Ok(()) })
}

#[test]
fn a_killed_freeze_redone_after_restart_survives_a_power_loss_at_every_sync_point() {
    let mut scenarios = killed_scenarios(
        "freeze chunk 0 (new ledger dir)",
        Arc::new(setup_frozen("audit", &[])),
        Arc::new(|w| freeze(w, "audit", 0)),
        redo_freeze("audit", 0),
    );
    scenarios.extend(killed_scenarios(
        "freeze chunk 1000 (new bucket)",
        Arc::new(setup_frozen("audit", &[0])),
        Arc::new(|w| freeze(w, "audit", 1000)),
        redo_freeze("audit", 1000),
    ));
    assert_no_violations(&scenarios);
}

#[test]
fn a_killed_sweep_or_deletion_finished_after_restart_survives_a_power_loss_at_every_sync_point() {
    let mut scenarios = killed_scenarios(
        "sweep chunk 0",
        Arc::new(setup_frozen("audit", &[0, 1])),
        Arc::new(|w| prune(w, "audit", 0)),
        Arc::new(|w| if frozen_info(w, "audit", 0)?.is_some() { prune(w, "audit", 0) } else { Ok(()) }),
    );
    scenarios.extend(killed_scenarios(
        "delete a ledger with packs in two buckets",
        Arc::new(setup_frozen("audit", &[0, 1000])),
        Arc::new(|w| delete_ledger(w, "audit")),
        Arc::new(|w| {
            if w.cat.get(&CatalogKey::Ledger(name("audit")))?.is_some() { delete_ledger(w, "audit") } else { Ok(()) }
        }),
    ));
    assert_no_violations(&scenarios);
}

#[test]
fn a_killed_deletion_then_recreation_survives_a_power_loss_at_every_sync_point() {
    let scenarios = killed_scenarios(
        "delete a ledger, re-create it, freeze chunk 0",
        Arc::new(setup_frozen("audit", &[0, 1000])),
        Arc::new(|w| {
            delete_ledger(w, "audit")?;
            create_ledger(w, "audit")?;
            freeze(w, "audit", 0)
        }),
        Arc::new(|w| {
            if w.cat.get(&CatalogKey::Ledger(name("audit")))?.is_some() && frozen_info(w, "audit", 1000)?.is_some() {
                delete_ledger(w, "audit")?;
            }
            if w.cat.get(&CatalogKey::Ledger(name("audit")))?.is_none() {
                create_ledger(w, "audit")?;
            }
            redo_freeze("audit", 0)(w)
        }),
    );
    assert_no_violations(&scenarios);
}
