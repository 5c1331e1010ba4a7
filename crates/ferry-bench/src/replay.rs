//! Replay from packs: read a ledger of frozen chunks from first to last
//! through `Store::read`, next to the raw zstd decompression of the very
//! same pack blocks (the floor any pack reader pays), in one run.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use ferry_core::{LedgerName, NewEntry, Payload};
use ferry_format::pack;
use ferry_store::{Store, StoreConfig};

/// Entries per appended batch while filling the ledger.
const FILL_BATCH: usize = 1000;
/// Entries per `Store::read` call while replaying (the API's maximum).
const READ_PAGE: usize = 10_000;

/// What one replay run measured.
#[derive(Debug)]
pub struct Replay {
    pub entries: u64,
    pub payload_bytes: u64,
    pub raw_block_bytes: u64,
    pub read: Duration,
    pub decompress: Duration,
}

impl Replay {
    pub fn report(&self) -> String {
        let rate = |n: u64, d: Duration| n as f64 / d.as_secs_f64();
        let read_eps = rate(self.entries, self.read);
        let zstd_eps = rate(self.entries, self.decompress);
        format!(
            "replay from packs: {} entries, {:.1} MB payload\n\
             Store::read          {:>12.0} entries/s {:>8.1} MB/s (payload)   {:>8.1} MB/s (raw block bytes)\n\
             zstd decompress only {:>12.0} entries/s {:>8.1} MB/s (raw block bytes)\n\
             ratio read/zstd      {:>11.0}%   (goal ≥ 60%)\n",
            self.entries,
            self.payload_bytes as f64 / 1e6,
            read_eps,
            rate(self.payload_bytes, self.read) / 1e6,
            rate(self.raw_block_bytes, self.read) / 1e6,
            zstd_eps,
            rate(self.raw_block_bytes, self.decompress) / 1e6,
            100.0 * read_eps / zstd_eps,
        )
    }
}

/// Fills one ledger with `entries` entries of `payload_bytes`, waits until
/// every full chunk is frozen, then times both readers (best of `rounds`).
pub async fn run(parent: &Path, entries: u64, payload_bytes: usize, rounds: u32) -> anyhow::Result<Replay> {
    let dir = tempfile::Builder::new().prefix("replay-").tempdir_in(parent).context("create a temp dir")?;
    let config = StoreConfig::new(dir.path());
    let store = tokio::task::spawn_blocking(move || Store::open(config)).await??;
    let chunk = store.chunk_entries();
    let entries = entries / chunk * chunk;
    ensure!(entries > 0, "--replay must be at least chunk_entries ({chunk})");
    let ledger = LedgerName::parse("replay").expect("valid name");
    fill(&store, &ledger, entries, payload_bytes).await?;
    let paths = wait_frozen(dir.path(), &ledger, entries / chunk).await?;
    let packs: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).with_context(|| format!("read {}", p.display())))
        .collect::<Result<_, _>>()?;

    let mut best: Option<Replay> = None;
    for _ in 0..rounds {
        let (store2, ledger2) = (store.clone(), ledger.clone());
        let (read, payload) = tokio::task::spawn_blocking(move || read_all(&store2, &ledger2)).await??;
        let (decompress, raw_bytes) = tokio::task::spawn_blocking({
            let packs = packs.clone();
            move || decompress_all(&packs)
        })
        .await??;
        let run = Replay { entries, payload_bytes: payload, raw_block_bytes: raw_bytes, read, decompress };
        best = Some(match best {
            Some(b) => Replay { read: b.read.min(run.read), decompress: b.decompress.min(run.decompress), ..run },
            None => run,
        });
    }
    store.shutdown().await;
    Ok(best.expect("at least one round"))
}

pub(crate) async fn fill(store: &Store, ledger: &LedgerName, entries: u64, payload_bytes: usize) -> anyhow::Result<()> {
    let mut written = 0;
    while written < entries {
        let n = (entries - written).min(FILL_BATCH as u64);
        let batch = (written..written + n)
            .map(|i| {
                let payload = Payload::from_json(&audit_payload(i, payload_bytes)).expect("valid JSON");
                NewEntry { key: Some(format!("user-{}", i % 9973)), idempotency_key: None, payload }
            })
            .collect();
        store.append(ledger, batch).await?;
        written += n;
    }
    Ok(())
}

/// An audit-log-like payload of about `bytes` bytes whose fields vary from
/// entry to entry (a run of one letter would compress ~100× and make the
/// decompression floor unrealistically fast).
pub(crate) fn audit_payload(i: u64, bytes: usize) -> String {
    const WORDS: [&str; 12] = [
        "login", "logout", "transfer", "refund", "update", "delete", "view", "export", "grant", "revoke", "pay", "open",
    ];
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut note = String::new();
    while note.len() + 96 < bytes {
        note.push_str(WORDS[(next() % 12) as usize]);
        note.push_str(&format!("-{:x} ", next() % 65_536));
    }
    format!(
        r#"{{"user":"u-{:06}","action":"{}","amount":{}.{:02},"ip":"10.{}.{}.{}","note":"{}"}}"#,
        next() % 1_000_000,
        WORDS[(next() % 12) as usize],
        next() % 100_000,
        next() % 100,
        next() % 256,
        next() % 256,
        next() % 256,
        note.trim_end()
    )
}

/// Waits until the ledger's first `count` chunks are packs and the hot
/// tier holds none of them; returns the packs' paths.
pub(crate) async fn wait_frozen(dir: &Path, ledger: &LedgerName, count: u64) -> anyhow::Result<Vec<PathBuf>> {
    let bucket = |c: u64| dir.join("ledgers").join(ledger.as_str()).join(format!("{:05}", c / 1000));
    let path = |c: u64| bucket(c).join(format!("{c:08}.pack"));
    let deadline = Instant::now() + Duration::from_secs(600);
    while !(0..count).all(|c| path(c).exists()) {
        ensure!(Instant::now() < deadline, "chunks did not freeze within 10 minutes");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The key flips to frozen right after the rename; give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok((0..count).map(path).collect())
}

/// Reads the whole ledger through the store; returns the time and the
/// payload bytes read.
pub(crate) fn read_all(store: &Store, ledger: &LedgerName) -> anyhow::Result<(Duration, u64)> {
    let started = Instant::now();
    let (mut from, mut bytes) = (1, 0u64);
    loop {
        let page = store.read_blocking(ledger, Some(from), READ_PAGE)?;
        if page.entries.is_empty() {
            break;
        }
        bytes += page.entries.iter().map(|e| e.payload.len() as u64).sum::<u64>();
        from = page.next;
    }
    Ok((started.elapsed(), bytes))
}

/// Decompresses every block of every pack, nothing else; returns the time
/// and the raw bytes produced.
fn decompress_all(packs: &[Vec<u8>]) -> anyhow::Result<(Duration, u64)> {
    let mut blocks = Vec::new();
    for bytes in packs {
        let decoded = pack::decode_pack(bytes, |_| {})?;
        for b in decoded.blocks {
            blocks.push((bytes, b));
        }
    }
    let mut out = Vec::new();
    let mut decompressor = zstd::bulk::Decompressor::new()?;
    let started = Instant::now();
    let mut raw = 0u64;
    for (bytes, b) in &blocks {
        let start = b.offset as usize;
        out.clear();
        out.reserve(b.raw_len as usize);
        raw += decompressor.decompress_to_buffer(&bytes[start..start + b.compressed_len as usize], &mut out)? as u64;
    }
    Ok((started.elapsed(), raw))
}
