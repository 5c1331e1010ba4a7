//! How the listing commands show the server's answers to a person: aligned
//! tables with sizes, ages and times in human units and the state coloured
//! (on a terminal), or JSON lines (anywhere else, and with `--json`). Pure
//! text from answers, so the tests see exactly what a terminal would; the
//! commands in `client.rs` fetch and write.

use std::io::IsTerminal as _;
use std::time::{Duration, UNIX_EPOCH};

use ferry_client::{ExporterLedger, ExporterStatus, Health, Ledger};

/// What a listing prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Aligned tables for a person at a terminal.
    Table(Style),
    /// One JSON object per line, for programs.
    JsonLines,
}

impl Output {
    /// Tables when stdout is a terminal and `--json` was not given.
    pub fn detect(json: bool) -> Self {
        if json || !std::io::stdout().is_terminal() {
            return Output::JsonLines;
        }
        let term = console::Term::stdout();
        Output::Table(Style {
            colour: console::colors_enabled(),
            size: term.size_checked().map(|(rows, cols)| (usize::from(rows), usize::from(cols))),
        })
    }
}

/// How a table is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    /// ANSI colours (a terminal that has them, without `NO_COLOR`).
    pub colour: bool,
    /// The terminal's rows and columns, when it tells them.
    pub size: Option<(usize, usize)>,
}

impl Style {
    fn width(&self) -> Option<usize> {
        self.size.map(|(_, cols)| cols)
    }
}

/// Columns are this far apart.
const GAP: &str = "  ";
/// The last column is never cut shorter than this, however narrow the
/// terminal: a few characters of an error say more than none.
const LAST_COLUMN_MIN: usize = 12;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A colour for a cell's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tone {
    Good,
    Warn,
    Bad,
}

/// One cell: its text and, on a colour terminal, its colour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub tone: Option<Tone>,
}

impl From<String> for Cell {
    fn from(text: String) -> Self {
        Cell { text, tone: None }
    }
}

/// A table written as it goes, a page of rows at a time: columns only
/// widen (to the widest cell seen so far), so rows stay aligned with the
/// header unless a later page holds a wider cell than the first.
#[derive(Debug, Clone)]
pub struct Table {
    columns: &'static [(&'static str, Align)],
    widths: Vec<usize>,
}

impl Table {
    pub fn new(columns: &'static [(&'static str, Align)]) -> Self {
        Table { columns, widths: columns.iter().map(|(title, _)| title.len()).collect() }
    }

    /// Widens the columns to hold `rows`.
    pub fn fit(&mut self, rows: &[Vec<Cell>]) {
        for row in rows {
            for (w, cell) in self.widths.iter_mut().zip(row) {
                *w = (*w).max(console::measure_text_width(&cell.text));
            }
        }
    }

    /// The header line.
    pub fn header(&self, style: &Style) -> String {
        let cells: Vec<Cell> = self.columns.iter().map(|(title, _)| Cell::from((*title).to_owned())).collect();
        self.line(&cells, style)
    }

    /// One row, its last column cut to the terminal's width.
    pub fn line(&self, cells: &[Cell], style: &Style) -> String {
        let mut out = String::new();
        let last = self.columns.len() - 1;
        let mut used = 0;
        for (i, ((cell, (_, align)), width)) in cells.iter().zip(self.columns).zip(&self.widths).enumerate() {
            if i > 0 {
                out.push_str(GAP);
                used += GAP.len();
            }
            let text = if i == last {
                // The last column is not padded (no trailing blanks) and is
                // the one cut when the line is too long.
                let room = style.width().map_or(usize::MAX, |w| w.saturating_sub(used).max(LAST_COLUMN_MIN));
                console::truncate_str(&cell.text, room, "…").into_owned()
            } else {
                let a = match align {
                    Align::Left => console::Alignment::Left,
                    Align::Right => console::Alignment::Right,
                };
                console::pad_str(&cell.text, *width, a, None).into_owned()
            };
            used += width;
            out.push_str(&paint(&text, cell.tone, style));
        }
        out.truncate(out.trim_end().len());
        out
    }
}

