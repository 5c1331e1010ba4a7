//! NATS JetStream as a peer: a `nats-server` started for each run on its
//! own port and data dir, one stream `bench` over `bench.>` with file
//! storage. With `sync_interval: always` a PubAck means the message was
//! fsync'd, as ferry's ack does; the server's default (sync every 2 min)
//! is measured too, for reference, and labelled not durable. Each client
//! has its own connection and awaits its PubAcks before the next call; a
//! batch is that many publishes pipelined, acks awaited together (not
//! atomic: JetStream has no all-or-nothing batch on this client).
#![allow(clippy::disallowed_methods)] // the benchmark writes nats-server's config and log, not ferry data

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, stream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tempfile::TempDir;

use crate::driver::{Measurement, Timing, drive};
use crate::workload::{Cell, LEDGERS, payload_json};

/// How long a started server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(20);
const STREAM: &str = "bench";

/// When the server syncs its stream files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `sync_interval: always`: durable on PubAck.
    Always,
    /// The server's default: not durable on PubAck.
    Default,
}

/// How long a PubAck may take: the client's 5 s default is shorter than a
/// durable batch takes under 256 clients, and a late ack is slow, not lost.
const ACK_TIMEOUT: Duration = Duration::from_secs(300);

/// The pause before publishing refused messages again, doubling per retry.
const BACKPRESSURE_PAUSE_MIN: Duration = Duration::from_millis(1);
const BACKPRESSURE_PAUSE_MAX: Duration = Duration::from_millis(100);
/// Rounds of re-publishing before a call gives up (about 100 s of pauses).
const BACKPRESSURE_ROUNDS_MAX: u32 = 1000;

/// A `nats-server` child process with JetStream, killed on drop.
pub struct NatsServer {
    child: Child,
    pub url: String,
    _dir: TempDir,
}

impl NatsServer {
    pub async fn start(bin: &Path, parent: &Path, sync: SyncPolicy) -> anyhow::Result<NatsServer> {
        let dir = tempfile::Builder::new().prefix("nats-").tempdir_in(parent).context("create a temp dir")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let sync_line = match sync {
            SyncPolicy::Always => "  sync_interval: always\n",
            SyncPolicy::Default => "",
        };
        let config = format!(
            "listen: 127.0.0.1:{port}\nmax_payload: 8MB\njetstream {{\n  store_dir: \"{}\"\n{sync_line}}}\n",
            dir.path().join("js").display()
        );
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.path().join("nats.log"))?;
        let child = Command::new(bin)
            .arg("-c")
            .arg(&config_path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let server = NatsServer { child, url: format!("nats://127.0.0.1:{port}"), _dir: dir };
        let deadline = Instant::now() + START_TIMEOUT;
        while async_nats::connect(&server.url).await.is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(server._dir.path().join("nats.log")).unwrap_or_default();
                bail!("nats-server did not accept connections within {START_TIMEOUT:?}:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    /// A JetStream context with the `bench` stream created.
    pub async fn jetstream(&self) -> anyhow::Result<jetstream::Context> {
        let client = async_nats::connect(&self.url).await.context("connect to nats-server")?;
        let mut js = jetstream::new(client);
        js.set_timeout(ACK_TIMEOUT);
        Ok(js)
    }

    pub async fn create_stream(&self) -> anyhow::Result<()> {
        let config = stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{STREAM}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        };
        self.jetstream().await?.get_or_create_stream(config).await.context("create the stream")?;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `nats-server --version` line, for the report.
pub fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().trim_start_matches("nats-server: v").to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

pub async fn run(
    cell: &Cell,
    timing: Timing,
    parent: &Path,
    bin: &Path,
    sync: SyncPolicy,
) -> anyhow::Result<Measurement> {
    let server = NatsServer::start(bin, parent, sync).await?;
    server.create_stream().await?;
    let mut contexts = Vec::with_capacity(cell.clients);
    for _ in 0..cell.clients {
        contexts.push(server.jetstream().await?);
    }
    let contexts = Arc::new(contexts);
    let payload = Bytes::from(payload_json(cell.payload_bytes));
    let batch = cell.batch;
    // The server's CPU over the whole run, warm-up included, per PubAck'd call.
    let measured = crate::cpu::around(
        Some(server.child.id()),
        drive(cell.clients, timing, batch as u64, move |worker| {
            let (contexts, payload) = (contexts.clone(), payload.clone());
            async move {
                let js = &contexts[worker];
                let subject = format!("{STREAM}.bench-{:02}", worker % LEDGERS);
                publish(js, subject, payload, batch).await
            }
        }),
    )
    .await;
    drop(server);
    measured
}

/// Publishes `count` copies and waits for every PubAck. A message the
/// stream refused for back-pressure (429, too many requests: its ingest
/// queue is full, as 256 clients × 100 × 16 KiB make it) is published
/// again after a pause, as a producer has to; the call's latency includes
/// that.
async fn publish(js: &jetstream::Context, subject: String, payload: Bytes, count: usize) -> anyhow::Result<()> {
    let mut pending = count;
    let mut pause = BACKPRESSURE_PAUSE_MIN;
    for _ in 0..BACKPRESSURE_ROUNDS_MAX {
        let mut acks = Vec::with_capacity(pending);
        for _ in 0..pending {
            acks.push(js.publish(subject.clone(), payload.clone()).await.context("publish")?);
        }
        pending = 0;
        for ack in acks {
            match ack.await {
                Ok(_) => {}
                Err(e) if is_backpressure(&e) => pending += 1,
                Err(e) => return Err(e).context("PubAck"),
            }
        }
        if pending == 0 {
            return Ok(());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(BACKPRESSURE_PAUSE_MAX);
    }
    bail!(
        "JetStream still refused {pending} of {count} messages after {BACKPRESSURE_ROUNDS_MAX} rounds of re-publishing"
    )
}

fn is_backpressure(e: &jetstream::context::PublishError) -> bool {
    std::error::Error::source(e)
        .and_then(|source| source.downcast_ref::<jetstream::Error>())
        .is_some_and(|e| e.error_code() == jetstream::ErrorCode::STREAM_TOO_MANY_REQUESTS)
}

/// Fills the stream with `entries` messages (pipelined in thousands).
pub async fn fill(server: &NatsServer, entries: u64, payload_bytes: usize) -> anyhow::Result<()> {
    server.create_stream().await?;
    let js = server.jetstream().await?;
    let payload = Bytes::from(payload_json(payload_bytes));
    let mut left = entries;
    while left > 0 {
        let n = left.min(1000);
        publish(&js, format!("{STREAM}.bench-00"), payload.clone(), n as usize).await?;
        left -= n;
    }
    Ok(())
}

/// Reads the whole stream back through an ordered consumer; returns how
/// many messages and how long it took.
pub async fn replay(server: &NatsServer, entries: u64) -> anyhow::Result<(u64, Duration)> {
    let js = server.jetstream().await?;
    let stream = js.get_stream(STREAM).await.context("get the stream")?;
    let started = Instant::now();
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig { name: Some("replay".into()), ..Default::default() })
        .await
        .context("create an ordered consumer")?;
    let mut messages = consumer.messages().await.context("consume")?;
    let mut count = 0;
    let mut bytes = 0usize;
    while count < entries {
        let message = messages.next().await.context("the consumer ended early")?.context("consume")?;
        bytes += message.payload.len();
        count += 1;
    }
    std::hint::black_box(bytes);
    Ok((count, started.elapsed()))
}
