"""A streamed chat completion as the Responses API's server-sent events.

``response.created`` and ``response.in_progress`` first; the answer's text as an output message
(``response.output_item.added``, ``response.content_part.added``, one ``response.output_text.delta``
per chunk, then the ``.done`` events); each tool call as a function_call item; and at the end,
once the response is stored, ``response.completed`` (or ``response.incomplete`` when the answer
was cut at max_output_tokens) carrying the whole Response with its id. A failure of the model
call after the stream began ends it with ``response.failed``; nothing is stored then.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from hxp.conversations import items
from hxp.conversations.turns import Plan
from hxp.core.errors import GatewayError


class Events:
    """Numbered server-sent events."""

    def __init__(self) -> None:
        self.sequence = 0

    def __call__(self, kind: str, **fields: Any) -> bytes:
        payload = orjson.dumps({"type": kind, "sequence_number": self.sequence, **fields})
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


@dataclass
class Answer:
    """The chat answer as its chunks arrive."""

    text: list[str] = field(default_factory=list)
    calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    finish_reason: str | None = None
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def feed(self, chunk: dict[str, Any]) -> str:
        """Take one chunk; return the text it adds."""
        if isinstance(chunk.get("error"), dict):
            self.error = chunk["error"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        piece = ""
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            piece += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                held = self.calls.setdefault(call.get("index", 0), {"function": {"name": "", "arguments": ""}})
                held["id"] = call.get("id") or held.get("id")
                function = call.get("function") or {}
                held["function"]["name"] += function.get("name") or ""
                held["function"]["arguments"] += function.get("arguments") or ""
            self.finish_reason = choice.get("finish_reason") or self.finish_reason
        if piece:
            self.text.append(piece)
        return piece


async def _chunks(lines: AsyncIterator[str]) -> AsyncIterator[dict[str, Any]]:
    """The chat chunks; a stream that breaks off ends with an error chunk."""
    try:
        async for line in lines:
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                return
            yield orjson.loads(data)
    except httpx.HTTPError as exc:
        yield {"error": {"message": f"the model call broke off: {exc!r}"}}


async def events(
    plan: Plan, lines: AsyncIterator[str], finish: Callable[[dict[str, Any]], Awaitable[None]]
) -> AsyncIterator[bytes]:
    """The Responses events for the chat chunks in ``lines``; ``finish`` stores the response before the last."""
    event, answer = Events(), Answer()
    yield event("response.created", response=plan.response("in_progress", []))
    yield event("response.in_progress", response=plan.response("in_progress", []))
    message_id = items.new_id("msg")
    where = {"item_id": message_id, "output_index": 0, "content_index": 0}

    def opening() -> list[bytes]:
        return [
            event(
                "response.output_item.added",
                output_index=0,
                item=items.message_item(message_id, "", "in_progress") | {"content": []},
            ),
            event("response.content_part.added", **where, part={"type": "output_text", "text": "", "annotations": []}),
        ]

    started = False
    async for chunk in _chunks(lines):
        piece = answer.feed(chunk)
        if answer.error is not None:
            error = {"code": "server_error", "message": str(answer.error.get("message") or answer.error)}
            yield event("response.failed", response=plan.response("failed", [], error=error))
            return
        if piece:
            if not started:
                started = True
                for opened in opening():
                    yield opened
            yield event("response.output_text.delta", **where, delta=piece, logprobs=[])
    output: list[dict[str, Any]] = []
    text, status = "".join(answer.text), items.status_of(answer.finish_reason)
    if started or not answer.calls:
        message = items.message_item(message_id, text, status)
        for opened in [] if started else opening():
            yield opened
        yield event("response.output_text.done", **where, text=text, logprobs=[])
        yield event("response.content_part.done", **where, part=message["content"][0])
        yield event("response.output_item.done", output_index=0, item=message)
        output.append(message)
    for index in sorted(answer.calls):
        call = items.function_call_item(answer.calls[index])
        at = len(output)
        yield event("response.output_item.added", output_index=at, item=call | {"status": "in_progress"})
        yield event(
            "response.function_call_arguments.done",
            item_id=call["id"],
            output_index=at,
            name=call["name"],
            arguments=call["arguments"],
        )
        yield event("response.output_item.done", output_index=at, item=call)
        output.append(call)
    response = plan.response(status, output, items.usage(answer.usage))
    try:
        await finish(response)
    except GatewayError as exc:
        yield event("error", code=exc.openai_code, message=exc.message, param=exc.param)
        return
    yield event("response.completed" if status == "completed" else "response.incomplete", response=response)
