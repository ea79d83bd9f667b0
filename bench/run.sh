#!/usr/bin/env bash
# Flywheel's proxy-overhead benchmark. Runs the simulator as the upstream and
# measures the same requests sent to it directly, through Flywheel, through
# nginx (a keep-alive reverse proxy: the reference to compare with) and
# through bench/floor (tokio and hyper forwarding bytes untouched: what the
# stack Flywheel is built on costs before any of Flywheel's own work).
#
#   bench/run.sh            # full run (about 6 minutes)
#   QUICK=1 bench/run.sh    # short runs, for a smoke test
#   FLYWHEEL_BIN=path bench/run.sh  # that binary instead of building one,
#                                   # to compare two builds
#
# Writes bench/results/latest.md and latest.jsonl, and prints the Markdown.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/common.sh
root=$(pwd)
duration=${DURATION:-10}
[ -n "${QUICK:-}" ] && duration=3
work=$(mktemp -d)
# Waits for what it stopped: a server still flushing would leave files behind rm.
trap 'kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null; rm -rf "$work"' EXIT

command -v nginx >/dev/null || { apt-get update -q && apt-get install -y -q nginx-light; }
flywheel=$(flywheel_binary "$root")
loadgen=$(bench_tool "$root" loadgen)
floor=$(bench_tool "$root" floor)

sim_port=$(free_port); proxy_port=$(free_port); nginx_port=$(free_port); floor_port=$(free_port)

# The proxy under test (Flywheel, nginx or the floor) gets core 1 to
# itself; the simulator and the load generator share core 0, as if they
# were the provider and the clients on other machines.
RUST_LOG=warn taskset -c 0 "$flywheel" simulate --listen "127.0.0.1:$sim_port" 2>"$work/sim.log" &
flywheel_config "$proxy_port" "$work/data" sim "http://127.0.0.1:$sim_port/v1" >"$work/flywheel.toml"
RUST_LOG=warn taskset -c 1 "$flywheel" serve --config "$work/flywheel.toml" 2>"$work/proxy.log" &
proxy_pid=$!
reverse_proxy_conf "$work" "$nginx_port" "$sim_port" >"$work/nginx.conf"
taskset -c 1 nginx -c "$work/nginx.conf" &
taskset -c 1 "$floor" "127.0.0.1:$floor_port" "127.0.0.1:$sim_port" &

wait_for_ports $sim_port $proxy_port $nginx_port $floor_port

cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
run() { # name port body extra-args…
  local name=$1 port=$2 body=$3; shift 3
  local before after
  before=$(cpu_ticks "$proxy_pid")
  result=$(taskset -c 0 "$loadgen" --addr "127.0.0.1:$port" --body-file "bench/$body" --duration "$duration" "$@")
  after=$(cpu_ticks "$proxy_pid")
  echo "{\"name\":\"$name\",\"proxy_cpu_ticks\":$((after - before)),\"result\":$result}" | tee -a "$work/results.jsonl"
}

for rate in 500 1000 2000; do
  for mode in unary stream; do
    if [ $mode = unary ]; then direct=direct.json; via=request.json; else direct=direct-stream.json; via=request-stream.json; fi
    run "direct-$mode-$rate" "$sim_port" $direct --rate $rate --connections 8
    run "flywheel-$mode-$rate" "$proxy_port" $via --rate $rate --connections 8
    run "nginx-$mode-$rate" "$nginx_port" $direct --rate $rate --connections 8
    run "floor-$mode-$rate" "$floor_port" $direct --rate $rate --connections 8
  done
done
for target in direct:$sim_port:direct.json flywheel:$proxy_port:request.json nginx:$nginx_port:direct.json floor:$floor_port:direct.json; do
  IFS=: read -r name port body <<<"$target"
  run "$name-saturation" "$port" "$body" --rate 0 --connections 8
done
# 1,000 concurrent streams, each ~35 tokens 40 ms apart (~1.4 s a stream).
grep VmHWM /proc/$proxy_pid/status >"$work/rss-before"
run "direct-1000-streams" "$sim_port" direct-stream.json --concurrency 1000 --header "x-sim-token-delay-ms: 40"
run "flywheel-1000-streams" "$proxy_port" request-stream.json --concurrency 1000 --header "x-sim-token-delay-ms: 40"
rss_kb=$(awk '/VmHWM/{print $2}' /proc/$proxy_pid/status)
rss_idle_kb=$(awk '{print $2}' "$work/rss-before")

mkdir -p bench/results
python3 bench/report.py "$work/results.jsonl" "$rss_idle_kb" "$rss_kb" "$(getconf CLK_TCK)" > bench/results/latest.md
cp "$work/results.jsonl" bench/results/latest.jsonl
cat bench/results/latest.md
