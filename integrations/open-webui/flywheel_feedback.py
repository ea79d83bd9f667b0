"""
title: Flywheel feedback
author: Flywheel
version: 0.1.0
description: Sends the thumbs, rating and comment an analyst gives an answer in Open WebUI to Flywheel's POST /v1/feedback, for the inference that produced that answer.
required_open_webui_version: 0.5.0
"""
# An Open WebUI "Action" function: a button under each assistant message.
# Install: Admin Panel → Functions → + (or Import), paste this file, save,
# enable it, set its Valves (Flywheel's base URL and an analyst key), and
# turn it on for the Flywheel models (or globally).
#
# Pressing the button rates the message:
# - with the rating the analyst already gave in Open WebUI (thumbs up/down,
#   the 1–10 detail rating, the reason and comment) when there is one —
#   Open WebUI sends an action only the messages' id, role and content, so
#   the rating is read from the chat as Open WebUI stored it (its
#   `Chats` model: the message's `annotation` in the chat's history);
# - otherwise it asks for one: "up", "down" or 1–5, then an optional
#   comment ("2 wrong severity, this is lateral movement").
#
# Which inference: Open WebUI keeps no Flywheel id with a message, so the
# function finds it the way an analyst would in the admin UI: among the
# conversations whose preview starts like this chat's first user message
# (newest first), the turn whose answer is exactly this message's text.
# The key must be an analyst's (or an admin's): it reads the admin API and
# rates inferences it did not make. Only the standard library and pydantic
# (which Open WebUI ships) are used.

import asyncio
import inspect
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Awaitable, Callable, Optional

from pydantic import BaseModel, Field

# How many conversations are searched for the message.
SEARCH_LIMIT = 50
# Characters of the first user message used to search previews.
SEARCH_CHARS = 80


class FlywheelError(Exception):
    pass


def _request(method: str, url: str, key: str, body: Optional[dict], timeout: float) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        try:
            message = json.loads(e.read())["error"]["message"]
        except Exception:  # noqa: BLE001 - any unreadable body
            message = e.reason
        raise FlywheelError(f"Flywheel answered {e.code}: {message}") from e
    except (urllib.error.URLError, TimeoutError) as e:
        raise FlywheelError(f"Flywheel is unreachable: {e}") from e


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def feedback_fields(annotation: Optional[dict], typed: Optional[str]) -> dict:
    """The /v1/feedback fields for Open WebUI's rating (`annotation`:
    {"rating": 1|-1, "details": {"rating": 1-10}, "reason", "comment"}) or
    what the analyst typed ("up", "down" or 1-5, then a comment)."""
    fields: dict = {}
    notes = []
    if annotation:
        if annotation.get("rating") in (1, -1):
            fields["thumbs"] = "up" if annotation["rating"] == 1 else "down"
        detail = (annotation.get("details") or {}).get("rating")
        if isinstance(detail, (int, float)) and 1 <= detail <= 10:
            fields["rating"] = max(1, min(5, round(detail / 2)))
        notes += [str(annotation[k]) for k in ("reason", "comment") if annotation.get(k)]
    elif typed:
        head, _, comment = typed.strip().partition(" ")
        if head.lower() in ("up", "down", "+", "-", "👍", "👎"):
            fields["thumbs"] = "up" if head.lower() in ("up", "+", "👍") else "down"
        elif head.isdigit() and 1 <= int(head) <= 5:
            fields["rating"] = int(head)
        else:
            comment = typed.strip()
        if comment.strip():
            notes.append(comment.strip())
    if notes:
        fields["notes"] = " — ".join(notes)[:4000]
    return fields


