"""The official `openai` SDK against Flywheel, unchanged but for base_url.

Upstream faults are injected with the simulator's `x-sim-*` request headers,
which the proxy forwards upstream like any client header.
"""
import asyncio
import json
import re
import time
import uuid

import httpx
import openai
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

ALERT = "Endpoint alert: LSASS memory dumped by rundll32.exe via comsvcs.dll MiniDump on host WS-042."
MESSAGES = [
    {"role": "system", "content": "You are a SOC analyst. Classify the alert."},
    {"role": "user", "content": ALERT},
]
TOOLS = [{
    "type": "function",
    "function": {
        "name": "isolate_host",
        "description": "Isolate a host from the network",
        "parameters": {"type": "object", "properties": {
            "alert_excerpt": {"type": "string"}, "suspected_threat_type": {"type": "string"}}},
    },
}]
# The simulator calls a tool under `auto` only when the user asks for it;
# these tests force the call.
FORCED = {"tools": TOOLS, "tool_choice": "required"}


def client(proxy, key="client", **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=proxy.keys[key], **kw)


def threat_type(text: str) -> str:
    match = re.search(r"Threat type: *(\S+)", text)
    assert match, f"no threat type in {text!r}"
    return match.group(1)


def fault_id() -> str:
    return f"pytest-{uuid.uuid4()}"


def unary_text(proxy, messages=MESSAGES, **kw) -> str:
    return client(proxy).chat.completions.create(model="triage", messages=messages, **kw).choices[0].message.content


# --- the CLI contract the fixtures rely on -----------------------------------

def test_keys_create_prints_only_the_key(proxy):
    keys = list(proxy.keys.values())
    assert len(set(keys)) == len(keys) == 3
    for handle, stdout in proxy.key_outputs.items():
        assert re.fullmatch(r"fw-[A-Za-z0-9_\-]{16,}\n?", stdout), (handle, stdout)


# --- chat completions ---------------------------------------------------------

def test_chat_non_streaming_with_flywheel_headers(proxy):
    raw = client(proxy).chat.completions.with_raw_response.create(model="triage", messages=MESSAGES)
    assert raw.status_code == 200
    assert "application/json" in raw.headers["content-type"]
    assert raw.headers["x-flywheel-inference-id"].startswith("inf_")
    assert raw.headers["x-flywheel-variant"] == "base"
    assert raw.headers["x-flywheel-conversation-id"]
    assert raw.headers["x-request-id"]
    completion = raw.parse()
    assert completion._request_id == raw.headers["x-request-id"]
    assert completion.object == "chat.completion"
    assert len(completion.choices) == 1
    choice = completion.choices[0]
    assert choice.index == 0 and choice.finish_reason == "stop"
    assert choice.message.role == "assistant"
    assert "Threat type:" in choice.message.content
    assert "Severity:" in choice.message.content
    assert threat_type(choice.message.content) == "credential_access"
    usage = completion.usage
    assert usage.prompt_tokens > 0 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_every_completion_has_its_own_inference_and_request_id(proxy):
    c = client(proxy)
    first = c.chat.completions.with_raw_response.create(model="triage", messages=MESSAGES)
    second = c.chat.completions.with_raw_response.create(model="triage", messages=MESSAGES)
    assert first.headers["x-flywheel-inference-id"] != second.headers["x-flywheel-inference-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_a_follow_up_turn_stays_in_the_conversation(proxy):
    """Implicit threading: the next turn (history + answer + new question)
    continues the first turn's conversation, even when sent at once, as a
    tool loop or a scripted client does."""
    c = client(proxy)
    opening = [{"role": "user", "content": f"{ALERT} Isolate the host. (ticket {uuid.uuid4()})"}]
    first = c.chat.completions.with_raw_response.create(model="triage", messages=opening)
    answer = first.parse().choices[0].message.content
    follow_up = opening + [
        {"role": "assistant", "content": answer},
        {"role": "user", "content": "Which host should we isolate first?"},
    ]
    second = c.chat.completions.with_raw_response.create(model="triage", messages=follow_up)
    assert second.status_code == 200
    assert second.headers["x-flywheel-conversation-id"] == first.headers["x-flywheel-conversation-id"]


def test_an_explicit_conversation_id_is_kept(proxy):
    conversation = f"conv-pytest-{uuid.uuid4().hex}"
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="triage", messages=MESSAGES, extra_headers={"x-flywheel-conversation-id": conversation})
    assert raw.headers["x-flywheel-conversation-id"] == conversation


