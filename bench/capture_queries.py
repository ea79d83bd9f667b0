"""Labels a slice of the stored conversations through the admin API, then
times filtered conversation pages and the stats, sequentially over one
kept-alive connection. Prints JSON for bench/capture.sh."""

import http.client
import json
import sys
import time
import urllib.parse

addr, token = sys.argv[1], sys.argv[2]
host, port = addr.split(":")
conn = http.client.HTTPConnection(host, int(port))
HEADERS = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
THREATS = ["malware", "credential_access", "lateral_movement", "command_and_control"]
SEVERITIES = ["low", "medium", "high", "critical"]
REPEAT = 200


def call(method, path, body=None):
    conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=HEADERS)
    response = conn.getresponse()
    data = response.read()
    if response.status >= 300:
        raise SystemExit(f"{method} {path}: {response.status} {data[:300]!r}")
    return json.loads(data) if data else None


# Ids spread over the whole store: walk every page once (500 at a time),
# keeping every 50th id.
spread, cursor = [], None
while True:
    path = "/admin/api/conversations?limit=500" + (f"&cursor={cursor}" if cursor else "")
    page = call("GET", path)
    spread.extend(c["id"] for c in page["data"][::50])
    cursor = page["next_cursor"]
    if not cursor:
        break

labelled = 0
for n, cid in enumerate(spread):
    call("PATCH", f"/admin/api/conversations/{cid}", {
        "threat_type": THREATS[n % len(THREATS)],
        "severity": SEVERITIES[n % len(SEVERITIES)],
        "quality_score": 1 + n % 5,
    })
    labelled += 1
approve = spread[::2]
for i in range(0, len(approve), 1000):
    call("POST", "/admin/api/conversations/bulk", {"ids": approve[i:i + 1000], "action": "approve"})


def timed(path):
    times, items = [], 0
    for _ in range(REPEAT):
        t = time.perf_counter()
        page = call("GET", path)
        times.append((time.perf_counter() - t) * 1000)
        items = len(page.get("data", [])) if isinstance(page, dict) else 0
    times.sort()
    pick = lambda q: times[min(len(times) - 1, int(q * len(times)))]
    return {"p50": pick(0.50), "p99": pick(0.99), "max": times[-1], "items": items}


middle = call("GET", "/admin/api/conversations?limit=500")["next_cursor"]
queries = [
    "",
    "status=approved",
    "threat_type=credential_access",
    "threat_type=malware&severity=critical",
    "status=approved&min_quality=4",
    "severity=high&status=pending",
    "alias=triage&version=base",
    f"cursor={middle}",
    "q=lsass",
    "q=no-such-text",
    "user=nobody",
    "since=2000-01-01&until=2000-01-02",
]
results = []
for query in queries:
    row = timed("/admin/api/conversations?" + query)
    row["query"] = urllib.parse.unquote(query) if not query.startswith("cursor=") else "cursor=<page 2 of all>"
    results.append(row)
stats = timed("/admin/api/stats")
print(json.dumps({"labelled": labelled, "approved": len(approve), "queries": results, "stats": stats}))
