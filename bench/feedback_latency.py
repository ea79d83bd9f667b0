"""Times feedback as an analyst sends it: makes inferences through the
proxy, then rates them one after another over one keep-alive connection,
a feedback every 20 ms, for the given seconds. Prints one JSON line:
how many, how many were not 201, and the latency's quantiles in ms.

    python3 bench/feedback_latency.py PORT SECONDS REQUEST.json
"""
import http.client
import json
import sys
import time

port, seconds, request = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
body = open(request, "rb").read()
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
ids = []
for _ in range(200):
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    answer = conn.getresponse()
    answer.read()
    if answer.status != 200:
        sys.exit(f"the proxy answered {answer.status} to a chat completion")
    ids.append(answer.getheader("x-flywheel-inference-id"))

# Stored within a flush interval (200 ms by default): rated as stored
# inferences, not waited for.
time.sleep(1.0)

latencies, failed, i = [], 0, 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    feedback = json.dumps({"inference_id": ids[i % len(ids)], "rating": 1 + i % 5}).encode()
    start = time.perf_counter()
    conn.request("POST", "/v1/feedback", feedback, {"Content-Type": "application/json"})
    answer = conn.getresponse()
    answer.read()
    latencies.append((time.perf_counter() - start) * 1000)
    failed += answer.status != 201
    i += 1
    time.sleep(0.02)

latencies.sort()
at = lambda q: round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 2)
print(json.dumps({"feedback": len(latencies), "failed": failed, "p50": at(0.5), "p90": at(0.9),
                  "p99": at(0.99), "max": round(latencies[-1], 2)}))