def test_a_provider_model_name_passes_through(proxy):
    completion = client(proxy).chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert completion.model == "gpt-4o"
    assert "Threat type:" in completion.choices[0].message.content


def test_streaming_with_include_usage_matches_the_unary_answer(proxy):
    c = client(proxy)
    unary = c.chat.completions.create(model="triage", messages=MESSAGES)
    raw = c.chat.completions.with_raw_response.create(
        model="triage", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert raw.headers["x-flywheel-inference-id"].startswith("inf_")
    assert raw.headers["x-flywheel-variant"] == "base"
    chunks = list(raw.parse())
    assert chunks, "no chunks"
    assert {ch.object for ch in chunks} == {"chat.completion.chunk"}
    assert len({ch.id for ch in chunks}) == 1, "every chunk carries the same id"
    usage_chunks = [ch for ch in chunks if ch.usage is not None]
    assert len(usage_chunks) == 1, "exactly one usage chunk"
    assert usage_chunks[0] is chunks[-1], "the usage chunk comes last"
    assert usage_chunks[0].choices == []
    assert all(ch.choices for ch in chunks[:-1])
    text = "".join(choice.delta.content or "" for ch in chunks for choice in ch.choices)
    assert text == unary.choices[0].message.content
    roles = [choice.delta.role for ch in chunks for choice in ch.choices if choice.delta.role]
    assert roles == ["assistant"], "role is sent once"
    finishes = [choice.finish_reason for ch in chunks for choice in ch.choices if choice.finish_reason]
    assert finishes == ["stop"]
    usage = usage_chunks[0].usage
    assert usage.completion_tokens == unary.usage.completion_tokens
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_streaming_without_include_usage_sends_no_usage_chunk(proxy):
    chunks = list(client(proxy).chat.completions.create(model="triage", messages=MESSAGES, stream=True))
    assert chunks and all(ch.choices for ch in chunks)
    assert all(ch.usage is None for ch in chunks)


def test_stream_events_arrive_as_they_are_generated(proxy):
    """Chunks reach the client while the upstream is still generating: the
    first content arrives long before the last."""
    stream = client(proxy).chat.completions.create(
        model="triage", messages=MESSAGES, stream=True, extra_headers={"x-sim-token-delay-ms": "40"})
    started = time.monotonic()
    arrivals = []
    for chunk in stream:
        if any(choice.delta.content for choice in chunk.choices):
            arrivals.append(time.monotonic() - started)
    assert len(arrivals) >= 10
    total = arrivals[-1]
    assert total >= 0.4, f"token delay not applied? the stream took {total:.2f}s"
    assert arrivals[0] < total / 3, f"first token after {arrivals[0]:.2f}s of {total:.2f}s: buffered"


# --- tools ----------------------------------------------------------------------

def test_tool_calls_non_streaming(proxy):
    c = client(proxy)
    completion = c.chat.completions.create(model="triage", messages=MESSAGES, **FORCED)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id
    assert call.function.name == "isolate_host"
    arguments = json.loads(call.function.arguments)
    assert isinstance(arguments, dict) and arguments.get("alert_excerpt")
    assert arguments["suspected_threat_type"] == threat_type(unary_text(proxy))


def test_tool_calls_streamed_with_the_sdk_stream_helper(proxy):
    c = client(proxy)
    unary = c.chat.completions.create(model="triage", messages=MESSAGES, **FORCED)
    expected = json.loads(unary.choices[0].message.tool_calls[0].function.arguments)
    with c.chat.completions.stream(model="triage", messages=MESSAGES, **FORCED) as stream:
        done_events = [e for e in stream if e.type == "tool_calls.function.arguments.done"]
        final = stream.get_final_completion()
    assert len(done_events) == 1 and done_events[0].name == "isolate_host"
    assert json.loads(done_events[0].arguments) == expected
    call = final.choices[0].message.tool_calls[0]
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.function.name == "isolate_host" and call.id and call.type == "function"
    assert json.loads(call.function.arguments) == expected


def test_tool_call_deltas_accumulate_by_hand(proxy):
    """The wire shape the SDKs' accumulators rely on: integer index, id/type/
    name only in the first fragment, then argument pieces."""
    c = client(proxy)
    fragments = []
    for chunk in c.chat.completions.create(model="triage", messages=MESSAGES, **FORCED, stream=True):
        for choice in chunk.choices:
            fragments.extend(choice.delta.tool_calls or [])
    assert len(fragments) >= 2
    assert {f.index for f in fragments} == {0}
    first, rest = fragments[0], fragments[1:]
    assert first.id and first.type == "function" and first.function.name == "isolate_host"
    assert all(f.id is None and f.type is None and f.function.name is None for f in rest)
    arguments = "".join(f.function.arguments or "" for f in fragments)
    parsed = json.loads(arguments)
    assert parsed["suspected_threat_type"] == threat_type(unary_text(proxy))


def test_a_tool_result_turn_gets_a_text_answer(proxy):
    c = client(proxy)
    call = c.chat.completions.create(model="triage", messages=MESSAGES, **FORCED).choices[0].message.tool_calls[0]
    messages = MESSAGES + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"isolated": true}'},
    ]
    completion = c.chat.completions.create(model="triage", messages=messages, tools=TOOLS)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.choices[0].message.tool_calls in (None, [])
    assert "Threat type:" in completion.choices[0].message.content


