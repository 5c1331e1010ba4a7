//! Integration tests of the ferry-store crate: real stores on real files in
//! temp dirs, reopened after every kind of damage a crash can leave.

// Tests build, damage and inspect files on purpose, with the raw calls
// that clippy.toml keeps out of the product code.
#![allow(clippy::disallowed_methods)]

mod append;
mod corruption;
mod cursors;
mod deletion;
mod descriptors;
mod failpoints;
mod format_fixtures;
mod full_disk;
mod idempotency;
mod import;
mod incarnations;
mod model;
mod open;
mod packs;
mod pins;
mod poison;
mod protocol_sim;
mod quota;
mod scrub;
mod support;
mod torn_tail;
mod validation;
