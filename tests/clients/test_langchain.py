"""langchain-openai's ChatOpenAI: invoke, stream, with_structured_output
and a tool loop with bind_tools; and its AzureChatOpenAI, as an app built
for Azure OpenAI has it, pointed at Flywheel."""
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import AzureChatOpenAI, ChatOpenAI
from pydantic import BaseModel

from conftest import ALERT, SYSTEM, base_url, captured, one_conversation


class Triage(BaseModel):
    threat_type: str
    severity: str
    rationale: str


def model(proxy, user) -> ChatOpenAI:
    return ChatOpenAI(model="triage", base_url=base_url(proxy), api_key=proxy.keys["client"],
                      default_headers={"x-flywheel-user": user}, max_retries=0)


MESSAGES = [SystemMessage(SYSTEM), HumanMessage(ALERT)]


def test_invoke(proxy, user):
    answer = model(proxy, user).invoke(MESSAGES)
    assert answer.content.startswith("Threat type: credential_access")
    assert answer.usage_metadata["input_tokens"] > 0
    turn = one_conversation(proxy, user, 1)["turns"][0]
    assert turn["response"]["message"]["content"] == answer.content


def test_stream(proxy, user):
    chunks = list(model(proxy, user).stream(MESSAGES))
    assert len(chunks) > 3
    text = "".join(c.content for c in chunks)
    assert text.startswith("Threat type: credential_access")
    turn = one_conversation(proxy, user, 1)["turns"][0]
    assert turn["streamed"] is True and turn["response"]["message"]["content"] == text


def test_with_structured_output(proxy, user):
    result = model(proxy, user).with_structured_output(Triage).invoke(MESSAGES)
    assert isinstance(result, Triage)
    assert (result.threat_type, result.severity) == ("credential_access", "high")
    one_conversation(proxy, user, 1)


@tool
def lookup_host(hostname: str) -> str:
    """Look up the owner and role of a host."""
    return f"{hostname}: owner alice, workstation"


def test_tool_loop(proxy, user):
    llm = model(proxy, user).bind_tools([lookup_host])
    messages = [SystemMessage(SYSTEM), HumanMessage(f"{ALERT} Look up the host first.")]
    for _ in range(4):
        answer = llm.invoke(messages)
        messages.append(answer)
        if not answer.tool_calls:
            break
        for call in answer.tool_calls:
            messages.append(ToolMessage(lookup_host.invoke(call["args"]), tool_call_id=call["id"]))
    assert isinstance(messages[3], ToolMessage)
    assert messages[-1].content.startswith("Threat type:")
    conversation = one_conversation(proxy, user, 2)
    assert conversation["turns"][0]["response"]["message"]["tool_calls"][0]["function"]["name"] == "lookup_host"


def test_azure_chat_openai_invokes_and_streams(proxy, user):
    llm = AzureChatOpenAI(azure_endpoint=proxy.url, azure_deployment="triage", api_version="2024-10-21",
                          api_key=proxy.keys["client"], default_headers={"x-flywheel-user": user},
                          max_retries=0)
    answer = llm.invoke(MESSAGES)
    assert answer.content.startswith("Threat type: credential_access")
    text = "".join(c.content for c in llm.stream(MESSAGES))
    assert text == answer.content
    conversations = captured(proxy, user, 2)
    stored = [t for c in conversations for t in c["turns"]]
    assert {t["alias"] for t in stored} == {"triage"}
    assert sorted(t["streamed"] for t in stored) == [False, True]
