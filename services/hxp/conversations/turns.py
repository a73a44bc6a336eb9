"""One POST /v1/responses: the context it continues, what of it fits the model, and what is stored after.

The context is rebuilt from the database (the previous response's chain, or the conversation),
so any replica answers any turn; the engine gets it whole, as chat messages, after the
instructions. It must fit the model's context window (the catalogue's ``max_model_len``) with
room for the answer, counted with the engine's tokenizer:

- ``truncation: "disabled"`` (the default): a 400 naming the window when it does not fit; the
  room kept is ``max_output_tokens`` (or one token when it is not set);
- ``truncation: "auto"``: the oldest items are dropped, the fewest that make it fit, the
  instructions and the newest item always kept; the room kept is ``max_output_tokens`` (or a
  quarter of the window, at most :data:`AUTO_OUTPUT_ROOM` tokens).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hxp.conversations import items, model_calls, store
from hxp.conversations.checks import conversation_id
from hxp.core.catalogue import Model
from hxp.core.errors import GatewayError
from hxp.core.redaction import redact
from hxp.gateway.request_context import RequestContext

AUTO_OUTPUT_ROOM = 512


def not_found(kind: str, object_id: str, param: str) -> GatewayError:
    return GatewayError(404, f"{kind} with id '{object_id}' not found.", param=param, code="not_found")


async def stored(function: Callable[..., Any], *args: Any) -> Any:
    """A store call, off the event loop; a database that cannot answer is a 503 (LookupError passes)."""
    try:
        return await asyncio.to_thread(function, *args)
    except LookupError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the client may retry
        raise GatewayError(
            503,
            f"the conversation store cannot answer: {redact(str(exc))[:300]}",
            code="store_unavailable",
            headers={"retry-after": "1"},
        ) from None


@dataclass
class Plan:
    """A response about to be made: its id, the caller's owner, the session and the chat completion."""

    response_id: str
    created_at: int
    body: dict[str, Any]
    owner: str
    session: str
    inputs: list[dict[str, Any]]
    chat: dict[str, Any]
    conversation_id: str | None = None
    history_end: int | None = None

    def response(
        self,
        status: str,
        output: list[dict[str, Any]],
        usage: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        conversation = self.conversation_id if items.stores(self.body) else None
        return items.response_object(
            self.response_id, self.body, self.created_at, status, output, usage, error, conversation
        )

    async def save(self, response: dict[str, Any]) -> None:
        """Store the response and its items (``store: false``: nothing)."""
        if not items.stores(self.body):
            return
        turn = store.Turn(
            response=response,
            owner=self.owner,
            session_id=self.session,
            inputs=self.inputs,
            outputs=response["output"],
            previous_response_id=self.body.get("previous_response_id"),
            conversation_id=self.conversation_id,
            history_end=self.history_end,
        )
        try:
            await stored(store.current().save_turn, turn)
        except LookupError:
            raise not_found("Conversation", self.conversation_id or "", "conversation") from None


async def _context(body: dict[str, Any], reader: str | None) -> store.Context:
    previous, conversation = body.get("previous_response_id"), conversation_id(body)
    if previous is not None:
        found = await stored(store.current().chain_context, previous, reader)
        if found is None:
            raise not_found("Previous response", previous, "previous_response_id")
        return found
    if conversation is not None:
        found = await stored(store.current().conversation_context, conversation, reader)
        if found is None:
            raise not_found("Conversation", conversation, "conversation")
        return found
    return store.Context([])


def _from(history: list[dict[str, Any]], start: int) -> list[dict[str, Any]]:
    """The history from ``start`` on, never beginning with the output of a call it no longer has."""
    while start < len(history) - 1 and history[start]["type"] == "function_call_output":
        start += 1
    return history[start:]


def _too_long(model: Model, tokens: int, room: int, dropped: bool) -> GatewayError:
    what = "Even the newest input alone" if dropped else "The input"
    return GatewayError(
        400,
        f"{what} ({tokens} tokens) with {room} tokens of room for the answer exceeds the context window of "
        f"model '{model.name}' ({model.max_model_len} tokens)"
        + ("" if dropped else "; shorten it, lower max_output_tokens or set truncation to 'auto'"),
        param="input",
        code="context_length_exceeded",
    )


async def fit(model: Model, body: dict[str, Any], history: list[dict[str, Any]], session: str) -> list[dict[str, Any]]:
    """The chat messages for the history that fits the model's window (see the module's rules)."""
    limit, instructions, tools = model.max_model_len, body.get("instructions"), items.chat_tools(body)
    auto = body.get("truncation") == "auto"
    room = body.get("max_output_tokens") or (min(AUTO_OUTPUT_ROOM, limit // 4) if auto else 1)

    async def count(start: int) -> int | None:
        return await model_calls.count_tokens(
            model, items.chat_messages(_from(history, start), instructions), tools, session
        )

    tokens = await count(0)
    if tokens is None or tokens + room <= limit:
        return items.chat_messages(history, instructions)
    if not auto:
        raise _too_long(model, tokens, room, False)
    low, high = 1, len(history) - 1  # the fewest oldest items to drop: the last one is always kept
    newest = await count(high) if high >= low else tokens
    if newest is None or newest + room > limit:
        raise _too_long(model, newest or tokens, room, True)
    while low < high:
        middle = (low + high) // 2
        counted = await count(middle)
        if counted is not None and counted + room <= limit:
            high = middle
        else:
            low = middle + 1
    return items.chat_messages(_from(history, high), instructions)


async def plan(ctx: RequestContext) -> Plan:
    """The context, the fitted messages and the chat completion of a checked POST /v1/responses."""
    body, caller, model = ctx.body or {}, ctx.caller, ctx.model
    assert caller is not None and model is not None
    context = await _context(body, store.reader_of(caller))
    response_id, inputs = items.new_id("resp"), items.stored_items(body.get("input"))
    session = context.session_id or response_id
    messages = await fit(model, body, context.items + inputs, session)
    return Plan(
        response_id=response_id,
        created_at=int(time.time()),
        body=body,
        owner=store.owner_of(caller),
        session=session,
        inputs=inputs,
        chat=items.chat_request(body, messages, body.get("stream") is True),
        conversation_id=conversation_id(body),
        history_end=context.history_end,
    )