def admin_conversation(proxy, conversation: str, turns: int, within: float = 30.0) -> dict:
    """The conversation as the admin API shows it once it holds `turns`
    stored turns; fails with what it last saw when that takes too long."""
    deadline = time.monotonic() + within
    last = None
    while time.monotonic() < deadline:
        response = httpx.get(f"{proxy.url}/admin/api/conversations/{conversation}",
                             headers={"Authorization": f"Bearer {proxy.admin_token}"})
        last = response.text
        if response.status_code == 200:
            body = response.json()
            if sum(1 for t in body["turns"] if t["status"] == "ok") >= turns:
                return body
        time.sleep(0.05)
    raise AssertionError(f"conversation {conversation} never had {turns} stored turns: {last}")


@pytest.mark.parametrize("streamed", [False, True])
def test_a_tool_call_loop_stays_in_one_conversation(proxy, streamed):
    """An agent loop as SDK users write it: the answer's own message object
    appended, each tool call answered by a tool message, next request at
    once — every step continues the first step's conversation."""
    c = client(proxy)
    messages = [MESSAGES[0], {"role": "user", "content": f"{ALERT} Isolate the host. (ticket {uuid.uuid4()})"}]
    conversations, tool_steps = [], 0
    for step in range(4):
        if streamed:
            raw = c.chat.completions.with_raw_response.create(
                model="triage", messages=messages, tools=TOOLS, stream=True)
            conversations.append(raw.headers["x-flywheel-conversation-id"])
            state = ChatCompletionStreamState(input_tools=TOOLS)
            for chunk in raw.parse():
                state.handle_chunk(chunk)
            message = state.get_final_completion().choices[0].message
        else:
            raw = c.chat.completions.with_raw_response.create(model="triage", messages=messages, tools=TOOLS)
            conversations.append(raw.headers["x-flywheel-conversation-id"])
            message = raw.parse().choices[0].message
        messages.append(message)
        if message.tool_calls:
            tool_steps += 1
            for call in message.tool_calls:
                messages.append({"role": "tool", "tool_call_id": call.id,
                                 "content": json.dumps({"isolated": True, "step": step})})
        else:
            messages.append({"role": "user", "content": "Isolate the next host as well."})
    assert tool_steps >= 2, "the loop made tool calls"
    assert len(set(conversations)) == 1, conversations
    stored = admin_conversation(proxy, conversations[0], turns=4)
    assert len(stored["turns"]) == 4
    assert stored["turns"][0]["response"]["message"]["tool_calls"]


