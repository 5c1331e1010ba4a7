#!/usr/bin/env bash
# The one gate: formatting, lints, every test of the workspace (fail points
# included) and the fuzz crate's corpus and regression tests. People and
# .ci/run use it; it never skips a part, it fails instead.
set -euo pipefail
cd "$(dirname "$0")/.."

# Checked first: the tests need it (see below), and the gate fails rather
# than skip them.
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "check.sh: cargo-nextest is missing; install it with: cargo install cargo-nextest --locked" >&2
  exit 1
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== fuzz corpus and regression tests (fuzz/, its own workspace, stable toolchain)"
# The fuzz targets over their seeds, the past findings' inputs and
# deterministic mutations, 5 s per target (FERRY_FUZZ_SECS); no cargo-fuzz
# or nightly needed. Release: the fuzz profile keeps overflow checks and
# debug assertions on, and mutations run faster.
cargo test --release --manifest-path fuzz/Cargo.toml --locked

echo "== tests (cargo nextest, fail points on)"
# nextest runs each test in its own process, which the fail points' global
# registry needs; plain `cargo test` would run them side by side and fail
# them, and running without the feature would skip them. So no fallback.
# Last, so the run closes on nextest's summary of the workspace's tests.
cargo nextest run --workspace --all-features --locked --profile ci
