"""Starts the real binary for the SDK suite: the simulator, a proxy in front of
it and, only for the rate-limit tests, a second proxy with a tight limit.

Every process gets a free loopback port and its own data directory; keys are
created with `flywheel keys create` before each proxy starts (sled admits one
process per data dir); each process's output goes to `test-artifacts/`; all of
them are stopped at the end of the session, also when a test or a fixture
fails. `FLYWHEEL_BIN` names the binary (default `target/debug/flywheel`).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
ADMIN_TOKEN = "fw-python-suite-admin-" + secrets.token_hex(8)

# Loopback traffic must never go through a proxy from the environment.
for _var in ("NO_PROXY", "no_proxy"):
    os.environ[_var] = ",".join(filter(None, [os.environ.get(_var), "127.0.0.1", "localhost"]))


def _binary() -> Path:
    configured = os.environ.get("FLYWHEEL_BIN")
    path = Path(configured) if configured else ROOT / "target" / "debug" / "flywheel"
    return path.resolve()


BIN = _binary()

PROXY_CONFIG = """\
[server]
listen = "127.0.0.1:{port}"
data_dir = "{data_dir}"
max_body_bytes = {max_body_bytes}

[auth]
admin_token_env = "FLYWHEEL_ADMIN_TOKEN"
allow_anonymous_clients = false

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

MAX_BODY_BYTES = 65536


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env() -> dict:
    """The environment of every child: ours without config overrides that
    would change what the test config says, plus the admin token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYWHEEL__")}
    env["FLYWHEEL_ADMIN_TOKEN"] = ADMIN_TOKEN
    env.setdefault("RUST_LOG", "info")
    env["NO_COLOR"] = "1"
    return env


def _die_with_parent() -> None:
    """Runs in the child before exec: on Linux, the child gets SIGTERM if
    pytest itself dies, so no simulator or proxy outlives a killed run."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class StartupError(RuntimeError):
    pass


