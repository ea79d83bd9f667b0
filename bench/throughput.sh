#!/usr/bin/env bash
# Proxy throughput beside nginx, in one run: wrk sends the same chat
# completion through nginx (a keep-alive reverse proxy), through the
# floor (bench/floor: tokio and hyper forwarding bytes untouched, the
# least a proxy on Flywheel's stack can do) and through Flywheel (default
# config, capture on) to a static upstream — nginx answering a canned
# completion — and straight to that upstream, at 1, 8 and 32 connections.
# The proxy under test gets core 1 to itself; wrk and the upstream share
# core 0.
#
# PLACEMENT=shared drops the pinning: every process may run on either
# core, as on one host serving its own clients. The proxy's extra threads
# (Flywheel's capture writer) then compete with wrk and the upstream
# instead of with the proxy's own request path.
#
#   bench/throughput.sh              # 15 s per point (about 3 minutes)
#   DURATION=5 bench/throughput.sh   # shorter
#   CAPTURE=off bench/throughput.sh  # the request path alone: capture disabled
#   FLYWHEEL_BIN=path bench/throughput.sh  # that binary instead of building
#                                          # one, to compare two builds
#   PLACEMENT=shared bench/throughput.sh   # no core pinning
#
# Prints a Markdown table and writes bench/results/throughput.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
root=$(pwd)
duration=${DURATION:-15}
capture=$(capture_mode on)
placement=${PLACEMENT:-pinned}
case $placement in pinned|shared) ;; *) echo "PLACEMENT must be pinned or shared" >&2; exit 2 ;; esac
# Prefixes that pin a command to core 0 or 1, or leave it free. (Arrays,
# not a function: a function run with & leaves its child behind.)
core0=(); core1=()
if [ "$placement" = pinned ]; then core0=(taskset -c 0); core1=(taskset -c 1); fi
work=$(mktemp -d)
# Waits for what it stopped: a server still flushing would leave files behind rm.
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

need_wrk_and_nginx
flywheel=$(flywheel_binary "$root")
floor=$(bench_tool "$root" floor)
upstream_port=$(free_port); nginx_port=$(free_port); floor_port=$(free_port); proxy_port=$(free_port)

static_upstream_conf "$work" "$upstream_port" >"$work/upstream.conf"
# Unpinned, nginx gets a worker per core, as Flywheel gets a runtime thread per core.
workers=$([ "$placement" = shared ] && echo auto || echo 1)
reverse_proxy_conf "$work" "$nginx_port" "$upstream_port" "$workers" >"$work/nginx.conf"
flywheel_config "$proxy_port" "$work/data" upstream "http://127.0.0.1:$upstream_port/v1" >"$work/flywheel.toml"
capture_config "$capture" >>"$work/flywheel.toml"

"${core0[@]}" nginx -c "$work/upstream.conf" &
"${core1[@]}" nginx -c "$work/nginx.conf" &
# `taskset` execs the command, so $! is the proxy's own pid.
"${core1[@]}" "$floor" "127.0.0.1:$floor_port" "127.0.0.1:$upstream_port" &
floor_pid=$!
RUST_LOG=warn "${core1[@]}" "$flywheel" serve --config "$work/flywheel.toml" 2>"$work/proxy.log" &
proxy_pid=$!
wait_for_ports $upstream_port $nginx_port $floor_port $proxy_port
curl -s -X POST "127.0.0.1:$upstream_port/v1/chat/completions" -d '{}' | python3 -c '
import json, sys
json.loads(sys.stdin.buffer.read())' || { echo "the static upstream does not answer valid JSON" >&2; exit 1; }

wrk_post_lua "$root" >"$work/post.lua"
cat >>"$work/post.lua" <<LUA
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d %.3f %.3f %.3f %d\n", summary.requests, latency:percentile(50) / 1000,
    latency:percentile(99) / 1000, summary.duration / 1e6, summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
LUA

