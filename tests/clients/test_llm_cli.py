"""The `llm` CLI with an extra-openai-models.yaml naming Flywheel: a prompt,
a streamed prompt, `--schema` and a tool loop (`--functions`)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ALERT, base_url, one_conversation

LLM = Path(sys.executable).with_name("llm")


@pytest.fixture
def llm(proxy, user, tmp_path, env_without_proxy_vars):
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"""- model_id: flywheel-triage
  model_name: triage
  api_base: "{base_url(proxy)}"
  api_key_name: flywheel
  supports_tools: true
  supports_schema: true
  headers:
    x-flywheel-user: "{user}"
""")
    (tmp_path / "keys.json").write_text(json.dumps({"flywheel": proxy.keys["client"]}))
    env = dict(env_without_proxy_vars, LLM_USER_PATH=str(tmp_path))

    def run(*args: str) -> str:
        result = subprocess.run([str(LLM), "-m", "flywheel-triage", *args], capture_output=True,
                                text=True, timeout=60, env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout

    return run


def test_prompt(proxy, user, llm):
    out = llm("--no-stream", ALERT)
    assert out.startswith("Threat type: credential_access")
    turn = one_conversation(proxy, user, 1)["turns"][0]
    assert turn["streamed"] is False


def test_streamed_prompt(proxy, user, llm):
    out = llm(ALERT)
    assert out.startswith("Threat type: credential_access")
    turn = one_conversation(proxy, user, 1)["turns"][0]
    assert turn["streamed"] is True


def test_schema(proxy, user, llm):
    out = llm("--schema", "threat_type, severity, rationale", ALERT)
    answer = json.loads(out)
    assert (answer["threat_type"], answer["severity"]) == ("credential_access", "high")
    turn = one_conversation(proxy, user, 1)["turns"][0]
    assert turn["request"]["params"]["response_format"]["type"] == "json_schema"


def test_tool_loop(proxy, user, llm):
    code = 'def lookup_host(hostname: str) -> str:\n    "Look up the owner of a host."\n    return hostname + ": owner alice"\n'
    out = llm("--functions", code, f"{ALERT} Look up the host first.")
    assert "Threat type:" in out
    conversation = one_conversation(proxy, user, 2)
    assert conversation["turns"][0]["response"]["message"]["tool_calls"][0]["function"]["name"] == "lookup_host"
