//! ferry's exporter runtime (SPEC §5): every configured exporter ships
//! every matching ledger, in id order, to its sink, and writes its cursor
//! only after the sink acknowledged. Knows no concrete sink: those live in
//! `ferry-sinks` and implement [`Sink`].
//!
//! Data flow: store appends bus → `runtime` supervisor (one per exporter)
//! → `machine` decides → `job` reads the store, calls the sink, commits the
//! cursor → outcome back to the machine. `age` keeps the timestamps that
//! tell each ledger's oldest unexported entry's age (health, status). `cursors` holds the one cursor
//! writer (`cursors::commit`) and the retention hold.

mod age;
pub mod check;
mod cursors;
mod job;
pub mod machine;
pub mod redact;
mod runtime;
pub mod settings;
pub mod sink;
pub mod status;

pub use check::{CheckReport, LedgerCheck};
pub use cursors::CursorTable;
pub use redact::Secrets;
pub use runtime::{ExportError, Exporters};
pub use settings::{ExporterConfig, ExporterSettings, SettingsError};
pub use sink::{Ack, Batch, Holding, Prepared, Sink, SinkError, Target};
pub use status::{ExporterHealth, ExporterState, ExporterStatus, LedgerStatus, Page, StuckLedger};
