//! `ferry-bench`: how many durable appends ferry acknowledges per second,
//! and how fast, next to the bound the disk allows.
//!
//! Every cell (clients × payload × entries per call) is run against the
//! raw group-commit bound and each chosen target, in interleaved rounds
//! (bound, targets, bound, targets, …) so a disk whose fsync latency drifts
//! moves all of them alike; each run gets a fresh data dir. The table
//! reports every target's share of the bound. `driver.rs` is the one
//! closed-loop client all targets share.

mod backup;
mod cpu;
mod disk;
mod driver;
mod export;
mod ferry_child;
mod http;
mod nats;
mod outbox;
mod peers;
mod pgbench;
mod postgres;
mod raw;
mod replay;
mod report;
mod restart;
mod store;
mod workload;
mod wrk;

/// The allocator `ferry serve` runs with (crates/ferry/src/main.rs): the
/// in-process targets (store, export, replay) are measured as ferry runs
/// them, and the raw bound's clients allocate alike.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, ensure};
use clap::Parser;
use ferry_core::limits::BATCH_ENTRIES_MAX;

use crate::driver::{Measurement, Timing};
use crate::http::HttpOptions;
use crate::report::Row;
use crate::workload::{Cell, LEDGERS, PAYLOAD_BYTES_MIN};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Target {
    /// One file, one write + one fdatasync per group: the bound.
    Raw,
    /// ferry's Store in-process, with `ferry serve`'s defaults (no hash
    /// chain).
    Store,
    /// ferry's Store in-process with the hash chain on every ledger
    /// (`hash_chain = ["*"]`): what the chain costs, next to `store` in the
    /// same run (issue #21).
    StoreChained,
    /// ferry's HTTP API, served in-process, driven by our Rust client (reqwest).
    Http,
    /// ferry's HTTP API, the real `ferry serve` binary as a child process,
    /// driven by wrk.
    HttpWrk,
    /// NATS JetStream, file storage, `sync_interval: always`.
    Nats,
    /// NATS JetStream with its default sync: not durable on ack.
    NatsNosync,
    /// PostgreSQL INSERTs with `synchronous_commit = on`, from our Rust
    /// client (sqlx).
    Postgres,
    /// The same INSERTs from `pgbench`.
    PostgresPgbench,
}

/// How many entries each append call carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Mode {
    /// One entry per call, at each of `--clients`.
    Single,
    /// `--batch-size` entries per call, at each of `--batch-clients`.
    Batch,
}

impl Target {
    fn name(self) -> &'static str {
        match self {
            Target::Raw => "raw",
            Target::Store => "store",
            Target::StoreChained => "store-chained",
            Target::Http => "http",
            Target::HttpWrk => "http-wrk",
            Target::Nats => "nats",
            Target::NatsNosync => "nats-nosync",
            Target::Postgres => "postgres",
            Target::PostgresPgbench => "postgres-pgbench",
        }
    }

    /// What drives the target, for the tables.
    fn client(self) -> &'static str {
        match self {
            Target::Raw | Target::Store | Target::StoreChained => "in-process",
            Target::Http => "reqwest",
            Target::HttpWrk => "wrk",
            Target::Nats | Target::NatsNosync => "async-nats",
            Target::Postgres => "sqlx",
            Target::PostgresPgbench => "pgbench",
        }
    }

    /// Whether it needs a peer server (`--nats-server`, `--postgres-url`).
    fn is_peer(self) -> bool {
        matches!(self, Target::Nats | Target::NatsNosync | Target::Postgres | Target::PostgresPgbench)
    }
}

