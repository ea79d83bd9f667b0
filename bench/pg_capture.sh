#!/usr/bin/env bash
# Flywheel on PostgreSQL, the three figures of the PostgreSQL store:
#
# 1. Capture throughput: real alerts sent through the proxy at RATE req/s
#    for SECONDS_ (default 5,000 req/s for 60 s) with the proxy, its
#    capture writer, the database, the simulator and the load generator
#    all sharing the machine's cores; served, captured and dropped counts.
# 2. Review at scale: the store filled through the proxy to FILL_TO
#    inferences (default 1,000,000), then filtered conversation pages and
#    the stats timed (bench/capture_queries.py: 200 calls each, p50/p99).
# 3. Proxy throughput with capture on, PostgreSQL vs the embedded store:
#    8 connections, closed loop, 20 s each, in the same run.
#
# A throw-away cluster (Debian's postgresql, initdb in a temporary
# directory, a free port, synchronous_commit on) is made and removed.
#
#   bench/pg_capture.sh                          # 5,000 req/s, 1M review
#   RATE=2000 SECONDS_=30 FILL_TO=200000 bench/pg_capture.sh
#
# Prints a Markdown report and writes bench/results/pg_capture.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
root=$(pwd)
rate=${RATE:-5000}
seconds=${SECONDS_:-60}
fill_to=${FILL_TO:-1000000}
work=$(mktemp -d)
chmod 755 "$work"
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
as_pg() { "$@"; }
pg_user=$(id -un)
if [ "$(id -u)" = 0 ]; then
  pg_user=postgres
  chown postgres "$work"
  as_pg() { su postgres -s /bin/sh -c "$(printf '%q ' "$@")"; }
fi
cleanup() {
  kill $(jobs -p) 2>/dev/null || true
  as_pg "$pg_bin/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

cargo build --release --bin flywheel -q
flywheel=$root/target/release/flywheel
loadgen=$(bench_tool "$root" loadgen)
pg_port=$(free_port); sim_port=$(free_port)
export FLYWHEEL_ADMIN_TOKEN=bench-admin-token

as_pg "$pg_bin/initdb" -D "$work/pg" -U "$pg_user" --auth=trust -E UTF8 >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c shared_buffers=256MB -c synchronous_commit=on" start >/dev/null
export FLYWHEEL_DATABASE_URL="postgres://$pg_user@127.0.0.1:$pg_port/postgres"

# What a SOC sends: the bundled alerts, each seen on twenty hosts.
python3 bench/alert_requests.py "$work/requests.jsonl"

RUST_LOG=warn "$flywheel" simulate --listen "127.0.0.1:$sim_port" 2>"$work/sim.log" &

# `serve NAME STORE_SECTION`: a proxy on a free port, its port in $port.
serve() {
  port=$(free_port)
  { flywheel_config "$port" "$work/$1-data" sim "http://127.0.0.1:$sim_port/v1"; printf '%s\n' "$2"; } >"$work/$1.toml"
  RUST_LOG=warn "$flywheel" serve --config "$work/$1.toml" 2>"$work/$1.log" &
  wait_for_ports $sim_port $port
}
metric() { local n; n=$(curl -s "127.0.0.1:$1/metrics" | awk -v m="$2" '$1==m {print int($2)}' | head -1); echo "${n:-0}"; }
# Waits until the proxy on port $1 has captured or dropped $2 exchanges.
settled() {
  for _ in $(seq 600); do
    [ $(( $(metric "$1" flywheel_captured_total) + $(metric "$1" flywheel_exchange_dropped_total) )) -ge "$2" ] && return; sleep 0.5
  done
}
load() { # port rate seconds → loadgen JSON
  "$loadgen" --addr "127.0.0.1:$1" --bodies-file "$work/requests.jsonl" --duration "$3" --warmup 0 --rate "$2" --connections 8
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
rows() { psql -At "$FLYWHEEL_DATABASE_URL" -c "select count(*) from inferences"; }

serve pg '[store]
kind = "postgres"'
pg_port_proxy=$port

# 1. Capture throughput.
out=$(load "$pg_port_proxy" "$rate" "$seconds")
served=$(echo "$out" | field '["ok"]')
settled "$pg_port_proxy" "$served"
captured=$(metric "$pg_port_proxy" flywheel_captured_total)
dropped=$(metric "$pg_port_proxy" flywheel_exchange_dropped_total)

# 2. Fill to FILL_TO through the proxy, then time the review pages.
total=$served
while [ "$(rows)" -lt "$fill_to" ]; do
  out=$(load "$pg_port_proxy" "$rate" 20)
  total=$((total + $(echo "$out" | field '["ok"]')))
  echo "filling: $(rows) inferences stored" >&2
done
settled "$pg_port_proxy" "$total"
stored=$(rows)
size=$(psql -At "$FLYWHEEL_DATABASE_URL" -c "select pg_database_size(current_database())")
python3 bench/capture_queries.py "127.0.0.1:$pg_port_proxy" "$FLYWHEEL_ADMIN_TOKEN" >"$work/queries.json"

# 3. Throughput with capture on: the full PostgreSQL store, then a fresh
#    embedded one, same clients, same simulator.
pg_sat=$(load "$pg_port_proxy" 0 20)
serve sled ''
sled_sat=$(load "$port" 0 20)

mkdir -p bench/results
python3 - "$work/queries.json" "$rate" "$seconds" "$served" "$captured" "$dropped" "$stored" "$size" "$pg_sat" "$sled_sat" <<'PY' | tee bench/results/pg_capture.md
import json, sys
queries = json.load(open(sys.argv[1]))
rate, seconds, served, captured, dropped, stored, size = (int(a) for a in sys.argv[2:9])
pg, sled = json.loads(sys.argv[9]), json.loads(sys.argv[10])
print(f"### Capture into PostgreSQL at {rate:,} req/s for {seconds} s\n")
print(f"served {served:,}, captured {captured:,} ({captured / seconds:,.0f} inferences/s), dropped {dropped:,}\n")
print(f"### Review with {stored:,} inferences stored ({size / 2**30:.2f} GiB database)\n")
print("| query | p50 ms | p99 ms | items |\n|---|---:|---:|---:|")
for q in queries["queries"] + [dict(queries["stats"], query="GET /admin/api/stats")]:
    print(f"| `{q['query'] or '(no filter)'}` | {q['p50']:.2f} | {q['p99']:.2f} | {q.get('items', '')} |")
print(f"\n### Throughput with capture on, 8 connections, 20 s\n")
print("| store | req/s | p50 ms | p99 ms |\n|---|---:|---:|---:|")
for name, r in (("PostgreSQL (full)", pg), ("embedded (fresh)", sled)):
    print(f"| {name} | {r['achieved_rps']:,.0f} | {r['latency_ms']['p50']:.2f} | {r['latency_ms']['p99']:.2f} |")
PY