async def stored_annotation(chat_id: Optional[str], message_id: Optional[str], user_id: Optional[str]) -> Optional[dict]:
    """The rating Open WebUI stored for the message: the `annotation` of
    the message in the chat's history. Open WebUI's chat model is read
    through its `Chats` table object, whose methods are plain in older
    releases and coroutines in newer ones; outside Open WebUI, none."""
    if not (chat_id and message_id and user_id):
        return None
    try:
        from open_webui.models.chats import Chats  # type: ignore[import-not-found]
    except ImportError:
        return None
    chat = Chats.get_chat_by_id_and_user_id(chat_id, user_id)
    if inspect.isawaitable(chat):
        chat = await chat
    history = (getattr(chat, "chat", None) or {}).get("history") or {}
    message = (history.get("messages") or {}).get(message_id) or {}
    annotation = message.get("annotation")
    return annotation if isinstance(annotation, dict) else None


class Action:
    class Valves(BaseModel):
        flywheel_url: str = Field(
            default="http://localhost:8080",
            description="Flywheel's address, without /v1 (the Open WebUI connection's base URL less /v1)",
        )
        analyst_key: str = Field(default="", description="A Flywheel analyst (or admin) key")
        timeout_s: float = Field(default=10.0, description="Per request to Flywheel")

    def __init__(self):
        self.valves = self.Valves()

    def _call(self, method: str, path: str, body: Optional[dict] = None) -> Any:
        base = self.valves.flywheel_url.rstrip("/")
        if base.endswith("/v1"):
            base = base[: -len("/v1")]
        return _request(method, base + path, self.valves.analyst_key, body, self.valves.timeout_s)

    def find_inference(self, first_user: str, answer: str) -> str:
        """The inference whose answer is `answer`, in a conversation that
        starts with `first_user`."""
        query = urllib.parse.urlencode({"q": " ".join(first_user.split())[:SEARCH_CHARS], "limit": SEARCH_LIMIT})
        listing = self._call("GET", f"/admin/api/conversations?{query}")
        wanted = answer.strip()
        for summary in listing.get("data", []):
            conversation = self._call("GET", f"/admin/api/conversations/{summary['id']}")
            for turn in reversed(conversation.get("turns", [])):
                message = (turn.get("response") or {}).get("message") or {}
                if _text(message.get("content")).strip() == wanted and turn.get("inference_id"):
                    return turn["inference_id"]
        raise FlywheelError("Flywheel has no captured answer like this message (was it sent through Flywheel?)")

    async def action(
        self,
        body: dict,
        __user__: Optional[dict] = None,
        __event_emitter__: Optional[Callable[[dict], Awaitable[None]]] = None,
        __event_call__: Optional[Callable[[dict], Awaitable[Any]]] = None,
    ) -> Optional[dict]:
        async def status(text: str, done: bool = False) -> None:
            if __event_emitter__:
                await __event_emitter__({"type": "status", "data": {"description": text, "done": done}})

        messages = body.get("messages") or []
        message_id = body.get("id")
        target = next((m for m in messages if message_id and m.get("id") == message_id), None)
        if target is None:
            target = next((m for m in reversed(messages) if m.get("role") == "assistant"), None)
        first_user = next((_text(m.get("content")) for m in messages if m.get("role") == "user"), "")
        if target is None or not first_user:
            await status("Nothing to rate here", done=True)
            return None
        if not self.valves.analyst_key:
            await status("Set the Flywheel analyst key in this function's Valves", done=True)
            return None
        annotation = target.get("annotation") or await stored_annotation(
            body.get("chat_id"), target.get("id"), (__user__ or {}).get("id"))
        typed = None
        if not annotation and __event_call__:
            typed = await __event_call__({"type": "input", "data": {
                "title": "Rate this answer for Flywheel",
                "message": "up, down or 1–5, then an optional comment",
                "placeholder": "2 wrong severity: this is lateral movement",
            }})
        fields = feedback_fields(annotation, typed if isinstance(typed, str) else None)
        if not fields:
            await status("No rating given", done=True)
            return None
        await status("Sending the rating to Flywheel…")
        try:
            inference = await asyncio.to_thread(self.find_inference, first_user, _text(target.get("content")))
            feedback = await asyncio.to_thread(
                self._call, "POST", "/v1/feedback", {"inference_id": inference, **fields})
        except FlywheelError as e:
            await status(str(e), done=True)
            return None
        await status(f"Rated in Flywheel ({feedback.get('id')})", done=True)
        return None
