//! Client commands: `append`, `read`, `ledgers`, `exporters`, `sources`,
//! `health` over the HTTP API, through `ferry-client`. This file turns command-line
//! values into its requests and its answers into the commands' output.

use std::io::{BufRead as _, Write};
use std::time::Duration;

use anyhow::Context as _;
use ferry_client::{Append, ExporterStatus, NewEntry, ReadQuery};
use ferry_core::limits::READ_LIMIT_MAX;
use ferry_core::{LedgerName, Payload};

use crate::UsageError;
use crate::views::{self, Output, Style, Table};

/// stdin lines sent per append request.
const STDIN_BATCH_ENTRIES: usize = 1_000;
/// Payload bytes sent per append request from stdin.
const STDIN_BATCH_BYTES: usize = 4 * 1024 * 1024;

pub struct Client {
    api: ferry_client::Client,
}

impl Client {
    /// A client of the server at `server` (`--server`), with `token`
    /// (`--token`) as bearer token.
    pub fn new(server: &str, token: Option<String>) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder().build().context("build the HTTP client")?;
        let base = server.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(UsageError(format!("--server {base:?} must start with http:// or https://")).into());
        }
        let api = ferry_client::Client::with_http(http, base)?;
        Ok(Self {
            api: match token {
                Some(t) => api.with_token(t),
                None => api,
            },
        })
    }

    /// The API client, for commands that drive it themselves (`tail`).
    pub fn api(&self) -> &ferry_client::Client {
        &self.api
    }

    /// The command's failure for a client error: the server's answer as
    /// `{status}: {code}: {message}`, or where the server could not be
    /// reached.
    pub fn failure(&self, e: ferry_client::Error) -> anyhow::Error {
        match e {
            ferry_client::Error::Transport(source) => {
                anyhow::Error::new(source).context(format!("reach the ferry server at {}", self.api.base_url()))
            }
            other => other.into(),
        }
    }

    pub async fn append(
        &self,
        ledger: &str,
        payload: Option<&str>,
        key: Option<String>,
        idempotency_key: Option<String>,
        mut expected_head: Option<u64>,
    ) -> anyhow::Result<()> {
        let ledger = LedgerName::parse(ledger).map_err(|e| UsageError(e.to_string()))?;
        if let Some(text) = payload {
            let payload = Payload::from_json(text).map_err(|e| UsageError(e.to_string()))?;
            let entry = new_entry(&payload, key.as_deref(), idempotency_key)?;
            self.append_and_print(&ledger, Append::one(entry), &mut expected_head).await?;
            return Ok(());
        }
        let mut batch = Vec::new();
        let (mut bytes, mut line_no) = (0, 0u64);
        let mut total = 0u64;
        for line in std::io::stdin().lock().lines() {
            let line = line.context("read stdin")?;
            line_no += 1;
            if line.trim().is_empty() {
                continue;
            }
            let payload = Payload::from_json(&line).map_err(|e| UsageError(format!("stdin line {line_no}: {e}")))?;
            let idem = idempotency_key.as_ref().map(|k| format!("{k}:{line_no}"));
            bytes += payload.len();
            batch.push(new_entry(&payload, key.as_deref(), idem)?);
            if batch.len() >= STDIN_BATCH_ENTRIES || bytes >= STDIN_BATCH_BYTES {
                total += self
                    .append_and_print(&ledger, Append::batch(std::mem::take(&mut batch)), &mut expected_head)
                    .await?;
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            total += self.append_and_print(&ledger, Append::batch(batch), &mut expected_head).await?;
        }
        eprintln!("appended {total} entries to {ledger}");
        Ok(())
    }

    /// Sends one append request, conditional on `expected_head` when
    /// given, and prints its answer `{"ids":[…]}`; returns how many entries
    /// it carried. It then moves `expected_head` to the head the batch
    /// left: its highest new id (a repeat's original id is below the head
    /// it was checked against).
    async fn append_and_print(
        &self,
        ledger: &LedgerName,
        mut append: Append,
        expected_head: &mut Option<u64>,
    ) -> anyhow::Result<u64> {
        let n = append.entries().len() as u64;
        if let Some(head) = *expected_head {
            append = append.expected_head(head);
        }
        let appended = self.api.append(ledger.as_str(), &append).await.map_err(|e| self.failure(e))?;
        println!("{}", serde_json::json!({ "ids": appended.ids }));
        if let Some(head) = expected_head {
            *head = appended.ids.iter().copied().fold(*head, u64::max);
        }
        Ok(n)
    }

    /// Pages through the ledger with NDJSON reads, copying lines through
    /// unchanged (payload bytes exactly as stored).
    pub async fn read(&self, ledger: &str, start: ReadStart, limit: Option<u64>) -> anyhow::Result<()> {
        let ledger = LedgerName::parse(ledger).map_err(|e| UsageError(e.to_string()))?;
        if limit == Some(0) {
            return Ok(());
        }
        let (mut from, mut since) = match start {
            ReadStart::From(from) => (from, None),
            ReadStart::Since(ms) => (None, Some(ms)),
        };
        let mut left = limit.unwrap_or(u64::MAX);
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        while left > 0 {
            let page = left.min(READ_LIMIT_MAX as u64) as u32;
            // Only the first page starts by time; the next ones by id.
            let query = ReadQuery { from, from_ts: since.take(), limit: Some(page), ..ReadQuery::default() };
            let mut lines = self.api.read_lines(ledger.as_str(), &query).await.map_err(|e| self.failure(e))?;
            let mut last_id = None;
            while let Some(line) = lines.next_line().await.map_err(|e| self.failure(e))? {
                #[derive(serde::Deserialize)]
                struct Id {
                    id: u64,
                }
                let Id { id } = serde_json::from_slice(&line).context("the server sent a line that is not an entry")?;
                last_id = Some(id);
                out.write_all(&line)?;
                out.write_all(b"\n")?;
                left -= 1;
            }
            match last_id {
                Some(id) => from = Some(id + 1),
                None => break,
            }
        }
        out.flush()?;
        Ok(())
    }

    /// `ferry exporters status [NAME]`: each exporter as soon as it is
    /// complete (JSON lines), or its header and then its ledgers a page at
    /// a time (a table).
    pub async fn exporter_status(&self, name: Option<&str>, output: Output) -> anyhow::Result<()> {
        let firsts = match name {
            Some(n) => vec![self.exporter_page(exporter_name(n)?.as_str(), None).await?],
            None => self.api.exporters().await.map_err(|e| self.failure(e))?,
        };
        let mut out = std::io::stdout().lock();
        if firsts.is_empty() && matches!(output, Output::Table(_)) {
            writeln!(out, "no exporters")?;
        }
        for (i, first) in firsts.into_iter().enumerate() {
            match output {
                Output::JsonLines => writeln!(out, "{}", serde_json::to_string(&self.all_pages(first).await?)?)?,
                Output::Table(style) => {
                    if i > 0 {
                        writeln!(out)?;
                    }
                    self.exporter_table(&mut out, first, &style).await?;
                }
            }
            out.flush()?;
        }
        Ok(())
    }

    /// An exporter's header, then its ledgers as a table, page by page.
    async fn exporter_table(&self, out: &mut impl Write, first: ExporterStatus, style: &Style) -> anyhow::Result<()> {
        writeln!(out, "{}", views::exporter_header(&first, style))?;
        let mut table = Table::new(views::EXPORTER_LEDGER_COLUMNS);
        let mut page = first;
        let mut shown = 0;
        loop {
            let rows: Vec<_> = page.ledgers.iter().map(views::exporter_ledger_row).collect();
            table.fit(&rows);
            if shown == 0 && !rows.is_empty() {
                writeln!(out, "{}", table.header(style))?;
            }
            for row in &rows {
                writeln!(out, "{}", table.line(row, style))?;
            }
            shown += rows.len();
            out.flush()?;
            let Some(after) = page.next.take() else { return Ok(()) };
            page = self.exporter_page(&page.name, Some(&after)).await?;
        }
    }

    /// One page of an exporter's status.
    async fn exporter_page(&self, name: &str, after: Option<&str>) -> anyhow::Result<ExporterStatus> {
        self.api.exporter_page(name, after, None).await.map_err(|e| self.failure(e))
    }

    /// The status with every page of its ledgers.
    async fn all_pages(&self, mut status: ExporterStatus) -> anyhow::Result<ExporterStatus> {
        while let Some(after) = status.next.take() {
            let page = self.exporter_page(&status.name, Some(&after)).await?;
            status.ledgers.extend(page.ledgers);
            status.next = page.next;
        }
        Ok(status)
    }

    /// `ferry exporters status [NAME] --watch`: a refresh every `interval`
    /// until Ctrl-C (or SIGTERM), then exit 0 with the terminal as it was.
    /// The first look failing (no such exporter, no server) fails the
    /// command; a later one is shown (on the screen, or on stderr) and the
    /// watch goes on.
    pub async fn exporter_watch(&self, name: Option<&str>, output: Output, interval: Duration) -> anyhow::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let name = name.map(exporter_name).transpose()?;
        let name = name.as_ref().map(LedgerName::as_str);
        // Registered before the first draw, so a Ctrl-C any time after it is ours.
        let mut interrupt = signal(SignalKind::interrupt()).context("handle SIGINT")?;
        let mut terminate = signal(SignalKind::terminate()).context("handle SIGTERM")?;
        let mut snapshot = self.watch_snapshot(name, output).await?;
        let mut problem: Option<anyhow::Error> = None;
        let _screen = match output {
            Output::Table(_) => Some(Screen::enter()?),
            Output::JsonLines => None,
        };
        loop {
            let mut out = std::io::stdout().lock();
            match output {
                Output::JsonLines => {
                    if let Some(e) = problem.take() {
                        eprintln!("error: {}", crate::error_chain(&e));
                    }
                    for status in &snapshot {
                        writeln!(out, "{}", serde_json::to_string(status)?)?;
                    }
                }
                Output::Table(_) => {
                    // The terminal may have been resized since the last frame.
                    let style = match Output::detect(false) {
                        Output::Table(s) => s,
                        Output::JsonLines => Style::default(),
                    };
                    let mut title = format!(
                        "ferry exporters status · every {} · {} · Ctrl-C quits",
                        humantime::format_duration(interval),
                        humantime::format_rfc3339_seconds(std::time::SystemTime::now())
                    );
                    if let Some(e) = &problem {
                        title
                            .push_str(&format!("\nrefresh failed, showing the last answer: {}", crate::error_chain(e)));
                    }
                    let frame = views::exporters_frame(&title, &snapshot, &style);
                    // Home, clear, the whole frame in one write: a redraw, not a scroll.
                    write!(out, "\x1b[H\x1b[2J{frame}")?;
                }
            }
            out.flush()?;
            drop(out);
            tokio::select! {
                _ = interrupt.recv() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
                () = tokio::time::sleep(interval) => {}
            }
            tokio::select! {
                _ = interrupt.recv() => return Ok(()),
                _ = terminate.recv() => return Ok(()),
                next = self.watch_snapshot(name, output) => match next {
                    Ok(s) => {
                        snapshot = s;
                        problem = None;
                    }
                    Err(e) => problem = Some(e),
                },
            }
        }
    }

    /// What one refresh of `--watch` shows: for JSON lines every ledger,
    /// for a screen the first page (it shows no more than fits).
    async fn watch_snapshot(&self, name: Option<&str>, output: Output) -> anyhow::Result<Vec<ExporterStatus>> {
        let firsts = match name {
            Some(n) => vec![self.exporter_page(n, None).await?],
            None => self.api.exporters().await.map_err(|e| self.failure(e))?,
        };
        match output {
            Output::Table(_) => Ok(firsts),
            Output::JsonLines => {
                let mut all = Vec::with_capacity(firsts.len());
                for first in firsts {
                    all.push(self.all_pages(first).await?);
                }
                Ok(all)
            }
        }
    }

    /// `ferry health [--json]`: the verdict (or the answer) on stdout; not
    /// `ok` is a failure (exit 1).
    pub async fn health(&self, json: bool) -> anyhow::Result<()> {
        let health = self.api.pipeline_health().await.map_err(|e| self.failure(e))?;
        let text = if json { serde_json::to_string(&health)? } else { views::health_verdict(&health) };
        writeln!(std::io::stdout().lock(), "{text}")?;
        match health.status.as_str() {
            "ok" => Ok(()),
            "stuck" => anyhow::bail!("data is not moving: something is stuck"),
            "not_ready" => anyhow::bail!("the server is not ready"),
            other => anyhow::bail!("the server answered status {other:?}"),
        }
    }

    /// `ferry exporters reset NAME [--ledger L] [--from-id N]`.
    pub async fn exporter_reset(&self, name: &str, ledger: Option<&str>, from_id: Option<u64>) -> anyhow::Result<()> {
        if let Some(l) = ledger {
            LedgerName::parse(l).map_err(|e| UsageError(format!("--ledger: {e}")))?;
        }
        let name = exporter_name(name)?;
        print_json(self.api.reset_exporter(name.as_str(), ledger, from_id).await.map_err(|e| self.failure(e))?)
    }

    /// `ferry exporters pause|resume NAME`.
    pub async fn exporter_control(&self, name: &str, action: ExporterControl) -> anyhow::Result<()> {
        let name = exporter_name(name)?;
        let status = match action {
            ExporterControl::Pause => self.api.pause_exporter(name.as_str()).await,
            ExporterControl::Resume => self.api.resume_exporter(name.as_str()).await,
        };
        print_json(status.map_err(|e| self.failure(e))?)
    }

    /// `ferry exporters check NAME [--ledger L]`: prints the report; a
    /// fault anywhere is exit 1 (after the report).
    pub async fn exporter_check(&self, name: &str, ledger: Option<&str>) -> anyhow::Result<()> {
        if let Some(l) = ledger {
            LedgerName::parse(l).map_err(|e| UsageError(format!("--ledger: {e}")))?;
        }
        let name = exporter_name(name)?;
        let report = self.api.check_exporter(name.as_str(), ledger).await.map_err(|e| self.failure(e))?;
        let faulty = report.ledgers.iter().filter(|l| !l.faults.is_empty()).count();
        print_json(report)?;
        if faulty > 0 {
            anyhow::bail!("the range check of exporter {name} found faults in {faulty} ledger(s)");
        }
        Ok(())
    }

    /// `ferry exporters delete NAME`.
    pub async fn exporter_delete(&self, name: &str) -> anyhow::Result<()> {
        self.api.delete_exporter(exporter_name(name)?.as_str()).await.map_err(|e| self.failure(e))
    }

    /// `ferry sources status [NAME]`.
    pub async fn source_status(&self, name: Option<&str>) -> anyhow::Result<()> {
        match name {
            None => print_json(self.api.sources().await.map_err(|e| self.failure(e))?),
            Some(n) => print_json(self.api.source(source_name(n)?.as_str()).await.map_err(|e| self.failure(e))?),
        }
    }

    /// `ferry ledgers`: page by page, each printed as it arrives.
    pub async fn ledgers(&self, output: Output) -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        let mut table = Table::new(views::LEDGER_COLUMNS);
        let (mut after, mut shown) = (None, 0);
        loop {
            let page = self.api.ledgers_page(after.as_deref(), None).await.map_err(|e| self.failure(e))?;
            match output {
                Output::JsonLines => {
                    for l in &page.ledgers {
                        writeln!(out, "{}", serde_json::to_string(l)?)?;
                    }
                }
                Output::Table(style) => {
                    let rows: Vec<_> = page.ledgers.iter().map(views::ledger_row).collect();
                    table.fit(&rows);
                    if shown == 0 && !rows.is_empty() {
                        writeln!(out, "{}", table.header(&style))?;
                    }
                    for row in &rows {
                        writeln!(out, "{}", table.line(row, &style))?;
                    }
                    if shown == 0 && rows.is_empty() {
                        writeln!(out, "no ledgers")?;
                    }
                }
            }
            shown += page.ledgers.len();
            out.flush()?;
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }
}

