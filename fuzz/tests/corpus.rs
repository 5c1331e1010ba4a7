//! The fuzz targets' logic over a fixed seed corpus and deterministic
//! mutations of it, for machines without a nightly toolchain (cargo-fuzz
//! needs one). Not coverage-guided, so weaker than `cargo fuzz run`, but
//! it runs with `cargo test` on stable. Each target runs for
//! `FERRY_FUZZ_SECS` seconds (default 5). The known findings reproduced by
//! the ignored tests below are skipped (`FERRY_FUZZ_KNOWN=crash` to count
//! them). Not part of CI: this crate is outside the main workspace.

use std::time::{Duration, Instant};

use ferry_format::pack::{PackHeader, PackWriter};
use ferry_format::wal::{WalRecord, encode_record, encode_segment_header};
use ferry_fuzz::Known;

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

fn run(name: &str, seeds: Vec<Vec<u8>>, target: fn(&[u8], Known)) {
    let known = Known::from_env(Known::Skip);
    let secs = std::env::var("FERRY_FUZZ_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let deadline = Instant::now() + Duration::from_secs(secs);
    for s in &seeds {
        target(s, known);
    }
    let mut rng = Rng(0x5eed_f00d_u64 ^ name.len() as u64);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        for _ in 0..256 {
            let mut data = seeds[rng.below(seeds.len())].clone();
            mutate(&mut rng, &seeds, &mut data);
            let input = data.clone();
            if std::panic::catch_unwind(|| target(&data, known)).is_err() {
                panic!("{name}: crash on input {input:02x?}");
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
    run("catalog_key", key_seeds(), |d, _| ferry_fuzz::catalog_key(d));
}

/// Writes the seeds as files for `cargo fuzz run TARGET seeds/TARGET`:
/// `cargo test --test corpus -- --ignored write_seed_files`.
#[test]
#[ignore = "writes fuzz/seeds/; run by hand when the formats change"]
fn write_seed_files() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    for (target, seeds) in [("wal_record", wal_seeds()), ("pack", pack_seeds()), ("catalog_key", key_seeds())] {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).expect("create the seed dir");
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).expect("write a seed");
        }
    }
}

/// A pack whose header says first id u64::MAX: the decoder's id arithmetic
/// overflows (a panic with overflow checks on, as in debug builds and
/// `cargo fuzz run -a`). Known; reported, not fixed here.
#[test]
#[ignore = "known finding: ferry-format pack::decode_index adds first_id + count unchecked"]
fn pack_with_first_id_at_the_top_of_u64() {
    let ledger = b"a";
    let mut bytes = b"FERRYPCK".to_vec();
    bytes.extend_from_slice(&1u32.to_le_bytes());
    bytes.push(ledger.len() as u8);
    bytes.extend_from_slice(ledger);
    for v in [0u64, u64::MAX, 1] {
        bytes.extend_from_slice(&v.to_le_bytes()); // chunk, first_id, count
    }
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    let index_offset = bytes.len() as u64; // no blocks
    bytes.extend_from_slice(&index_offset.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    let crc = crc32c::crc32c(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes.extend_from_slice(b"FERRYEND");
    ferry_fuzz::pack(&bytes, Known::Crash);
}

/// A record whose ledger is longer than the 63 bytes a name may have: the
/// decoder accepts it, the encoder refuses it (assert), so the round trip
/// fails. Known; reported, not fixed here.
#[test]
#[ignore = "known finding: ferry-format wal::decode_record does not enforce the field limits the encoder asserts"]
fn record_with_an_overlong_ledger() {
    let ledger = "l".repeat(64);
    let mut body = vec![0u8, ledger.len() as u8];
    body.extend_from_slice(ledger.as_bytes());
    body.extend_from_slice(&1u64.to_le_bytes());
    body.extend_from_slice(&0u64.to_le_bytes());
    body.extend_from_slice(b"1");
    let mut bytes = (body.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
    bytes.extend_from_slice(&body);
    ferry_fuzz::wal_record(&bytes, Known::Crash);
}
