"""Turns bench/capture.sh's measurements into the Markdown of
docs/BENCHMARKS.md: costs per inference between the marks of the fill, the
store's size and memory at each, the review pages' latency, saturation."""
import json
import sys
from pathlib import Path

work, peak_kb = Path(sys.argv[1]), int(sys.argv[2])
# Peak RSS by the end of each phase: the fill, the review queries, the saturation run.
peak_fill_kb, peak_queries_kb = (int(a) for a in sys.argv[3:5])
snaps = [json.loads(line) for line in open(work / "snapshots.jsonl") if line.strip()]
by_label = {s["label"]: s for s in snaps}
fill = json.load(open(work / "fill.json"))
q = json.load(open(work / "queries.json"))
sat = json.load(open(work / "saturation.json"))
start, filled = by_label["start"], by_label["filled"]


def per(a, b, key):
    n = b["captured"] - a["captured"]
    return (b[key] - a[key]) / 1e3 / n if n else float("nan")


seconds = filled["at"] - start["at"]
print(f"Fill: {fill['served']:,} requests at {fill['rate']:,} req/s for {fill['seconds']} s (default config: capture on, "
      f"drop policy); {filled['captured']:,} inferences stored, {filled['dropped']:,} dropped.\n")
print("| stored inferences | writer thread µs CPU / inference | store threads (sled I/O, index merge) µs / inference | whole process µs / inference | "
      "bytes on disk / inference | RSS (MB) | threads |")
print("|---|---|---|---|---|---|---|")
previous = start
for label in ("250000", "500000", "1000000", "filled"):
    s = by_label.get(label)
    if not s:
        continue
    print(f"| {s['captured']:,} | {per(previous, s, 'writer_ns'):.1f} | {per(previous, s, 'sled_ns'):.1f} | "
          f"{per(previous, s, 'process_ns'):.1f} | {s['disk'] / max(s['captured'], 1):,.0f} | {s['rss_kb'] / 1024:.0f} | {s['threads']} |")
    previous = s
print(f"\nOver the whole fill: writer {per(start, filled, 'writer_ns'):.1f} µs, store threads {per(start, filled, 'sled_ns'):.1f} µs, "
      f"process {per(start, filled, 'process_ns'):.1f} µs per inference (the process also serves the requests); "
      f"peak RSS {peak_fill_kb / 1024:.0f} MB by the end of the fill, {peak_queries_kb / 1024:.0f} MB after the review queries, "
      f"{peak_kb / 1024:.0f} MB after the saturation run; store {filled['disk'] / 2**30:.2f} GiB = "
      f"{filled['disk'] / filled['captured'] * 1e6 / 2**30:.2f} GiB per million inferences.")
threads = [s["threads"] for s in snaps if s["label"].startswith("t")]
if threads:
    print(f"Threads sampled every 20 s of the fill: min {min(threads)}, max {max(threads)}, last {threads[-1]}.")
print(f"\nSaturation (20 s closed loop, 8 connections, store full): served {sat['served'] / 20:,.0f} req/s; "
      f"{sat['captured']:,} captured, {sat['dropped']:,} dropped.")
print(f"\nLabelled for the filters: {q['labelled']:,} conversations (threat type, severity, quality), {q['approved']:,} approved.\n")
print("| `GET /admin/api/conversations?…` (limit 50) | items | p50 (ms) | p99 (ms) | max (ms) |\n|---|---|---|---|---|")
for row in q["queries"]:
    print(f"| `{row['query'] or '(none)'}` | {row['items']} | {row['p50']:.2f} | {row['p99']:.2f} | {row['max']:.2f} |")
print(f"\n`GET /admin/api/stats`: p50 {q['stats']['p50']:.2f} ms, p99 {q['stats']['p99']:.2f} ms.")
