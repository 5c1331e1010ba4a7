//! The command line (SPEC §8): clap's argument types and nothing else.
//! `main.rs` dispatches them to the command modules, which take plain
//! values and know nothing of clap.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "ferry", version, about = "Durable append-only ledgers, moved exactly once in effect")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where client commands find the server.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The ferry server's base URL.
    #[arg(long, env = "FERRY_SERVER", default_value = "http://127.0.0.1:7070", global = true)]
    pub server: String,
    /// Bearer token for servers with `[server] tokens`.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: the store and the HTTP API.
    Serve(ServeArgs),
    /// Append one entry, or JSON lines from stdin (one payload per line).
    Append {
        ledger: String,
        /// The payload as JSON; without it, each stdin line is a payload.
        payload: Option<String>,
        /// Routing key stored with the entry (every entry, with stdin).
        #[arg(long)]
        key: Option<String>,
        /// Idempotency key; with stdin, line N gets "{KEY}:{N}".
        #[arg(long)]
        idempotency_key: Option<String>,
        /// Append only if the ledger's head is N (0: empty or absent); else
        /// fail with head_mismatch and append nothing. With stdin, each
        /// later request expects the head the one before left.
        #[arg(long, value_name = "N")]
        expected_head: Option<u64>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Print a ledger's entries as JSON lines.
    Read {
        ledger: String,
        /// First id to print (default: the ledger's first).
        #[arg(long)]
        from: Option<u64>,
        /// Start at the first entry stamped at or after this UTC time, in
        /// RFC 3339 (2026-12-01T00:00:00Z); a time before the first retained
        /// entry starts at it.
        #[arg(long, value_name = "TIME", conflicts_with = "from", value_parser = humantime::parse_rfc3339)]
        since: Option<std::time::SystemTime>,
        /// Most entries to print (default: all up to the head).
        #[arg(long)]
        limit: Option<u64>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// List ledgers: a table on a terminal, JSON lines otherwise.
    ///
    /// The table's columns: NAME, FIRST, HEAD, ENTRIES, BYTES (binary
    /// units), CREATED (UTC). JSON lines: one ledger object per line, as
    /// the API gives it. Pages through the server's list, printing each
    /// page as it comes.
    Ledgers {
        /// JSON lines even on a terminal.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Follow new entries of ledgers starting with PREFIX, as JSON lines;
    /// reconnects and resumes after a dropped connection or a restart.
    Tail {
        prefix: String,
        /// Start one ledger at an id: LEDGER:ID.
        #[arg(long)]
        from: Option<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Exporter status (a table on a terminal, JSON lines otherwise) and
    /// control (the server's JSON answer).
    Exporters {
        #[command(subcommand)]
        command: ExportersCommand,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Outbox source status, as JSON.
    Sources {
        #[command(subcommand)]
        command: SourcesCommand,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Whether data moves: exits 0 when ok, 1 when stuck, not ready or
    /// unreachable.
    ///
    /// Asks `GET /v1/health` (an admin token) and prints "ok", or each
    /// stuck exporter with its stuck ledgers' ages, lag and last error and
    /// each stuck source, or "not ready: REASON". Exits 0 when ok, 1 when
    /// anything is stuck, the server is not ready or cannot be reached:
    /// for cron and probes.
    Health {
        /// Print the server's answer as one JSON line instead (same exit
        /// codes).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Backups that cat, jq and sha256sum can read: create, verify, restore.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// The hash chain: `ferry chain verify --from-backup DIR… --expect
    /// ID:HASH` proves backups against a head anchored outside ferry.
    Chain {
        #[command(subcommand)]
        command: ChainCommand,
    },
    /// Tokens: `ferry token hash` prints the digest form of a secret.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Check a stopped node's data directory offline (takes its locks,
    /// changes nothing); exits 1 on any fault.
    Verify(StorageArgs),
    /// Print the catalog (--data-dir, under the locks), or a pack file or
    /// WAL segment from the file alone.
    Inspect {
        /// A pack file (.pack) or WAL segment (.wal) to print.
        #[arg(conflicts_with_all = ["data_dir", "config"])]
        file: Option<PathBuf>,
        #[command(flatten)]
        storage: StorageArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print the SHA-256 of a secret in hex, for `secret_sha256` or a
    /// `sha256:` line of `token_file`. Reads the secret from stdin (one
    /// line) unless given, so it stays out of shell history.
    Hash { secret: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum ExportersCommand {
    /// Every exporter (or one) with its ledgers: a table on a terminal,
    /// JSON lines otherwise.
    ///
    /// Each exporter: a header with its sink, state, total lag, oldest
    /// unexported age, stuck ledgers and max_lag, then per ledger
    /// LEDGER, CURSOR, HEAD, LAG, AGE (of its oldest unexported entry),
    /// STATE, ATTEMPTS and LAST ERROR. An aligned table on a terminal, else
    /// JSON lines: one exporter status object per line, with all its
    /// ledgers.
    Status {
        name: Option<String>,
        /// JSON lines even on a terminal.
        #[arg(long)]
        json: bool,
        /// Refresh every --interval until Ctrl-C: on a terminal the screen
        /// is redrawn in place (the ledgers that fit), else each refresh
        /// prints its JSON lines.
        #[arg(long)]
        watch: bool,
        /// Time between refreshes of --watch (at least 100ms).
        #[arg(long, default_value = "2s", value_parser = parse_interval, requires = "watch")]
        interval: std::time::Duration,
    },
    /// Re-export from an id (default 1) for every ledger or one. A reset
    /// that fails changes nothing and leaves the exporter stopped.
    Reset {
        name: String,
        #[arg(long)]
        ledger: Option<String>,
        #[arg(long)]
        from_id: Option<u64>,
    },
    /// Start no new batches until resumed.
    Pause { name: String },
    /// End a pause or stop, and retry failed ledgers.
    Resume { name: String },
    /// Delete the cursors of an exporter no longer in the configuration.
    Delete { name: String },
    /// Ask the destination whether it holds exactly ids First..cursor of
    /// each ledger (count, min, max); exits 1 on a gap or a repeat.
    Check {
        name: String,
        #[arg(long)]
        ledger: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum SourcesCommand {
    /// Every outbox source (or one) with its state, rows drained, backlog,
    /// oldest pending age, last error and lock holder.
    Status { name: Option<String> },
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Take a snapshot pin and write every ledger from First to its pinned
    /// head into DEST (new or empty); MANIFEST.json is written last.
    Create {
        dest: PathBuf,
        #[command(flatten)]
        node: NodeArgs,
        /// Only ledgers matching these globs (default: every ledger).
        #[arg(long, num_args = 1..)]
        ledgers: Vec<String>,
        /// Write only the entries after this backup's heads.
        #[arg(long, value_name = "OLD_BACKUP")]
        incremental_from: Option<PathBuf>,
        /// The pin's ttl, renewed every third of it; a backup whose pin
        /// cannot be renewed is aborted.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        pin_ttl: std::time::Duration,
        /// Entry files are closed before this size.
        #[arg(long, default_value = "64MiB", value_parser = parse_size, hide = true)]
        max_file_bytes: u64,
    },
    /// Check backups from their files alone (a full one, then the
    /// incremental ones taken from it, in order); exits 1 naming the first
    /// bad file and line.
    Verify {
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
    },
    /// Verify, then import every ledger: ids, ts, keys and hashes exactly.
    Restore {
        /// A full backup, then the incremental ones taken from it, in order.
        #[arg(required = true)]
        dirs: Vec<PathBuf>,
        #[command(flatten)]
        node: NodeArgs,
        /// `fail-if-exists`: refuse when a ledger of the backup exists;
        /// `merge`: entries already there must be identical.
        #[arg(long, value_enum, default_value_t = RestoreModeArg::FailIfExists)]
        mode: RestoreModeArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum ChainCommand {
    /// Verify backups (a full one, then its incremental ones, in order),
    /// chain included, and prove that the chain hash they give entry ID of
    /// the ledger is HASH (from `GET /v1/ledgers/{ledger}/head` or a
    /// `ledger.checkpoint` event kept elsewhere); exits 1 otherwise.
    Verify {
        #[arg(long = "from-backup", value_name = "DIR", required = true, num_args = 1..)]
        from_backup: Vec<PathBuf>,
        /// The ledger the anchor is of (needed when the backups hold several).
        #[arg(long)]
        ledger: Option<String>,
        /// The anchored head: ID:HASH (lower-case hex).
        #[arg(long, value_name = "ID:HASH")]
        expect: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RestoreModeArg {
    FailIfExists,
    Merge,
}

/// A node a backup reads or a restore writes: a running server, or a
/// stopped node's data directory (opened here, under its locks).
#[derive(Debug, clap::Args)]
pub struct NodeArgs {
    /// The ferry server's base URL (default http://127.0.0.1:7070).
    #[arg(long, env = "FERRY_SERVER", conflicts_with_all = ["data_dir", "config"])]
    pub server: Option<String>,
    /// Bearer token (an admin one) for servers with `[server] tokens`.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A stopped node's data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Its TOML config file (`data_dir` and `[storage] *_dir` roots).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// A `--watch` interval: short ones would only load the server.
fn parse_interval(text: &str) -> Result<std::time::Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| format!("{e} (e.g. \"2s\", \"500ms\")"))?;
    if interval < std::time::Duration::from_millis(100) {
        return Err(format!("{text:?} is shorter than 100ms"));
    }
    Ok(interval)
}

fn parse_size(text: &str) -> Result<u64, String> {
    text.parse::<ferry_core::units::Size>().map(|s| s.0)
}

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML config file (SPEC §8); without it, every default applies.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Overrides `data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Overrides `[server] listen`.
    #[arg(long)]
    pub listen: Option<String>,
    /// An exporter as NAME=SINK:{json}.
    #[arg(long)]
    pub exporter: Vec<String>,
}

/// Where the data is: `--data-dir`, or a config file's `data_dir` and
/// `[storage] *_dir` roots (`--data-dir` wins over the file's `data_dir`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct StorageArgs {
    /// The data directory.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// TOML config file (SPEC §8): its `data_dir` and `[storage] catalog_dir`,
    /// `hot_dir`, `ledgers_dir`.
    #[arg(long)]
    pub config: Option<PathBuf>,
}
