"""The official `openai` SDK against Flywheel, unchanged but for base_url."""
import asyncio
import json
import time
import uuid

import httpx
import openai
import pytest

ALERT = "Endpoint alert: LSASS memory dumped by rundll32.exe via comsvcs.dll MiniDump on host WS-042."
MESSAGES = [
    {"role": "system", "content": "You are a SOC analyst. Classify the alert."},
    {"role": "user", "content": ALERT},
]
TOOLS = [{
    "type": "function",
    "function": {"name": "isolate_host", "description": "Isolate a host",
                 "parameters": {"type": "object", "properties": {"alert_excerpt": {"type": "string"}}}},
}]


def client(stack, role="client", proxy="main", **kw):
    p = stack[proxy]
    return openai.OpenAI(base_url=f"{p.url}/v1", api_key=p.keys[role], **kw)


def test_chat_non_streaming_with_flywheel_headers(stack):
    raw = client(stack).chat.completions.with_raw_response.create(model="triage", messages=MESSAGES)
    assert raw.headers["x-flywheel-inference-id"].startswith("inf_")
    assert raw.headers["x-flywheel-variant"] == "base"
    assert raw.headers["x-flywheel-conversation-id"]
    assert raw.headers["x-request-id"].startswith("req_")
    completion = raw.parse()
    content = completion.choices[0].message.content
    assert "Threat type: credential_access" in content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens > 0


def test_streaming_with_include_usage_matches_the_unary_answer(stack):
    c = client(stack)
    unary = c.chat.completions.create(model="triage", messages=MESSAGES).choices[0].message.content
    stream = c.chat.completions.create(model="triage", messages=MESSAGES, stream=True,
                                       stream_options={"include_usage": True})
    text, usage_chunks, ids = "", [], set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.usage is not None:
            usage_chunks.append(chunk)
        for choice in chunk.choices:
            text += choice.delta.content or ""
    assert text == unary
    assert len(usage_chunks) == 1 and usage_chunks[0].choices == []
    assert usage_chunks[0].usage.completion_tokens > 0
    assert len(ids) == 1


def test_tool_calls_unary_and_streamed(stack):
    c = client(stack)
    completion = c.chat.completions.create(model="triage", messages=MESSAGES, tools=TOOLS)
    call = completion.choices[0].message.tool_calls[0]
    assert call.function.name == "isolate_host"
    assert json.loads(call.function.arguments)["suspected_threat_type"] == "credential_access"
    assert completion.choices[0].finish_reason == "tool_calls"

    with c.chat.completions.stream(model="triage", messages=MESSAGES, tools=TOOLS) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    streamed = final.choices[0].message.tool_calls[0]
    assert streamed.function.name == "isolate_host"
    assert json.loads(streamed.function.arguments) == json.loads(call.function.arguments)


def test_n_two_choices_unary_and_streamed(stack):
    c = client(stack)
    completion = c.chat.completions.create(model="triage", messages=MESSAGES, n=2)
    assert [ch.index for ch in completion.choices] == [0, 1]
    texts = {0: "", 1: ""}
    for chunk in c.chat.completions.create(model="triage", messages=MESSAGES, n=2, stream=True):
        for ch in chunk.choices:
            texts[ch.index] += ch.delta.content or ""
    assert texts[0] == texts[1] == completion.choices[0].message.content


def test_models_list_and_retrieve(stack):
    c = client(stack)
    ids = [m.id for m in c.models.list()]
    assert ids == ["triage", "broken"]
    assert c.models.retrieve("triage").id == "triage"
    with pytest.raises(openai.NotFoundError):
        c.models.retrieve("no-such-model")


def test_bad_request(stack):
    c = client(stack, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="triage", messages=[])
    assert e.value.status_code == 400 and "messages" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model="triage", messages=MESSAGES, extra_body={"temperature": "hot"})
    assert e.value.body["param"] == "temperature"