@dataclass
class Process:
    name: str
    args: list
    log_path: Path
    popen: subprocess.Popen | None = None

    def start(self) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        log = open(self.log_path, "wb")
        try:
            self.popen = subprocess.Popen(
                [str(BIN), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_child_env(),
                cwd=ROOT,
                preexec_fn=_die_with_parent,
            )
        finally:
            log.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def wait_ready(self, url: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if not self.alive():
                raise StartupError(
                    f"{self.name} exited with {self.popen.returncode} before {url} was ready; "
                    f"log {self.log_path}:\n{self.log()[-3000:]}"
                )
            try:
                r = httpx.get(url, timeout=1)
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as e:
                last = repr(e)
            time.sleep(0.1)
        raise StartupError(f"{url} not ready after {timeout}s (last: {last}); log {self.log_path}")

    def stop(self) -> None:
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(timeout=10)


class Processes:
    """Everything this session started, stopped in reverse order."""

    def __init__(self) -> None:
        self.started: list[Process] = []

    def launch(self, name: str, make_args, ready_url, attempts: int = 3):
        """Starts `name` on a free port, retrying with another port when the
        one picked was taken in between. Returns (process, port)."""
        for attempt in range(attempts):
            port = free_port()
            process = Process(name, make_args(port), ARTIFACTS / f"python-{name}.log")
            self.started.append(process)
            process.start()
            try:
                process.wait_ready(ready_url(port))
                return process, port
            except StartupError:
                process.stop()
                taken = "in use" in process.log().lower()
                if not taken or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")

    def stop_all(self) -> None:
        for process in reversed(self.started):
            process.stop()


@dataclass
class Simulator:
    url: str
    process: Process


@dataclass
class Proxy:
    name: str
    url: str
    config_path: Path
    process: Process
    keys: dict = field(default_factory=dict)
    key_outputs: dict = field(default_factory=dict)
    admin_token: str = ADMIN_TOKEN
    max_body_bytes: int = MAX_BODY_BYTES


def create_key(config_path: Path, role: str, name: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [str(BIN), "keys", "create", "--role", role, "--name", name, "--config", str(config_path)],
        capture_output=True, text=True, timeout=60, env=_child_env(), cwd=ROOT,
    )
    if result.returncode != 0 or not re.fullmatch(r"fw-\S+\n?", result.stdout):
        pytest.fail(
            f"`flywheel keys create --role {role}` did not print just a key: exit {result.returncode}\n"
            f"stdout: {result.stdout!r}\nstderr: {result.stderr[-2000:]}"
        )
    return result


def start_proxy(processes: Processes, workdir: Path, name: str, sim: Simulator,
                rpm: int, burst: int, keys: dict, extra: str = "") -> Proxy:
    """`keys` maps a handle to a role; each handle gets its own key;
    `extra` is appended to the config."""
    config_path = workdir / f"{name}.toml"
    sim_port = int(sim.url.rsplit(":", 1)[1])

    def write_config(port: int) -> None:
        config_path.write_text(PROXY_CONFIG.format(
            port=port, data_dir=(workdir / f"{name}-data").as_posix(), max_body_bytes=MAX_BODY_BYTES,
            rpm=rpm, burst=burst, sim_port=sim_port) + extra)

    write_config(free_port())
    created = {handle: create_key(config_path, role, f"python {name} {handle}") for handle, role in keys.items()}

    def args(port: int) -> list:
        write_config(port)
        return ["serve", "--config", str(config_path)]

    process, port = processes.launch(name, args, lambda port: f"http://127.0.0.1:{port}/readyz")
    return Proxy(
        name=name, url=f"http://127.0.0.1:{port}", config_path=config_path, process=process,
        keys={handle: r.stdout.strip() for handle, r in created.items()},
        key_outputs={handle: r.stdout for handle, r in created.items()},
    )


@pytest.fixture(scope="session")
def processes():
    if not BIN.is_file():
        pytest.exit(f"flywheel binary not found at {BIN}: run `cargo build --bin flywheel` "
                    "or set FLYWHEEL_BIN", returncode=2)
    processes = Processes()
    try:
        yield processes
    finally:
        processes.stop_all()


@pytest.fixture(scope="session")
def workdir():
    path = Path(tempfile.mkdtemp(prefix="flywheel-pytest-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def sim(processes) -> Simulator:
    process, port = processes.launch(
        "simulator",
        lambda port: ["simulate", "--listen", f"127.0.0.1:{port}"],
        lambda port: f"http://127.0.0.1:{port}/v1/models",
    )
    return Simulator(url=f"http://127.0.0.1:{port}", process=process)


@pytest.fixture(scope="session")
def proxy(processes, workdir, sim) -> Proxy:
    """The proxy most tests use: limits high enough never to matter."""
    return start_proxy(processes, workdir, "main", sim, rpm=6000, burst=1000,
                       keys={"client": "client", "analyst": "analyst", "admin": "admin"})


ENTRA_TENANT = "soc-tenant"
ENTRA_APP = ("triage-app", "triage-app-secret")


@dataclass
class EntraPlatform:
    """The simulator as Microsoft Entra ID: one app registration holding
    the `Flywheel.Client` app role on the APIs it asks tokens for."""
    url: str

    def token(self, scope: str = "api://flywheel/.default") -> str:
        client_id, secret = ENTRA_APP
        response = httpx.post(f"{self.url}/{ENTRA_TENANT}/oauth2/v2.0/token", data={
            "grant_type": "client_credentials", "client_id": client_id,
            "client_secret": secret, "scope": scope})
        response.raise_for_status()
        return response.json()["access_token"]


@pytest.fixture(scope="session")
def entra_platform(processes) -> EntraPlatform:
    os.environ["FLYWHEEL_TEST_ENTRA_SECRET"] = ENTRA_APP[1]
    _, port = processes.launch(
        "entra-platform",
        lambda port: ["simulate", "--listen", f"127.0.0.1:{port}", "--azure",
                      "--azure-entra-secret-env", "FLYWHEEL_TEST_ENTRA_SECRET",
                      "--azure-entra-tenant", ENTRA_TENANT, "--azure-entra-client-id", ENTRA_APP[0],
                      "--azure-entra-app-roles", "Flywheel.Client"],
        lambda port: f"http://127.0.0.1:{port}/v1/models",
    )
    return EntraPlatform(url=f"http://127.0.0.1:{port}")


@pytest.fixture(scope="session")
def entra_proxy(processes, workdir, sim, entra_platform) -> Proxy:
    """A proxy that also takes the platform's tokens for `api://flywheel`,
    once it holds the tenant's signing keys (fetched in the background)."""
    extra = (f'\n[auth.entra]\ntenant_id = "{ENTRA_TENANT}"\naudiences = ["api://flywheel"]\n'
             f'authority = "{entra_platform.url}"\n')
    proxy = start_proxy(processes, workdir, "entra", sim, rpm=6000, burst=1000,
                        keys={"client": "client"}, extra=extra)
    headers = {"Authorization": f"Bearer {entra_platform.token()}"}
    deadline = time.monotonic() + 20
    while httpx.get(f"{proxy.url}/v1/models", headers=headers).status_code == 401:
        if time.monotonic() > deadline:
            pytest.fail("the proxy never fetched the tenant's signing keys")
        time.sleep(0.1)
    return proxy


@pytest.fixture(scope="session")
def limited_proxy(processes, workdir, sim) -> Proxy:
    """A second proxy at 60 requests/minute with a burst of 2. Limits are per
    key, so each rate-limit test has a key of its own."""
    return start_proxy(processes, workdir, "limited", sim, rpm=60, burst=2,
                       keys={"rate_error": "client", "rate_retry": "client"})