fn paint(text: &str, tone: Option<Tone>, style: &Style) -> String {
    match tone {
        Some(tone) if style.colour => {
            let s = console::style(text).force_styling(true);
            match tone {
                Tone::Good => s.green(),
                Tone::Warn => s.yellow(),
                Tone::Bad => s.red().bold(),
            }
            .to_string()
        }
        _ => text.to_owned(),
    }
}

pub const LEDGER_COLUMNS: &[(&str, Align)] = &[
    ("NAME", Align::Left),
    ("FIRST", Align::Right),
    ("HEAD", Align::Right),
    ("ENTRIES", Align::Right),
    ("BYTES", Align::Right),
    ("CREATED", Align::Left),
];

/// A `ferry ledgers` row.
pub fn ledger_row(l: &Ledger) -> Vec<Cell> {
    vec![
        l.name.clone().into(),
        l.first.to_string().into(),
        l.head.to_string().into(),
        l.entries.to_string().into(),
        size(l.bytes).into(),
        time(l.created_at).into(),
    ]
}

pub const EXPORTER_LEDGER_COLUMNS: &[(&str, Align)] = &[
    ("LEDGER", Align::Left),
    ("CURSOR", Align::Right),
    ("HEAD", Align::Right),
    ("LAG", Align::Right),
    ("AGE", Align::Right),
    ("STATE", Align::Left),
    ("ATTEMPTS", Align::Right),
    ("LAST ERROR", Align::Left),
];

/// The line above an exporter's ledgers: what it is and its totals over
/// all its ledgers.
pub fn exporter_header(e: &ExporterStatus, style: &Style) -> String {
    let tone = match e.state.as_str() {
        "running" => Tone::Good,
        "paused" | "stopped" => Tone::Warn,
        _ => Tone::Bad,
    };
    let stuck = format!("{} of {} ledgers stuck", e.stuck_ledgers, e.ledgers_total);
    let stuck = if e.stuck_ledgers > 0 { paint(&stuck, Some(Tone::Bad), style) } else { stuck };
    format!(
        "exporter {}  sink {}  {}  lag {}  oldest unexported {}  {stuck}  max_lag {}",
        e.name,
        e.sink.as_deref().unwrap_or("-"),
        paint(&e.state, Some(tone), style),
        e.lag,
        age_cell(e.oldest_unexported_age_ms, e.lag),
        e.max_lag_ms.map_or_else(|| "-".to_owned(), age),
    )
}

/// An exporter's ledger as a row of `ferry exporters status`.
pub fn exporter_ledger_row(l: &ExporterLedger) -> Vec<Cell> {
    let tone = if l.stuck {
        Tone::Bad
    } else {
        match l.state.as_str() {
            "running" => Tone::Good,
            "backing_off" | "paused" => Tone::Warn,
            _ => Tone::Bad,
        }
    };
    let state = if l.stuck { format!("{} (stuck)", l.state) } else { l.state.clone() };
    vec![
        l.ledger.clone().into(),
        l.cursor.to_string().into(),
        l.head.to_string().into(),
        l.lag.to_string().into(),
        age_cell(l.oldest_unexported_age_ms, l.lag).into(),
        Cell { text: state, tone: Some(tone) },
        l.attempts.to_string().into(),
        // One line per ledger, whatever the error's text holds.
        l.last_error.as_deref().map_or_else(|| "-".to_owned(), one_line).into(),
    ]
}

/// The age of the oldest unexported entry: `-` when caught up (nothing
/// waits), `?` when behind but not read since the server started.
fn age_cell(age_ms: Option<u64>, lag: u64) -> String {
    match age_ms {
        Some(0) if lag == 0 => "-".to_owned(),
        Some(ms) => age(ms),
        None => "?".to_owned(),
    }
}

