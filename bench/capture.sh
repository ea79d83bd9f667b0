#!/usr/bin/env bash
# Capture at scale: sustained capture throughput through the real proxy,
# store size per million inferences, and the latency of filtered
# `GET /admin/api/conversations` pages with 1,000,000 inferences stored.
#
#   bench/capture.sh                 # 1,000,000 inferences (about 10 minutes)
#   INFERENCES=100000 bench/capture.sh   # smaller; MAX_SECONDS caps the fill
#
# Same layout as bench/run.sh: Flywheel alone on core 1, the simulator and
# the clients on core 0. Prints a Markdown report and writes
# bench/results/capture.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
target=${INFERENCES:-1000000}
max_seconds=${MAX_SECONDS:-1200}  # the fill stops here even if short of the target
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --bin flywheel -q
(cd bench/loadgen && cargo build --release -q)
flywheel=$root/target/release/flywheel
loadgen=$root/bench/loadgen/target/release/loadgen
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
sim_port=$(free_port); proxy_port=$(free_port)
export FLYWHEEL_ADMIN_TOKEN=bench-admin-token

RUST_LOG=warn taskset -c 0 "$flywheel" simulate --listen "127.0.0.1:$sim_port" 2>"$work/sim.log" &
cat >"$work/flywheel.toml" <<TOML
[server]
listen = "127.0.0.1:$proxy_port"
data_dir = "$work/data"
[auth]
allow_anonymous_clients = true
[limits]
requests_per_minute = 0
[capture]
# Nothing may be lost while filling the store: a full queue holds the
# exchange (never the response) until there is room.
on_queue_full = "wait"
queue_wait_ms = 10000
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
RUST_LOG=warn taskset -c 1 "$flywheel" serve --config "$work/flywheel.toml" 2>"$work/proxy.log" &
for port in $sim_port $proxy_port; do
  for _ in $(seq 100); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
done

metric() { curl -s "127.0.0.1:$proxy_port/metrics" | awk -v m="$1" '$1==m {print int($2)} END {}' | head -1; }
captured() { local n; n=$(metric flywheel_captured_total); echo "${n:-0}"; }

# Fill: open-loop load at FILL_RATE, 20 s at a time, until the target.
fill_rate=${FILL_RATE:-2000}
start=$(date +%s.%N)
served=0
while [ "$(captured)" -lt "$target" ] && [ $(( $(date +%s) - ${start%.*} )) -lt "$max_seconds" ]; do
  out=$(taskset -c 0 "$loadgen" --addr "127.0.0.1:$proxy_port" --body-file bench/request.json --duration 20 --rate "$fill_rate" --connections 8)
  served=$((served + $(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ok"])')))
  echo "served $served, captured $(captured)" >&2
done
dropped() { local n; n=$(metric flywheel_exchange_dropped_total); echo "${n:-0}"; }
# Let the writer catch up with what is queued.
for _ in $(seq 600); do
  [ $(( $(captured) + $(dropped) )) -ge "$served" ] && break; sleep 0.5
done
end=$(date +%s.%N)
total=$(captured)
dropped=$(dropped)
sleep 1
store_bytes=$(du -sb "$work/data" | cut -f1)

python3 bench/capture_queries.py "127.0.0.1:$proxy_port" "$FLYWHEEL_ADMIN_TOKEN" >"$work/queries.json"

# Saturation with the full store behind it: how fast the proxy serves and
# how fast capture keeps up when clients send as fast as they can.
sat_captured=$(captured); sat_dropped=$(dropped); sat_start=$(date +%s.%N)
sat=$(taskset -c 0 "$loadgen" --addr "127.0.0.1:$proxy_port" --body-file bench/request.json --duration 20 --rate 0 --connections 8)
sat_served=$(echo "$sat" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ok"])')
for _ in $(seq 240); do
  [ $(( $(captured) - sat_captured + $(dropped) - sat_dropped )) -ge "$sat_served" ] && break; sleep 0.5
done
sat_end=$(date +%s.%N)
echo "{\"served\": $sat_served, \"captured\": $(( $(captured) - sat_captured )), \"dropped\": $(( $(dropped) - sat_dropped )), \"seconds\": $(python3 -c "print($sat_end - $sat_start)")}" >"$work/saturation.json"
rss_kb=$(awk '/VmHWM/{print $2}' /proc/$(pgrep -f "serve --config $work/flywheel.toml" | head -1)/status)

mkdir -p bench/results
python3 - "$start" "$end" "$served" "$total" "$dropped" "$store_bytes" "$rss_kb" "$work/queries.json" "$fill_rate" "$work/saturation.json" >bench/results/capture.md <<'PY'
import json, sys
start, end, served, total, dropped, size, rss, queries, rate, saturation = sys.argv[1:]
sat = json.load(open(saturation))
seconds = float(end) - float(start)
total, served, dropped, size = int(total), int(served), int(dropped), int(size)
q = json.load(open(queries))
print(f"Filled with {total:,} captured inferences ({served:,} requests served at {rate} req/s, {dropped} dropped) in {seconds:.0f} s.\n")
print("| measure | value |\n|---|---|")
print(f"| sustained capture during the fill (proxy + writer on one core) | {total / seconds:,.0f} inferences/s, {dropped} dropped |")
print(f"| saturation, 20 s closed loop, store full | served {sat['served'] / 20:,.0f} req/s; captured {sat['captured'] / sat['seconds']:,.0f} inferences/s until the queue drained ({sat['seconds']:.0f} s); {sat['dropped']:,} dropped |")
print(f"| store size | {size / 2**20:,.0f} MiB for {total:,} inferences = {size / total * 1e6 / 2**30:.2f} GiB per million |")
print(f"| peak RSS of the proxy | {int(rss) / 1024:.0f} MB |")
print(f"\nLabelled for the filters: {q['labelled']:,} conversations (threat type, severity, quality), {q['approved']:,} approved.\n")
print("| `GET /admin/api/conversations?…` (limit 50) | items | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|---|")
for row in q["queries"]:
    print(f"| `{row['query'] or '(none)'}` | {row['items']} | {row['p50']:.2f} | {row['p99']:.2f} | {row['max']:.2f} |")
print(f"\n`GET /admin/api/stats`: p50 {q['stats']['p50']:.2f} ms, p99 {q['stats']['p99']:.2f} ms.")
PY
cat bench/results/capture.md
