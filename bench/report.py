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


def added(name, direct, key="latency_ms"):
    """A proxy's p50 / p99 over the direct run's, as text, and its p50 over it; a dash for a run not made."""
    if name not in runs:
        return "—", None
    p, d = lat(name, key), lat(direct, key)
    return f"{p['p50'] - d['p50']:+.3f} / {p['p99'] - d['p99']:+.3f}", p["p50"] - d["p50"]


print("### Added latency at fixed request rates (8 connections, open loop)\n")
print("Added = the proxy's p50 or p99 minus the direct one's; the floor is bench/floor, tokio and hyper "
      "forwarding bytes untouched.\n")
print("| mode | rate (req/s) | direct p50 / p99 (ms) | Flywheel added p50 / p99 (ms) | nginx added p50 / p99 (ms) "
      "| floor added p50 / p99 (ms) | Flywheel's added p50 ÷ nginx's | Flywheel CPU per request (µs) "
      "| errors (direct/flywheel/nginx/floor) |")
print("|---|---|---|---|---|---|---|---|---|")
for mode in ("unary", "stream"):
    for rate in (500, 1000, 2000):
        d, f, n, b = (f"{t}-{mode}-{rate}" for t in ("direct", "flywheel", "nginx", "floor"))
        if d not in runs:
            continue
        dp = lat(d)
        (fa, fp50), (na, np50), (ba, _) = added(f, d), added(n, d), added(b, d)
        ratio = f"{fp50 / np50:.1f}" if fp50 is not None and np50 and np50 > 0 else "—"
        errors = "/".join(str(runs[x]["result"]["errors"]) if x in runs else "—" for x in (d, f, n, b))
        print(f"| {mode} | {rate} | {dp['p50']:.3f} / {dp['p99']:.3f} | {fa} | {na} | {ba} | {ratio} | {cpu_us(f):.0f} | {errors} |")

print("\n### Time to first byte of streams (added by each proxy, ms)\n")
print("| rate (req/s) | direct TTFB p50 / p99 | Flywheel added p50 / p99 | nginx added p50 / p99 | floor added p50 / p99 |")
print("|---|---|---|---|---|")
for rate in (500, 1000, 2000):
    d = f"direct-stream-{rate}"
    if d in runs:
        dp = lat(d, "first_byte_ms")
        cells = [added(f"{t}-stream-{rate}", d, "first_byte_ms")[0] for t in ("flywheel", "nginx", "floor")]
        print(f"| {rate} | {dp['p50']:.3f} / {dp['p99']:.3f} | " + " | ".join(cells) + " |")

print("\n### Throughput at saturation (unary, 8 connections, closed loop)\n")
print("| target | req/s | p50 / p99 (ms) |")
print("|---|---|---|")
for t in ("direct", "flywheel", "nginx", "floor"):
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
