//! Helpers shared by the integration tests: real stores in temp dirs, entry
//! builders, and byte-level access to the WAL segments in `{data_dir}/hot/`.

use std::path::{Path, PathBuf};

use ferry_core::limits::FORMAT_VERSION;
use ferry_core::{Entry, LedgerName, NewEntry, Payload};
use ferry_format::wal::{SEGMENT_HEADER_BYTES, WalRecord, decode_record, encode_record};
use ferry_store::{Store, StoreConfig, StoreError};

pub fn ledger(name: &str) -> LedgerName {
    LedgerName::parse(name).expect("valid ledger name")
}

pub fn payload(json: &str) -> Payload {
    Payload::from_json(json).expect("valid JSON payload")
}

pub fn entry(json: &str) -> NewEntry {
    NewEntry { key: None, idempotency_key: None, payload: payload(json) }
}

pub fn keyed(key: &str, json: &str) -> NewEntry {
    NewEntry { key: Some(key.to_owned()), ..entry(json) }
}

pub fn with_idempotency_key(idempotency_key: &str, json: &str) -> NewEntry {
    NewEntry { idempotency_key: Some(idempotency_key.to_owned()), ..entry(json) }
}

pub fn config(dir: &Path) -> StoreConfig {
    StoreConfig::new(dir)
}

pub fn open(dir: &Path) -> Store {
    open_with(config(dir))
}

pub fn open_with(config: StoreConfig) -> Store {
    match Store::open(config) {
        Ok(store) => store,
        Err(e) => panic!("Store::open failed: {e}"),
    }
}

/// `Store::open` that is expected to fail (`Store` is not `Debug`, so
/// `unwrap_err` is not available).
pub fn open_err(config: StoreConfig) -> StoreError {
    match Store::open(config) {
        Ok(_) => panic!("Store::open succeeded where it must fail"),
        Err(e) => e,
    }
}

/// Stops the flusher and releases the store's locks.
pub async fn close(store: Store) {
    store.shutdown().await;
    drop(store);
}

/// Every entry of a ledger, read in pages through `next`.
pub fn read_all(store: &Store, ledger: &LedgerName) -> Vec<Entry> {
    let mut out: Vec<Entry> = Vec::new();
    let mut from = None;
    loop {
        let batch = store.read_blocking(ledger, from, 97).expect("read");
        let expected_next = batch.entries.last().map_or(from.unwrap_or(1), |e| e.id + 1);
        assert_eq!(batch.next, expected_next, "next must follow the last entry read");
        if batch.entries.is_empty() {
            return out;
        }
        from = Some(batch.next);
        out.extend(batch.entries);
    }
}

/// The head of a ledger, or a panic when it does not exist.
pub fn head(store: &Store, ledger: &LedgerName) -> u64 {
    store.ledger_info(ledger).expect("ledger exists").head
}

/// Checks the dense-ids and monotonic-ts invariants of a full read.
pub fn assert_dense_and_ordered(entries: &[Entry], ledger: &LedgerName) {
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(&e.ledger, ledger);
        assert_eq!(e.id, i as u64 + 1, "ids must be dense from 1");
    }
    for w in entries.windows(2) {
        assert!(w[1].ts >= w[0].ts, "ts must never decrease: {} then {}", w[0].ts, w[1].ts);
    }
}

pub fn hot_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("hot")
}

pub fn segment_path(data_dir: &Path, seq: u64) -> PathBuf {
    hot_dir(data_dir).join(format!("{seq:020}.wal"))
}

/// Every WAL segment of the store, in sequence order.
pub fn segments(data_dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(hot_dir(data_dir))
        .expect("list hot dir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    out.sort();
    out
}

pub fn last_segment(data_dir: &Path) -> PathBuf {
    segments(data_dir).pop().expect("at least one segment")
}

pub fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).expect("metadata").len()
}

/// One record found in a segment.
#[derive(Debug, Clone)]
pub struct RecordAt {
    pub offset: usize,
    pub len: usize,
    pub id: u64,
    pub batch_continues: bool,
}

/// Decodes a segment's records from the header on, stopping at the first
/// one that does not decode.
pub fn records(segment: &[u8]) -> Vec<RecordAt> {
    let mut out = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES;
    while let Ok((r, len)) = decode_record(&segment[offset..]) {
        out.push(RecordAt { offset, len, id: r.id, batch_continues: r.batch_continues });
        offset += len;
    }
    out
}

/// Flips one bit of a file in place.
pub fn flip_bit(path: &Path, offset: usize, bit: u8) {
    let mut bytes = std::fs::read(path).expect("read segment");
    bytes[offset] ^= 1 << bit;
    std::fs::write(path, bytes).expect("write segment");
}

/// Encodes records the way the flusher does, for segments made by hand.
pub fn encode(records: &[WalRecord<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        encode_record(r, &mut out);
    }
    out
}

/// The header every segment of this format version starts with.
pub fn segment_header() -> [u8; SEGMENT_HEADER_BYTES] {
    ferry_format::wal::encode_segment_header(FORMAT_VERSION)
}

/// Asserts that `err` is a `Corrupted` naming exactly this segment and
/// offset, in the variant and in the message users see.
pub fn assert_corrupted_at(err: &StoreError, segment: &Path, offset: u64) {
    match err {
        StoreError::Corrupted { segment: s, offset: o, .. } => {
            assert_eq!(s, segment, "segment of {err}");
            assert_eq!(*o, offset, "offset of {err}");
        }
        other => panic!("expected StoreError::Corrupted, got {other:?}"),
    }
    let message = err.to_string();
    assert!(message.contains(&segment.display().to_string()), "message must name the segment: {message}");
    assert!(message.contains(&format!("offset {offset}")), "message must name the offset: {message}");
}

/// Waits (up to 20 s) until `path` exists: the freezer works in the
/// background. `what` says what its existence means, for the failure.
pub async fn wait_for_file(path: &Path, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !path.exists() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting for: {what} ({})", path.display());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