/// Every exporter as a screen of `--watch`: a title line, then each
/// exporter's header and ledgers, cut to the terminal's rows (the totals in
/// the headers stay over all ledgers).
pub fn exporters_frame(title: &str, exporters: &[ExporterStatus], style: &Style) -> String {
    let mut lines = vec![title.to_owned()];
    if exporters.is_empty() {
        lines.push(String::new());
        lines.push("no exporters".to_owned());
    }
    for e in exporters {
        lines.push(String::new());
        lines.extend(exporter_lines(e, style));
    }
    if let Some((rows, _)) = style.size
        && lines.len() > rows
    {
        let hidden = lines.len() - rows + 1;
        lines.truncate(rows.saturating_sub(1));
        lines.push(format!("… {hidden} more lines (a taller terminal shows them)"));
    }
    lines.join("\n")
}

/// One exporter as a header and an aligned table of the ledgers it holds
/// (one page: a note says how many more there are).
pub fn exporter_lines(e: &ExporterStatus, style: &Style) -> Vec<String> {
    let mut lines = vec![exporter_header(e, style)];
    if e.ledgers.is_empty() {
        return lines;
    }
    let rows: Vec<Vec<Cell>> = e.ledgers.iter().map(exporter_ledger_row).collect();
    let mut table = Table::new(EXPORTER_LEDGER_COLUMNS);
    table.fit(&rows);
    lines.push(table.header(style));
    lines.extend(rows.iter().map(|r| table.line(r, style)));
    let more = e.ledgers_total.saturating_sub(e.ledgers.len());
    if more > 0 {
        lines.push(format!("… and {more} more ledgers"));
    }
    lines
}

/// What `ferry health` prints: `ok`, or what is wrong, a line each.
pub fn health_verdict(h: &Health) -> String {
    let mut lines = Vec::new();
    match h.status.as_str() {
        "ok" => {
            let (e, s) = (h.exporters.len(), h.sources.len());
            lines.push(format!("ok: {e} {}, {s} {}, nothing stuck", plural(e, "exporter"), plural(s, "source")));
        }
        "not_ready" => lines.push(format!("not ready: {}", h.reason.as_deref().unwrap_or("no reason given"))),
        "stuck" => {}
        other => lines.push(format!("status {other}")),
    }
    for e in h.exporters.iter().filter(|e| e.stuck_ledgers > 0) {
        let max_lag = e.max_lag_ms.map_or_else(|| "-".to_owned(), age);
        lines.push(format!(
            "stuck: exporter {} (max_lag {max_lag}): {} {}, lag {}",
            e.name,
            e.stuck_ledgers,
            plural(e.stuck_ledgers, "ledger"),
            e.lag
        ));
        for l in &e.stuck {
            let error = l.last_error.as_deref().map(|m| format!(", last error: {}", one_line(m))).unwrap_or_default();
            lines.push(format!(
                "  ledger {}: oldest unexported {}, lag {}, {}{error}",
                l.ledger,
                age(l.age_ms),
                l.lag,
                l.state
            ));
        }
        let more = e.stuck_ledgers.saturating_sub(e.stuck.len());
        if more > 0 {
            lines.push(format!("  … and {more} more"));
        }
    }
    for s in h.sources.iter().filter(|s| s.stuck) {
        let pending = s.oldest_pending_age_ms.map_or_else(|| "?".to_owned(), age);
        let backlog = s.backlog.map_or_else(|| "?".to_owned(), |b| b.to_string());
        let error = s.last_error.as_deref().map(|m| format!(", last error: {}", one_line(m))).unwrap_or_default();
        lines
            .push(format!("stuck: source {}: oldest pending {pending}, backlog {backlog}, {}{error}", s.name, s.state));
    }
    lines.join("\n")
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 { word.to_owned() } else { format!("{word}s") }
}

/// Text on one line: line breaks become spaces.
fn one_line(text: &str) -> String {
    text.split(['\r', '\n']).filter(|p| !p.is_empty()).collect::<Vec<_>>().join(" ")
}

