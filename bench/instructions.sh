#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: the floor
# (bench/floor) and Flywheel, each run under callgrind in turn behind the
# same static upstream and loaded by `wrk -c8`. CPU time on a shared or
# virtual machine swings from run to run; instruction counts do not, so
# two builds can be compared by them when a change is too small for
# bench/cost.sh to see. They count user space only (not the kernel), and
# valgrind runs SHA-256 without the CPU's SHA extensions, so Flywheel's
# thread-key hashing weighs more here than on the hardware (the table
# shows how much).
#
#   bench/instructions.sh                    # capture off: the request path alone
#   CAPTURE=on bench/instructions.sh         # with the capture writer
#   FLYWHEEL_BIN=path bench/instructions.sh  # that binary instead of building one
#
# Prints a Markdown table and writes bench/results/instructions.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
root=$(pwd)
duration=${DURATION:-10}
capture=$(capture_mode off)
work=$(mktemp -d)
# Waits for what it stopped: a server still flushing would leave files behind rm.
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

need_wrk_and_nginx
command -v valgrind >/dev/null || { apt-get update -q && apt-get install -y -q valgrind; }
flywheel=$(flywheel_binary "$root")
floor=$(bench_tool "$root" floor)
upstream_port=$(free_port)
static_upstream_conf "$work" "$upstream_port" >"$work/upstream.conf"
taskset -c 0 nginx -c "$work/upstream.conf" &
wrk_post_lua "$root" >"$work/post.lua"
cat >>"$work/post.lua" <<LUA
done = function(summary, latency, requests)
  io.write(string.format("RESULT %d\n", summary.requests))
end
LUA

# `measure NAME PORT COMMAND…`: runs the proxy under callgrind with
# instrumentation off through start-up and a warm-up, counts `duration`
# seconds of load, and leaves NAME.requests and NAME.callgrind in $work.
measure() {
  local name=$1 port=$2 pid
  shift 2
  RUST_LOG=warn taskset -c 1 valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/$name.final" "$@" 2>"$work/$name.valgrind" &
  pid=$!
  for _ in $(seq 600); do (echo >/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  taskset -c 0 wrk -t1 -c8 -d3s -s "$work/post.lua" "http://127.0.0.1:$port/v1/chat/completions" >/dev/null
  # A proxy that works in the background (Flywheel's capture writer) is
  # given the time to finish what the warm-up queued before counting
  # starts, and what the counted requests queued before it ends.
  sleep 2
  callgrind_control -i on "$pid" >/dev/null 2>&1
  taskset -c 0 wrk -t1 -c8 -d"${duration}s" -s "$work/post.lua" "http://127.0.0.1:$port/v1/chat/completions" |
    awk '/^RESULT/ {print $2}' >"$work/$name.requests"
  sleep 2
  callgrind_control -i off "$pid" >/dev/null 2>&1
  callgrind_control -d "$pid" >/dev/null 2>&1
  kill "$pid"; wait "$pid" 2>/dev/null || true
  mv "$work/$name.final.1" "$work/$name.callgrind"
}

floor_port=$(free_port)
measure floor "$floor_port" "$floor" "127.0.0.1:$floor_port" "127.0.0.1:$upstream_port"
proxy_port=$(free_port)
flywheel_config "$proxy_port" "$work/data" upstream "http://127.0.0.1:$upstream_port/v1" >"$work/flywheel.toml"
capture_config "$capture" >>"$work/flywheel.toml"
measure flywheel "$proxy_port" "$flywheel" serve --config "$work/flywheel.toml"

for name in floor flywheel; do
  callgrind_annotate --inclusive=yes --threshold=100 "$work/$name.callgrind" >"$work/$name.annotated" 2>/dev/null
done
mkdir -p bench/results
python3 - "$work" "$duration" "$capture" <<'PY' | tee bench/results/instructions.md
import re, sys
work, duration, capture = sys.argv[1:]

def load(name):
    requests = int(open(f"{work}/{name}.requests").read().split()[0])
    total, functions = 0, {}
    for line in open(f"{work}/{name}.annotated"):
        m = re.match(r"\s*([\d,]+) \([^)]*\)\s+(?:[^:\s]*:)?(.+?)(?: \[.*\])?$", line)
        if not m:
            continue
        count = int(m.group(1).replace(",", ""))
        if "PROGRAM TOTALS" in line:
            total = count
        else:
            functions[m.group(2)] = max(count, functions.get(m.group(2), 0))
    return requests, total, functions

floor_requests, floor_total, _ = load("floor")
requests, total, functions = load("flywheel")
per = lambda count, n=requests: count / n / 1000
print(f"{duration} s of `wrk -t1 -c8` per proxy under callgrind, capture {capture}; "
      "thousands of instructions per request, user space, every thread.\n")
print("| | k instructions per request | requests counted |")
print("|---|---|---|")
print(f"| floor | {per(floor_total, floor_requests):.1f} | {floor_requests:,} |")
print(f"| Flywheel | {per(total):.1f} | {requests:,} |")
sha = max((count for name, count in functions.items() if name.startswith("sha2::sha256::compress256")), default=0)
print(f"| of which SHA-256 in software (thread keys) | {per(sha):.1f} | |")
print("\nFlywheel's own functions, inclusive (each counts what it calls):\n")
print("| function | k instructions per request |")
print("|---|---|")
own = sorted(((count, name) for name, count in functions.items() if name.lstrip("<").startswith("flywheel::")), reverse=True)
for count, name in own[:15]:
    print(f"| `{name}` | {per(count):.1f} |")
PY