# --- n > 1 ------------------------------------------------------------------------

def test_n_two_choices_non_streaming(proxy):
    completion = client(proxy).chat.completions.create(model="triage", messages=MESSAGES, n=2)
    assert [ch.index for ch in completion.choices] == [0, 1]
    for ch in completion.choices:
        assert ch.finish_reason == "stop" and "Threat type:" in ch.message.content


def test_n_two_choices_streamed(proxy):
    c = client(proxy)
    unary = c.chat.completions.create(model="triage", messages=MESSAGES, n=2)
    texts, finishes, roles, usage = {}, {}, {}, []
    for chunk in c.chat.completions.create(model="triage", messages=MESSAGES, n=2, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage.append(chunk.usage)
        for ch in chunk.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
            if ch.delta.role:
                roles[ch.index] = roles.get(ch.index, 0) + 1
            if ch.finish_reason:
                finishes[ch.index] = ch.finish_reason
    assert sorted(texts) == [0, 1]
    assert texts == {ch.index: ch.message.content for ch in unary.choices}
    assert roles == {0: 1, 1: 1}
    assert finishes == {0: "stop", 1: "stop"}
    assert len(usage) == 1 and usage[0].completion_tokens == unary.usage.completion_tokens


# --- models and pass-through -------------------------------------------------------

def test_models_list_and_retrieve(proxy):
    c = client(proxy)
    models = list(c.models.list())
    assert {m.id for m in models} == {"triage", "broken"}
    assert all(m.object == "model" and m.owned_by for m in models)
    triage = c.models.retrieve("triage")
    assert triage.id == "triage" and triage.object == "model"


def test_retrieve_an_unknown_model_is_not_found(proxy):
    with pytest.raises(openai.NotFoundError) as e:
        client(proxy, max_retries=0).models.retrieve("triage-v9")
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"


def test_retrieve_a_provider_model_is_forwarded(proxy):
    model = client(proxy).models.retrieve("gpt-4o")
    assert model.id == "gpt-4o" and model.object == "model"


def test_embeddings_pass_through(proxy):
    c = client(proxy)
    result = c.embeddings.create(model="text-embedding-3-small", input=["mimikatz on DC01", "benign backup job"])
    assert [d.index for d in result.data] == [0, 1]
    for d in result.data:
        assert len(d.embedding) > 0
        assert abs(sum(x * x for x in d.embedding) - 1) < 1e-3
    again = c.embeddings.create(model="text-embedding-3-small", input="mimikatz on DC01")
    assert again.data[0].embedding == pytest.approx(result.data[0].embedding)
    assert result.data[0].embedding != pytest.approx(result.data[1].embedding)


# --- errors ---------------------------------------------------------------------------

def assert_openai_error(error: openai.APIStatusError, status: int, code=None):
    assert error.status_code == status
    assert isinstance(error.body, dict), error.body
    assert {"message", "type", "param", "code"} <= set(error.body), error.body
    assert error.message
    if code is not None:
        assert error.code == code, error.body


def test_bad_request_missing_messages(proxy):
    with pytest.raises(openai.BadRequestError) as e:
        client(proxy, max_retries=0).chat.completions.create(model="triage", messages=openai.omit)
    assert_openai_error(e.value, 400)
    assert e.value.type == "invalid_request_error"
    assert e.value.param == "messages"
    assert "messages" in e.value.message


def test_bad_request_empty_messages(proxy):
    with pytest.raises(openai.BadRequestError) as e:
        client(proxy, max_retries=0).chat.completions.create(model="triage", messages=[])
    assert_openai_error(e.value, 400)
    assert e.value.param == "messages"


def test_bad_request_wrong_type_names_the_field(proxy):
    with pytest.raises(openai.BadRequestError) as e:
        client(proxy, max_retries=0).chat.completions.create(
            model="triage", messages=MESSAGES, extra_body={"temperature": "hot"})
    assert_openai_error(e.value, 400)
    assert e.value.param == "temperature"
    assert "temperature" in e.value.message


@pytest.mark.parametrize("key", ["fw-not-a-real-key", "sk-some-openai-key"])
def test_authentication_error_for_an_unknown_key(proxy, key):
    bad = openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        bad.chat.completions.create(model="triage", messages=MESSAGES)
    assert_openai_error(e.value, 401, "invalid_api_key")
    assert e.value.request_id


def test_authentication_error_without_a_key(proxy):
    c = client(proxy, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        c.chat.completions.create(model="triage", messages=MESSAGES,
                                  extra_headers={"Authorization": openai.omit})
    assert_openai_error(e.value, 401)


@pytest.mark.parametrize("key", ["client", "analyst"])
def test_permission_denied_on_the_admin_keys_api(proxy, key):
    admin_api = openai.OpenAI(base_url=f"{proxy.url}/admin/api", api_key=proxy.keys[key], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as e:
        admin_api.get("/keys", cast_to=object)
    assert_openai_error(e.value, 403)
    # The same route serves an admin: the 403 is about the role, not the route.
    allowed = httpx.get(f"{proxy.url}/admin/api/keys", headers={"Authorization": f"Bearer {proxy.keys['admin']}"})
    assert allowed.status_code == 200, allowed.text
    assert httpx.get(f"{proxy.url}/admin/api/keys",
                     headers={"Authorization": f"Bearer {proxy.admin_token}"}).status_code == 200


def test_not_found_for_an_unknown_model(proxy):
    with pytest.raises(openai.NotFoundError) as e:
        client(proxy, max_retries=0).chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert_openai_error(e.value, 404, "model_not_found")
    assert "no-such-model" in e.value.message


def test_request_too_large(proxy):
    with pytest.raises(openai.APIStatusError) as e:
        client(proxy, max_retries=0).chat.completions.create(
            model="triage", messages=[{"role": "user", "content": "A" * 100_000}])
    assert_openai_error(e.value, 413, "request_too_large")


def test_unreachable_upstream_is_502(proxy):
    with pytest.raises(openai.InternalServerError) as e:
        client(proxy, max_retries=0).chat.completions.create(model="broken", messages=MESSAGES)
    assert_openai_error(e.value, 502, "upstream_unreachable")
    assert e.value.type == "api_error"


def test_slow_upstream_is_504_after_the_first_byte_timeout(proxy):
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as e:
        client(proxy, max_retries=0).chat.completions.create(
            model="triage", messages=MESSAGES, extra_headers={"x-sim-delay-ms": "3000"})
    elapsed = time.monotonic() - started
    assert_openai_error(e.value, 504, "upstream_timeout")
    assert e.value.type == "api_error"
    assert 1.5 <= elapsed < 2.9, f"answered after {elapsed:.2f}s; first_byte_timeout_s is 2"


def test_slow_upstream_is_504_for_a_stream_too(proxy):
    with pytest.raises(openai.APIStatusError) as e:
        client(proxy, max_retries=0).chat.completions.create(
            model="triage", messages=MESSAGES, stream=True, extra_headers={"x-sim-delay-ms": "3000"})
    assert_openai_error(e.value, 504, "upstream_timeout")


def test_an_upstream_error_status_is_relayed(proxy):
    with pytest.raises(openai.InternalServerError) as e:
        client(proxy, max_retries=0).chat.completions.create(
            model="triage", messages=MESSAGES, extra_headers={"x-sim-status": "503"})
    assert_openai_error(e.value, 503)
    assert "simulated" in e.value.message


def test_the_sdk_retries_an_upstream_503_and_succeeds(proxy):
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="triage", messages=MESSAGES,
        extra_headers={"x-sim-status": "503", "x-sim-fail-times": "1", "x-sim-fault-id": fault_id()})
    assert raw.retries_taken == 1
    assert "Threat type:" in raw.parse().choices[0].message.content


def test_an_upstream_429_with_retry_after_is_relayed_and_honoured(proxy):
    faults = {"x-sim-status": "429", "x-sim-retry-after": "1", "x-sim-fail-times": "1",
              "x-sim-fault-id": fault_id()}
    with pytest.raises(openai.RateLimitError) as e:
        client(proxy, max_retries=0).chat.completions.create(
            model="triage", messages=MESSAGES, extra_headers={**faults, "x-sim-fault-id": fault_id()})
    assert_openai_error(e.value, 429)
    assert e.value.response.headers.get("retry-after") == "1"

    started = time.monotonic()
    raw = client(proxy).chat.completions.with_raw_response.create(
        model="triage", messages=MESSAGES, extra_headers=faults)
    assert raw.retries_taken == 1
    assert "Threat type:" in raw.parse().choices[0].message.content
    assert time.monotonic() - started >= 0.9, "the SDK waited for retry-after"


def test_a_non_json_upstream_answer_is_502(proxy):
    with pytest.raises(openai.InternalServerError) as e:
        client(proxy, max_retries=0).chat.completions.create(
            model="triage", messages=MESSAGES, extra_headers={"x-sim-garbage": "1"})
    assert_openai_error(e.value, 502)


def test_a_non_json_upstream_answer_to_a_stream_is_an_error(proxy):
    """The upstream answers a streamed request with 200 text/plain: the client
    must see an error, not an empty answer that looks complete."""
    with pytest.raises(openai.APIError):
        for _ in client(proxy, max_retries=0).chat.completions.create(
                model="triage", messages=MESSAGES, stream=True, extra_headers={"x-sim-garbage": "1"}):
            pass


def test_a_unary_body_cut_short_upstream_is_502(proxy):
    with pytest.raises(openai.InternalServerError) as e:
        client(proxy, max_retries=0).chat.completions.create(
            model="triage", messages=MESSAGES, extra_headers={"x-sim-drop-after": "3"})
    assert_openai_error(e.value, 502)


# --- rate limits (second proxy: 60/min, burst 2; limits are per key) -------------------

def test_rate_limit_error_without_retries(limited_proxy):
    c = client(limited_proxy, key="rate_error", max_retries=0)
    for _ in range(2):
        assert "Threat type:" in c.chat.completions.create(model="triage", messages=MESSAGES).choices[0].message.content
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="triage", messages=MESSAGES)
    assert_openai_error(e.value, 429, "rate_limit_exceeded")
    headers = e.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 2
    assert 0 < int(headers["retry-after-ms"]) <= 2000
    assert headers["x-ratelimit-limit-requests"] == "60"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-reset-requests"]


def test_sdk_retries_a_429_after_retry_after_and_succeeds(limited_proxy):
    c = client(limited_proxy, key="rate_retry")  # default max_retries=2
    started = time.monotonic()
    retries = []
    for _ in range(3):
        raw = c.chat.completions.with_raw_response.create(model="triage", messages=MESSAGES)
        retries.append(raw.retries_taken)
        assert "Threat type:" in raw.parse().choices[0].message.content
    elapsed = time.monotonic() - started
    assert retries[:2] == [0, 0] and retries[2] >= 1, retries
    assert elapsed >= 0.5, f"three calls in {elapsed:.2f}s: the SDK did not wait for the bucket"


# --- failures after the stream began ---------------------------------------------------

def test_a_stream_that_breaks_raises_api_error_after_content(proxy):
    full = unary_text(proxy)
    stream = client(proxy, max_retries=0).chat.completions.create(
        model="triage", messages=MESSAGES, stream=True,
        extra_headers={"x-sim-drop-after": "3", "x-sim-token-delay-ms": "10"})
    received = ""
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            for ch in chunk.choices:
                received += ch.delta.content or ""
    assert not isinstance(e.value, openai.APIConnectionError), "the proxy should end the stream with an error event"
    assert e.value.message
    assert received, "content before the failure reached the client"
    assert full.startswith(received) and received != full


def test_a_broken_stream_ends_with_an_error_event_on_the_wire(proxy):
    body = {"model": "triage", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{proxy.url}/v1/chat/completions", json=body, timeout=20,
                      headers={"Authorization": f"Bearer {proxy.keys['client']}",
                               "x-sim-drop-after": "3", "x-sim-token-delay-ms": "10"}) as r:
        assert r.status_code == 200
        text = r.read().decode()
    events = [e for e in text.split("\n\n") if e.strip()]
    assert not any(line.startswith("event:") for e in events for line in e.splitlines())
    assert all(e.startswith("data: ") for e in events), events
    last = json.loads(events[-1][len("data: "):])
    assert set(last) == {"error"} and {"message", "type", "param", "code"} <= set(last["error"]), last
    content = [json.loads(e[6:]) for e in events[:-1]]
    # Up to three content events left the simulator before it cut the connection.
    assert 1 <= sum(1 for c in content if c["choices"] and c["choices"][0]["delta"].get("content")) <= 3
    assert "[DONE]" not in text


# --- the async client ---------------------------------------------------------------------

def test_async_client_streams(proxy):
    expected = unary_text(proxy)

    async def one(c):
        stream = await c.chat.completions.create(
            model="triage", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
        text, usage = "", 0
        async for chunk in stream:
            usage += chunk.usage is not None
            for ch in chunk.choices:
                text += ch.delta.content or ""
        return text, usage

    async def run():
        async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=proxy.keys["client"]) as c:
            single = await one(c)
            many = await asyncio.gather(*(one(c) for _ in range(8)))
            unary = await c.chat.completions.create(model="triage", messages=MESSAGES)
        return single, many, unary

    single, many, unary = asyncio.run(run())
    assert single == (expected, 1)
    assert many == [(expected, 1)] * 8
    assert unary.choices[0].message.content == expected


def test_async_client_maps_errors(proxy):
    async def run():
        async with openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=proxy.keys["client"], max_retries=0) as c:
            await c.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)

    with pytest.raises(openai.NotFoundError):
        asyncio.run(run())


