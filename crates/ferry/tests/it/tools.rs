//! `ferry verify` and `ferry inspect` against real data directories.