def test_authentication_errors(stack):
    p = stack["main"]
    for key in ("fw-not-a-real-key", "sk-some-openai-key"):
        bad = openai.OpenAI(base_url=f"{p.url}/v1", api_key=key, max_retries=0)
        with pytest.raises(openai.AuthenticationError) as e:
            bad.chat.completions.create(model="triage", messages=MESSAGES)
        assert e.value.status_code == 401 and e.value.code == "invalid_api_key"


def test_permission_denied_on_the_admin_api(stack):
    p = stack["main"]
    admin_api = openai.OpenAI(base_url=f"{p.url}/admin/api", api_key=p.keys["client"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as e:
        admin_api.get("/keys", cast_to=httpx.Response)
    assert "analyst role" in e.value.message


def test_not_found_for_an_unknown_model(stack):
    with pytest.raises(openai.NotFoundError) as e:
        client(stack, max_retries=0).chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert e.value.code == "model_not_found"


def test_request_too_large(stack):
    with pytest.raises(openai.APIStatusError) as e:
        client(stack, max_retries=0).chat.completions.create(
            model="triage", messages=[{"role": "user", "content": "A" * 100_000}])
    assert e.value.status_code == 413 and e.value.code == "request_too_large"


def test_rate_limit_error_without_retries(stack):
    c = client(stack, role="analyst", proxy="limited", max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        for _ in range(5):
            c.chat.completions.create(model="triage", messages=MESSAGES)
    assert e.value.status_code == 429
    assert int(e.value.response.headers["retry-after"]) >= 1
    assert e.value.response.headers["x-ratelimit-remaining-requests"] == "0"


def test_sdk_retries_a_429_after_retry_after_and_succeeds(stack):
    c = client(stack, role="client", proxy="limited", max_retries=3)
    started = time.monotonic()
    for _ in range(3):
        assert "Threat type:" in c.chat.completions.create(model="triage", messages=MESSAGES).choices[0].message.content
    # Burst 2 at 60/min: the third call waited for the bucket (≈1 s).
    assert time.monotonic() - started >= 0.5


def test_unreachable_upstream_is_502(stack):
    with pytest.raises(openai.InternalServerError) as e:
        client(stack, max_retries=0).chat.completions.create(model="broken", messages=MESSAGES)
    assert e.value.status_code == 502 and e.value.code == "upstream_unreachable"


def test_slow_upstream_is_504(stack):
    with pytest.raises(openai.APIStatusError) as e:
        client(stack, max_retries=0).chat.completions.create(
            model="triage", messages=MESSAGES, extra_headers={"x-sim-delay-ms": "3000"})
    assert e.value.status_code == 504 and e.value.code == "upstream_timeout"


def test_upstream_retry_after_is_relayed_and_honoured_by_the_sdk(stack):
    fault = {"x-sim-status": "429", "x-sim-retry-after": "1", "x-sim-fail-times": "1",
             "x-sim-fault-id": str(uuid.uuid4())}
    started = time.monotonic()
    completion = client(stack, max_retries=2).chat.completions.create(
        model="triage", messages=MESSAGES, extra_headers=fault)
    assert "Threat type:" in completion.choices[0].message.content
    assert time.monotonic() - started >= 0.9


def test_a_stream_that_breaks_raises_api_error_after_content(stack):
    stream = client(stack, max_retries=0).chat.completions.create(
        model="triage", messages=MESSAGES, stream=True,
        extra_headers={"x-sim-drop-after": "3", "x-sim-token-delay-ms": "20"})
    received = ""
    with pytest.raises(openai.APIError):
        for chunk in stream:
            for ch in chunk.choices:
                received += ch.delta.content or ""
    assert received, "content before the failure reached the client"


def test_async_client_streams(stack):
    p = stack["main"]

    async def run():
        c = openai.AsyncOpenAI(base_url=f"{p.url}/v1", api_key=p.keys["client"])
        stream = await c.chat.completions.create(model="triage", messages=MESSAGES, stream=True)
        text = ""
        async for chunk in stream:
            for ch in chunk.choices:
                text += ch.delta.content or ""
        await c.close()
        return text

    assert asyncio.run(run()).startswith("Threat type:")