# --- apps written against Azure OpenAI ------------------------------------------------------

API_VERSION = "2024-10-21"


def azure_client(proxy, **kw) -> openai.AzureOpenAI:
    """The SDK's Azure client as an app built for Azure OpenAI has it, with
    only its endpoint changed: the key goes as `api-key`, the deployment in
    the path."""
    return openai.AzureOpenAI(azure_endpoint=proxy.url, api_key=proxy.keys["client"],
                              api_version=API_VERSION, **kw)


def test_azure_client_unary_names_the_alias_as_its_deployment(proxy):
    raw = azure_client(proxy).chat.completions.with_raw_response.create(model="triage", messages=MESSAGES)
    assert raw.status_code == 200
    assert raw.headers["x-flywheel-variant"] == "base"
    assert raw.headers["x-flywheel-inference-id"].startswith("inf_")
    assert raw.parse().choices[0].message.content == unary_text(proxy)


def test_azure_client_with_a_fixed_deployment_ignores_the_model_it_sends(proxy):
    c = azure_client(proxy, azure_deployment="triage")
    completion = c.chat.completions.create(model="whatever-the-app-says", messages=MESSAGES)
    assert completion.choices[0].message.content == unary_text(proxy)


def test_azure_client_streams(proxy):
    stream = azure_client(proxy).chat.completions.create(
        model="triage", messages=MESSAGES, stream=True, stream_options={"include_usage": True})
    text, usage = "", None
    for chunk in stream:
        usage = chunk.usage or usage
        for ch in chunk.choices:
            text += ch.delta.content or ""
    assert text == unary_text(proxy)
    assert usage is not None and usage.total_tokens > 0