/// Durable appends against the raw fdatasync bound, ferry's store
/// in-process, and ferry's HTTP API. The raw bound is measured for every
/// cell whatever `--targets` says: it is what the ratios are against.
#[derive(Debug, Parser)]
#[command(name = "ferry-bench", version)]
struct Args {
    /// One short cell per target (16 clients, 1 KiB, 2 s): a smoke test.
    #[arg(long)]
    quick: bool,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "raw,store,http")]
    targets: Vec<Target>,
    #[arg(long, value_enum, value_delimiter = ',', default_value = "single,batch")]
    modes: Vec<Mode>,
    /// Concurrent clients of the single-entry cells.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64,256")]
    clients: Vec<usize>,
    /// Payload sizes in bytes (each payload is a JSON object of that size).
    #[arg(long, value_delimiter = ',', default_value = "256,1024")]
    payloads: Vec<usize>,
    /// Concurrent clients of the batch cells.
    #[arg(long, value_delimiter = ',', default_value = "1,16")]
    batch_clients: Vec<usize>,
    /// Entries per call in the batch cells.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Measured time of each target in each cell, split over the rounds.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Interleaved rounds per cell (each a fresh run of every target).
    #[arg(long, default_value_t = 3)]
    rounds: u32,
    /// Unmeasured time at the start of each round's run.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Parent of the runs' temp data dirs [default: the system temp dir,
    /// or ./target/ferry-bench when that is in memory]. Must be a real
    /// disk for fdatasync to mean anything.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Drive this running ferry instead of one started in-process (the
    /// bound is still measured here, under the data dir). `http-wrk`
    /// always serves its own `ferry serve` child, whose CPU it reads.
    #[arg(long)]
    server: Option<reqwest::Url>,
    /// Bearer token for `--server`.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Also write the rows as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Instead of appends: fill one ledger with this many entries (whole
    /// chunks), let them freeze, and time reading them back from the packs
    /// next to the raw zstd decompression of the same blocks.
    #[arg(long)]
    replay: Option<u64>,
    /// Instead of appends: fill `--export-ledgers` ledgers with this many
    /// entries in all [default: 1,000,000; 100,000 with --quick], time one
    /// `file` exporter shipping them next to the store reading them back,
    /// then the append → sink-ack latency at `--export-rate`.
    #[arg(long, value_name = "ENTRIES", num_args = 0..=1, conflicts_with = "replay")]
    export: Option<Option<u64>>,
    /// Instead of appends: fill `--export-ledgers` ledgers with
    /// `--sink-entries` entries and time ferry's exporter of each sink named
    /// here shipping them next to a bare client of that server sending the
    /// same rows in the same batches (JSONEachRow over HTTP, COPY, async
    /// JetStream publishes). Needs ClickHouse at `--clickhouse-url`,
    /// PostgreSQL at `--postgres-url`; starts its own `--nats-server`.
    #[arg(long, value_enum, value_delimiter = ',', conflicts_with_all = ["replay", "export", "peers"])]
    sinks: Vec<export::sinks::SinkKind>,
    /// Entries of `--sinks` [default: 1,000,000; 20,000 with --quick].
    #[arg(long)]
    sink_entries: Option<u64>,
    /// Entries per batch of `--sinks`, for ferry and the peer alike.
    #[arg(long, default_value_t = 1000)]
    sink_batch: usize,
    /// The ClickHouse HTTP interface `--sinks clickhouse` uses (it creates
    /// and drops `ferry_bench_sink_*` tables in the default database).
    #[arg(long, default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    /// Ledgers of `--export`; also its reader threads and the exporter's
    /// `max_parallel_ledgers`.
    #[arg(long, default_value_t = 4)]
    export_ledgers: usize,
    /// Single-entry appends per second while `--export` measures latency
    /// (for 5 s, 2 s with --quick, per linger).
    #[arg(long, default_value_t = 1000)]
    export_rate: u32,
    /// Instead of appends: what restarts and idempotency keys cost — RSS
    /// per live key after 10M keyed appends, bytes a restart reads over
    /// 1 GiB of keyless packs, recovery time with 1M hot entries (smaller
    /// with --quick). Each measured in a child process of its own.
    #[arg(long, conflicts_with_all = ["replay", "export"])]
    restart: bool,
    /// Internal: one measurement of `--restart`, run as a child process.
    #[arg(long, hide = true, num_args = 1.., allow_hyphen_values = true)]
    restart_child: Option<Vec<String>>,
    /// ferry against its peers: every target (raw, store, http, http-wrk,
    /// nats, nats-nosync, postgres, postgres-pgbench) over clients 1/16/64/256 × payloads 256 B /
    /// 1 KiB / 16 KiB × single appends and batches of 100, then reading
    /// `--replay-entries` back from each. `--json` gets the whole result.
    #[arg(long, conflicts_with_all = ["replay", "export"])]
    peers: bool,
    /// The nats-server binary `--peers` starts (a current one: JetStream's
    /// `sync_interval` needs 2.10 or later).
    #[arg(long, default_value = "nats-server")]
    nats_server: PathBuf,
    /// The PostgreSQL `--peers` uses (it creates and drops the table
    /// `ferry_bench_entries`).
    #[arg(long, default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres_url: String,
    /// Entries each target reads back in `--peers` [default: 1,000,000;
    /// 20,000 with --quick].
    #[arg(long)]
    replay_entries: Option<u64>,
    /// Instead of appends: fill `--backup-ledgers` ledgers of a node with
    /// this many entries [default: 1,000,000; 50,000 with --quick], then
    /// time `ferry backup create` with `--data-dir` and with `--server` next
    /// to `sha256sum` over the files each wrote, and `ferry backup restore`
    /// into a fresh server next to HTTP batch appends of 1,000 entries.
    #[arg(
        long,
        value_name = "ENTRIES",
        num_args = 0..=1,
        conflicts_with_all = ["replay", "export", "peers", "sinks", "restart"]
    )]
    backup: Option<Option<u64>>,
    /// Ledgers of `--backup`.
    #[arg(long, default_value_t = 4)]
    backup_ledgers: usize,
    /// The `ferry` binary `--backup` runs and the `http-wrk` target serves
    /// [default: the one next to ferry-bench, as `cargo build --release -p
    /// ferry -p ferry-bench` leaves them]: any ferry build can be measured.
    #[arg(long, visible_alias = "http-server-bin", env = "FERRY_BENCH_FERRY_BIN")]
    ferry_bin: Option<PathBuf>,
    /// The wrk the `http-wrk` target runs.
    #[arg(long, default_value = "wrk")]
    wrk: PathBuf,
    /// The pgbench the `postgres-pgbench` target runs.
    #[arg(long, default_value = "pgbench")]
    pgbench: PathBuf,
    /// Instead of appends: fill an outbox table with this many rows
    /// [default: 200,000; 5,000 with --quick] and time ferry's outbox source
    /// draining it next to a bare `SELECT … FOR UPDATE SKIP LOCKED` +
    /// `UPDATE` loop, for each of `--outbox-drivers` (a database of its own
    /// on each server, dropped after).
    #[arg(
        long,
        value_name = "ROWS",
        num_args = 0..=1,
        conflicts_with_all = ["replay", "export", "peers", "sinks", "restart", "backup"]
    )]
    outbox: Option<Option<u64>>,
    /// The databases `--outbox` drains (PostgreSQL at `--postgres-url`,
    /// MySQL/MariaDB at `--mysql-url`).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "postgres,mysql")]
    outbox_drivers: Vec<outbox::OutboxDriver>,
    /// Rows per batch of `--outbox`, for ferry and the bare loop alike.
    #[arg(long, default_value_t = 1000)]
    outbox_batch: usize,
    /// `--outbox`'s tables also get an index of the pending rows
    /// (PostgreSQL: partial, on `id` where `exported_at IS NULL`; MySQL: on
    /// `(exported_at, id)`); without it each batch's `SELECT` walks every
    /// row drained before it.
    #[arg(long)]
    outbox_pending_index: bool,
    /// The MySQL/MariaDB server `--outbox` uses (it creates and drops a
    /// database `ferry_bench_outbox_{pid}`, as on PostgreSQL).
    #[arg(long, default_value = "mysql://root@127.0.0.1:3306/mysql")]
    mysql_url: String,
}

