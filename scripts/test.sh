#!/usr/bin/env bash
# Flywheel's whole test suite, from a fresh clone: installs what the tests need
# (a Python venv at .venv with the official openai SDK; curl and jq for the
# README's steps; Debian's chromium and playwright-core for the browser
# tests), builds the binary, runs the Rust unit
# and integration tests, the openai SDK compatibility suite against the real
# binary, the client-compatibility suite (tests/clients: the Python clients
# pinned in tests/clients/requirements.txt in .venv-clients, and the Vercel
# AI SDK and the openai SDK for JavaScript pinned by
# tests/clients/js/package-lock.json), then the admin UI end
# to end in headless Chromium. Stops at the first stage that fails.
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

stage "curl and jq for the README's steps (tests/api/demo.rs runs them), openssl for the database's TLS"
for tool in curl jq openssl; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "$tool is missing; installing it" >&2
      apt-get update -qq
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    else
      echo "error: $tool not found; install it (Debian: apt-get install $tool)" >&2
      exit 1
    fi
  fi
done

stage "PostgreSQL for the PostgreSQL store's tests: a throw-away cluster"
# Debian's postgresql package; the cluster lives in a temporary directory,
# on a free port, and is stopped when this script ends.
PG_BIN="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL is missing; installing Debian's postgresql" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    PG_BIN="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  else
    echo "error: PostgreSQL's initdb not found; install it (Debian: apt-get install postgresql)" >&2
    exit 1
  fi
fi
PG_DIR="$(mktemp -d)"
chmod 755 "$PG_DIR"
PG_PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# initdb refuses to run as root: the cluster belongs to an unprivileged user.
PG_USER="$(id -un)"
as_pg() { "$@"; }
if [ "$(id -u)" = 0 ]; then
  PG_USER=postgres
  id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
  chown postgres "$PG_DIR"
  as_pg() { su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; }
fi
as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U "$PG_USER" --auth=trust -E UTF8 >/dev/null
as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
  -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c max_connections=400 -c fsync=off" start >/dev/null
stop_postgres() { as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR/data" -m immediate stop >/dev/null 2>&1 || true; rm -rf "$PG_DIR"; }
trap stop_postgres EXIT
as_pg "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U "$PG_USER" flywheel
export FLYWHEEL_TEST_DATABASE_URL="postgres://$PG_USER@127.0.0.1:$PG_PORT/flywheel"
# The two-replica and restart tests drive the cluster themselves.
export FLYWHEEL_TEST_PG_BIN="$PG_BIN" FLYWHEEL_TEST_PG_DATA="$PG_DIR/data" FLYWHEEL_TEST_PG_PORT="$PG_PORT"
echo "PostgreSQL $("$PG_BIN/postgres" --version | awk '{print $3}') on port $PG_PORT"

# A first build gains nothing from incremental compilation's bookkeeping,
# which cost a fresh clone a fifth of the proxy crate's build time (74 s
# against 58 for `cargo build --bin flywheel`); a tree built before keeps
# it, for quick rebuilds.
if [ ! -d "${CARGO_TARGET_DIR:-target}" ] && [ -z "${CARGO_INCREMENTAL:-}" ]; then
  export CARGO_INCREMENTAL=0
fi

stage "cargo fmt --check and clippy"
cargo fmt --all --check
cargo clippy --workspace --all-targets -q -- -D warnings

stage "cargo build --bin flywheel"
cargo build --bin flywheel

stage "Rust unit and integration tests (the proxy and the simulator crate)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-targets --no-fail-fast
else
  cargo test --workspace --all-targets --no-fail-fast
fi

stage "the API suite again, against the PostgreSQL store (FLYWHEEL_TEST_STORE=postgres)"
# Every test that runs the app in process, each with a schema of its own.
# Left out: those about the embedded store's own files (full disk, upgrade
# of a sled store, SIGKILL durability of sled's flush window), those that
# start the real binary with configs of their own (cli.rs, demo.rs), and
# those that choose their stores themselves and ran above (postgres*.rs,
# replicas.rs, leases.rs, store_conformance.rs).
if cargo nextest --version >/dev/null 2>&1; then
  FLYWHEEL_TEST_STORE=postgres cargo nextest run -p flywheel --test api --no-fail-fast \
    -E 'not (test(/^full_disk::/) | test(/^upgrade::/) | test(/^durability::/) | test(/^cli::/) | test(/^demo::/) | test(/^layout::/) | test(/^postgres/) | test(/^replicas::/) | test(/^leases::/) | test(/^store_conformance::/))'
else
  FLYWHEEL_TEST_STORE=postgres cargo test -p flywheel --test api --no-fail-fast -- \
    --skip full_disk:: --skip upgrade:: --skip durability:: --skip cli:: --skip demo:: \
    --skip layout:: --skip postgres --skip replicas:: --skip leases:: --skip store_conformance::
fi

stage "openai SDK compatibility suite against target/debug/flywheel (process logs in test-artifacts/)"
FLYWHEEL_BIN="$(pwd)/target/debug/flywheel" .venv/bin/python -m pytest -q tests/python

stage "Client-compatibility suite: pinned Python clients (.venv-clients, tests/clients/requirements.txt)"
# A venv of its own, so the SDK suite above keeps the latest openai SDK
# while these clients stay exactly as pinned; --no-deps because the list is
# complete and one declared bound in it is known to be wrong (see the file).
if ! .venv-clients/bin/python -c 'import sys' >/dev/null 2>&1; then
  rm -rf .venv-clients
  "$PYTHON" -m venv .venv-clients
fi
.venv-clients/bin/python -m pip install -q --disable-pip-version-check --no-deps -r tests/clients/requirements.txt
FLYWHEEL_BIN="$(pwd)/target/debug/flywheel" .venv-clients/bin/python -m pytest -q tests/clients

stage "Chromium and playwright-core for the admin UI tests (tests/browser)"
# The browser is Debian's chromium, never a build downloaded by a tool.
CHROMIUM_PATH="${CHROMIUM_PATH:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM_PATH" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "$CHROMIUM_PATH is missing; installing Debian's chromium" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "error: $CHROMIUM_PATH not found; install chromium (Debian: apt-get install chromium) or set CHROMIUM_PATH" >&2
    exit 1
  fi
fi
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "error: node and npm are needed for the browser tests (Debian: apt-get install nodejs npm)" >&2
    exit 1
  fi
fi
(cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
"$CHROMIUM_PATH" --version 2>/dev/null | grep -v '^$' || true

stage "Client-compatibility suite: the Vercel AI SDK and the openai SDK for JavaScript (tests/clients/js, pinned by package-lock.json)"
(cd tests/clients/js && npm ci --no-audit --no-fund --loglevel=error)
(cd tests/clients/js && FLYWHEEL_BIN="$(pwd)/../../../target/debug/flywheel" \
  node --test --test-concurrency=1 --test-timeout=120000)

stage "admin UI end to end in headless Chromium (screenshots in test-artifacts/screenshots/)"
(cd tests/browser && CHROMIUM_PATH="$CHROMIUM_PATH" FLYWHEEL_BIN="$(pwd)/../../target/debug/flywheel" \
  node --test --test-concurrency=1 --test-timeout=240000)

stage "all tests passed"