def test_azure_client_models_embeddings_and_errors(proxy):
    c = azure_client(proxy, max_retries=0)
    assert "triage" in [m.id for m in c.models.list()]
    assert c.models.retrieve("triage").id == "triage"
    assert isinstance(c.files.list().data, list)  # Azure's dated files route, passed on
    result = c.embeddings.create(model="text-embedding-3-small", input="mimikatz on DC01")
    assert len(result.data[0].embedding) > 0
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.create(model="no-such-deployment", messages=MESSAGES)
    stranger = openai.AzureOpenAI(azure_endpoint=proxy.url, api_key="fw-not-a-key",
                                  api_version=API_VERSION, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model="triage", messages=MESSAGES)


def test_azure_client_responses_chain_into_one_conversation(proxy):
    c = openai.AzureOpenAI(azure_endpoint=proxy.url, api_key=proxy.keys["client"],
                           api_version="2025-04-01-preview")
    first = c.responses.with_raw_response.create(model="triage", input=ALERT)
    response = first.parse()
    assert response.output_text.startswith("Threat type:")
    second = c.responses.with_raw_response.create(
        model="triage", input="Is the host isolated already?", previous_response_id=response.id)
    assert second.parse().output_text
    assert second.headers["x-flywheel-conversation-id"] == first.headers["x-flywheel-conversation-id"]


