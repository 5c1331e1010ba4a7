//! The `ferry` binary: `serve` runs the daemon; the other commands are
//! clients of its HTTP API or offline tools. This file dispatches the
//! parsed command line (`cli.rs`) to the command modules. Exit codes: 0 ok,
//! 1 failure, 2 usage.

mod backup;
mod cli;
mod client;
mod config;
mod serve;
mod tail;
mod tools;
mod views;

use std::process::ExitCode;

/// jemalloc rather than glibc's malloc: the request path allocates and
/// frees small buffers on every call from several threads, where glibc
/// spent ~12% of the server's CPU; jemalloc cut the instructions per append
/// by 16% and keeps memory flat with 1,024 watchers (docs/performance.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::Parser as _;

use crate::cli::{Cli, Command, ExportersCommand, SourcesCommand, StorageArgs, TokenCommand};
use crate::client::{Client, ExporterControl, ReadStart};
use crate::tools::Storage;
use crate::views::Output;

/// An error in how ferry was invoked (exit code 2), as opposed to a failure
/// while doing the work (exit code 1).
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Tests configure fail points through `FAILPOINTS`; release builds have none.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    // One TLS provider for the whole process (reqwest is built without one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        // `ferry ledgers | head`: the reader has all it wanted.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            if e.downcast_ref::<UsageError>().is_some() { ExitCode::from(2) } else { ExitCode::FAILURE }
        }
    }
}

/// The error and its causes, `: `-joined like `{:#}`, but a cause whose
/// text the message already ends with is not repeated (an error that
/// shows its source in its own message and also returns it as `source()`
/// would otherwise print the OS error twice).
fn error_chain(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.is_empty() {
            text = part;
        } else if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
    }
    text
}

/// Runs one command.
async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve::run(args.config.as_deref(), args.data_dir, args.listen, args.exporter).await,
        Command::Append { ledger, payload, key, idempotency_key, expected_head, server } => {
            let client = Client::new(&server.server, server.token)?;
            client.append(&ledger, payload.as_deref(), key, idempotency_key, expected_head).await
        }
        Command::Read { ledger, from, since, limit, server } => {
            let start = match since {
                Some(t) => ReadStart::Since(client::unix_ms(t)),
                None => ReadStart::From(from),
            };
            Client::new(&server.server, server.token)?.read(&ledger, start, limit).await
        }
        Command::Ledgers { json, server } => {
            Client::new(&server.server, server.token)?.ledgers(Output::detect(json)).await
        }
        Command::Health { json, server } => Client::new(&server.server, server.token)?.health(json).await,
        Command::Tail { prefix, from, server } => {
            tail::tail(&Client::new(&server.server, server.token)?, &prefix, from.as_deref()).await
        }
        Command::Exporters { command, server } => exporters(&Client::new(&server.server, server.token)?, command).await,
        Command::Sources { command: SourcesCommand::Status { name }, server } => {
            Client::new(&server.server, server.token)?.source_status(name.as_deref()).await
        }
        Command::Backup { command } => backup::run(command).await,
        Command::Chain { command } => backup::chain(command).await,
        Command::Token { command: TokenCommand::Hash { secret } } => token_hash(secret),
        Command::Verify(storage) => tokio::task::spawn_blocking(move || tools::verify(storage_of(&storage))).await?,
        Command::Inspect { file, storage } => {
            tokio::task::spawn_blocking(move || tools::inspect(file.as_deref(), storage_of(&storage))).await?
        }
    }
}

/// `ferry token hash [SECRET]`: the digest of the secret (from stdin
/// without an argument), as `secret_sha256` takes it.
fn token_hash(secret: Option<String>) -> anyhow::Result<()> {
    let secret = match secret {
        Some(s) => s,
        None => {
            let mut line = String::new();
            anyhow::Context::context(std::io::stdin().read_line(&mut line), "read the secret from stdin")?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if secret.is_empty() || secret.chars().any(char::is_whitespace) {
        return Err(UsageError("a secret must be non-empty and contain no whitespace".into()).into());
    }
    println!("{}", ferry_api::secret_digest(&secret));
    Ok(())
}

/// `ferry exporters …`: status as `views` shows it; the controls print the
/// server's JSON answer.
async fn exporters(client: &Client, command: ExportersCommand) -> anyhow::Result<()> {
    match command {
        ExportersCommand::Status { name, json, watch: false, .. } => {
            client.exporter_status(name.as_deref(), Output::detect(json)).await
        }
        ExportersCommand::Status { name, json, watch: true, interval } => {
            client.exporter_watch(name.as_deref(), Output::detect(json), interval).await
        }
        ExportersCommand::Reset { name, ledger, from_id } => {
            client.exporter_reset(&name, ledger.as_deref(), from_id).await
        }
        ExportersCommand::Pause { name } => client.exporter_control(&name, ExporterControl::Pause).await,
        ExportersCommand::Resume { name } => client.exporter_control(&name, ExporterControl::Resume).await,
        ExportersCommand::Delete { name } => client.exporter_delete(&name).await,
        ExportersCommand::Check { name, ledger } => client.exporter_check(&name, ledger.as_deref()).await,
    }
}

fn storage_of(args: &StorageArgs) -> Storage<'_> {
    Storage { data_dir: args.data_dir.as_deref(), config: args.config.as_deref() }
}
