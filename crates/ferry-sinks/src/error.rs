//! `ConfigError`: why a sink's configuration was refused, or its sink could
//! not be built. The one error type of this crate's public API; delivery
//! failures are `ferry_export::SinkError`.

use std::path::PathBuf;

/// An error from a lower layer kept as it is (the durable module's errors
/// already name the file and the step).
pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why `[exporters.config]` was refused (validation touches no disk or
/// network) or the sink could not be built. Each message starts with the
/// field it is about (`config.url: …`) and says what to change; the
/// underlying error, if any, is part of the message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `sink =` names no kind at all.
    #[error("sink: unknown sink {kind:?} (expected one of stdout, file, http, clickhouse, postgres, nats)")]
    UnknownSink { kind: String },
    /// A key is unknown or a value has the wrong type, in serde's words
    /// (which say what was expected); `field` is `config` or `config.<path>`.
    #[error("{field}: {message}")]
    Parse { field: String, message: String },
    /// A required key is missing.
    #[error("{field}: required: {fix}")]
    Missing { field: &'static str, fix: &'static str },
    /// A value that parsed but cannot be used.
    #[error("{field}: {problem}: {fix}")]
    Invalid { field: String, problem: String, fix: &'static str },
    /// The file sink's directory could not be created (at build time).
    #[error("config.dir: {error}: set it to a directory ferry may create and write to")]
    CreateDir { dir: PathBuf, error: BoxError },
    /// The HTTP sink's client could not be built (at build time).
    #[error("config: build the HTTP client: {error}")]
    HttpClient { error: reqwest::Error },
    /// The destination answered, at build time, that this config cannot
    /// work (wrong credentials, a missing table without `create_table`, a
    /// table of the wrong shape). `field` is the key to change
    /// (`config.password`, `config.table`…); `message` carries the
    /// destination's words, secrets removed.
    #[error("{field}: {message}")]
    Refused { field: String, message: String },
}

/// An error and its causes, `outer: inner: …`, a cause its outer message
/// already quotes left out (the sinks' errors of reqwest and async-nats).
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = e.source();
    }
    out
}
