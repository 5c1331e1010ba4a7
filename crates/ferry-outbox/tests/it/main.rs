//! The outbox source against real databases: PostgreSQL and MariaDB/MySQL
//! on this machine, each test in a database of its own, every behaviour
//! checked for both drivers with one shared body.

mod drain;
mod failpoints;
mod support;
