"""integrations/open-webui/flywheel_feedback.py loaded as Open WebUI loads
a function module, driven with stand-ins for the few Open WebUI objects it
uses (the action body as Open WebUI's chat page sends it, the event
emitter, the input prompt, and its `Chats` model holding the chat's
history), against the real proxy: the rating reaches the inference that
gave the answer."""
import asyncio
import importlib.util
import sys
import types
import uuid
from pathlib import Path

import pytest

import openai

from conftest import ALERT, SYSTEM, base_url, one_conversation

MODULE = Path(__file__).resolve().parents[2] / "integrations" / "open-webui" / "flywheel_feedback.py"


def load():
    spec = importlib.util.spec_from_file_location("flywheel_feedback", MODULE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chat(proxy, user, alert):
    """One exchange as Open WebUI sends it; returns its messages as Open
    WebUI keeps them (with its own message ids)."""
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": alert}]
    answer = openai.OpenAI(base_url=base_url(proxy), api_key=proxy.keys["client"],
                           default_headers={"x-flywheel-user": user}).chat.completions.create(
        model="triage", messages=messages).choices[0].message.content
    kept = [dict(m, id=str(uuid.uuid4())) for m in messages[1:]]
    kept.append({"id": str(uuid.uuid4()), "role": "assistant", "content": answer})
    # An analyst rates seconds later: the turn is stored by then.
    one_conversation(proxy, user, 1)
    return kept


def action_body(chat_id, messages):
    """What Open WebUI's chat page posts to an action: each message's id,
    role and content only (no rating), the chat and the message rated."""
    return {"model": "triage", "chat_id": chat_id, "id": messages[-1]["id"],
            "messages": [{k: m[k] for k in ("id", "role", "content")} for m in messages]}


@pytest.fixture
def open_webui_chats(monkeypatch, request):
    """Open WebUI's `open_webui.models.chats.Chats`: `chats[(chat_id,
    user_id)]` is the chat's JSON. Its methods are plain functions in older
    releases and coroutines in newer ones; the test runs with both."""
    chats = {}

    class Chat:
        def __init__(self, chat):
            self.chat = chat

    def get_chat_by_id_and_user_id(chat_id, user_id):
        found = chats.get((chat_id, user_id))
        return Chat(found) if found is not None else None

    async def get_chat_async(chat_id, user_id):
        return get_chat_by_id_and_user_id(chat_id, user_id)

    table = types.SimpleNamespace(get_chat_by_id_and_user_id=(
        get_chat_async if getattr(request, "param", "sync") == "async" else get_chat_by_id_and_user_id))
    package = types.ModuleType("open_webui")
    models = types.ModuleType("open_webui.models")
    module = types.ModuleType("open_webui.models.chats")
    module.Chats = table
    monkeypatch.setitem(sys.modules, "open_webui", package)
    monkeypatch.setitem(sys.modules, "open_webui.models", models)
    monkeypatch.setitem(sys.modules, "open_webui.models.chats", module)
    return chats


def feedback_of(proxy, user):
    turn = one_conversation(proxy, user, 1)["turns"][0]
    return turn["feedback"]


@pytest.mark.parametrize("open_webui_chats", ["sync", "async"], indirect=True)
def test_an_open_webui_rating_reaches_the_inference(proxy, user, open_webui_chats):
    alert = f"{ALERT} (case {uuid.uuid4()})"
    messages = chat(proxy, user, alert)
    # The analyst rated the answer with Open WebUI's own thumbs and
    # comment: Open WebUI keeps that on the message in the chat's history.
    rated = dict(messages[-1], annotation={"rating": -1, "details": {"rating": 3}, "reason": "Inaccurate",
                                           "comment": "lateral movement, not credential access"})
    chat_id = str(uuid.uuid4())
    open_webui_chats[(chat_id, "u1")] = {"history": {"messages": {m["id"]: m for m in messages[:-1] + [rated]}}}
    action = load().Action()
    action.valves.flywheel_url = base_url(proxy)
    action.valves.analyst_key = proxy.keys["analyst"]
    statuses = []

    async def emit(event):
        statuses.append(event["data"]["description"])

    async def ask(event):
        raise AssertionError(f"asked for a rating the analyst already gave: {event}")

    asyncio.run(action.action(action_body(chat_id, messages), __user__={"id": "u1", "name": "Ana"},
                              __event_emitter__=emit, __event_call__=ask))
    assert statuses[-1].startswith("Rated in Flywheel (fb_"), statuses
    [feedback] = feedback_of(proxy, user)
    assert (feedback["thumbs"], feedback["rating"]) == ("down", 2)
    assert feedback["notes"] == "Inaccurate — lateral movement, not credential access"


def test_without_a_rating_it_asks_for_one(proxy, user, open_webui_chats):
    alert = f"{ALERT} (case {uuid.uuid4()})"
    messages = chat(proxy, user, alert)
    chat_id = str(uuid.uuid4())
    open_webui_chats[(chat_id, "u1")] = {"history": {"messages": {m["id"]: m for m in messages}}}
    action = load().Action()
    action.valves.flywheel_url = proxy.url
    action.valves.analyst_key = proxy.keys["analyst"]
    asked = []

    async def ask(event):
        asked.append(event)
        return "4 right call, isolate the host"

    asyncio.run(action.action(action_body(chat_id, messages), __user__={"id": "u1"}, __event_call__=ask))
    assert asked and asked[0]["type"] == "input"
    [feedback] = feedback_of(proxy, user)
    assert (feedback["rating"], feedback["thumbs"]) == (4, None)
    assert feedback["notes"] == "right call, isolate the host"


def test_an_answer_flywheel_never_saw_is_said_so(proxy):
    action = load().Action()
    action.valves.flywheel_url = proxy.url
    action.valves.analyst_key = proxy.keys["analyst"]
    statuses = []

    async def emit(event):
        statuses.append(event["data"]["description"])

    messages = [{"id": "1", "role": "user", "content": f"never sent {uuid.uuid4()}"},
                {"id": "2", "role": "assistant", "content": "made up", "annotation": {"rating": 1}}]
    asyncio.run(action.action({"id": "2", "messages": messages}, __event_emitter__=emit))
    assert "no captured answer" in statuses[-1]


def test_ratings_map_to_feedback_fields():
    fields = load().feedback_fields
    assert fields({"rating": 1, "details": {"rating": 10}}, None) == {"thumbs": "up", "rating": 5}
    assert fields(None, "down wrong severity") == {"thumbs": "down", "notes": "wrong severity"}
    assert fields(None, "just a note") == {"notes": "just a note"}
    assert fields(None, "") == {}
