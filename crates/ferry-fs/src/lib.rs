//! ferry's durability primitives, below the store and the file sink.
//!
//! - [`durable`]: every fsync, rename, unlink, truncation and root lock of
//!   ferry's files, each with the reason it is needed.
//! - [`descriptors`]: the open-file limit, and the errors that say the
//!   process ran out of descriptors (never a disk fault).
//! - [`vfs`]: the narrow filesystem the storage protocols run on, with
//!   [`RealFs`] (the disk) and [`sim::SimFs`] (a simulated disk that keeps
//!   the durable image apart from unsynced state, for crash tests).
//!
//! **Architecture Invariant:** only this crate calls the raw fsync,
//! rename, unlink, truncate, create-dir and remove-dir functions;
//! `clippy.toml` bans them everywhere else. It knows nothing of ledgers,
//! catalogs or poisoning: callers decide what a failure means.

pub mod descriptors;
pub mod durable;
mod error;
mod real;
pub mod sim;
pub mod vfs;

pub use error::{FsError, Result};
pub use real::RealFs;
