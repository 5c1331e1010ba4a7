//! The fuzz targets' logic over a fixed seed corpus and deterministic
//! mutations of it, for machines without a nightly toolchain (cargo-fuzz
//! needs one). Not coverage-guided, so weaker than `cargo fuzz run`, but
//! it runs with `cargo test` on stable. Each target runs for
//! `FERRY_FUZZ_SECS` seconds (default 5), starting from its seeds and the
//! inputs in `regressions/{target}/`. The regression tests below replay
//! what fuzzing found (all fixed in `crates/ferry-format`). A global
//! allocator watches every input: one allocation larger than a block can
//! be counts as a finding, as libFuzzer's malloc limit would. Not part of
//! CI: this crate is outside the main workspace.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ferry_format::pack::{BLOCK_RAW_BYTES_MAX, PackHeader, PackWriter, decode_header, decode_pack};
use ferry_format::wal::{WalRecord, decode_record, encode_record, encode_segment_header};
use ferry_fuzz::{fix_pack_crcs, fix_record_crc};

/// The largest single allocation a target may make on any input: one
/// block's raw bytes (the most a pack decoder needs at once).
const ALLOCATION_MAX: usize = BLOCK_RAW_BYTES_MAX;

/// The system allocator, noting the largest request made on each thread.
struct Watch;

thread_local! {
    // No destructor and a const initializer: safe to touch from the allocator.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: forwards every call to `System` unchanged; only records sizes.
unsafe impl GlobalAlloc for Watch {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static WATCH: Watch = Watch;

/// Runs `target` on `data` and returns the largest allocation it made (on
/// this thread). Panics propagate.
fn largest_allocation(target: fn(&[u8]), data: &[u8]) -> usize {
    LARGEST.with(|l| l.set(0));
    target(data);
    LARGEST.with(|l| l.get())
}

/// xorshift64*: deterministic, so a failure reproduces from its seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

fn record<'a>(
    ledger: &'a str,
    id: u64,
    key: Option<&'a str>,
    idem: Option<&'a str>,
    payload: &'a [u8],
) -> WalRecord<'a> {
    WalRecord {
        ledger,
        id,
        ts: 1_763_769_600_000 + id,
        key,
        idempotency_key: idem,
        batch_continues: id % 3 == 1,
        group_start: id.is_multiple_of(2),
        relocated: id.is_multiple_of(5),
        // Some seeds carry a chain hash (format 5), some none.
        hash: id.is_multiple_of(3).then_some([id as u8; 32]),
        payload,
    }
}

