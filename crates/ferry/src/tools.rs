//! `ferry verify` and `ferry inspect` (SPEC §8): offline tools over a
//! stopped node's data directory, or over one file. The checks and the
//! decoding live in `ferry_store::verify`; this module only prints.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use ferry_core::{Entry, LedgerName, Payload};
use ferry_store::StoreConfig;
use ferry_store::verify::{self, WalRecord, fingerprints};

use crate::UsageError;
use crate::config::Config;

/// Where the data is, as the command line gave it: `--data-dir`, or a
/// config file's `data_dir` and `[storage] *_dir` roots (`--data-dir` wins
/// over the file's `data_dir`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Storage<'a> {
    pub data_dir: Option<&'a Path>,
    pub config: Option<&'a Path>,
}

impl Storage<'_> {
    fn given(&self) -> bool {
        self.data_dir.is_some() || self.config.is_some()
    }

    fn store_config(&self) -> anyhow::Result<StoreConfig> {
        if !self.given() {
            return Err(UsageError("give the data directory with --data-dir D (or --config F)".into()).into());
        }
        let mut config = match self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(dir) = self.data_dir {
            config.data_dir = dir.to_path_buf();
        }
        let dir = |p: PathBuf| (!p.as_os_str().is_empty()).then_some(p);
        let mut store = StoreConfig::new(config.data_dir);
        store.catalog_dir = dir(config.storage.catalog_dir);
        store.hot_dir = dir(config.storage.hot_dir);
        store.ledgers_dir = dir(config.storage.ledgers_dir);
        Ok(store)
    }
}

/// `ferry verify`: every finding on its own line, then a summary; an error
/// (exit 1) when there is any fault.
pub fn verify(args: Storage<'_>) -> anyhow::Result<()> {
    let config = args.store_config()?;
    let data_dir = config.data_dir.display().to_string();
    let report = verify::verify(&config).with_context(|| format!("verify {data_dir}"))?;
    let mut out = std::io::stdout().lock();
    for finding in &report.findings {
        writeln!(out, "{finding}")?;
    }
    writeln!(out, "verify {data_dir}: {}", report.summary())?;
    out.flush()?;
    if !report.is_ok() {
        bail!("{} faults in {data_dir}", report.faults());
    }
    Ok(())
}

/// `ferry inspect --data-dir D` or `ferry inspect FILE`.
pub fn inspect(file: Option<&Path>, args: Storage<'_>) -> anyhow::Result<()> {
    match file {
        Some(_) if args.given() => Err(UsageError("give either FILE or --data-dir/--config, not both".into()).into()),
        Some(path) => inspect_file(path),
        None => inspect_catalog(args),
    }
}

/// Every catalog key and its value, one per line, under the roots' locks.
fn inspect_catalog(args: Storage<'_>) -> anyhow::Result<()> {
    let config = args.store_config()?;
    let dump = verify::dump_catalog(&config)
        .with_context(|| format!("inspect the catalog of {}", config.data_dir.display()))?;
    if dump.repaired_copy {
        eprintln!("note: the catalog was not closed cleanly; this is a repaired copy of it (the file is unchanged)");
    }
    let mut out = std::io::stdout().lock();
    for (key, value) in &dump.entries {
        // `keys:` values are binary: offsets and fingerprints, as JSON.
        if key.starts_with("keys:")
            && let Ok(entries) = fingerprints::decode(value, u64::MAX)
        {
            let list: Vec<String> = entries.iter().map(|(o, fp)| format!("[{o},\"{fp:016x}\"]")).collect();
            writeln!(out, "{key} [{}]", list.join(","))?;
            continue;
        }
        match std::str::from_utf8(value) {
            Ok(text) => writeln!(out, "{key} {text}")?,
            Err(_) => writeln!(out, "{key} 0x{}", hex(value))?,
        }
    }
    out.flush()?;
    Ok(())
}

fn inspect_file(path: &Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let ext = path.extension().and_then(|e| e.to_str());
    if bytes.starts_with(verify::PACK_MAGIC) || (ext == Some("pack") && !bytes.starts_with(verify::SEGMENT_MAGIC)) {
        inspect_pack(path, &bytes)
    } else if bytes.starts_with(verify::SEGMENT_MAGIC) || ext == Some("wal") {
        inspect_segment(path, &bytes)
    } else {
        Err(UsageError(format!("{} is neither a pack file (.pack) nor a WAL segment (.wal)", path.display())).into())
    }
}

