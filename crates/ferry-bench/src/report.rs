//! Result rows: the table on stdout, the JSON file, and the goals
//! checked against the rows.
#![allow(clippy::disallowed_methods)] // the benchmark writes its result files, not ferry data

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::driver::Measurement;
use crate::workload::Cell;

/// One measured (target, cell).
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub target: &'static str,
    /// What produced the numbers: the load generator, or `in-process`.
    pub client: &'static str,
    /// Whether the target's acknowledgement means the entry is on disk.
    pub durable: bool,
    pub clients: usize,
    pub payload_bytes: usize,
    pub batch: usize,
    pub entries_per_sec: f64,
    /// Payload megabytes (10^6) acknowledged per second.
    pub mb_per_sec: f64,
    /// Per append call (a whole batch in batch mode), in microseconds.
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// entries/s over the raw bound's entries/s for the same cell.
    pub ratio_to_raw: Option<f64>,
    pub calls: u64,
    /// Microseconds of the server's CPU (utime + stime, all its processes)
    /// per acknowledged call, for a server that is a process of its own;
    /// `None` in-process.
    pub server_cpu_us_per_call: Option<f64>,
}

impl Row {
    pub fn new(target: &'static str, client: &'static str, cell: &Cell, m: &Measurement, bound: &Measurement) -> Row {
        let entries_per_sec = m.entries_per_sec();
        Row {
            target,
            client,
            durable: target != "nats-nosync",
            clients: cell.clients,
            payload_bytes: cell.payload_bytes,
            batch: cell.batch,
            entries_per_sec,
            mb_per_sec: entries_per_sec * cell.payload_bytes as f64 / 1e6,
            p50_us: m.latency_at(0.50).as_micros() as u64,
            p99_us: m.latency_at(0.99).as_micros() as u64,
            p999_us: m.latency_at(0.999).as_micros() as u64,
            ratio_to_raw: Some(entries_per_sec / bound.entries_per_sec()).filter(|r| r.is_finite()),
            calls: m.calls,
            server_cpu_us_per_call: m.server_cpu.and_then(|c| c.per_call_us()),
        }
    }

    /// The target with the client that drove it: `http (reqwest)`.
    pub fn label(&self) -> String {
        format!("{} ({})", self.target, self.client)
    }
}

const COLUMNS: usize = 10;
const HEADER: [&str; COLUMNS] =
    ["target (client)", "clients", "payload", "batch", "entries/s", "MB/s", "p50", "p99", "vs raw", "CPU/call"];
const WIDTHS: [usize; COLUMNS] = [28, 7, 7, 5, 11, 8, 9, 9, 6, 9];

/// The rows as an aligned table under its header.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    push_line(&mut out, HEADER.map(str::to_owned));
    for row in rows {
        out.push_str(&line(row));
    }
    out
}

/// One row as a line of the table.
pub fn line(row: &Row) -> String {
    let mut out = String::new();
    push_line(&mut out, cells(row));
    out
}

/// One line, each column right-aligned except the first.
fn push_line(out: &mut String, columns: [String; COLUMNS]) {
    for (i, (text, width)) in columns.iter().zip(WIDTHS).enumerate() {
        let cell = if i == 0 { format!("{text:<width$}") } else { format!("  {text:>width$}") };
        out.push_str(&cell);
    }
    out.push('\n');
}

fn cells(row: &Row) -> [String; COLUMNS] {
    [
        row.label(),
        row.clients.to_string(),
        bytes(row.payload_bytes),
        row.batch.to_string(),
        thousands(row.entries_per_sec.round() as u64),
        format!("{:.1}", row.mb_per_sec),
        latency(Duration::from_micros(row.p50_us)),
        latency(Duration::from_micros(row.p99_us)),
        row.ratio_to_raw.map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
        row.server_cpu_us_per_call.map_or_else(|| "-".to_owned(), |us| format!("{us:.1}µs")),
    ]
}

/// Writes the rows (or any other report) as pretty JSON.
pub fn write_json(path: &Path, report: &impl Serialize) -> anyhow::Result<()> {
    let mut file = std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    serde_json::to_writer_pretty(&mut file, report)?;
    writeln!(file).with_context(|| format!("write {}", path.display()))
}

