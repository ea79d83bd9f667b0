#!/usr/bin/env bash
# The capture writer's CPU per inference, quickly, and two builds side by
# side: each round starts Flywheel on a fresh store, fills it for WARM
# seconds at WARM_RATE, then sends the fill's requests (the bundled
# alerts, each as seen on twenty hosts) at RATE for MEASURE seconds and
# reads the writer thread's CPU time over what it stored. Same placement as
# bench/capture.sh: Flywheel alone on core 1, the simulator and the load
# generator on core 0.
#
# With BASELINE_BIN the rounds alternate between the two binaries, so
# both meet the same hour of this machine: a virtual machine's speed
# drifts by 10-25 % from one hour to the next, more than most changes to
# the writer are worth, and only an interleaved comparison shows them.
#
#   bench/writer.sh                                   # this build, 3 rounds
#   BASELINE_BIN=/path/to/old/flywheel bench/writer.sh   # this build against another
#   WARM=250 WARM_RATE=4000 bench/writer.sh           # measured with ~1,000,000 stored
#   EXTRA_CONFIG='[capture]\nflush_every_ms = 50\n' bench/writer.sh   # a config change
#   STREAM=1 RATE=1000 WARM_RATE=1000 bench/writer.sh # the same requests streamed
#                                           (a stream's ~35 chunks: 2,000 a second fill the core)
#
# Prints one line per run, the median of each binary and, with a baseline,
# the difference within each round.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
root=$(pwd)
rounds=${ROUNDS:-3}
rate=${RATE:-2000}
seconds=${MEASURE:-20}
warm=${WARM:-10}
warm_rate=${WARM_RATE:-2000}
work=$(mktemp -d)
# Waits for what it stopped: a server still flushing would leave files behind rm.
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

if [ -z "${FLYWHEEL_BIN:-}" ]; then
  cargo build --release --bin flywheel -q
fi
flywheel=${FLYWHEEL_BIN:-$root/target/release/flywheel}
loadgen=$(bench_tool "$root" loadgen)

# What a SOC sends: the bundled alerts, each seen on twenty hosts.
python3 bench/alert_requests.py ${STREAM:+--stream} "$work/requests.jsonl"

sim_port=$(free_port)
RUST_LOG=warn taskset -c 0 "$flywheel" simulate --listen "127.0.0.1:$sim_port" 2>"$work/sim.log" &
wait_for_ports $sim_port

# One round: prints the writer's µs of CPU per stored inference.
round() { # binary
  local port pid tid data=$work/data-$RANDOM
  port=$(free_port)
  flywheel_config "$port" "$data" sim "http://127.0.0.1:$sim_port/v1" >"$work/flywheel.toml"
  printf "${EXTRA_CONFIG:-}" >>"$work/flywheel.toml"
  RUST_LOG=warn taskset -c 1 "$1" serve --config "$work/flywheel.toml" 2>"$work/proxy.log" &
  pid=$!
  wait_for_ports $port
  # The writer thread's name, cut to 15 characters by the kernel.
  tid=""
  for _ in $(seq 50); do
    for t in /proc/$pid/task/*; do
      [ "$(cat "$t/comm" 2>/dev/null)" = flywheel-captur ] && tid=$(basename "$t")
    done
    [ -n "$tid" ] && break; sleep 0.1
  done
  [ -n "$tid" ] || { echo "no capture writer thread in $1" >&2; exit 1; }
  captured() { curl -s "127.0.0.1:$port/metrics" | awk '$1=="flywheel_captured_total" {print int($2)} END {print 0}' | head -1; }
  writer_ns() { awk '{print $1}' "/proc/$pid/task/$tid/schedstat"; }
  # Sends for $1 seconds at $2 req/s and waits until capture has stored
  # what was served.
  send() {
    local before served
    before=$(captured)
    served=$(taskset -c 0 "$loadgen" --addr "127.0.0.1:$port" --bodies-file "$work/requests.jsonl" \
      --duration "$1" --warmup 0 --rate "$2" --connections 8 | python3 -c 'import json,sys; print(json.load(sys.stdin)["ok"])')
    for _ in $(seq 240); do [ "$(captured)" -ge $((before + served)) ] && return; sleep 0.5; done
    echo "capture had not stored all that was served after two minutes" >&2
  }
  send "$warm" "$warm_rate"
  local c0 w0 c1 w1
  c0=$(captured); w0=$(writer_ns)
  send "$seconds" "$rate"
  c1=$(captured); w1=$(writer_ns)
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$data"
  python3 -c "print(f'{($w1 - $w0) / 1e3 / max($c1 - $c0, 1):.1f} {$c1 - $c0}')"
}

: >"$work/rounds.txt"
for i in $(seq "$rounds"); do
  for name in this ${BASELINE_BIN:+baseline}; do
    bin=$flywheel; [ "$name" = baseline ] && bin=$BASELINE_BIN
    read -r us n < <(round "$bin")
    echo "round $i, $name: writer $us µs CPU per inference ($n stored)"
    echo "$name $us" >>"$work/rounds.txt"
  done
done
python3 - "$work/rounds.txt" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    name, us = line.split()
    runs.setdefault(name, []).append(float(us))
for name, us in runs.items():
    print(f"{name}: median {statistics.median(us):.1f} µs CPU per inference over {len(us)} rounds ({', '.join(f'{u:.1f}' for u in us)})")
if "baseline" in runs:
    # The two builds of a round meet the same minute of the machine.
    diffs = [t - b for t, b in zip(runs["this"], runs["baseline"])]
    print(f"this - baseline, round by round: {', '.join(f'{d:+.1f}' for d in diffs)} µs; median {statistics.median(diffs):+.1f} µs")
PY