/// Milliseconds as a person reads an age: `850ms`, `3.2s`, `3s`, `42s`, `5m`,
/// `5m12s`, `2h5m`, `3d4h` (two units at most: an age is a glance).
pub fn age(ms: u64) -> String {
    const S: u64 = 1_000;
    const M: u64 = 60 * S;
    const H: u64 = 60 * M;
    const D: u64 = 24 * H;
    let two = |n: u64, big: u64, a: &str, small: u64, b: &str| {
        let rest = (n % big) / small;
        if rest == 0 { format!("{}{a}", n / big) } else { format!("{}{a}{rest}{b}", n / big) }
    };
    match ms {
        0 => "0s".to_owned(),
        1..S => format!("{ms}ms"),
        S..10_000 if ms % S < 100 => format!("{}s", ms / S),
        S..10_000 => format!("{}.{}s", ms / S, ms % S / 100),
        10_000..M => format!("{}s", ms / S),
        M..H => two(ms, M, "m", S, "s"),
        H..D => two(ms, H, "h", M, "m"),
        _ => two(ms, D, "d", H, "h"),
    }
}

/// Bytes in binary units: `512 B`, `1.2 MiB`.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    // 1023.96 KiB would print as "1024.0 KiB": say the next unit instead.
    if format!("{value:.1}") == "1024.0" && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Unix milliseconds as UTC time to the second, RFC 3339.
