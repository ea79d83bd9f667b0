"""Starts the real binary for the SDK suite: the simulator, a proxy in front
of it, and a second proxy with a tight rate limit. Every process gets free
loopback ports and its own data directory, and is stopped at the end."""
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("FLYWHEEL_BIN", str(ROOT / "target" / "debug" / "flywheel"))
ARTIFACTS = ROOT / "test-artifacts"
ADMIN_TOKEN = "python-suite-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} not ready after {timeout}s")


def start(args, log_name, env=None):
    ARTIFACTS.mkdir(exist_ok=True)
    log = open(ARTIFACTS / log_name, "w")
    return subprocess.Popen([BIN, *args], stdout=log, stderr=subprocess.STDOUT, env=env)


CONFIG = """
[server]
listen = "127.0.0.1:{port}"
data_dir = "{data}"
max_body_bytes = 65536
[auth]
admin_token_env = "FLYWHEEL_ADMIN_TOKEN"
[limits]
requests_per_minute = {rpm}
burst = {burst}
[[providers]]
name = "sim"
base_url = "http://127.0.0.1:{sim_port}/v1"
max_retries = 0
timeout_s = 10
first_byte_timeout_s = 2
[[providers]]
name = "dead"
base_url = "http://127.0.0.1:1/v1"
max_retries = 0
[[models]]
name = "triage"
model_type = "threat_detection"
  [[models.versions]]
  name = "base"
  provider = "sim"
  model = "gpt-4o-mini"
[[models]]
name = "broken"
model_type = "threat_detection"
  [[models.versions]]
  name = "v1"
  provider = "dead"
  model = "gpt-4o-mini"
"""


class Proxy:
    def __init__(self, workdir: Path, name: str, sim_port: int, rpm: int, burst: int):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / f"{name}.toml"
        config.write_text(CONFIG.format(port=self.port, data=workdir / name, rpm=rpm, burst=burst, sim_port=sim_port))
        self.keys = {}
        for role in ("client", "analyst", "admin"):
            out = subprocess.run(
                [BIN, "keys", "create", "--role", role, "--name", f"python {role}", "--config", str(config)],
                check=True, capture_output=True, text=True,
            )
            self.keys[role] = out.stdout.strip()
        env = dict(os.environ, FLYWHEEL_ADMIN_TOKEN=ADMIN_TOKEN)
        self.process = start(["serve", "--config", str(config)], f"python-{name}.log", env)
        wait_ready(f"{self.url}/readyz", self.process)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()


@pytest.fixture(scope="session")
def stack():
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        sim_port = free_port()
        sim = start(["simulate", "--listen", f"127.0.0.1:{sim_port}"], "python-simulator.log")
        proxies = []
        try:
            wait_ready(f"http://127.0.0.1:{sim_port}/v1/models", sim)
            main = Proxy(workdir, "main", sim_port, rpm=60000, burst=10000)
            proxies.append(main)
            limited = Proxy(workdir, "limited", sim_port, rpm=60, burst=2)
            proxies.append(limited)
            yield {"main": main, "limited": limited, "sim_url": f"http://127.0.0.1:{sim_port}"}
        finally:
            for p in proxies:
                p.stop()
            sim.terminate()
            sim.wait(timeout=15)
