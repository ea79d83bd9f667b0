"""Writes what a SOC sends, as the capture benchmarks replay it: the bundled
alerts, each seen on twenty hosts, as chat completion bodies, one a line.

    python3 bench/alert_requests.py OUT.jsonl
"""
import json
import sys

SYSTEM = "You are a SOC analyst. Classify the alert: give the threat type, the severity and a short rationale."

alerts = [json.loads(line) for line in open("src/demo/alerts.jsonl")]
with open(sys.argv[1], "w") as out:
    for host in range(20):
        for a in alerts:
            out.write(json.dumps({"model": "triage", "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{a['alert']} Host: WS-{host:03d}."}]}) + "\n")
