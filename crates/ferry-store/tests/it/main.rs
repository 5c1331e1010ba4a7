//! Integration tests of the ferry-store crate: real stores on real files in
//! temp dirs, reopened after every kind of damage a crash can leave.

mod append;
mod corruption;
mod failpoints;
mod format_fixtures;
mod idempotency;
mod model;
mod open;
mod packs;
mod poison;
mod protocol_sim;
mod support;
mod torn_tail;
mod validation;