/// What to run: every cell, against the bound and each target, in rounds.
#[derive(Debug)]
struct Plan {
    cells: Vec<Cell>,
    /// The bound first, then the chosen targets.
    targets: Vec<Target>,
    rounds: u32,
    /// Of one round's run.
    timing: Timing,
}

impl Plan {
    fn from_args(args: &Args) -> anyhow::Result<Plan> {
        let mut targets = vec![Target::Raw];
        for &t in &args.targets {
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        if args.peers {
            let targets = vec![
                Target::Raw,
                Target::Store,
                Target::Http,
                Target::HttpWrk,
                Target::Nats,
                Target::NatsNosync,
                Target::Postgres,
                Target::PostgresPgbench,
            ];
            if args.quick {
                let cells = vec![
                    Cell { clients: 16, payload_bytes: 1024, batch: 1 },
                    Cell { clients: 16, payload_bytes: 1024, batch: peers::BATCH },
                ];
                let timing = Timing { warmup: Duration::from_millis(200), window: Duration::from_secs(1) };
                return Ok(Plan { cells, targets, rounds: 1, timing });
            }
            let mut cells = grid(&peers::CLIENTS, &peers::PAYLOADS, 1);
            cells.extend(grid(&peers::CLIENTS, &peers::PAYLOADS, peers::BATCH));
            let timing = Timing { warmup: Duration::from_millis(300), window: Duration::from_secs(1) };
            return Ok(Plan { cells, targets, rounds: 2, timing });
        }
        if args.quick {
            let cells = vec![Cell { clients: 16, payload_bytes: 1024, batch: 1 }];
            let timing = Timing { warmup: Duration::from_millis(300), window: Duration::from_secs(2) };
            return Ok(Plan { cells, targets, rounds: 1, timing });
        }
        ensure!(args.clients.iter().chain(&args.batch_clients).all(|&c| c > 0), "client counts must be at least 1");
        ensure!(
            args.payloads.iter().all(|&p| p >= PAYLOAD_BYTES_MIN),
            "payloads must be at least {PAYLOAD_BYTES_MIN} bytes"
        );
        ensure!((2..=BATCH_ENTRIES_MAX).contains(&args.batch_size), "--batch-size must be 2..={BATCH_ENTRIES_MAX}");
        ensure!(args.rounds > 0, "--rounds must be at least 1");
        ensure!(args.duration >= Duration::from_millis(100) * args.rounds, "--duration must be at least 100ms a round");
        let mut cells = Vec::new();
        if args.modes.contains(&Mode::Single) {
            cells.extend(grid(&args.clients, &args.payloads, 1));
        }
        if args.modes.contains(&Mode::Batch) {
            cells.extend(grid(&args.batch_clients, &args.payloads, args.batch_size));
        }
        let timing = Timing { warmup: args.warmup, window: args.duration / args.rounds };
        Ok(Plan { cells, targets, rounds: args.rounds, timing })
    }
}

/// `--export`'s run; `--quick` makes it small and a single round.
fn export_options(args: &Args, entries: Option<u64>) -> anyhow::Result<export::Options> {
    let default_entries = if args.quick { 100_000 } else { 1_000_000 };
    let options = export::Options {
        entries: entries.unwrap_or(default_entries),
        ledgers: args.export_ledgers,
        payload_bytes: args.payloads.first().copied().unwrap_or(256),
        rounds: if args.quick { 1 } else { args.rounds },
        rate: args.export_rate,
        window: Duration::from_secs(if args.quick { 2 } else { 5 }),
    };
    ensure!(options.ledgers > 0, "--export-ledgers must be at least 1");
    ensure!(options.entries >= options.ledgers as u64, "--export needs at least one entry per ledger");
    ensure!((1..=100_000).contains(&options.rate), "--export-rate must be 1..=100000");
    ensure!(options.payload_bytes >= 128, "--export payloads must be at least 128 bytes");
    Ok(options)
}

/// `--backup`'s run; `--quick` makes it small and its append peers short.
fn backup_options(args: &Args, entries: Option<u64>) -> anyhow::Result<backup::Options> {
    let append_timing = if args.quick {
        Timing { warmup: Duration::from_millis(200), window: Duration::from_secs(1) }
    } else {
        Timing { warmup: args.warmup, window: args.duration }
    };
    let options = backup::Options {
        entries: entries.unwrap_or(if args.quick { 50_000 } else { 1_000_000 }),
        ledgers: args.backup_ledgers,
        payload_bytes: args.payloads.first().copied().unwrap_or(256),
        ferry: backup::ferry_binary(args.ferry_bin.clone())?,
        append_timing,
        rounds: if args.quick { 1 } else { args.rounds },
    };
    ensure!(options.ledgers > 0, "--backup-ledgers must be at least 1");
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    ensure!(options.entries >= options.ledgers as u64, "--backup needs at least one entry per ledger");
    ensure!(options.payload_bytes >= 128, "--backup payloads must be at least 128 bytes");
    Ok(options)
}

/// `--outbox`'s run; `--quick` makes it small and a single round.
fn outbox_options(args: &Args, rows: Option<u64>) -> anyhow::Result<outbox::Options> {
    let options = outbox::Options {
        rows: rows.unwrap_or(if args.quick { 5_000 } else { 200_000 }),
        payload_bytes: args.payloads.first().copied().unwrap_or(256),
        batch: args.outbox_batch,
        rounds: if args.quick { 1 } else { args.rounds },
        drivers: args.outbox_drivers.clone(),
        pending_index: args.outbox_pending_index,
        postgres_url: args.postgres_url.clone(),
        mysql_url: args.mysql_url.clone(),
    };
    ensure!(options.rows > 0, "--outbox needs at least one row");
    ensure!((1..=10_000).contains(&options.batch), "--outbox-batch must be 1..=10000");
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    ensure!(options.payload_bytes >= 128, "--outbox payloads must be at least 128 bytes");
    ensure!(!options.drivers.is_empty(), "--outbox-drivers names no driver");
    Ok(options)
}

/// Every payload × every client count, payload-major.
fn grid(clients: &[usize], payloads: &[usize], batch: usize) -> Vec<Cell> {
    payloads.iter().flat_map(|&p| clients.iter().map(move |&c| Cell { clients: c, payload_bytes: p, batch })).collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    install_tls_provider();
    let plan = Plan::from_args(&args)?;
    let parent = disk::data_parent(args.data_dir.clone())?;
    if let Some(child) = &args.restart_child {
        return restart::child_main(&parent, child).await;
    }
    if args.restart {
        let sizes = if args.quick { restart::Sizes::quick() } else { restart::Sizes::full() };
        println!("ferry-bench restart: under {}, load {}", parent.display(), load_average());
        print!("{}", restart::run(&parent, sizes)?);
        return Ok(());
    }
    if let Some(entries) = args.replay {
        return replay_mode(&args, &parent, entries).await;
    }
    if let Some(entries) = args.export {
        return export_mode(&args, &parent, entries).await;
    }
    if !args.sinks.is_empty() {
        return sinks_mode(&args, &parent).await;
    }
    if let Some(entries) = args.backup {
        return backup_mode(&args, &parent, entries).await;
    }
    if let Some(rows) = args.outbox {
        return outbox_mode(&args, &parent, rows).await;
    }
    appends_mode(&args, &plan, &parent).await
}

/// `--replay N`: reads frozen packs back through `Store::read` beside raw
/// zstd decompression.
async fn replay_mode(args: &Args, parent: &Path, entries: u64) -> anyhow::Result<()> {
    let payload = args.payloads.first().copied().unwrap_or(256);
    println!(
        "ferry-bench replay: {entries} entries of {payload} B under {}, load {}",
        parent.display(),
        load_average()
    );
    let replay = replay::run(parent, entries, payload, args.rounds).await?;
    print!("{}", replay.report());
    Ok(())
}

/// `--export N`: the file exporter against the store's read bound, and
/// append → sink-ack latency.
async fn export_mode(args: &Args, parent: &Path, entries: Option<u64>) -> anyhow::Result<()> {
    let options = export_options(args, entries)?;
    let fs = disk::filesystem_type(parent).unwrap_or_else(|| "unknown fs".into());
    println!(
        "ferry-bench export: {} entries of {} B in {} ledgers under {} ({fs}), {} cores, load {}",
        options.entries,
        options.payload_bytes,
        options.ledgers,
        parent.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let report = export::run(parent, &options).await?;
    print!("{}", report.text());
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    Ok(())
}

/// `--sinks K,…`: each database/bus sink next to a bare client of its
/// server.
async fn sinks_mode(args: &Args, parent: &Path) -> anyhow::Result<()> {
    let options = export::sinks::Options {
        entries: args.sink_entries.unwrap_or(if args.quick { 20_000 } else { 1_000_000 }),
        ledgers: args.export_ledgers,
        payload_bytes: args.payloads.first().copied().unwrap_or(256),
        batch: args.sink_batch,
        rounds: if args.quick { 1 } else { args.rounds },
        clickhouse_url: args.clickhouse_url.clone(),
        postgres_url: args.postgres_url.clone(),
        nats_server: args.nats_server.clone(),
    };
    ensure!(options.ledgers > 0 && options.batch > 0, "--export-ledgers and --sink-batch must be at least 1");
    ensure!(options.entries >= options.ledgers as u64, "--sinks needs at least one entry per ledger");
    ensure!(options.payload_bytes >= 128, "--sinks payloads must be at least 128 bytes");
    println!(
        "ferry-bench sinks: {} entries of {} B in {} ledgers under {}, {} cores, load {}",
        options.entries,
        options.payload_bytes,
        options.ledgers,
        parent.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    let report = export::sinks::run(parent, &options, &args.sinks).await?;
    print!("{}", report.text());
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    Ok(())
}

/// `--backup N`: `ferry backup create` next to `sha256sum`, and restore
/// next to HTTP batch appends.
async fn backup_mode(args: &Args, parent: &Path, entries: Option<u64>) -> anyhow::Result<()> {
    let options = backup_options(args, entries)?;
    let fs = disk::filesystem_type(parent).unwrap_or_else(|| "unknown fs".into());
    println!(
        "ferry-bench backup: {} entries of {} B in {} ledgers, {} rounds (best of each step), under {} ({fs}), {} \
         cores, load {}; {} ({})",
        options.entries,
        options.payload_bytes,
        options.ledgers,
        options.rounds,
        parent.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average(),
        options.ferry.display(),
        backup::ferry_version(&options.ferry),
    );
    if disk::is_in_memory(parent) {
        eprintln!("warning: {} is in memory: fsync costs nothing there", parent.display());
    }
    let report = backup::run(parent, &options).await?;
    print!("{}", report.text());
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    Ok(())
}

/// `--outbox N`: ferry's outbox source next to a bare drain loop, per
/// database.
async fn outbox_mode(args: &Args, parent: &Path, rows: Option<u64>) -> anyhow::Result<()> {
    let options = outbox_options(args, rows)?;
    let fs = disk::filesystem_type(parent).unwrap_or_else(|| "unknown fs".into());
    println!(
        "ferry-bench outbox: {} rows of {} B, batches of {}, {} rounds (best of each), drivers {}; store under {} \
         ({fs}), {} cores, load {}",
        options.rows,
        options.payload_bytes,
        options.batch,
        options.rounds,
        options.drivers.iter().map(|d| d.name()).collect::<Vec<_>>().join(","),
        parent.display(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    if disk::is_in_memory(parent) {
        eprintln!("warning: {} is in memory: fsync costs nothing there", parent.display());
    }
    let report = outbox::run(parent, &options).await?;
    print!("{}", report.text());
    if let Some(path) = &args.json {
        report::write_json(path, &report)?;
    }
    Ok(())
}

/// The append grid (and with `--peers`, the peers and their replays).
async fn appends_mode(args: &Args, plan: &Plan, parent: &Path) -> anyhow::Result<()> {
    let wrk = if plan.targets.contains(&Target::HttpWrk) {
        Some(wrk::WrkOptions { wrk: args.wrk.clone(), ferry: backup::ferry_binary(args.ferry_bin.clone())? })
    } else {
        None
    };
    let http = HttpOptions { server: args.server.clone(), token: args.token.clone(), wrk };
    let peers = if args.peers || plan.targets.iter().any(|t| t.is_peer()) {
        let max = postgres::max_clients(&args.postgres_url).await.context("reach PostgreSQL")?;
        let postmaster = postgres::postmaster_pid(&args.postgres_url).await?;
        if postmaster.is_none() {
            eprintln!("warning: PostgreSQL's processes are not on this machine: no server CPU for its targets");
        }
        Some(peers::Peers {
            nats_server: args.nats_server.clone(),
            postgres_url: args.postgres_url.clone(),
            postgres_max_clients: max,
            postmaster,
            pgbench: args.pgbench.clone(),
        })
    } else {
        None
    };
    let meta = match (&peers, args.peers) {
        (Some(p), true) => Some(peers::describe(p, http.wrk.as_ref(), parent, args.quick, load_average()).await?),
        _ => None,
    };
    println!("{}", describe(plan, parent, &http));
    if disk::is_in_memory(parent) {
        eprintln!("warning: {} is in memory: fdatasync costs nothing there", parent.display());
    }
    let rows = run(plan, parent, &http, peers.as_ref()).await?;
    println!("\n{}", report::table(&rows));
    let (Some(peers), Some(meta)) = (peers, meta) else {
        print!("{}", report::goals(&rows));
        if let Some(path) = &args.json {
            report::write_json(path, &rows)?;
        }
        return Ok(());
    };
    let entries = args.replay_entries.unwrap_or(if args.quick { 20_000 } else { 1_000_000 });
    eprintln!("replay: filling each target with {entries} entries");
    let replay = peers::replays(parent, &peers, entries).await?;
    print!("\n{}\n{}", peers::replay_table(&replay), peers::headline(&rows));
    if let Some(path) = &args.json {
        report::write_json(path, &peers::Results { meta, rows, replay })?;
    }
    Ok(())
}

/// reqwest is built without a default TLS backend (CRATES.md): ring, once
/// per process.
fn install_tls_provider() {
    // Err only when a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Runs every cell; shows each cell's rows on stderr as they are done.
async fn run(plan: &Plan, parent: &Path, http: &HttpOptions, peers: Option<&peers::Peers>) -> anyhow::Result<Vec<Row>> {
    let mut rows = Vec::new();
    eprint!("{}", report::table(&[]));
    for cell in &plan.cells {
        let cell_rows = run_cell(plan, cell, parent, http, peers).await?;
        cell_rows.iter().for_each(|row| eprint!("{}", report::line(row)));
        rows.extend(cell_rows);
    }
    Ok(rows)
}

/// One cell: every target once per round, merged; ratios against the bound.
async fn run_cell(
    plan: &Plan,
    cell: &Cell,
    parent: &Path,
    http: &HttpOptions,
    peers: Option<&peers::Peers>,
) -> anyhow::Result<Vec<Row>> {
    // A target that does not support the cell has no total and no row.
    let mut totals: Vec<Option<Measurement>> =
        plan.targets.iter().map(|&t| supports(t, cell, peers).then(Measurement::empty)).collect();
    for _ in 0..plan.rounds {
        for (&target, total) in plan.targets.iter().zip(&mut totals) {
            if let Some(total) = total {
                total.merge(&measure(target, cell, plan.timing, parent, http, peers).await?)?;
            }
        }
    }
    let bound = totals[0].as_ref().context("the bound runs in every cell")?;
    Ok(plan
        .targets
        .iter()
        .zip(&totals)
        .filter_map(|(t, m)| Some(Row::new(t.name(), t.client(), cell, m.as_ref()?, bound)))
        .collect())
}

/// Whether `target` can run `cell`: pgbench opens a connection per client
/// (no more than the server lets a run hold) and binds at most 255
/// parameters per statement.
fn supports(target: Target, cell: &Cell, peers: Option<&peers::Peers>) -> bool {
    match target {
        Target::PostgresPgbench => {
            let max = peers.map_or(u32::MAX, |p| p.postgres_max_clients);
            cell.clients <= max as usize && cell.batch <= pgbench::BATCH_MAX
        }
        _ => true,
    }
}

async fn measure(
    target: Target,
    cell: &Cell,
    timing: Timing,
    parent: &Path,
    http: &HttpOptions,
    peers: Option<&peers::Peers>,
) -> anyhow::Result<Measurement> {
    let peer = || peers.context("peer targets need --peers");
    let measured = match target {
        Target::Raw => raw::run(cell, timing, parent).await,
        Target::Store => store::run(cell, timing, parent, false).await,
        Target::StoreChained => store::run(cell, timing, parent, true).await,
        Target::Http => http::run(cell, timing, parent, http).await,
        Target::HttpWrk => {
            let wrk = http.wrk.as_ref().context("http-wrk needs its programs")?;
            wrk::run(cell, timing, parent, wrk).await
        }
        Target::Nats => nats::run(cell, timing, parent, &peer()?.nats_server, nats::SyncPolicy::Always).await,
        Target::NatsNosync => nats::run(cell, timing, parent, &peer()?.nats_server, nats::SyncPolicy::Default).await,
        Target::Postgres => {
            let p = peer()?;
            postgres::run(cell, timing, &p.postgres_url, p.postgres_max_clients, p.postmaster).await
        }
        Target::PostgresPgbench => {
            let p = peer()?;
            let options = pgbench::PgbenchOptions {
                pgbench: p.pgbench.clone(),
                url: p.postgres_url.clone(),
                postmaster: p.postmaster,
            };
            pgbench::run(cell, timing, parent, &options).await
        }
    };
    measured.with_context(|| format!("{} with {cell:?}", target.name()))
}

fn describe(plan: &Plan, parent: &Path, http: &HttpOptions) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let fs = disk::filesystem_type(parent).unwrap_or_else(|| "unknown fs".into());
    let mut server = http.server.as_ref().map_or_else(|| "in-process".to_owned(), |url| url.to_string());
    if let Some(wrk) = &http.wrk {
        server.push_str(&format!("; http-wrk serves {}", wrk.ferry.display()));
    }
    format!(
        "ferry-bench: {cores} cores, load {}, data under {} ({fs}); {} cells × {}; {} rounds of {:?} warmup + {:?}; \
         {LEDGERS} ledgers; HTTP server {server}",
        load_average(),
        parent.display(),
        plan.cells.len(),
        plan.targets.iter().map(|t| t.name()).collect::<Vec<_>>().join(" + "),
        plan.rounds,
        plan.timing.warmup,
        plan.timing.window,
    )
}

/// The 1, 5 and 15 minute load averages: other work on the machine skews
/// every number, the bound's most of all.
fn load_average() -> String {
    let text = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = text.split_whitespace().take(3).collect();
    if fields.len() == 3 { fields.join(" ") } else { "unknown".into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        Args::try_parse_from(["ferry-bench"].iter().chain(extra)).unwrap()
    }

    #[test]
    fn default_plan_is_the_full_grid_plus_batches() {
        let plan = Plan::from_args(&args(&[])).unwrap();
        assert_eq!(plan.cells.len(), 4 * 2 + 2 * 2);
        assert_eq!(plan.targets, [Target::Raw, Target::Store, Target::Http]);
        assert_eq!(plan.cells.iter().filter(|c| c.batch == 1000).count(), 4);
        assert_eq!(plan.timing.window * plan.rounds, Duration::from_secs(3));
    }

    #[test]
    fn quick_is_one_cell_and_flags_narrow_the_grid() {
        assert_eq!(Plan::from_args(&args(&["--quick"])).unwrap().cells.len(), 1);
        let plan = Plan::from_args(&args(&[
            "--targets",
            "store",
            "--clients",
            "2,3",
            "--payloads",
            "64",
            "--modes",
            "single",
        ]))
        .unwrap();
        assert_eq!(plan.targets, [Target::Raw, Target::Store]);
        assert_eq!(plan.cells, grid(&[2, 3], &[64], 1));
    }

    #[test]
    fn export_takes_an_optional_entry_count() {
        let options = |extra: &[&str]| {
            let a = args(extra);
            export_options(&a, a.export.expect("--export given")).unwrap()
        };
        assert_eq!((options(&["--export"]).entries, options(&["--export"]).rounds), (1_000_000, 3));
        assert_eq!(options(&["--export", "5000"]).entries, 5000);
        let quick = options(&["--quick", "--export"]);
        assert_eq!((quick.entries, quick.rounds, quick.window), (100_000, 1, Duration::from_secs(2)));
        assert_eq!(args(&[]).export, None);
        assert!(Args::try_parse_from(["ferry-bench", "--export", "--replay", "10"]).is_err());
    }

    #[test]
    fn peers_run_every_target_over_the_issue_grid() {
        let plan = Plan::from_args(&args(&["--peers"])).unwrap();
        assert_eq!(plan.targets.len(), 8);
        assert_eq!(plan.cells.len(), 4 * 3 * 2);
        assert!(plan.cells.iter().any(|c| c.clients == 64 && c.payload_bytes == 1024 && c.batch == 1));
        assert!(plan.cells.iter().all(|c| c.batch == 1 || c.batch == 100));
        assert_eq!(Plan::from_args(&args(&["--peers", "--quick"])).unwrap().cells.len(), 2);
        assert!(Args::try_parse_from(["ferry-bench", "--peers", "--export"]).is_err());
    }

    #[test]
    fn backup_takes_an_optional_entry_count_and_a_ferry_binary() {
        let ferry = std::env::current_exe().unwrap();
        let ferry = ferry.to_str().unwrap();
        let options = |extra: &[&str]| {
            let a = args(&[&["--ferry-bin", ferry], extra].concat());
            backup_options(&a, a.backup.expect("--backup given")).unwrap()
        };
        let full = options(&["--backup"]);
        assert_eq!((full.entries, full.ledgers, full.payload_bytes, full.rounds), (1_000_000, 4, 256, 3));
        assert_eq!(options(&["--backup", "8000", "--backup-ledgers", "2"]).entries, 8000);
        let quick = options(&["--quick", "--backup"]);
        assert_eq!((quick.entries, quick.rounds, quick.append_timing.window), (50_000, 1, Duration::from_secs(1)));
        let few = args(&["--ferry-bin", ferry, "--backup", "3", "--backup-ledgers", "4"]);
        assert!(backup_options(&few, few.backup.unwrap()).is_err());
        assert!(Args::try_parse_from(["ferry-bench", "--backup", "--export"]).is_err());
        assert!(Args::try_parse_from(["ferry-bench", "--backup", "--peers"]).is_err());
    }

    #[test]
    fn outbox_takes_an_optional_row_count_and_drivers() {
        let options = |extra: &[&str]| {
            let a = args(extra);
            outbox_options(&a, a.outbox.expect("--outbox given")).unwrap()
        };
        let full = options(&["--outbox"]);
        assert_eq!((full.rows, full.batch, full.rounds, full.payload_bytes), (200_000, 1000, 3, 256));
        assert_eq!(full.drivers, [outbox::OutboxDriver::Postgres, outbox::OutboxDriver::Mysql]);
        assert_eq!(full.mysql_url, "mysql://root@127.0.0.1:3306/mysql");
        assert!(!full.pending_index && options(&["--outbox", "--outbox-pending-index"]).pending_index);
        let quick = options(&["--quick", "--outbox", "--outbox-drivers", "mysql"]);
        assert_eq!((quick.rows, quick.rounds, quick.drivers.len()), (5_000, 1, 1));
        assert_eq!(options(&["--outbox", "7000"]).rows, 7000);
        let zero = args(&["--outbox", "0"]);
        assert!(outbox_options(&zero, zero.outbox.unwrap()).is_err());
        let big = args(&["--outbox", "--outbox-batch", "20000"]);
        assert!(outbox_options(&big, big.outbox.unwrap()).is_err());
        assert!(Args::try_parse_from(["ferry-bench", "--outbox", "--backup"]).is_err());
        assert!(Args::try_parse_from(["ferry-bench", "--outbox", "--outbox-drivers", "oracle"]).is_err());
    }

    #[test]
    fn pgbench_runs_only_the_cells_it_can() {
        let peers = peers::Peers {
            nats_server: "nats-server".into(),
            postgres_url: String::new(),
            postgres_max_clients: 90,
            postmaster: None,
            pgbench: "pgbench".into(),
        };
        let cell = |clients, batch| Cell { clients, payload_bytes: 1024, batch };
        let pgbench = |c: Cell| supports(Target::PostgresPgbench, &c, Some(&peers));
        assert!(pgbench(cell(64, 1)) && pgbench(cell(90, 100)));
        // A connection per client, and at most 253 rows per statement.
        assert!(!pgbench(cell(256, 1)) && !pgbench(cell(16, 1000)));
        // Every other target runs every cell.
        assert!(supports(Target::Postgres, &cell(256, 1000), Some(&peers)));
        assert!(supports(Target::HttpWrk, &cell(256, 1000), None));
        let labels: Vec<_> = [Target::Http, Target::HttpWrk, Target::Postgres, Target::PostgresPgbench]
            .map(|t| format!("{} ({})", t.name(), t.client()))
            .into();
        assert_eq!(labels, ["http (reqwest)", "http-wrk (wrk)", "postgres (sqlx)", "postgres-pgbench (pgbench)"]);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(Plan::from_args(&args(&["--payloads", "4"])).is_err());
        assert!(Plan::from_args(&args(&["--clients", "0"])).is_err());
        assert!(Plan::from_args(&args(&["--batch-size", "1"])).is_err());
        assert!(Args::try_parse_from(["ferry-bench", "--targets", "disk"]).is_err());
        assert!(Args::try_parse_from(["ferry-bench", "--duration", "soon"]).is_err());
    }
}
