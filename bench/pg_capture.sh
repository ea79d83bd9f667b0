#!/usr/bin/env bash
# Capture throughput into PostgreSQL (issue: ≥ 5,000 inferences/s with the
# proxy, the capture writer and the database sharing two cores, no drops):
# a throw-away cluster (Debian's postgresql, initdb in a temporary
# directory, a free port), the simulator, and `flywheel serve` with
# `[store] kind = "postgres"`; real alerts sent at RATE req/s for SECONDS,
# then the captured and dropped counts and the rows in the database.
#
#   bench/pg_capture.sh                      # 5,000 req/s for 60 s
#   RATE=2000 SECONDS_=30 bench/pg_capture.sh
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
rate=${RATE:-5000}
seconds=${SECONDS_:-60}
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
(cd bench/loadgen && cargo build --release -q)
flywheel=$root/target/release/flywheel
loadgen=$root/bench/loadgen/target/release/loadgen
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
pg_port=$(free_port); sim_port=$(free_port); proxy_port=$(free_port)

as_pg "$pg_bin/initdb" -D "$work/pg" -U "$pg_user" --auth=trust -E UTF8 >/dev/null
as_pg "$pg_bin/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w \
  -o "-p $pg_port -k $work -c listen_addresses=127.0.0.1 -c shared_buffers=256MB -c synchronous_commit=on" start >/dev/null
export FLYWHEEL_DATABASE_URL="postgres://$pg_user@127.0.0.1:$pg_port/postgres"

python3 - "$work/requests.jsonl" <<'PY'
import json, sys
alerts = [json.loads(l) for l in open("src/demo/alerts.jsonl")]
with open(sys.argv[1], "w") as out:
    for host in range(20):
        for a in alerts:
            out.write(json.dumps({"model": "triage", "messages": [
                {"role": "system", "content": "You are a SOC analyst. Classify the alert: give the threat type, the severity and a short rationale."},
                {"role": "user", "content": f"{a['alert']} Host: WS-{host:03d}."}]}) + "\n")
PY

RUST_LOG=warn "$flywheel" simulate --listen "127.0.0.1:$sim_port" 2>"$work/sim.log" &
cat >"$work/flywheel.toml" <<TOML
[server]
listen = "127.0.0.1:$proxy_port"
data_dir = "$work/data"
[auth]
allow_anonymous_clients = true
[limits]
requests_per_minute = 0
[store]
kind = "postgres"
[[providers]]
name = "sim"
base_url = "http://127.0.0.1:$sim_port/v1"
[[models]]
name = "triage"
model_type = "threat_detection"
  [[models.versions]]
  name = "base"
  provider = "sim"
  model = "gpt-4o-mini"
TOML
RUST_LOG=warn "$flywheel" serve --config "$work/flywheel.toml" 2>"$work/proxy.log" &
for port in $sim_port $proxy_port; do
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done
metric() { local n; n=$(curl -s "127.0.0.1:$proxy_port/metrics" | awk -v m="$1" '$1==m {print int($2)}' | head -1); echo "${n:-0}"; }

out=$("$loadgen" --addr "127.0.0.1:$proxy_port" --bodies-file "$work/requests.jsonl" --duration "$seconds" --warmup 0 --rate "$rate" --connections 8)
served=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ok"])')
for _ in $(seq 120); do
  [ $(( $(metric flywheel_captured_total) + $(metric flywheel_exchange_dropped_total) )) -ge "$served" ] && break; sleep 0.5
done
rows=$(psql -At "$FLYWHEEL_DATABASE_URL" -c "select count(*) from inferences")
size=$(psql -At "$FLYWHEEL_DATABASE_URL" -c "select pg_database_size(current_database())")
echo "rate $rate req/s for $seconds s: served $served, captured $(metric flywheel_captured_total), dropped $(metric flywheel_exchange_dropped_total), rows $rows, database $((size / 1048576)) MiB"
