#!/usr/bin/env bash
# Flywheel's whole test suite, from a fresh clone: installs what the tests need
# (a Python venv at .venv with the official openai SDK), builds the binary, runs
# the Rust unit and integration tests, then the openai SDK compatibility suite
# against the real binary. Stops at the first stage that fails.
set -euo pipefail
cd "$(dirname "$0")/.."

stage() { printf '\n==> [%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

PYTHON="${PYTHON:-python3}"

stage "Python venv with the openai SDK (.venv)"
# A venv left by another Python (or half-created) is rebuilt, not trusted.
if ! .venv/bin/python -c 'import sys' >/dev/null 2>&1; then
  rm -rf .venv
  if ! "$PYTHON" -m venv .venv; then
    # Debian's own python3 ships venv support in a separate package.
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "python3 -m venv failed; installing python3-venv" >&2
      rm -rf .venv
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv
      "$PYTHON" -m venv .venv
    else
      echo "error: '$PYTHON -m venv' failed; install the venv module (Debian: apt-get install python3-venv)" >&2
      exit 1
    fi
  fi
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade -r tests/python/requirements.txt
.venv/bin/python -c 'import openai, httpx, pytest; print(f"openai {openai.__version__}, httpx {httpx.__version__}, pytest {pytest.__version__}")'

stage "cargo fmt --check and clippy"
cargo fmt --check
cargo clippy --all-targets -q -- -D warnings

stage "cargo build --bin flywheel"
cargo build --bin flywheel

stage "Rust unit and integration tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --all-targets --no-fail-fast
else
  cargo test --all-targets --no-fail-fast
fi

stage "openai SDK compatibility suite against target/debug/flywheel (process logs in test-artifacts/)"
FLYWHEEL_BIN="$(pwd)/target/debug/flywheel" .venv/bin/python -m pytest -q tests/python

stage "all tests passed"
