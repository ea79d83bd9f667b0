"""Turns bench/run.sh's JSON lines into the Markdown tables of docs/BENCHMARKS.md."""
import json
import sys

path, rss_idle_kb, rss_peak_kb, clk_tck = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
runs = {}
for line in open(path):
    line = line.strip()
    if line:
        r = json.loads(line)
        runs[r["name"]] = r


def lat(name, key="latency_ms"):
    return runs[name]["result"][key]


def cpu_us(name):
    r = runs[name]
    n = r["result"].get("all_requests", r["result"]["ok"])
    return 1e6 * r["proxy_cpu_ticks"] / clk_tck / n if n else float("nan")


print("### Added latency at fixed request rates (8 connections, open loop)\n")
print("| mode | rate (req/s) | direct p50 / p99 (ms) | Flywheel added p50 / p99 (ms) | nginx added p50 / p99 (ms) | Flywheel CPU per request (µs) | errors (direct/flywheel/nginx) |")
print("|---|---|---|---|---|---|---|")
for mode in ("unary", "stream"):
    for rate in (500, 1000, 2000):
        d, f, n = (f"{t}-{mode}-{rate}" for t in ("direct", "flywheel", "nginx"))
        if d not in runs:
            continue
        key = "latency_ms"
        dp = lat(d, key)
        fp = lat(f, key)
        np_ = lat(n, key)
        errors = "/".join(str(runs[x]["result"]["errors"]) for x in (d, f, n))
        print(f"| {mode} | {rate} | {dp['p50']:.3f} / {dp['p99']:.3f} | {fp['p50'] - dp['p50']:+.3f} / {fp['p99'] - dp['p99']:+.3f} "
              f"| {np_['p50'] - dp['p50']:+.3f} / {np_['p99'] - dp['p99']:+.3f} | {cpu_us(f):.0f} | {errors} |")

print("\n### Time to first byte of streams (added by Flywheel, ms)\n")
print("| rate (req/s) | direct TTFB p50 / p99 | Flywheel added p50 / p99 |")
print("|---|---|---|")
for rate in (500, 1000, 2000):
    d, f = f"direct-stream-{rate}", f"flywheel-stream-{rate}"
    if d in runs:
        dp, fp = lat(d, "first_byte_ms"), lat(f, "first_byte_ms")
        print(f"| {rate} | {dp['p50']:.3f} / {dp['p99']:.3f} | {fp['p50'] - dp['p50']:+.3f} / {fp['p99'] - dp['p99']:+.3f} |")

print("\n### Throughput at saturation (unary, 8 connections, closed loop)\n")
print("| target | req/s | p50 / p99 (ms) |")
print("|---|---|---|")
for t in ("direct", "flywheel", "nginx"):
    name = f"{t}-saturation"
    if name in runs:
        r = runs[name]["result"]
        print(f"| {t} | {r['achieved_rps']:.0f} | {r['latency_ms']['p50']:.3f} / {r['latency_ms']['p99']:.3f} |")

print("\n### 1,000 concurrent streams (40 ms between tokens)\n")
print("| target | streams completed/s | TTFB p50 / p99 (ms) | total p50 / p99 (ms) | errors |")
print("|---|---|---|---|---|")
for t in ("direct", "flywheel"):
    name = f"{t}-1000-streams"
    if name in runs:
        r = runs[name]["result"]
        print(f"| {t} | {r['achieved_rps']:.0f} | {r['first_byte_ms']['p50']:.2f} / {r['first_byte_ms']['p99']:.2f} "
              f"| {r['latency_ms']['p50']:.0f} / {r['latency_ms']['p99']:.0f} | {r['errors']} |")
print(f"\nFlywheel peak RSS: {rss_idle_kb / 1024:.1f} MB before the stream run, {rss_peak_kb / 1024:.1f} MB peak over the whole benchmark.")