/// The terminal's alternate screen with the cursor hidden, as `top` draws
/// on, left again on drop: after Ctrl-C, an error or a panic the terminal
/// is as it was.
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Self> {
        let mut out = std::io::stdout().lock();
        out.write_all(b"\x1b[?1049h\x1b[?25l")?;
        out.flush()?;
        Ok(Screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(b"\x1b[?25h\x1b[?1049l");
        let _ = out.flush();
    }
}

/// Prints an answer as indented JSON (through `serde_json::Value`, as the
/// commands always printed the server's answer).
fn print_json(answer: impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(&serde_json::to_value(answer)?)?);
    Ok(())
}

/// Where `ferry read` starts.
#[derive(Debug, Clone, Copy)]
pub enum ReadStart {
    /// `--from ID` (default: First).
    From(Option<u64>),
    /// `--since TIME`, as unix milliseconds.
    Since(u64),
}

/// A time as unix milliseconds (0 for a time before 1970).
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What `ferry exporters pause|resume` asks of an exporter.
#[derive(Debug, Clone, Copy)]
pub enum ExporterControl {
    Pause,
    Resume,
}

fn exporter_name(name: &str) -> Result<LedgerName, UsageError> {
    LedgerName::parse(name).map_err(|e| UsageError(format!("exporter name: {e}")))
}

fn source_name(name: &str) -> Result<LedgerName, UsageError> {
    LedgerName::parse(name).map_err(|e| UsageError(format!("source name: {e}")))
}

/// One entry of an append, with the payload's text kept byte for byte
/// (a `serde_json::Value` would reorder keys and round numbers).
fn new_entry(payload: &Payload, key: Option<&str>, idempotency_key: Option<String>) -> anyhow::Result<NewEntry> {
    let mut entry = NewEntry::from_json(payload.as_str())?;
    if let Some(k) = key {
        entry = entry.key(k);
    }
    if let Some(k) = idempotency_key {
        entry = entry.idempotency_key(k);
    }
    Ok(entry)
}
