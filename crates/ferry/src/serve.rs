//! `ferry serve`: config → validate → logging → open the store (recovery)
//! → start the exporters and the outbox sources → serve the API until
//! SIGINT/SIGTERM → stop the sources, then the exporters, then the store.
//!
//! The sources stop first: each one's batch in flight appends into the
//! store, which must still be open for it to commit or roll back cleanly.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use ferry_export::{CursorTable, Exporters};
use ferry_outbox::Sources;
use ferry_store::Store;
use tracing_subscriber::EnvFilter;

use crate::config::{Config, Connections, Log, LogFormat, LogLevel, ServeSettings};

/// Runs the daemon from the config file (or the defaults), with
/// `--data-dir`, `--listen` and `--exporter` laid over it.
pub async fn run(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    exporter_flags: Vec<String>,
) -> anyhow::Result<()> {
    // First of all: until a signal is listened for, its default action
    // ends the process, and a stop during a slow start (a sink's server
    // that does not answer, a long recovery) must still be clean.
    let mut stop = StopSignals::listen()?;
    let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    let mut settings = settings(config_file, data_dir, listen, exporter_flags)?;
    init_logging(&settings.log);
    // Before the sinks are built: the file sink sizes its set of open files
    // from the limit.
    raise_open_file_limit();
    settings.api.metrics = ferry_api::metrics::install();
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    settings.api.closing = closing;

    // Validate → build → run: sinks are built (directories, clients) before
    // storage opens, so a sink that cannot start changes nothing.
    let exporters = std::mem::take(&mut settings.exporters);
    let table = Arc::new(CursorTable::new(exporters.iter().map(|(s, _)| (&s.name, &s.matcher))));
    let build = async {
        let mut built = Vec::with_capacity(exporters.len());
        for (exporter, sink) in exporters {
            let sink = sink.build().await.map_err(|e| anyhow::anyhow!("exporter {}: {e}", exporter.name))?;
            built.push((exporter, sink));
        }
        anyhow::Ok(built)
    };
    // Nothing is open yet: a stop signal while a sink waits for its server
    // ends here.
    let built = tokio::select! {
        biased;
        () = stop.recv() => {
            tracing::info!("stopped before serving: a stop signal came while the exporters were starting");
            return Ok(());
        }
        built = build => built?,
    };
    if settings.respect_exporters {
        settings.store.holds.push(table.clone());
    }
    // TLS files are read before storage opens: a bad certificate changes
    // nothing.
    let tls = match &settings.tls {
        Some((cert, key)) => Some(Arc::new(ferry_api::ServerTls::load(cert, key)?)),
        None => None,
    };
    let limits = connection_limits(&settings.connections);
    let store_config = settings.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(store_config))
        .await?
        .with_context(|| format!("open storage under {}", settings.store.data_dir.display()))?;
    let listener = bind(settings.listen).with_context(|| format!("listen on {}", settings.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        data_dir = %settings.store.data_dir.display(),
        tls = tls.is_some(),
        "ferry listening"
    );
    tokio::spawn(reload_on_sighup(
        hangups,
        Reloadable {
            config_file: config_file.map(Path::to_path_buf),
            tokens: settings.api.tokens.clone(),
            tls: tls.clone(),
        },
    ));

    let exporters = Exporters::start(store.clone(), table, built).await.context("start the exporters")?;
    settings.api.exporters = Some(exporters.clone());
    // After the store opened (recovery done), before the API serves; with
    // none configured nothing is started and `GET /v1/sources` answers [].
    let source_settings = std::mem::take(&mut settings.sources);
    let sources = if source_settings.is_empty() {
        None
    } else {
        tracing::info!(sources = source_settings.len(), "starting the outbox sources");
        Some(Sources::start(store.clone(), source_settings))
    };
    settings.api.sources = sources.clone();
    let api = ferry_api::Api::open(store.clone(), settings.api).await.context("load the watch sessions")?;
    // A signal that came while storage opened or the exporters started
    // ends the serving at once (the listener checks it first).
    let shutdown = async move {
        stop.recv().await;
        // End the open SSE streams so the graceful shutdown can finish.
        let _ = closing_tx.send(true);
    };
    let served = ferry_api::serve(listener, api.router(), limits, tls, shutdown);
    let served = served.await;
    // First, even when serving failed: a source's batch in flight commits
    // or rolls back while the store can still take its append.
    if let Some(sources) = &sources {
        tracing::info!("shutting down: finishing the outbox sources' batches in flight");
        sources.shutdown(settings.shutdown_timeout).await;
    }
    served.context("serve HTTP")?;
    tracing::info!("shutting down: writing watch positions");
    api.close().await;
    tracing::info!("shutting down: finishing in-flight exports");
    exporters.shutdown(settings.shutdown_timeout).await;
    tracing::info!("shutting down: draining appends");
    if tokio::time::timeout(settings.shutdown_timeout, store.shutdown()).await.is_err() {
        tracing::warn!("shutdown_timeout passed before the flusher stopped");
    }
    Ok(())
}

