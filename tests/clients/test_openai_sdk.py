"""The official openai SDK: chat, `chat.completions.parse`, the streaming
helper, a tool loop, and the Responses API (chained by response id, or
in a conversation object)."""
import json

import openai
import pytest
from pydantic import BaseModel

from conftest import ALERT, SYSTEM, base_url, one_conversation


class Triage(BaseModel):
    threat_type: str
    severity: str
    rationale: str


def client(proxy, user) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url(proxy), api_key=proxy.keys["client"],
                         default_headers={"x-flywheel-user": user})


MESSAGES = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ALERT}]


def test_unary(proxy, user):
    completion = client(proxy, user).chat.completions.create(model="triage", messages=MESSAGES)
    assert completion.choices[0].message.content.startswith("Threat type: credential_access")
    turn = one_conversation(proxy, user, 1)["turns"][0]
    assert turn["response"]["message"]["content"] == completion.choices[0].message.content


def test_stream_helper(proxy, user):
    with client(proxy, user).chat.completions.stream(
            model="triage", messages=MESSAGES, stream_options={"include_usage": True}) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    assert len(deltas) > 3
    assert "".join(deltas) == final.choices[0].message.content
    turn = one_conversation(proxy, user, 1)["turns"][0]
    assert turn["streamed"] is True
    assert turn["response"]["message"]["content"] == final.choices[0].message.content


def test_parse_structured_output(proxy, user):
    completion = client(proxy, user).chat.completions.parse(
        model="triage", messages=MESSAGES, response_format=Triage)
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Triage)
    assert (parsed.threat_type, parsed.severity) == ("credential_access", "high")
    turn = one_conversation(proxy, user, 1)["turns"][0]
    assert turn["request"]["params"]["response_format"]["type"] == "json_schema"


def test_tool_loop(proxy, user):
    c = client(proxy, user)
    tools = [openai.pydantic_function_tool(LookupHost)]
    messages = [MESSAGES[0], {"role": "user", "content": f"{ALERT} Look up the host first."}]
    first = c.chat.completions.parse(model="triage", messages=messages, tools=tools).choices[0].message
    assert first.tool_calls and first.tool_calls[0].function.name == "LookupHost"
    arguments = first.tool_calls[0].function.parsed_arguments
    assert isinstance(arguments, LookupHost)
    messages.append(first)
    messages.append({"role": "tool", "tool_call_id": first.tool_calls[0].id,
                     "content": json.dumps({"owner": "alice", "role": "workstation"})})
    second = c.chat.completions.create(model="triage", messages=messages, tools=tools).choices[0].message
    assert not second.tool_calls and second.content.startswith("Threat type:")
    conversation = one_conversation(proxy, user, 2)
    assert conversation["turns"][0]["response"]["message"]["tool_calls"]


class LookupHost(BaseModel):
    """Look up the owner and role of a host."""
    hostname: str


def test_responses_with_a_provider_model(proxy, user):
    """A model name that is no alias goes unchanged to the default
    provider's `responses`, unary and streamed."""
    c = client(proxy, user)
    response = c.responses.create(model="gpt-4o-mini", input=ALERT)
    assert response.output_text.startswith("Threat type: credential_access")
    with c.responses.stream(model="gpt-4o-mini", input=ALERT) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == response.output_text


def test_responses_with_the_alias(proxy, user):
    """The alias is routed; a `previous_response_id` chain, unary then
    streamed, is captured as one conversation of two chat turns."""
    c = client(proxy, user)
    first = c.responses.create(model="triage", instructions=SYSTEM, input=ALERT)
    assert first.output_text.startswith("Threat type: credential_access")
    with c.responses.stream(model="triage", previous_response_id=first.id,
                            input="Is the host isolated already?") as stream:
        second = stream.get_final_response()
    conversation = one_conversation(proxy, user, 2)
    turns = conversation["turns"]
    assert turns[0]["request"]["messages"][0] == {"role": "system", "content": SYSTEM}
    assert turns[0]["response"]["message"]["content"] == first.output_text
    assert turns[1]["streamed"] is True
    assert turns[1]["response"]["message"]["content"] == second.output_text


def test_responses_in_a_conversation_object(proxy, user):
    """Turns in a conversation object (the Conversations API, passed
    through to the provider) send only what is new; they are captured as
    one conversation, and the provider's object is managed through Flywheel."""
    c = client(proxy, user)
    held = c.conversations.create(metadata={"case": "ws-042"})
    assert held.id.startswith("conv_") and held.metadata == {"case": "ws-042"}
    first = c.responses.create(model="triage", instructions=SYSTEM, input=ALERT, conversation=held.id)
    assert first.output_text.startswith("Threat type: credential_access")
    with c.responses.stream(model="triage", conversation={"id": held.id},
                            input="Is the host isolated already?") as stream:
        second = stream.get_final_response()
    assert second.output_text
    turns = one_conversation(proxy, user, 2)["turns"]
    assert turns[1]["request"]["messages"] == [{"role": "user", "content": "Is the host isolated already?"}]
    assert turns[1]["response"]["message"]["content"] == second.output_text
    assert c.conversations.retrieve(held.id).id == held.id
    assert c.conversations.delete(held.id).deleted
    with pytest.raises(openai.NotFoundError):
        c.responses.create(model="triage", input="and now?", conversation=held.id)


def test_items_put_into_a_conversation_object_are_captured_with_its_next_turn(proxy, user):
    """The alert given as the conversation's first item, and a note added
    later with `conversations.items.create`, are stored in front of the
    turn that followed each: what the model read, so a dataset has it."""
    c = client(proxy, user)
    held = c.conversations.create(items=[{"type": "message", "role": "user", "content": ALERT}])
    c.responses.create(model="triage", input="Triage the alert above.", conversation=held.id)
    note = "EDR: WS-1 was isolated at 10:02."
    added = c.conversations.items.create(held.id, items=[{"type": "message", "role": "user", "content": note}])
    assert added.data[0].id.startswith("msg_")
    c.responses.create(model="triage", input="Is the host isolated already?", conversation=held.id)
    turns = one_conversation(proxy, user, 2)["turns"]
    assert turns[0]["request"]["messages"] == [{"role": "user", "content": ALERT},
                                               {"role": "user", "content": "Triage the alert above."}]
    assert turns[1]["request"]["messages"] == [{"role": "user", "content": note},
                                               {"role": "user", "content": "Is the host isolated already?"}]
