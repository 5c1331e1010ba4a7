//! Progress of long backup work (SPEC §9): a bar on a terminal (indicatif),
//! plain lines otherwise — one per ledger and one at the end, so a log or
//! a CI job reads it without control characters.

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub(crate) struct Progress {
    label: &'static str,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// `total`: entries expected.
    pub fn new(label: &'static str, total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} entries ({per_sec}) {msg}",
            )
            .expect("a valid template");
            bar.set_style(style);
            bar.set_prefix(label);
            bar
        });
        Self { label, bar }
    }

    pub fn add(&self, entries: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(entries);
        }
    }

    /// One ledger is done.
    pub fn ledger(&self, ledger: &str, entries: u64) {
        match &self.bar {
            Some(bar) => bar.set_message(ledger.to_owned()),
            None => eprintln!("{}: ledger {ledger}: {entries} entries", self.label),
        }
    }

    pub fn finish(&self, summary: &str) {
        match &self.bar {
            Some(bar) => bar.finish_with_message(summary.to_owned()),
            None => eprintln!("{}: {summary}", self.label),
        }
    }
}