fn wal_seeds() -> Vec<Vec<u8>> {
    let mut segment = encode_segment_header(1).to_vec();
    let mut single = Vec::new();
    for id in 1..=6 {
        let key = format!("user-{id}");
        let r = record("audit", id, (id % 2 == 0).then_some(key.as_str()), (id == 3).then_some("req-1"), br#"{"a":1}"#);
        encode_record(&r, &mut segment);
        if id == 2 {
            encode_record(&r, &mut single);
        }
    }
    vec![segment, single, encode_segment_header(1).to_vec()]
}

fn pack_bytes(ledger: &str, chunk: u64, count: u64, payload_len: usize) -> Vec<u8> {
    let header = PackHeader { format_version: 1, ledger: ledger.into(), chunk, first_id: chunk * count + 1, count };
    let mut w = PackWriter::new(Vec::new(), header.clone()).expect("pack writer");
    let payload = format!("\"{}\"", "p".repeat(payload_len));
    for i in 0..count {
        let key = format!("k{i}");
        let r = record(ledger, header.first_id + i, (i % 3 == 0).then_some(key.as_str()), None, payload.as_bytes());
        w.push(&r).expect("push");
    }
    w.finish().expect("finish").0
}

fn pack_seeds() -> Vec<Vec<u8>> {
    vec![pack_bytes("audit", 0, 4, 8), pack_bytes("a", 7, 1, 0), pack_bytes("billing.eu", 2, 900, 90)]
}

fn key_seeds() -> Vec<Vec<u8>> {
    [
        "ledger:audit",
        "chunk:audit:00000003",
        "cursor:ch:audit",
        "pin:00000000000000000009",
        "config:chunk_entries",
        "config:format_version",
        "chunk:a.b-c_d:99999999",
        "pin:18446744073709551615",
    ]
    .iter()
    .map(|k| k.as_bytes().to_vec())
    .collect()
}

fn mutate(rng: &mut Rng, seeds: &[Vec<u8>], data: &mut Vec<u8>) {
    for _ in 0..=rng.below(4) {
        let len = data.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                data[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                data[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                let i = rng.below(len);
                data[i] = [0, 1, 0x7f, 0x80, 0xff, b':', b'0', b'9'][rng.below(8)];
            }
            3 => data.truncate(rng.below(len + 1)),
            4 => {
                let at = rng.below(len + 1);
                let n = rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                data.splice(at..at, bytes);
            }
            5 if len >= 8 => {
                // An interesting integer over a length or id field.
                let at = rng.below(len - 7);
                let v: u64 = [0, 1, u64::MAX, u64::MAX - 1, u32::MAX as u64, 64 << 20, len as u64][rng.below(7)];
                let width = [1, 2, 4, 8][rng.below(4)];
                data[at..at + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            6 if len > 0 => {
                // Duplicate a slice of the input somewhere else.
                let (a, b) = (rng.below(len), rng.below(len));
                let (from, to) = (a.min(b), a.max(b));
                let at = rng.below(len + 1);
                let piece = data[from..to].to_vec();
                data.splice(at..at, piece);
            }
            7 => {
                // Splice in another seed.
                let other = &seeds[rng.below(seeds.len())];
                let at = rng.below(len + 1);
                let from = rng.below(other.len() + 1);
                data.truncate(at);
                data.extend_from_slice(&other[from..]);
            }
            _ => {}
        }
    }
}

fn run(name: &str, mut seeds: Vec<Vec<u8>>, target: fn(&[u8])) {
    seeds.extend(regression_files(name).into_iter().map(|(_, bytes)| bytes));
    let secs = std::env::var("FERRY_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let deadline = Instant::now() + Duration::from_secs(secs);
    for s in &seeds {
        let largest = largest_allocation(target, s);
        assert!(largest <= ALLOCATION_MAX, "{name}: a seed allocated {largest} bytes at once");
    }
    let mut rng = Rng(0x5eed_f00d_u64 ^ name.len() as u64);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        for _ in 0..256 {
            let mut data = seeds[rng.below(seeds.len())].clone();
            mutate(&mut rng, &seeds, &mut data);
            let input = data.clone();
            match std::panic::catch_unwind(|| largest_allocation(target, &data)) {
                Err(_) => panic!("{name}: crash on input {input:02x?}"),
                Ok(largest) if largest > ALLOCATION_MAX => {
                    panic!("{name}: {largest} bytes allocated at once on input {input:02x?}")
                }
                Ok(_) => {}
            }
            runs += 1;
        }
    }
    eprintln!("{name}: {runs} inputs in {secs} s, no crash");
}

#[test]
fn wal_record_corpus() {
    run("wal_record", wal_seeds(), ferry_fuzz::wal_record);
}

#[test]
fn pack_corpus() {
    run("pack", pack_seeds(), ferry_fuzz::pack);
}

#[test]
fn catalog_key_corpus() {
    run("catalog_key", key_seeds(), ferry_fuzz::catalog_key);
}

/// Writes the seeds, and the built regression inputs, as files for
/// `cargo fuzz run TARGET corpus/TARGET seeds/TARGET regressions/TARGET`:
/// `cargo test --test corpus -- --ignored write_seed_files`.
#[test]
#[ignore = "writes fuzz/seeds/ and fuzz/regressions/; run by hand when the formats change"]
fn write_seed_files() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (target, seeds) in [("wal_record", wal_seeds()), ("pack", pack_seeds()), ("catalog_key", key_seeds())] {
        let dir = root.join("seeds").join(target);
        std::fs::create_dir_all(&dir).expect("create the seed dir");
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).expect("write a seed");
        }
    }
    for (target, name, bytes) in built_regressions() {
        let dir = regressions_dir(target);
        std::fs::create_dir_all(&dir).expect("create the regressions dir");
        std::fs::write(dir.join(name), bytes).expect("write a regression input");
    }
}

// Regressions: inputs on which fuzzing found a bug in crates/ferry-format,
// since fixed. Each is kept as a file in `regressions/{target}/` (a seed
// for `cargo fuzz run` and for the runs above) and replayed here. Files
// from a fuzz run (`artifacts/…/crash-…`) can be dropped there as they are.

fn regressions_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("regressions").join(target)
}

