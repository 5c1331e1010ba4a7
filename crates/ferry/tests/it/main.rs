//! Integration tests of the `ferry` binary: real `ferry serve` processes on
//! loopback ports with temp data dirs, real HTTP, real `kill -9`. No mocks.

mod api;
mod cli;
mod crash;
mod export_crash;
mod export_http;
mod exporters;
mod packs;
mod support;
mod tools;
mod watch;
