#!/usr/bin/env bash
# The one gate: formatting, lints, and every test. People and .ci/run use it.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check

echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  # nextest runs each test in its own process, which the fail points'
  # global registry needs.
  cargo nextest run --workspace --all-features --locked --profile ci
else
  cargo test --workspace --locked
fi
