#!/usr/bin/env bash
# CPU per request at fixed request rates: nginx (a keep-alive reverse
# proxy), the floor (bench/floor: tokio and hyper forwarding bytes
# untouched, the least a proxy on Flywheel's stack can do) and Flywheel,
# each pinned to core 1 in turn, loaded open-loop from core 0 at the same
# rates. At saturation a slower proxy also pays more per request to wake
# the idle other core, so its throughput mixes its own cost with that
# effect; at one rate for all three, the CPU each spends per request (user
# and kernel time from /proc) is their cost alone, and the floor splits
# Flywheel's into what the stack costs and what Flywheel adds.
#
#   bench/cost.sh                       # 3,000, 6,000 and 9,000 req/s, 8 s each
#   RATES="2000 5000" DURATION=5 bench/cost.sh
#   CAPTURE=off bench/cost.sh           # the request path alone
#   FLYWHEEL_BIN=path bench/cost.sh     # that binary instead of building one
#
# Prints a Markdown table and writes bench/results/cost.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
root=$(pwd)
duration=${DURATION:-8}
rates=${RATES:-3000 6000 9000}
capture=$(capture_mode on)
work=$(mktemp -d)
# Waits for what it stopped: a server still flushing would leave files behind rm.
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

need_wrk_and_nginx
flywheel=$(flywheel_binary "$root")
floor=$(bench_tool "$root" floor)
loadgen=$(bench_tool "$root" loadgen)
upstream_port=$(free_port); nginx_port=$(free_port); floor_port=$(free_port); proxy_port=$(free_port)

static_upstream_conf "$work" "$upstream_port" >"$work/upstream.conf"
reverse_proxy_conf "$work" "$nginx_port" "$upstream_port" >"$work/nginx.conf"
flywheel_config "$proxy_port" "$work/data" upstream "http://127.0.0.1:$upstream_port/v1" >"$work/flywheel.toml"
capture_config "$capture" >>"$work/flywheel.toml"

taskset -c 0 nginx -c "$work/upstream.conf" &
taskset -c 1 nginx -c "$work/nginx.conf" &
# `taskset` execs the command, so $! is the proxy's own pid.
taskset -c 1 "$floor" "127.0.0.1:$floor_port" "127.0.0.1:$upstream_port" &
floor_pid=$!
RUST_LOG=warn taskset -c 1 "$flywheel" serve --config "$work/flywheel.toml" 2>"$work/proxy.log" &
proxy_pid=$!
wait_for_ports $upstream_port $nginx_port $floor_port $proxy_port
nginx_worker=$(ps -o pid= --ppid "$(cat "$work/nginx.pid")" | head -1)

# User and system CPU ticks of a process, all its threads.
ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }
: >"$work/results.txt"
for rate in $rates; do
  for proxy in "nginx $nginx_port $nginx_worker" "floor $floor_port $floor_pid" "flywheel $proxy_port $proxy_pid"; do
    read -r name port pid <<<"$proxy"
    before=$(ticks "$pid")
    taskset -c 0 "$loadgen" --addr "127.0.0.1:$port" --path /v1/chat/completions \
      --body-file bench/request.json --rate "$rate" --connections 8 --duration "$duration" --warmup 0 >"$work/load.json"
    echo "$name $rate $before $(ticks "$pid") $(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(d["all_requests"], d["errors"], d["latency_ms"]["p50"], d["latency_ms"]["p99"])' "$work/load.json")" >>"$work/results.txt"
  done
done

mkdir -p bench/results
python3 - "$work/results.txt" "$(getconf CLK_TCK)" "$duration" "$capture" <<'PY' | tee bench/results/cost.md
import sys
path, hz, duration, capture = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = {}
for line in open(path):
    name, rate, user0, sys0, user1, sys1, requests, errors, p50, p99 = line.split()
    requests = int(requests)
    per = lambda ticks: ticks / hz / requests * 1e6
    rows[(name, int(rate))] = (per(int(user1) - int(user0)), per(int(sys1) - int(sys0)), float(p50), float(p99), int(errors))
print(f"{duration} s per point, 8 connections, open loop, capture {capture}; "
      "the proxy under test on core 1, the load generator and the static upstream on core 0.\n")
print("| req/s | proxy | CPU µs per request | of it user / kernel | p50 / p99 (ms) | errors |")
print("|---|---|---|---|---|---|")
for rate in sorted({rate for _, rate in rows}):
    for name in ("nginx", "floor", "flywheel"):
        user, kernel, p50, p99, errors = rows[(name, rate)]
        print(f"| {rate:,} | {name} | {user + kernel:.1f} | {user:.1f} / {kernel:.1f} | {p50:.3f} / {p99:.3f} | {errors} |")
PY
