//! What a restart and the idempotency index cost, each measured in a child
//! process of its own (`ferry-bench --restart-child …`) so RSS and the bytes
//! read belong to one store alone:
//!
//! - **keys**: RSS after N keyed appends minus RSS after the same N
//!   appends without keys, per key (goal ≤ 32 B);
//! - **keyless packs**: the bytes `Store::open` reads with a data dir full
//!   of recent packs that hold no idempotency key (goal < 1 MiB of packs);
//! - **hot recovery**: `Store::open` after a store holding N hot entries
//!   of 256 B over 100 ledgers exited without shutting down (as after
//!   `kill -9`), warm and after dropping the page cache (goal ≤ 1 s).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use ferry_core::{LedgerName, NewEntry, Payload};
use ferry_store::{Store, StoreConfig};

use crate::replay::{audit_payload, wait_frozen};

/// Ledgers the appends are spread over.
const LEDGERS: u64 = 100;
/// Entries per append call.
const BATCH: u64 = 1000;

/// Sizes of one `--restart` run.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Appends of the keys measurement.
    pub keyed_entries: u64,
    /// Payload bytes of the keyless packs.
    pub pack_bytes: u64,
    /// `chunk_entries` of the packs' data dir (small, so 100 ledgers fill
    /// several chunks each).
    pub pack_chunk_entries: u64,
    /// Hot entries of the recovery measurement.
    pub hot_entries: u64,
}

impl Sizes {
    pub fn full() -> Self {
        Self { keyed_entries: 10_000_000, pack_bytes: 1 << 30, pack_chunk_entries: 1024, hot_entries: 1_000_000 }
    }

    pub fn quick() -> Self {
        Self { keyed_entries: 200_000, pack_bytes: 16 << 20, pack_chunk_entries: 128, hot_entries: 100_000 }
    }
}

/// Runs the three measurements and returns the report.
pub fn run(parent: &Path, sizes: Sizes) -> anyhow::Result<String> {
    let mut out = String::new();

    let plain = child(&["fill", "plain", &sizes.keyed_entries.to_string()], parent)?;
    let keyed = child(&["fill", "keyed", &sizes.keyed_entries.to_string()], parent)?;
    let (plain_rss, keyed_rss) = (field(&plain, "rss")?, field(&keyed, "rss")?);
    let per_key = keyed_rss.saturating_sub(plain_rss) as f64 / sizes.keyed_entries as f64;
    out += &format!(
        "idempotency keys: {} appends over {LEDGERS} ledgers: RSS {:.1} MB without keys, {:.1} MB with a key each \
         → {per_key:.1} B per live key (goal ≤ 32 B)\n",
        sizes.keyed_entries,
        plain_rss as f64 / 1e6,
        keyed_rss as f64 / 1e6,
    );

    let dir = tempfile::Builder::new().prefix("restart-packs-").tempdir_in(parent)?;
    let (bytes, chunk) = (sizes.pack_bytes.to_string(), sizes.pack_chunk_entries.to_string());
    let packs = child(&["packs", &path_arg(dir.path())?, &bytes, &chunk], parent)?;
    let opened = child(&["open", &path_arg(dir.path())?], parent)?;
    let (read, wal) = (field(&opened, "read_bytes")?, field(&packs, "wal_bytes")?);
    out += &format!(
        "restart over {:.1} MB of recent keyless packs: Store::open read {:.2} MB in {:.0} ms, of which at most \
         {:.3} MB not WAL ({:.2} MB of WAL left) (goal < 1 MiB of pack data)\n",
        field(&packs, "pack_bytes")? as f64 / 1e6,
        read as f64 / 1e6,
        field(&opened, "open_us")? as f64 / 1e3,
        read.saturating_sub(wal) as f64 / 1e6,
        wal as f64 / 1e6,
    );
    drop(dir);

    let dir = tempfile::Builder::new().prefix("restart-hot-").tempdir_in(parent)?;
    child(&["hot", &path_arg(dir.path())?, &sizes.hot_entries.to_string()], parent)?;
    let warm = child(&["open", &path_arg(dir.path())?], parent)?;
    let cold = if drop_page_cache() {
        let cold = child(&["open", &path_arg(dir.path())?], parent)?;
        format!("{:.0} ms", field(&cold, "open_us")? as f64 / 1e3)
    } else {
        "not measured (dropping the page cache needs root)".to_owned()
    };
    out += &format!(
        "recovery after an unclean exit with {} hot entries of 256 B over {LEDGERS} ledgers: Store::open {:.0} ms warm, \
         {cold} cold (goal ≤ 1 s)\n",
        sizes.hot_entries,
        field(&warm, "open_us")? as f64 / 1e3,
    );
    Ok(out)
}

/// Runs `ferry-bench --restart-child ARGS…` and returns its last line.
fn child(args: &[&str], parent: &Path) -> anyhow::Result<String> {
    let exe = std::env::current_exe().context("find ferry-bench's own binary")?;
    let out = Command::new(exe)
        .arg("--data-dir")
        .arg(parent)
        .arg("--restart-child")
        .args(args)
        .output()
        .with_context(|| format!("run the {args:?} child"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("the {args:?} child failed ({}): {}{}", out.status, stdout, String::from_utf8_lossy(&out.stderr));
    }
    Ok(stdout.lines().last().unwrap_or_default().to_owned())
}

/// `name=value` from a child's line.
fn field(line: &str, name: &str) -> anyhow::Result<u64> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {name}= in the child's report {line:?}"))
}