def test_azure_client_signed_in_with_entra_id(entra_proxy, entra_platform):
    """A keyless app: `AzureOpenAI` with a token provider, as
    `azure.identity`'s `get_bearer_token_provider` makes one, sends a
    Microsoft Entra ID token for Flywheel's API instead of a key."""
    asked = []

    def token_provider() -> str:
        asked.append(time.monotonic())
        return entra_platform.token()

    c = openai.AzureOpenAI(azure_endpoint=entra_proxy.url, azure_ad_token_provider=token_provider,
                           api_version=API_VERSION, max_retries=0)
    raw = c.chat.completions.with_raw_response.create(model="triage", messages=MESSAGES)
    assert raw.parse().choices[0].message.content.startswith("Threat type:")
    assert asked, "the SDK asked its provider for a token"
    with c.chat.completions.stream(model="triage", messages=MESSAGES) as stream:
        assert stream.get_final_completion().choices[0].message.content.startswith("Threat type:")
    # A token for Azure OpenAI itself is not one for Flywheel.
    other = openai.AzureOpenAI(
        azure_endpoint=entra_proxy.url, api_version=API_VERSION, max_retries=0,
        azure_ad_token_provider=lambda: entra_platform.token("https://cognitiveservices.azure.com/.default"))
    with pytest.raises(openai.AuthenticationError, match="another audience"):
        other.chat.completions.create(model="triage", messages=MESSAGES)
    # The app role grants a client's access, not an analyst's.
    me = httpx.get(f"{entra_proxy.url}/admin/api/me",
                   headers={"Authorization": f"Bearer {entra_platform.token()}"})
    assert me.status_code == 403, me.text


def test_azure_v1_api_through_the_plain_client(proxy):
    """Azure's v1 API is used with the plain client at `/openai/v1/`."""
    c = openai.OpenAI(base_url=f"{proxy.url}/openai/v1/", api_key=proxy.keys["client"])
    assert c.chat.completions.create(model="triage", messages=MESSAGES).choices[0].message.content \
        == unary_text(proxy)
    assert "triage" in [m.id for m in c.models.list()]
    assert c.responses.create(model="triage", input=ALERT).output_text.startswith("Threat type:")