/// The files in `regressions/{target}/`, sorted by name.
fn regression_files(target: &str) -> Vec<(String, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(regressions_dir(target)) else { return Vec::new() };
    let mut files: Vec<_> = entries
        .map(|e| {
            let e = e.expect("read the regressions dir");
            let bytes = std::fs::read(e.path()).expect("read a regression input");
            (e.file_name().to_string_lossy().into_owned(), bytes)
        })
        .collect();
    files.sort();
    files
}

/// The regression inputs built here rather than found as files.
fn built_regressions() -> Vec<(&'static str, &'static str, Vec<u8>)> {
    vec![
        ("pack", "pack-first-id-u64-max", pack_with_first_id(u64::MAX, 1, &[])),
        ("pack", "pack-block-ids-past-u64", pack_with_block_ids_past_u64()),
        ("wal_record", "record-overlong-ledger", overlong_record(64, None, None)),
        ("wal_record", "record-overlong-key", overlong_record(1, Some(257), None)),
        ("wal_record", "record-overlong-idempotency-key", overlong_record(1, None, Some(257))),
    ]
}

/// A pack of ledger "a" from its parts, checksums right: header, `body`
/// (the blocks), an index of `blocks`, trailer.
fn raw_pack(first_id: u64, count: u64, body: &[u8], blocks: &[[u8; 32]]) -> Vec<u8> {
    let ledger = b"a";
    let mut bytes = b"FERRYPCK".to_vec();
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.push(ledger.len() as u8);
    bytes.extend_from_slice(ledger);
    for v in [0u64, first_id, count] {
        bytes.extend_from_slice(&v.to_le_bytes()); // chunk, first_id, count
    }
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(body);
    let index_offset = bytes.len() as u64;
    for b in blocks {
        bytes.extend_from_slice(b);
    }
    bytes.extend_from_slice(&index_offset.to_le_bytes());
    bytes.extend_from_slice(&(blocks.len() as u32).to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(b"FERRYEND");
    bytes
}

/// Length of `raw_pack`'s header: magic, version, ledger "a", three u64s, CRC.
const RAW_PACK_HEADER_BYTES: u64 = 8 + 4 + 1 + 1 + 24 + 4;

fn pack_with_first_id(first_id: u64, count: u64, blocks: &[[u8; 32]]) -> Vec<u8> {
    raw_pack(first_id, count, &[], blocks)
}

/// A block index entry.
fn block_meta(first_id: u64, offset: u64, compressed_len: u32, raw_len: u32, records: u32) -> [u8; 32] {
    let mut out = [0u8; 32];
    out[..8].copy_from_slice(&first_id.to_le_bytes());
    out[8..16].copy_from_slice(&offset.to_le_bytes());
    out[16..20].copy_from_slice(&compressed_len.to_le_bytes());
    out[20..24].copy_from_slice(&raw_len.to_le_bytes());
    out[24..28].copy_from_slice(&records.to_le_bytes());
    out
}

/// A header that fits in u64 (first id u64::MAX - 1, one entry), and a block
/// claiming u32::MAX records from there: the index's running id overflows.
fn pack_with_block_ids_past_u64() -> Vec<u8> {
    let first_id = u64::MAX - 1;
    pack_with_first_id(first_id, 1, &[block_meta(first_id, RAW_PACK_HEADER_BYTES, 0, 0, u32::MAX)])
}

/// One WAL record of ledger `"l" * ledger_len`, with a key and an
/// idempotency key of the given lengths; checksum right.
fn overlong_record(ledger_len: usize, key_len: Option<usize>, idem_len: Option<usize>) -> Vec<u8> {
    let flags = u8::from(key_len.is_some()) | (u8::from(idem_len.is_some()) << 1);
    let mut body = vec![flags, ledger_len as u8];
    body.extend_from_slice("l".repeat(ledger_len).as_bytes());
    body.extend_from_slice(&1u64.to_le_bytes()); // id
    body.extend_from_slice(&0u64.to_le_bytes()); // ts
    for len in [key_len, idem_len].into_iter().flatten() {
        body.extend_from_slice(&(len as u16).to_le_bytes());
        body.extend_from_slice("k".repeat(len).as_bytes());
    }
    body.extend_from_slice(b"1"); // payload
    let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    bytes
}

fn target_fn(target: &str) -> fn(&[u8]) {
    match target {
        "wal_record" => ferry_fuzz::wal_record,
        "pack" => ferry_fuzz::pack,
        "catalog_key" => ferry_fuzz::catalog_key,
        other => panic!("no fuzz target {other}"),
    }
}

/// The target passes over `bytes` (no panic, no allocation over the limit).
fn replays(target: &str, name: &str, bytes: &[u8]) {
    let largest = largest_allocation(target_fn(target), bytes);
    assert!(largest <= ALLOCATION_MAX, "{target}/{name}: {largest} bytes allocated at once");
}

/// `decode_pack` refuses `bytes`, as they are and with their checksums fixed.
fn pack_rejected(bytes: &[u8]) {
    let mut fixed = bytes.to_vec();
    fix_pack_crcs(&mut fixed);
    for b in [bytes, &fixed] {
        assert!(decode_pack(b, |_| {}).is_err(), "decode_pack accepted {b:02x?}");
    }
}

/// `decode_record` refuses `bytes`, as they are and with the checksum fixed.
fn record_rejected(bytes: &[u8]) {
    let mut fixed = bytes.to_vec();
    fix_record_crc(&mut fixed);
    for b in [bytes, &fixed] {
        assert!(decode_record(b).is_err(), "decode_record accepted {b:02x?}");
    }
}

/// Every file in `regressions/`, through its target.
#[test]
fn regression_files_replay() {
    let mut n = 0;
    for target in ["wal_record", "pack", "catalog_key"] {
        for (name, bytes) in regression_files(target) {
            replays(target, &name, &bytes);
            n += 1;
        }
    }
    assert!(n >= 6, "only {n} regression files: rewrite them with write_seed_files");
}

/// The files written from the builders are what the builders give now.
#[test]
fn regression_files_are_up_to_date() {
    for (target, name, bytes) in built_regressions() {
        let on_disk = std::fs::read(regressions_dir(target).join(name)).expect("read a regression input");
        assert_eq!(on_disk, bytes, "regressions/{target}/{name} is stale: run write_seed_files");
    }
}

/// Found by libFuzzer (out-of-memory): a 144-byte pack whose index gives a
/// block a `raw_len` of almost 4 GiB. `decode_block` let zstd allocate that
/// much before decompressing. Fixed: the frame's own content size must
/// match the index and stay within `BLOCK_RAW_BYTES_MAX`.
#[test]
fn pack_that_claims_a_4_gib_block() {
    let bytes = std::fs::read(regressions_dir("pack").join("pack-oom-raw-len")).expect("read the reproducer");
    assert_eq!(bytes.len(), 144);
    replays("pack", "pack-oom-raw-len", &bytes);
    pack_rejected(&bytes);
}

/// A pack whose header says first id u64::MAX: `decode_index` added
/// `first_id + count` unchecked (a panic with overflow checks on, as in
/// this crate's builds and `cargo fuzz run -a`). Fixed: the header is
/// refused.
#[test]
fn pack_with_first_id_at_the_top_of_u64() {
    let bytes = pack_with_first_id(u64::MAX, 1, &[]);
    ferry_fuzz::pack(&bytes);
    assert!(decode_header(&bytes).is_err(), "header with ids past u64 accepted");
    pack_rejected(&bytes);
}

/// A block whose record count runs the index's next id past u64::MAX (the
/// other unchecked addition in `decode_index`). Fixed: checked.
#[test]
fn pack_whose_blocks_run_ids_past_u64() {
    let bytes = pack_with_block_ids_past_u64();
    assert!(decode_header(&bytes).is_ok(), "the header alone is valid");
    ferry_fuzz::pack(&bytes);
    pack_rejected(&bytes);
}

/// A record whose ledger is longer than the 63 bytes a name may have: the
/// decoder accepted it, the encoder refuses it (assert), so the round trip
/// failed. Fixed: the decoder enforces the encoder's limits.
#[test]
fn record_with_an_overlong_ledger() {
    let bytes = overlong_record(64, None, None);
    ferry_fuzz::wal_record(&bytes);
    record_rejected(&bytes);
}

/// The same for an entry key and an idempotency key over 256 bytes; at the
/// limits, the record decodes and round-trips.
#[test]
fn records_with_overlong_keys() {
    for (key, idem) in [(Some(257), None), (None, Some(257)), (Some(257), Some(257))] {
        let bytes = overlong_record(1, key, idem);
        ferry_fuzz::wal_record(&bytes);
        record_rejected(&bytes);
    }
    let at_limits = overlong_record(63, Some(256), Some(256));
    ferry_fuzz::wal_record(&at_limits);
    assert!(decode_record(&at_limits).is_ok(), "a record at the limits refused");
}