metric() { curl -s "127.0.0.1:$proxy_port/metrics" | awk -v m="$1" '$1==m {print int($2)} END {print 0}' | head -1; }
# CPU ticks of the capture writer thread (comm is cut to 15 characters).
writer_ticks() {
  for t in /proc/$proxy_pid/task/*; do
    if [ "$(cat "$t/comm")" = "flywheel-captur" ]; then awk '{print $14+$15}' "$t/stat"; return; fi
  done
  echo 0
}
# CPU ticks of a process (Flywheel, the floor), and of nginx's workers,
# the children of its master.
process_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
children_ticks() {
  local sum=0 child
  for child in $(ps -o pid= --ppid "$1"); do sum=$(( sum + $(process_ticks "$child") )); done
  echo $sum
}
run() { # name port connections
  "${core0[@]}" wrk -t1 -c"$3" -d"${duration}s" -s "$work/post.lua" "http://127.0.0.1:$2/v1/chat/completions" | awk -v n="$1" -v c="$3" '/^RESULT/ {print n, c, $2, $3, $4, $5, $6}'
}
# Warm up every path once.
for port in $upstream_port $nginx_port $floor_port $proxy_port; do
  "${core0[@]}" wrk -t1 -c8 -d2s -s "$work/post.lua" "http://127.0.0.1:$port/v1/chat/completions" >/dev/null
done
nginx_pid=$(cat "$work/nginx.pid")
captured_before=$(metric flywheel_captured_total); writer_before=$(writer_ticks)
process_before=$(process_ticks $proxy_pid); floor_before=$(process_ticks $floor_pid); nginx_before=$(children_ticks $nginx_pid)
: >"$work/results.txt"
for c in 1 8 32; do
  run direct $upstream_port $c >>"$work/results.txt"
  run nginx $nginx_port $c >>"$work/results.txt"
  run floor $floor_port $c >>"$work/results.txt"
  run flywheel $proxy_port $c >>"$work/results.txt"
done
# Let capture finish what it holds, then read its figures.
served=$(awk '$1=="flywheel" {s+=$3} END {print s}' "$work/results.txt")
if [ "$capture" = on ]; then
  for _ in $(seq 120); do
    done_=$(( $(metric flywheel_captured_total) + $(metric flywheel_exchange_dropped_total) - captured_before ))
    [ "$done_" -ge "$served" ] && break; sleep 0.5
  done
fi
captured=$(( $(metric flywheel_captured_total) - captured_before ))
dropped=$(metric flywheel_exchange_dropped_total); dropped=${dropped:-0}
writer=$(( $(writer_ticks) - writer_before ))
process=$(( $(process_ticks $proxy_pid) - process_before ))
floor_cpu=$(( $(process_ticks $floor_pid) - floor_before )); nginx_cpu=$(( $(children_ticks $nginx_pid) - nginx_before ))
threads=$(ls /proc/$proxy_pid/task | wc -l)
rss_kb=$(awk '/VmHWM/{print $2}' /proc/$proxy_pid/status)

mkdir -p bench/results
python3 - "$work/results.txt" "$captured" "$dropped" "$writer" "$(getconf CLK_TCK)" "$threads" "$rss_kb" "$duration" "$capture" "$process" "$placement" "$floor_cpu" "$nginx_cpu" <<'PY' | tee "bench/results/throughput$([ "$placement" = shared ] && echo -shared).md"
import sys
path, captured, dropped, writer, hz, threads, rss, duration, capture, process, placement, floor_cpu, nginx_cpu = sys.argv[1:]
rows = {}
for line in open(path):
    name, c, requests, p50, p99, seconds, errors = line.split()
    rows[(name, int(c))] = (int(requests) / float(seconds), float(p50), float(p99), int(errors), int(requests))
where = ("the proxy under test alone on core 1, wrk and the static upstream on core 0" if placement == "pinned"
         else "no pinning: the proxy, wrk and the static upstream share both cores")
print(f"{duration} s per point, capture {capture}; {where}.\n")
print("| connections | direct req/s | nginx req/s | floor req/s | Flywheel req/s | floor ÷ nginx | Flywheel ÷ nginx | "
      "p50 direct / nginx / floor / Flywheel (ms) | added p50 nginx / floor / Flywheel (ms) | p99 nginx / floor / Flywheel (ms) | errors |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for c in (1, 8, 32):
    d, n, b, f = (rows[(name, c)] for name in ("direct", "nginx", "floor", "flywheel"))
    print(f"| {c} | {d[0]:,.0f} | {n[0]:,.0f} | {b[0]:,.0f} | {f[0]:,.0f} | {b[0] / n[0]:.2f} | {f[0] / n[0]:.2f} | "
          f"{d[1]:.3f} / {n[1]:.3f} / {b[1]:.3f} / {f[1]:.3f} | {n[1] - d[1]:+.3f} / {b[1] - d[1]:+.3f} / {f[1] - d[1]:+.3f} | "
          f"{n[2]:.3f} / {b[2]:.3f} / {f[2]:.3f} | {d[3] + n[3] + b[3] + f[3]} |")
captured, writer, hz = int(captured), int(writer), int(hz)
def cpu_per_request(ticks, name):
    requests = sum(rows[(name, c)][4] for c in (1, 8, 32))
    return int(ticks) / hz / requests * 1e6
print(f"\nCPU per request served over the run: nginx's workers {cpu_per_request(nginx_cpu, 'nginx'):.1f} µs, "
      f"the floor {cpu_per_request(floor_cpu, 'floor'):.1f} µs.")
per = writer / hz / captured * 1e6 if captured else float("nan")
print(f"\nFlywheel process CPU per request served: {cpu_per_request(process, 'flywheel'):.1f} µs, of which all but the capture writer "
      f"thread (the request path, and the store's own threads when capture is on) {cpu_per_request(int(process) - writer, 'flywheel'):.1f} µs.")
print(f"\nCapture during the run: {captured:,} inferences stored, {dropped} dropped; capture writer thread {per:.1f} µs CPU per inference; "
      f"{threads} threads in the process at the end; peak RSS {int(rss) / 1024:.0f} MB.")
PY