pub fn time(unix_ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(unix_ms)).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(cols: usize) -> Style {
        Style { colour: false, size: Some((24, cols)) }
    }

    fn ledger(name: &str, head: u64, bytes: u64) -> Ledger {
        serde_json::from_value(serde_json::json!({
            "name": name, "incarnation": 1, "first": 1, "head": head, "entries": head,
            "bytes": bytes, "created_at": 1_796_083_200_000u64
        }))
        .unwrap()
    }

    fn exporter_ledger(name: &str, lag: u64, age_ms: Option<u64>, stuck: bool, error: Option<&str>) -> ExporterLedger {
        serde_json::from_value(serde_json::json!({
            "ledger": name, "cursor": 10 - lag, "head": 10, "lag": lag,
            "state": if lag > 0 { "backing_off" } else { "running" },
            "last_error": error, "attempts": 3, "last_success_at": null,
            "oldest_unexported_age_ms": age_ms, "stuck": stuck
        }))
        .unwrap()
    }

    #[test]
    fn ages_read_at_a_glance() {
        let cases = [
            (0, "0s"),
            (850, "850ms"),
            (3_200, "3.2s"),
            (1_000, "1s"),
            (1_050, "1s"),
            (9_999, "9.9s"),
            (42_000, "42s"),
            (300_000, "5m"),
            (312_000, "5m12s"),
            (7_500_000, "2h5m"),
            (3 * 86_400_000 + 4 * 3_600_000 + 59_000, "3d4h"),
        ];
        for (ms, text) in cases {
            assert_eq!(age(ms), text, "{ms} ms");
        }
    }

    #[test]
    fn sizes_are_in_binary_units() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1024, "1.0 KiB"),
            (1_258_291, "1.2 MiB"),
            (1024 * 1024 - 1, "1.0 MiB"),
            (5 << 40, "5.0 TiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for (bytes, text) in cases {
            assert_eq!(size(bytes), text, "{bytes} bytes");
        }
    }

    #[test]
    fn times_are_utc_to_the_second() {
        assert_eq!(time(1_796_083_200_999), "2026-12-01T00:00:00Z");
    }

    #[test]
    fn a_ledger_table_aligns_names_left_and_numbers_right() {
        let ledgers = [ledger("audit", 7, 1_258_291), ledger("a-much-longer-name", 123_456, 12)];
        let rows: Vec<_> = ledgers.iter().map(ledger_row).collect();
        let mut table = Table::new(LEDGER_COLUMNS);
        table.fit(&rows);
        let style = plain(200);
        let lines: Vec<String> =
            std::iter::once(table.header(&style)).chain(rows.iter().map(|r| table.line(r, &style))).collect();
        assert_eq!(
            lines,
            [
                "NAME                FIRST    HEAD  ENTRIES    BYTES  CREATED",
                "audit                   1       7        7  1.2 MiB  2026-12-01T00:00:00Z",
                "a-much-longer-name      1  123456   123456     12 B  2026-12-01T00:00:00Z",
            ]
        );
    }

    #[test]
    fn the_last_column_is_cut_to_the_terminal_width_and_only_it() {
        let long = "http 503 Service Unavailable: the receiver is down for maintenance\nsecond line";
        let rows = vec![exporter_ledger_row(&exporter_ledger("audit", 4, Some(3_200), true, Some(long)))];
        let mut table = Table::new(EXPORTER_LEDGER_COLUMNS);
        table.fit(&rows);
        let line = table.line(&rows[0], &plain(80));
        assert_eq!(console::measure_text_width(&line), 80, "{line:?}");
        assert!(
            line.starts_with("audit        6    10    4  3.2s  backing_off (stuck)         3  http 503"),
            "{line:?}"
        );
        assert!(line.ends_with('…'), "{line:?}");
        // Without a known width nothing is cut, and the error stays on one line.
        let line = table.line(&rows[0], &Style::default());
        assert!(line.ends_with("maintenance second line"), "{line:?}");
    }

    #[test]
    fn colour_marks_the_state_only_when_asked_for() {
        let rows = [exporter_ledger_row(&exporter_ledger("audit", 0, Some(0), false, None))];
        let table = Table::new(EXPORTER_LEDGER_COLUMNS);
        let coloured = table.line(&rows[0], &Style { colour: true, size: None });
        assert!(coloured.contains("\u{1b}[32mrunning"), "{coloured:?}");
        let plain_line = table.line(&rows[0], &Style::default());
        assert!(!plain_line.contains('\u{1b}'), "{plain_line:?}");
        // A caught-up ledger has no age to show.
        assert!(plain_line.contains(" -  running"), "{plain_line:?}");
    }

    fn health(value: serde_json::Value) -> Health {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn the_health_verdict_names_what_is_stuck() {
        let ok = health(serde_json::json!({"status":"ok","reason":null,"exporters":[],"sources":[]}));
        assert_eq!(health_verdict(&ok), "ok: 0 exporters, 0 sources, nothing stuck");
        let stuck = health(serde_json::json!({
            "status": "stuck", "reason": null,
            "exporters": [{"name":"hooks","max_lag_ms":1000,"stuck_ledgers":2,"oldest_unexported_age_ms":12_000,"lag":9,
                "stuck":[{"ledger":"audit","age_ms":12_000,"lag":5,"state":"backing_off","last_error":"http 503"}]}],
            "sources": [{"name":"orders","stuck":true,"oldest_pending_age_ms":120_000,"backlog":10,"state":"running","last_error":null}]
        }));
        assert_eq!(
            health_verdict(&stuck),
            "stuck: exporter hooks (max_lag 1s): 2 ledgers, lag 9\n  \
             ledger audit: oldest unexported 12s, lag 5, backing_off, last error: http 503\n  \
             … and 1 more\n\
             stuck: source orders: oldest pending 2m, backlog 10, running"
        );
        let not_ready =
            health(serde_json::json!({"status":"not_ready","reason":"a sync failed","exporters":[],"sources":[]}));
        assert_eq!(health_verdict(&not_ready), "not ready: a sync failed");
    }

    #[test]
    fn a_watch_frame_is_cut_to_the_terminal_rows() {
        let status: ExporterStatus = serde_json::from_value(serde_json::json!({
            "name": "hooks", "sink": "http", "state": "running", "max_lag_ms": null, "lag": 0,
            "oldest_unexported_age_ms": 0, "ledgers_total": 40, "stuck_ledgers": 0, "next": null,
            "ledgers": (0..40).map(|i| serde_json::to_value(exporter_ledger(&format!("l{i}"), 0, Some(0), false, None)).unwrap()).collect::<Vec<_>>()
        }))
        .unwrap();
        let frame = exporters_frame("title", &[status], &plain(100));
        let lines: Vec<&str> = frame.lines().collect();
        assert_eq!(lines.len(), 24, "{frame}");
        assert_eq!(lines[0], "title");
        assert!(lines[2].starts_with("exporter hooks  sink http  running  lag 0"), "{frame}");
        assert_eq!(lines[23], "… 21 more lines (a taller terminal shows them)");
        assert_eq!(exporters_frame("title", &[], &plain(100)), "title\n\nno exporters");
    }
}
