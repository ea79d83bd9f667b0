#!/usr/bin/env bash
# Flywheel's whole test suite, from a fresh clone: installs what the tests
# need (a Python venv with the official openai SDK), then runs the Rust
# unit and integration tests and the SDK compatibility suite.
set -euo pipefail
cd "$(dirname "$0")/.."

stage() { printf '\n==> %s\n' "$*"; }

stage "Python venv with the openai SDK (.venv)"
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade -r tests/python/requirements.txt

stage "cargo fmt --check and clippy"
cargo fmt --check
cargo clippy --all-targets -q -- -D warnings

stage "Rust unit and integration tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-targets --no-fail-fast
else
  cargo test --all-targets --no-fail-fast
fi

stage "openai SDK compatibility suite against the real binary"
cargo build -q --bin flywheel
FLYWHEEL_BIN="$(pwd)/target/debug/flywheel" .venv/bin/python -m pytest -q tests/python
