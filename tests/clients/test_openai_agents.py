"""The OpenAI Agents SDK (`openai-agents`) on the Responses API: an agent
that calls a tool, an agent whose session the app keeps (and resends),
and agents whose history the provider keeps — by response id or in a
conversation object — each captured as one conversation."""
import asyncio

import pytest
from agents import Agent, OpenAIResponsesModel, Runner, SQLiteSession, function_tool, set_tracing_disabled
from openai import AsyncOpenAI

from conftest import ALERT, SYSTEM, base_url, one_conversation

# Traces would be sent to OpenAI's own servers.
set_tracing_disabled(True)


@function_tool
def lookup_host(hostname: str) -> str:
    """Look up the owner and role of a host."""
    return '{"owner": "alice", "role": "workstation"}'


def agent(proxy, user, **kwargs) -> tuple[Agent, AsyncOpenAI]:
    client = AsyncOpenAI(base_url=base_url(proxy), api_key=proxy.keys["client"],
                         default_headers={"x-flywheel-user": user})
    model = OpenAIResponsesModel(model="triage", openai_client=client)
    return Agent(name="triage", instructions=SYSTEM, model=model, **kwargs), client


def test_an_agent_calling_a_tool_is_one_conversation(proxy, user):
    triage, _ = agent(proxy, user, tools=[lookup_host])
    result = Runner.run_sync(triage, f"{ALERT} Look up the host first.")
    assert result.final_output.startswith("Threat type:")
    turns = one_conversation(proxy, user, 2)["turns"]
    call = turns[0]["response"]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "lookup_host"
    assert turns[1]["request"]["messages"][-1]["role"] == "tool"
    assert turns[1]["response"]["message"]["content"] == result.final_output


@pytest.mark.parametrize("kept_by", ["response_id", "conversation_object"])
def test_a_chat_whose_history_the_provider_keeps_is_one_conversation(proxy, user, kept_by):
    """Each run sends only its new input: the provider holds the rest,
    chained by `previous_response_id` or in a conversation object."""
    triage, client = agent(proxy, user)

    async def chat() -> list:
        if kept_by == "conversation_object":
            held = (await client.conversations.create()).id
            first = await Runner.run(triage, ALERT, conversation_id=held)
            second = await Runner.run(triage, "Is the host isolated already?", conversation_id=held)
        else:
            first = await Runner.run(triage, ALERT)
            second = await Runner.run(triage, "Is the host isolated already?",
                                      previous_response_id=first.last_response_id)
        return [first.final_output, second.final_output]

    answers = asyncio.run(chat())
    assert answers[0].startswith("Threat type: credential_access")
    turns = one_conversation(proxy, user, 2)["turns"]
    assert turns[1]["request"]["messages"][-1] == {"role": "user", "content": "Is the host isolated already?"}
    assert [t["response"]["message"]["content"] for t in turns] == answers


def test_a_session_the_app_keeps_is_one_conversation(proxy, user, tmp_path):
    """The SDK's own session store resends the whole history, the
    earlier answers as the output items they came as."""
    triage, _ = agent(proxy, user)
    session = SQLiteSession(user, str(tmp_path / "sessions.db"))
    first = Runner.run_sync(triage, ALERT, session=session)
    second = Runner.run_sync(triage, "Is the host isolated already?", session=session)
    turns = one_conversation(proxy, user, 2)["turns"]
    sent = turns[1]["request"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"], sent
    assert sent[2]["content"] == first.final_output
    assert turns[1]["response"]["message"]["content"] == second.final_output
