#!/usr/bin/env bash
# Feedback latency while the proxy is saturated: an analyst rates stored
# inferences (`POST /v1/feedback`, answered once durable) every 20 ms
# while wrk keeps 8 connections of chat completions on the same Flywheel
# (default config, capture on), first on an idle proxy, then under load.
# The proxy gets core 1 to itself; wrk, the static nginx upstream and the
# analyst share core 0, as in bench/throughput.sh.
#
#   bench/feedback.sh                     # 3 rounds of 18 s under load
#   ROUNDS=10 bench/feedback.sh           # more rounds: the worst case is rare
#   FLYWHEEL_BIN=path bench/feedback.sh   # that binary instead of building one
#   CONFIG='[capture]\nwriter_priority = "normal"\n' bench/feedback.sh
#                                         # appended to the config
#
# Prints a Markdown table and writes bench/results/feedback.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
root=$(pwd)
rounds=${ROUNDS:-3}
seconds=18
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

need_wrk_and_nginx
flywheel=$(flywheel_binary "$root")

wrk_post_lua "$root" >"$work/post.lua"

# `round LOAD`: a fresh store and proxy, the analyst's run, one JSON line.
round() {
  local dir upstream_port proxy_port wrk_pid=
  dir=$(mktemp -d -p "$work")
  upstream_port=$(free_port); proxy_port=$(free_port)
  static_upstream_conf "$dir" "$upstream_port" >"$dir/upstream.conf"
  flywheel_config "$proxy_port" "$dir/data" upstream "http://127.0.0.1:$upstream_port/v1" >"$dir/flywheel.toml"
  printf '%b' "${CONFIG:-}" >>"$dir/flywheel.toml"
  taskset -c 0 nginx -c "$dir/upstream.conf" &
  local nginx_pid=$!
  RUST_LOG=warn taskset -c 1 "$flywheel" serve --config "$dir/flywheel.toml" 2>"$dir/proxy.log" &
  local proxy_pid=$!
  wait_for_ports "$upstream_port" "$proxy_port"
  if [ "$1" = on ]; then
    taskset -c 0 wrk -t1 -c8 -d$((seconds + 4))s -s "$work/post.lua" \
      "http://127.0.0.1:$proxy_port/v1/chat/completions" >"$dir/wrk.txt" &
    wrk_pid=$!
  fi
  taskset -c 0 python3 bench/feedback_latency.py "$proxy_port" "$seconds" bench/request.json
  [ -z "$wrk_pid" ] || wait "$wrk_pid"
  kill "$proxy_pid" "$nginx_pid"; wait "$proxy_pid" "$nginx_pid" 2>/dev/null || true
}

{
  round off | sed 's/^/idle /'
  for _ in $(seq "$rounds"); do round on | sed 's/^/load /'; done
} >"$work/rounds.txt"

mkdir -p bench/results
python3 - "$work/rounds.txt" "$seconds" "${CONFIG:-}" <<'PY' | tee bench/results/feedback.md
import json, sys
path, seconds, config = sys.argv[1:]
print(f"A feedback every 20 ms for {seconds} s per round, Flywheel alone on core 1"
      f"{', config +' + repr(config) if config else ', default config'}; under load wrk keeps 8 connections of chat completions.\n")
print("| round | feedback | not 201 | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) |")
print("|---|---|---|---|---|---|---|")
for line in open(path):
    load, row = line.split(" ", 1)
    r = json.loads(row)
    print(f"| {load} | {r['feedback']} | {r['failed']} | {r['p50']:.2f} | {r['p90']:.2f} | {r['p99']:.2f} | {r['max']:.2f} |")
PY
