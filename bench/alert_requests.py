"""Writes what a SOC sends, as the capture benchmarks replay it: the bundled
alerts, each seen on twenty hosts, as chat completion bodies, one a line.

    python3 bench/alert_requests.py OUT.jsonl            # unary requests
    python3 bench/alert_requests.py --stream OUT.jsonl   # streamed, with usage
"""
import json
import sys

SYSTEM = "You are a SOC analyst. Classify the alert: give the threat type, the severity and a short rationale."

args = sys.argv[1:]
stream = "--stream" in args
out_path = [a for a in args if a != "--stream"][0]
alerts = [json.loads(line) for line in open("src/demo/alerts.jsonl")]
with open(out_path, "w") as out:
    for host in range(20):
        for a in alerts:
            body = {"model": "triage", "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{a['alert']} Host: WS-{host:03d}."}]}
            if stream:
                body.update({"stream": True, "stream_options": {"include_usage": True}})
            out.write(json.dumps(body) + "\n")
