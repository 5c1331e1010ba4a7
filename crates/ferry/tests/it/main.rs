//! Integration tests of the `ferry` binary: real `ferry serve` processes on
//! loopback ports with temp data dirs, real HTTP, real `kill -9`. No mocks.

// Tests build, damage and inspect files on purpose, with the raw calls
// that clippy.toml keeps out of the product code.
#![allow(clippy::disallowed_methods)]

mod api;
mod app_api;
mod auth;
mod backup;
mod chain;
mod cli;
mod cli_views;
mod client;
mod crash;
mod deleted_data;
mod descriptors;
mod edge;
mod export_crash;
mod export_http;
mod exporters;
mod full_disk;
mod health;
mod http_versions;
mod import;
mod metrics;
mod openapi;
mod outbox;
mod outbox_crash;
mod packs;
mod pins;
mod quota;
mod request_bodies;
mod scopes;
mod secrets;
mod sink_clickhouse;
mod sink_nats;
mod sink_postgres;
mod status_page;
mod support;
mod tls;
mod tools;
mod watch;
