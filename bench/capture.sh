#!/usr/bin/env bash
# Capture at scale, with the default configuration (capture on, the drop
# policy): real alerts sent through the proxy at a steady rate for ten
# minutes (1,200,000 inferences at 2,000 req/s), then filtered review pages
# and the stats timed with the store full, and a saturation run.
#
#   bench/capture.sh                        # 2,000 req/s for 600 s
#   FILL_RATE=1000 FILL_SECONDS=120 bench/capture.sh   # smaller
#   FLYWHEEL_BIN=/path/to/flywheel bench/capture.sh      # a given build, e.g. the one before a change
#
# Reports, at 250k, 500k and 1M stored inferences: the capture writer's
# CPU per inference (its thread), the store's other threads' (sled's I/O, the index merge), the
# whole process's, bytes on disk per inference, resident memory and the
# thread count; drops over the whole fill. Same layout as bench/run.sh:
# Flywheel alone on core 1, the simulator and the clients on core 0.
# Prints a Markdown report and writes bench/results/capture.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
root=$(pwd)
fill_rate=${FILL_RATE:-2000}
fill_seconds=${FILL_SECONDS:-600}
work=$(mktemp -d)
# Waits for what it stopped: a server still flushing would leave files behind rm.
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

if [ -z "${FLYWHEEL_BIN:-}" ]; then
  cargo build --release --bin flywheel -q
fi
flywheel=${FLYWHEEL_BIN:-$root/target/release/flywheel}
loadgen=$(bench_tool "$root" loadgen)
sim_port=$(free_port); proxy_port=$(free_port)
export FLYWHEEL_ADMIN_TOKEN=bench-admin-token

# What a SOC sends: the bundled alerts, each seen on twenty hosts.
python3 bench/alert_requests.py "$work/requests.jsonl"

RUST_LOG=warn taskset -c 0 "$flywheel" simulate --listen "127.0.0.1:$sim_port" 2>"$work/sim.log" &
flywheel_config "$proxy_port" "$work/data" sim "http://127.0.0.1:$sim_port/v1" >"$work/flywheel.toml"
RUST_LOG=warn taskset -c 1 "$flywheel" serve --config "$work/flywheel.toml" 2>"$work/proxy.log" &
proxy_pid=$!
wait_for_ports $sim_port $proxy_port

metric() { local n; n=$(curl -s "127.0.0.1:$proxy_port/metrics" | awk -v m="$1" '$1==m {print int($2)}' | head -1); echo "${n:-0}"; }
# CPU time (ns) of the process's threads whose name starts with $1.
thread_ns() {
  local total=0 t
  for t in /proc/$proxy_pid/task/*; do
    case "$(cat "$t/comm" 2>/dev/null)" in "$1"*) total=$((total + $(awk '{print $1}' "$t/schedstat" 2>/dev/null || echo 0)));; esac
  done
  echo $total
}
process_ns() { awk '{print ($14+$15) * 1e9 / '"$(getconf CLK_TCK)"'}' /proc/$proxy_pid/stat; }
snapshot() { # label
  printf '{"label": "%s", "captured": %s, "dropped": %s, "writer_ns": %s, "sled_ns": %s, "process_ns": %s, "disk": %s, "rss_kb": %s, "threads": %s, "at": %s}\n' \
    "$1" "$(metric flywheel_captured_total)" "$(metric flywheel_exchange_dropped_total)" \
    "$(thread_ns flywheel-captur)" "$(( $(thread_ns sled-) + $(thread_ns flywheel-index) ))" "$(process_ns)" \
    "$(du -sb "$work/data" | cut -f1)" "$(awk '/VmRSS/{print $2}' /proc/$proxy_pid/status)" \
    "$(ls /proc/$proxy_pid/task | wc -l)" "$(date +%s.%N)" >>"$work/snapshots.jsonl"
}

snapshot start
start=$(date +%s)
served=0
marks=(250000 500000 1000000)
while [ $(( $(date +%s) - start )) -lt "$fill_seconds" ]; do
  out=$(taskset -c 0 "$loadgen" --addr "127.0.0.1:$proxy_port" --bodies-file "$work/requests.jsonl" --duration 20 --warmup 0 --rate "$fill_rate" --connections 8)
  served=$((served + $(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ok"])')))
  captured=$(metric flywheel_captured_total)
  while [ ${#marks[@]} -gt 0 ] && [ "$captured" -ge "${marks[0]}" ]; do snapshot "${marks[0]}"; marks=("${marks[@]:1}"); done
  snapshot "t$(( $(date +%s) - start ))"
  echo "served $served, captured $captured, dropped $(metric flywheel_exchange_dropped_total), threads $(ls /proc/$proxy_pid/task | wc -l)" >&2
done
# Let the writer store what it holds.
for _ in $(seq 600); do
  [ $(( $(metric flywheel_captured_total) + $(metric flywheel_exchange_dropped_total) )) -ge "$served" ] && break; sleep 0.5
done
snapshot filled
echo "{\"served\": $served, \"rate\": $fill_rate, \"seconds\": $fill_seconds}" >"$work/fill.json"

hwm() { awk '/VmHWM/{print $2}' /proc/$proxy_pid/status; }
peak_fill_kb=$(hwm)
python3 bench/capture_queries.py "127.0.0.1:$proxy_port" "$FLYWHEEL_ADMIN_TOKEN" >"$work/queries.json"
peak_queries_kb=$(hwm)

# Saturation with the full store behind it.
sat_captured=$(metric flywheel_captured_total); sat_dropped=$(metric flywheel_exchange_dropped_total)
sat=$(taskset -c 0 "$loadgen" --addr "127.0.0.1:$proxy_port" --bodies-file "$work/requests.jsonl" --duration 20 --rate 0 --connections 8)
sat_served=$(echo "$sat" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ok"])')
for _ in $(seq 240); do
  [ $(( $(metric flywheel_captured_total) - sat_captured + $(metric flywheel_exchange_dropped_total) - sat_dropped )) -ge "$sat_served" ] && break; sleep 0.5
done
echo "{\"served\": $sat_served, \"captured\": $(( $(metric flywheel_captured_total) - sat_captured )), \"dropped\": $(( $(metric flywheel_exchange_dropped_total) - sat_dropped ))}" >"$work/saturation.json"
peak_kb=$(hwm)

mkdir -p bench/results
python3 bench/capture_report.py "$work" "$peak_kb" "$peak_fill_kb" "$peak_queries_kb" >bench/results/capture.md
cat bench/results/capture.md