fn path_arg(path: &Path) -> anyhow::Result<String> {
    path.to_str().map(str::to_owned).context("a temp path that is not UTF-8")
}

/// Syncs and drops the page cache; false when not allowed (not root).
fn drop_page_cache() -> bool {
    let synced = Command::new("sync").status().is_ok_and(|s| s.success());
    #[allow(clippy::disallowed_methods)] // a kernel control file, not data
    let dropped = std::fs::write("/proc/sys/vm/drop_caches", "3\n").is_ok();
    synced && dropped
}

/// The child side: `fill plain|keyed N`, `packs DIR BYTES CHUNK_ENTRIES`, `hot DIR N`,
/// `open DIR`. Prints one `name=value …` line.
pub async fn child_main(parent: &Path, args: &[String]) -> anyhow::Result<()> {
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["fill", kind @ ("plain" | "keyed"), n] => {
            let dir = tempfile::Builder::new().prefix("restart-keys-").tempdir_in(parent)?;
            let store = Store::open(StoreConfig::new(dir.path()))?;
            let n: u64 = n.parse()?;
            append(&store, n, 64, *kind == "keyed").await?;
            // Let the freezer catch up, so both runs hold the same hot tier
            // (every full chunk frozen) when RSS is read.
            let full_chunks = n / LEDGERS / store.chunk_entries();
            for l in ledgers() {
                wait_frozen(dir.path(), &l, full_chunks).await?;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            println!("rss={}", rss_bytes()?);
            std::process::exit(0); // the measurement is done; no shutdown
        }
        ["packs", dir, bytes, chunk_entries] => {
            let mut config = StoreConfig::new(Path::new(dir));
            config.chunk_entries = Some(chunk_entries.parse()?);
            let store = Store::open(config)?;
            let payload = 1024;
            let per_ledger_chunks = (bytes.parse::<u64>()? / payload as u64 / store.chunk_entries() / LEDGERS).max(1);
            let n = per_ledger_chunks * store.chunk_entries() * LEDGERS;
            append(&store, n, payload, false).await?;
            for l in ledgers() {
                wait_frozen(Path::new(dir), &l, per_ledger_chunks).await?;
            }
            store.shutdown().await;
            let size = |sub: &str| dir_bytes(&Path::new(dir).join(sub));
            println!("pack_bytes={} wal_bytes={}", size("ledgers")?, size("hot")?);
        }
        ["hot", dir, n] => {
            let store = Store::open(StoreConfig::new(Path::new(dir)))?;
            let n: u64 = n.parse()?;
            ensure!(n / LEDGERS < store.chunk_entries(), "the hot entries would fill a chunk");
            append(&store, n, 256, false).await?;
            println!("appended={n}");
            std::process::exit(0); // no shutdown: the next open recovers
        }
        ["open", dir] => {
            let before = read_chars()?;
            let started = Instant::now();
            let store = Store::open(StoreConfig::new(Path::new(dir)))?;
            let open_us = started.elapsed().as_micros();
            let read = read_chars()? - before;
            store.shutdown().await;
            println!("open_us={open_us} read_bytes={read}");
        }
        _ => bail!("unknown --restart-child arguments {args:?}"),
    }
    Ok(())
}

fn ledgers() -> Vec<LedgerName> {
    (0..LEDGERS).map(|l| LedgerName::parse(&format!("ledger-{l:03}")).expect("valid name")).collect()
}

/// Appends `n` entries in batches over `LEDGERS` ledgers, each with a
/// distinct idempotency key when `keyed`.
async fn append(store: &Store, n: u64, payload_bytes: usize, keyed: bool) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for (l, ledger) in ledgers().into_iter().enumerate() {
        let store = store.clone();
        let share = n / LEDGERS + u64::from((l as u64) < n % LEDGERS);
        tasks.spawn(async move {
            let mut written = 0;
            while written < share {
                let count = (share - written).min(BATCH);
                let batch = (written..written + count)
                    .map(|i| NewEntry {
                        key: None,
                        idempotency_key: keyed.then(|| format!("order-{l:03}-{i:012}")),
                        payload: Payload::from_json(&audit_payload(i, payload_bytes)).expect("valid JSON"),
                    })
                    .collect();
                store.append(&ledger, batch).await?;
                written += count;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(())
}

/// This process's resident set, from `/proc/self/status`.
fn rss_bytes() -> anyhow::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kb * 1024)
}

/// Bytes this process has read through read-like syscalls (`rchar`).
fn read_chars() -> anyhow::Result<u64> {
    let io = std::fs::read_to_string("/proc/self/io")?;
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no rchar in /proc/self/io")
}

fn dir_bytes(dir: &Path) -> anyhow::Result<u64> {
    let mut total = 0;
    for entry in walk(dir)? {
        total += entry.metadata()?.len();
    }
    Ok(total)
}

fn walk(dir: &Path) -> anyhow::Result<Vec<std::fs::DirEntry>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            files.extend(walk(&entry.path())?);
        } else {
            files.push(entry);
        }
    }
    Ok(files)
}
