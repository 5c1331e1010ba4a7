//! `ferry serve` as a child process on a free loopback port: the real
//! binary a user runs, for the targets that measure it from outside
//! (`--backup`'s servers, `http-wrk`).
#![allow(clippy::disallowed_methods)] // the benchmark writes ferry's logs, not ferry data

use std::fs::File;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use reqwest::{StatusCode, Url};

/// How long a `ferry serve` child may take to answer `/readyz`.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A `ferry` command with none of the caller's `FERRY_*` environment.
pub fn ferry_command(ferry: &Path) -> Command {
    let mut cmd = Command::new(ferry);
    for var in ["FERRY_SERVER", "FERRY_TOKEN", "FERRY_LOG"] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

/// A `ferry serve` child on a free loopback port, killed on stop or drop
/// (its data dir is thrown away or only read afterwards).
pub struct FerryServer {
    child: Child,
    pub url: Url,
}

impl FerryServer {
    pub async fn start(ferry: &Path, data_dir: &Path, log: &Path) -> anyhow::Result<FerryServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let log_file = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let child = ferry_command(ferry)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("start {} serve", ferry.display()))?;
        let mut server = FerryServer { child, url: Url::parse(&format!("http://127.0.0.1:{port}/"))? };
        let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(2)).build()?;
        let ready = server.url.join("readyz")?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(r) = client.get(ready.clone()).send().await
                && r.status() == StatusCode::OK
            {
                return Ok(server);
            }
            let exited = server.child.try_wait()?;
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                let why = exited.map_or_else(|| format!("not ready within {START_TIMEOUT:?}"), |s| s.to_string());
                bail!("ferry serve --data-dir {}: {why}\n{log}", data_dir.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The server's process id, for its CPU readings.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server (as dropping it does), where the reader sees it.
    pub fn stop(self) {
        drop(self);
    }
}

impl Drop for FerryServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
