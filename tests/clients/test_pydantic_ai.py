"""pydantic-ai's Agent over the OpenAI chat model: run, run_stream, a
structured output type and a tool the agent calls."""
from openai import AsyncOpenAI
from pydantic import BaseModel
from pydantic_ai import Agent
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from conftest import ALERT, SYSTEM, base_url, one_conversation


class Triage(BaseModel):
    threat_type: str
    severity: str
    rationale: str


def chat_model(proxy, user) -> OpenAIChatModel:
    client = AsyncOpenAI(base_url=base_url(proxy), api_key=proxy.keys["client"],
                         default_headers={"x-flywheel-user": user}, max_retries=0)
    return OpenAIChatModel("triage", provider=OpenAIProvider(openai_client=client))


def test_run(proxy, user):
    result = Agent(chat_model(proxy, user), system_prompt=SYSTEM).run_sync(ALERT)
    assert result.output.startswith("Threat type: credential_access")
    one_conversation(proxy, user, 1)


def test_run_stream(proxy, user):
    agent = Agent(chat_model(proxy, user), system_prompt=SYSTEM)

    async def go():
        async with agent.run_stream(ALERT) as run:
            return [piece async for piece in run.stream_text(delta=True, debounce_by=None)]

    import asyncio
    pieces = asyncio.run(go())
    assert len(pieces) > 1
    assert "".join(pieces).startswith("Threat type: credential_access")
    turn = one_conversation(proxy, user, 1)["turns"][0]
    assert turn["streamed"] is True


def test_structured_output(proxy, user):
    result = Agent(chat_model(proxy, user), system_prompt=SYSTEM, output_type=Triage).run_sync(ALERT)
    assert isinstance(result.output, Triage)
    assert (result.output.threat_type, result.output.severity) == ("credential_access", "high")
    one_conversation(proxy, user, 1)


def test_tool_loop(proxy, user):
    agent = Agent(chat_model(proxy, user), system_prompt=SYSTEM)
    looked_up = []

    @agent.tool_plain
    def lookup_host(hostname: str) -> str:
        """Look up the owner and role of a host."""
        looked_up.append(hostname)
        return f"{hostname}: owner alice, workstation"

    result = agent.run_sync(f"{ALERT} Look up the host first.")
    assert len(looked_up) == 1
    assert result.output.startswith("Threat type:")
    conversation = one_conversation(proxy, user, 2)
    assert conversation["turns"][0]["response"]["message"]["tool_calls"][0]["function"]["name"] == "lookup_host"