/// A pack's header, block index and entries, from the file alone.
fn inspect_pack(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "pack: {}", path.display())?;
    writeln!(out, "bytes: {}", bytes.len())?;
    let mut entries = Vec::new();
    let pack = match verify::decode_pack(bytes, |r| entries.push(entry_json(r))) {
        Ok(pack) => pack,
        Err(e) => {
            // Show what can still be read before failing.
            if let Ok((h, _)) = verify::decode_header(bytes) {
                write_header(&mut out, &h)?;
            }
            out.flush()?;
            bail!("{} does not decode: {e}", path.display());
        }
    };
    write_header(&mut out, &pack.header)?;
    writeln!(out, "index_offset: {}", pack.trailer.index_offset)?;
    writeln!(out, "crc32c: {:#010x}", pack.trailer.crc32c)?;
    writeln!(out, "blocks: {}", pack.trailer.block_count)?;
    for (i, b) in pack.blocks.iter().enumerate() {
        writeln!(
            out,
            "block {i}: offset {}, first_id {}, records {}, compressed_bytes {}, raw_bytes {}",
            b.offset, b.first_id, b.records, b.compressed_len, b.raw_len
        )?;
    }
    writeln!(out, "entries: {}", entries.len())?;
    for line in entries {
        writeln!(out, "{line}")?;
    }
    out.flush()?;
    Ok(())
}

fn write_header(out: &mut impl std::io::Write, h: &verify::PackHeader) -> std::io::Result<()> {
    writeln!(out, "format_version: {}", h.format_version)?;
    writeln!(out, "ledger: {}", h.ledger)?;
    writeln!(out, "chunk: {}", h.chunk)?;
    writeln!(out, "first_id: {}", h.first_id)?;
    writeln!(out, "count: {}", h.count)
}

/// A WAL segment's records, one JSON line each, with offset and flags.
fn inspect_segment(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let scan = verify::scan_segment(bytes);
    let mut out = std::io::stdout().lock();
    writeln!(out, "segment: {}", path.display())?;
    writeln!(out, "bytes: {}", bytes.len())?;
    let version = scan.header.as_ref().map_err(|e| anyhow::anyhow!("{} at offset 0: {e}", path.display()))?;
    writeln!(out, "format_version: {version}")?;
    for (offset, len, r) in &scan.records {
        let flags: Vec<&str> = [
            (r.key.is_some(), "key"),
            (r.idempotency_key.is_some(), "idempotency_key"),
            (r.batch_continues, "batch_continues"),
            (r.group_start, "group_start"),
            (r.relocated, "relocated"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
        .collect();
        let mut line = format!(r#"{{"offset":{offset},"len":{len},"flags":{}"#, serde_json::to_string(&flags)?);
        if let Some(k) = r.idempotency_key {
            line.push_str(&format!(r#","idempotency_key":{}"#, serde_json::to_string(k)?));
        }
        writeln!(out, r#"{line},"entry":{}}}"#, entry_json(r))?;
    }
    writeln!(out, "records: {} (complete append batches end at offset {})", scan.records.len(), scan.batches_end)?;
    out.flush()?;
    match scan.stop {
        None => Ok(()),
        Some(stop) if stop.torn => {
            writeln!(
                out,
                "torn tail at offset {} ({} bytes): {}; if this is the last segment, the next start cuts it",
                stop.offset,
                bytes.len() as u64 - stop.offset,
                stop.error
            )?;
            Ok(())
        }
        Some(stop) => {
            bail!("{} at offset {}: {} (a later group commit follows it)", path.display(), stop.offset, stop.error)
        }
    }
}

/// The entry's JSON form (SPEC §1) when the record holds a valid one;
/// otherwise an object showing the raw fields.
fn entry_json(r: &WalRecord<'_>) -> String {
    let valid_payload = std::str::from_utf8(r.payload)
        .is_ok_and(|t| serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok() && !t.contains('\n'));
    if let (Ok(ledger), true) = (LedgerName::parse(r.ledger), valid_payload)
        && let Ok(payload) = Payload::from_stored(r.payload)
    {
        return Entry { ledger, id: r.id, ts: r.ts, key: r.key.map(str::to_owned), hash: r.hash, payload }.to_json();
    }
    serde_json::json!({
        "ledger": r.ledger,
        "id": r.id,
        "ts": r.ts,
        "key": r.key,
        "payload_bytes": String::from_utf8_lossy(r.payload),
    })
    .to_string()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
