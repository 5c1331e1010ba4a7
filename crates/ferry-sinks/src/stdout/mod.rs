//! `stdout`: each entry's JSON form on its own line of standard output.
//!
//! **At least once, not exactly once.** A batch is acknowledged once it is
//! written and flushed to the pipe; whatever reads the pipe may still lose
//! it, and a crash after the write but before the cursor commit prints the
//! batch again on restart. Readers that need exactly once deduplicate on
//! `(ledger, id)`, which every line carries; the pair repeats when a
//! ledger is deleted and created again (a line carries no incarnation),
//! which `docs/sinks.md` warns of.

mod config;

use std::io::Write as _;

pub use config::StdoutConfig;
use ferry_core::{EntryId, LedgerName};
use ferry_export::{Ack, Batch, SinkError};

pub struct StdoutSink {
    _config: StdoutConfig,
}

impl StdoutSink {
    pub fn new(config: StdoutConfig) -> Self {
        Self { _config: config }
    }

    pub async fn prepare(&self, _ledger: &LedgerName, _cursor: EntryId) -> Result<(), SinkError> {
        Ok(())
    }

    pub async fn deliver(&self, batch: &Batch) -> Result<Ack, SinkError> {
        let lines = crate::json_lines(batch);
        let through = batch.last_id();
        tokio::task::spawn_blocking(move || {
            // One locked write per batch: batches of ledgers never interleave.
            let mut out = std::io::stdout().lock();
            out.write_all(&lines).and_then(|()| out.flush())
        })
        .await
        .map_err(|e| SinkError::retryable(format!("stdout writer: {e}")))?
        .map_err(|e| SinkError::retryable(format!("write to stdout: {e}")))?;
        Ok(Ack { through })
    }
}
