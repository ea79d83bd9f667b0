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

# Fill: closed-loop load at saturation, 20 s at a time, until the target.
start=$(date +%s.%N)
served=0
while [ "$(captured)" -lt "$target" ] && [ $(( $(date +%s) - ${start%.*} )) -lt "$max_seconds" ]; do
  out=$(taskset -c 0 "$loadgen" --addr "127.0.0.1:$proxy_port" --body-file bench/request.json --duration 20 --rate 0 --connections 8)
  served=$((served + $(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ok"])')))
  echo "served $served, captured $(captured)" >&2
done
# Let the writer catch up with what is queued.
for _ in $(seq 600); do
  [ "$(captured)" -ge "$served" ] && break; sleep 0.5
done
end=$(date +%s.%N)
total=$(captured)
dropped=$(metric flywheel_exchange_dropped_total); dropped=${dropped:-0}
sleep 1
store_bytes=$(du -sb "$work/data" | cut -f1)

python3 bench/capture_queries.py "127.0.0.1:$proxy_port" "$FLYWHEEL_ADMIN_TOKEN" >"$work/queries.json"
rss_kb=$(awk '/VmHWM/{print $2}' /proc/$(pgrep -f "serve --config $work/flywheel.toml" | head -1)/status)

mkdir -p bench/results
python3 - "$start" "$end" "$served" "$total" "$dropped" "$store_bytes" "$rss_kb" "$work/queries.json" >bench/results/capture.md <<'PY'
import json, sys
start, end, served, total, dropped, size, rss, queries = sys.argv[1:]
seconds = float(end) - float(start)
total, served, dropped, size = int(total), int(served), int(dropped), int(size)
q = json.load(open(queries))
print(f"Filled with {total:,} captured inferences ({served:,} requests served, {dropped} dropped) in {seconds:.0f} s.\n")
print("| measure | value |\n|---|---|")
print(f"| sustained capture throughput (proxy + writer on one core) | {total / seconds:,.0f} inferences/s |")
print(f"| store size | {size / 2**20:,.0f} MiB for {total:,} inferences = {size / total * 1e6 / 2**30:.2f} GiB per million |")
print(f"| peak RSS of the proxy | {int(rss) / 1024:.0f} MB |")
print(f"\nLabelled for the filters: {q['labelled']:,} conversations (threat type, severity, quality), {q['approved']:,} approved.\n")
print("| `GET /admin/api/conversations?…` (limit 50) | items | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|---|")
for row in q["queries"]:
    print(f"| `{row['query'] or '(none)'}` | {row['items']} | {row['p50']:.2f} | {row['p99']:.2f} | {row['max']:.2f} |")
print(f"\n`GET /admin/api/stats`: p50 {q['stats']['p50']:.2f} ms, p99 {q['stats']['p99']:.2f} ms.")
PY
cat bench/results/capture.md
