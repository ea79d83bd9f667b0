"""The client-compatibility suite starts what tests/python starts — the real
simulator and the real proxy in front of it, each on a free port with its
own data directory — through the same harness, and adds the helpers every
client's tests share: a unique end user per test and the admin API's view
of that user's conversations."""
from __future__ import annotations

import importlib.util
import os
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest

_spec = importlib.util.spec_from_file_location(
    "flywheel_harness", Path(__file__).resolve().parents[1] / "python" / "conftest.py")
harness = importlib.util.module_from_spec(_spec)
sys.modules["flywheel_harness"] = harness
_spec.loader.exec_module(harness)

# The harness's fixtures, registered here as this directory's own.
processes = harness.processes
workdir = harness.workdir
sim = harness.sim
proxy = harness.proxy

ALERT = "Endpoint alert: LSASS memory dumped by rundll32.exe via comsvcs.dll MiniDump on host WS-042."
SYSTEM = "You are a SOC analyst. Classify the alert."


@pytest.fixture
def user(request) -> str:
    """An end user of the test's own, sent as `x-flywheel-user`, so that
    the admin API's `user` filter finds exactly this test's exchanges."""
    return f"{request.node.name}-{uuid.uuid4().hex[:12]}"


def base_url(proxy) -> str:
    return f"{proxy.url}/v1"


def captured(proxy, user: str, turns: int, within: float = 30.0) -> list[dict]:
    """The conversations of `user` (with their turns) once they hold
    `turns` stored turns in all; fails with what it last saw otherwise."""
    headers = {"Authorization": f"Bearer {proxy.admin_token}"}
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        listing = httpx.get(f"{proxy.url}/admin/api/conversations", params={"user": user}, headers=headers)
        last = listing.text
        if listing.status_code == 200:
            details = [httpx.get(f"{proxy.url}/admin/api/conversations/{c['id']}", headers=headers).json()
                       for c in listing.json()["data"]]
            stored = [t for d in details for t in d.get("turns", []) if t.get("status") == "ok"]
            if len(stored) >= turns:
                return details
        time.sleep(0.1)
    raise AssertionError(f"{user} never had {turns} stored turns: {last}")


def one_conversation(proxy, user: str, turns: int) -> dict:
    """The single conversation of `user`, holding exactly `turns` turns."""
    conversations = captured(proxy, user, turns)
    assert len(conversations) == 1, [c["id"] for c in conversations]
    assert len(conversations[0]["turns"]) == turns, conversations[0]["turns"]
    return conversations[0]


@pytest.fixture
def env_without_proxy_vars():
    """Loopback only: no HTTP proxy from the environment."""
    return {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy")}