/// The config file (or the defaults) with the command line's overrides,
/// validated: nothing is opened yet.
fn settings(
    config_file: Option<&Path>,
    data_dir: Option<PathBuf>,
    listen: Option<String>,
    exporter_flags: Vec<String>,
) -> anyhow::Result<ServeSettings> {
    let mut config = match config_file {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    if let Some(listen) = listen {
        config.server.listen = listen;
    }
    config.exporter_flags = exporter_flags;
    config.validate()
}

/// Raises the soft open-file limit to the hard one and logs both: a shell's
/// default soft limit (often 1,024) is far below what many ledgers, file
/// exporters and connections need, and the hard limit is what the operator
/// allowed. A failure is logged and ferry runs with the limit it has.
fn raise_open_file_limit() {
    let shown = |n: Option<u64>| n.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    match ferry_fs::descriptors::raise_to_hard() {
        Ok((before, after)) if before.soft != after.soft => tracing::info!(
            before = %shown(before.soft),
            after = %shown(after.soft),
            hard = %shown(after.hard),
            "open-file limit raised to the hard limit"
        ),
        Ok((_, now)) => {
            tracing::info!(soft = %shown(now.soft), hard = %shown(now.hard), "open-file limit already at the hard limit")
        }
        Err(e) => {
            let now = ferry_fs::descriptors::limit();
            tracing::warn!(soft = %shown(now.soft), hard = %shown(now.hard), error = %e, "could not raise the open-file limit")
        }
    }
}

/// Binds the listener with a backlog of `LISTEN_BACKLOG`: past
/// `max_connections`, new clients wait there (costing no descriptor of
/// ours), so it is deeper than the usual 128.
fn bind(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    const LISTEN_BACKLOG: u32 = 1_024;
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The `[server]` connection limits with `max_connections` settled: as
/// configured, or sized so connections leave the store its descriptors
/// (`ferry_fs::descriptors::for_connections`). A configured value above
/// that is kept, with a warning: running out of descriptors then refuses
/// connections and delays freezes, but never poisons the store.
fn connection_limits(configured: &Connections) -> ferry_api::ConnectionLimits {
    let soft = ferry_fs::descriptors::limit().soft;
    let reserve = ferry_fs::descriptors::reserved_for_storage(soft);
    let fits = ferry_fs::descriptors::for_connections(soft, usize::MAX);
    let max_connections = match configured.max_connections {
        Some(n) => {
            if n > fits {
                tracing::warn!(
                    max_connections = n,
                    open_file_limit = ?soft,
                    "server.max_connections leaves fewer than {reserve} descriptors for the store; \
                     past {fits} connections, connections and freezes may fail for want of descriptors"
                );
            }
            n
        }
        None => ferry_fs::descriptors::for_connections(soft, ferry_core::limits::CONNECTIONS_MAX_DEFAULT),
    };
    tracing::info!(
        max_connections,
        reserved_descriptors = reserve,
        header_read_timeout = ?configured.header_read_timeout,
        idle_timeout = ?configured.idle_timeout,
        "connection limits (server.max_connections, header_read_timeout, idle_timeout)"
    );
    ferry_api::ConnectionLimits {
        max_connections,
        header_read_timeout: configured.header_read_timeout,
        idle_timeout: configured.idle_timeout,
    }
}

/// What SIGHUP reloads: the tokens of the config file (`tokens`,
/// `scoped_tokens`, `token_file`) and the TLS pair. Each reload is all or
/// nothing: a file that does not load is logged and what is in use stays.
/// Without a config file and TLS a SIGHUP is logged and otherwise ignored
/// (its default action would end the process).
struct Reloadable {
    config_file: Option<PathBuf>,
    tokens: Arc<ferry_api::Tokens>,
    tls: Option<Arc<ferry_api::ServerTls>>,
}

async fn reload_on_sighup(hangups: std::io::Result<tokio::signal::unix::Signal>, what: Reloadable) {
    let mut hangups = match hangups {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: tokens and the TLS certificate are not reloadable");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        if what.config_file.is_none() && what.tls.is_none() {
            tracing::info!("SIGHUP: nothing to reload (no config file, no TLS)");
            continue;
        }
        if let Some(path) = &what.config_file {
            let (path, tokens) = (path.clone(), what.tokens.clone());
            match tokio::task::spawn_blocking(move || reload_tokens(&path, &tokens)).await {
                Ok(Ok(Some((count, revoked)))) => {
                    tracing::info!(tokens = count, revoked, "SIGHUP: reloaded the tokens")
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    tracing::error!(
                        error = format!("{e:#}"),
                        "SIGHUP: the tokens were not reloaded; the previous set stays in use"
                    )
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: the token reload failed"),
            }
        }
        if let Some(tls) = &what.tls {
            let tls = tls.clone();
            match tokio::task::spawn_blocking(move || tls.reload()).await {
                Ok(Ok(())) => tracing::info!("SIGHUP: reloaded the TLS certificate and key"),
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "SIGHUP: the TLS certificate was not reloaded; the previous one stays in use")
                }
                Err(e) => tracing::error!(error = %e, "SIGHUP: the TLS reload failed"),
            }
        }
    }
}

/// Reads the config file's tokens again and swaps them in: `Some((tokens,
/// revoked))`, or `None` when there were none and are none. A file that
/// names no token while tokens are in use is refused: a reload never
/// turns authentication off (a restart does, deliberately).
fn reload_tokens(path: &Path, tokens: &ferry_api::Tokens) -> anyhow::Result<Option<(usize, usize)>> {
    let fresh = Config::load(path)?.server.access_tokens()?;
    if fresh.is_empty() {
        if tokens.enabled() {
            anyhow::bail!("{} now names no token; a reload never turns authentication off", path.display());
        }
        return Ok(None);
    }
    let count = fresh.len();
    Ok(Some((count, tokens.replace(fresh))))
}

fn init_logging(log: &Log) {
    let level = match log.level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
        LogLevel::Trace => "trace",
    };
    let filter = EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new(level));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

/// SIGINT and SIGTERM, listened for from the moment this is made (not from
/// a first poll): a signal that comes before `recv` is asked is not lost,
/// `recv` then returns at once.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("listen for SIGTERM")?,
        })
    }

    /// Until SIGINT or SIGTERM (at once for one that came already).
    async fn recv(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
    }
}