/// A target the issue sets: `target` reaches `min_ratio` of the raw bound
/// in every row it `applies` to.
struct Goal {
    label: &'static str,
    target: &'static str,
    applies: fn(&Row) -> bool,
    min_ratio: f64,
}

const GOALS: [Goal; 3] = [
    Goal {
        label: "in-process at 64 clients",
        target: "store",
        applies: |r| r.batch == 1 && r.clients == 64,
        min_ratio: 0.80,
    },
    Goal { label: "in-process, 1,000-entry batches", target: "store", applies: |r| r.batch >= 1000, min_ratio: 0.80 },
    Goal {
        label: "HTTP at 64 clients, 1 KiB",
        target: "http",
        applies: |r| r.batch == 1 && r.clients == 64 && r.payload_bytes == 1024,
        min_ratio: 2.0 / 3.0,
    },
];

/// The goals against this run's rows, one line per row a goal
/// applies to (goals without a measured row are left out).
pub fn goals(rows: &[Row]) -> String {
    let mut out = String::new();
    for goal in &GOALS {
        for row in rows.iter().filter(|r| r.target == goal.target && (goal.applies)(r)) {
            let Some(ratio) = row.ratio_to_raw else { continue };
            let verdict = if ratio >= goal.min_ratio { "met" } else { "NOT met" };
            out.push_str(&format!(
                "{} ({} clients, {}, batch {}): {ratio:.2} of raw, goal {:.2}: {verdict}\n",
                goal.label,
                row.clients,
                bytes(row.payload_bytes),
                row.batch,
                goal.min_ratio,
            ));
        }
    }
    out
}

fn bytes(n: usize) -> String {
    if n >= 1024 && n.is_multiple_of(1024) { format!("{}KiB", n / 1024) } else { format!("{n}B") }
}

pub(crate) fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn latency(d: Duration) -> String {
    match d.as_micros() {
        us if us < 1_000 => format!("{us}µs"),
        us if us < 1_000_000 => format!("{:.2}ms", us as f64 / 1e3),
        us => format!("{:.2}s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_readable() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(bytes(256), "256B");
        assert_eq!(bytes(1024), "1KiB");
        assert_eq!(latency(Duration::from_micros(850)), "850µs");
        assert_eq!(latency(Duration::from_micros(12_340)), "12.34ms");
        assert_eq!(latency(Duration::from_micros(2_500_000)), "2.50s");
    }

    fn row(target: &'static str, clients: usize, batch: usize, ratio: f64) -> Row {
        Row {
            target,
            client: "in-process",
            durable: true,
            clients,
            payload_bytes: 1024,
            batch,
            entries_per_sec: 1.0,
            mb_per_sec: 0.0,
            p50_us: 1,
            p99_us: 2,
            p999_us: 3,
            ratio_to_raw: Some(ratio),
            calls: 1,
            server_cpu_us_per_call: None,
        }
    }

    #[test]
    fn goals_report_each_matching_row() {
        let rows =
            [row("store", 64, 1, 0.9), row("store", 16, 1000, 0.5), row("http", 64, 1, 0.7), row("raw", 64, 1, 1.0)];
        let text = goals(&rows);
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(text.contains("in-process at 64 clients (64 clients, 1KiB, batch 1): 0.90 of raw, goal 0.80: met"));
        assert!(text.contains("batch 1000): 0.50 of raw, goal 0.80: NOT met"));
        assert!(text.contains("HTTP at 64 clients, 1 KiB (64 clients, 1KiB, batch 1): 0.70 of raw, goal 0.67: met"));
    }

    #[test]
    fn table_has_a_line_per_row() {
        let cpu = Row { target: "http-wrk", client: "wrk", server_cpu_us_per_call: Some(41.3), ..row("x", 64, 1, 0.5) };
        let text = table(&[row("store", 64, 1, 0.9), cpu]);
        assert_eq!(text.lines().count(), 3);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[1].starts_with("store (in-process)") && lines[1].ends_with("-"), "{text}");
        assert!(lines[2].starts_with("http-wrk (wrk)") && lines[2].ends_with("41.3µs"), "{text}");
    }
}
