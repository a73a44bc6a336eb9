"""The Responses and Conversations APIs on the gateway (OpenAI's shapes; the official SDK works as is).

- ``POST /v1/responses`` (streamed or not), ``GET``/``DELETE /v1/responses/{id}``,
  ``GET /v1/responses/{id}/input_items``;
- ``POST /v1/conversations``, ``GET``/``POST``/``DELETE /v1/conversations/{id}``,
  ``GET``/``POST /v1/conversations/{id}/items``, ``GET``/``DELETE /v1/conversations/{id}/items/{item_id}``.

The boundary has checked the key, the body (POST /v1/responses: kind ``responses``) and the
model. Objects belong to the key's owner: any other owner's key gets a 404; the master key
reaches every object. The router's lifespan purges what is older than the retention
(HXP_CONVERSATION_RETENTION_DAYS) at start and every hour; ``hxp conversations purge`` does it
at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from hxp.conversations import items, model_calls, store, stream, turns
from hxp.conversations.checks import MAX_NEW_ITEMS, check_items, check_metadata
from hxp.conversations.turns import not_found, stored
from hxp.core.context import runtime
from hxp.core.errors import GatewayError, bad_request
from hxp.gateway.request_context import context_of

log = logging.getLogger("hxp.gateway")
PURGE_INTERVAL_S = 3600.0
DEFAULT_PAGE, MAX_PAGE = 20, 100


async def _purge_periodically() -> None:
    while True:
        try:
            purged = await asyncio.to_thread(store.purge, runtime().settings.conversation_retention_days)
            if any(purged.values()):
                log.info("retention: purged %(responses)d responses and %(conversations)d conversations", purged)
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            log.warning("retention purge failed: %s", exc)
        await asyncio.sleep(PURGE_INTERVAL_S)


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(_purge_periodically())
    try:
        yield
    finally:
        task.cancel()


router = APIRouter(tags=["responses"], lifespan=_lifespan)


def _reader(request: Request) -> str | None:
    caller = context_of(request.scope).caller
    assert caller is not None  # every route here needs a key
    return store.reader_of(caller)


async def _owned(request: Request, kind: str, object_id: str, method: Callable[..., Any], *args: Any) -> Any:
    """``method(object_id, the caller's owner, *args)`` of the store; a 404 naming the object when it finds nothing."""
    found = await stored(method, object_id, _reader(request), *args)
    if found is None or found is False:
        raise not_found(kind.capitalize(), object_id, f"{kind}_id")
    return found


def _deleted(kind: str, object_id: str) -> dict[str, Any]:
    return {"id": object_id, "object": f"{kind}.deleted", "deleted": True}


def _page(found: list[dict[str, Any]], request: Request) -> dict[str, Any]:
    """One page of items: ``order`` (desc by default), ``after`` an item id, ``limit`` 1 to 100 (20)."""
    query = request.query_params
    order, after, limit = query.get("order", "desc"), query.get("after"), query.get("limit", str(DEFAULT_PAGE))
    if order not in ("asc", "desc"):
        raise bad_request("order", f"'order' must be asc or desc, got {order!r}")
    if not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
        raise bad_request("limit", f"'limit' must be an integer between 1 and {MAX_PAGE}, got {limit!r}")
    ordered = found if order == "asc" else found[::-1]
    if after is not None:
        ids = [item["id"] for item in ordered]
        if after not in ids:
            raise bad_request("after", f"'after' must be the id of one of these items, got {after!r}")
        ordered = ordered[ids.index(after) + 1 :]
    data = ordered[: int(limit)]
    return _list(data, has_more=len(ordered) > len(data))


def _list(data: list[dict[str, Any]], has_more: bool = False) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


# --- responses -------------------------------------------------------------------------------------------
@router.post("/v1/responses")
async def create_response(request: Request) -> Response:
    plan = await turns.plan(context_of(request.scope))
    gateway = model_calls.Gateway.of(request)
    try:
        if plan.chat.get("stream"):
            upstream = await gateway.stream(plan.chat, plan.session)
            return StreamingResponse(
                _relay(plan, upstream), media_type="text/event-stream", headers={"cache-control": "no-cache"}
            )
        answer = await gateway.complete(plan.chat, plan.session)
    except model_calls.Refused as refused:
        return Response(refused.body, refused.status, headers=refused.headers, media_type="application/json")
    except httpx.HTTPError as exc:
        raise GatewayError(503, f"the model call failed: {exc!r}", code="backend_unavailable") from None
    choice = (answer.get("choices") or [{}])[0]
    reason = choice.get("finish_reason")
    response = plan.response(
        items.status_of(reason),
        items.output_items(choice.get("message") or {}, reason),
        items.usage(answer.get("usage")),
    )
    await plan.save(response)
    return JSONResponse(response)


async def _relay(plan: turns.Plan, upstream: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for event in stream.events(plan, upstream.aiter_lines(), plan.save):
            yield event
    finally:
        await upstream.aclose()


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> dict[str, Any]:
    return await _owned(request, "response", response_id, store.current().response)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, request: Request) -> dict[str, Any]:
    await _owned(request, "response", response_id, store.current().delete_response)
    return _deleted("response", response_id)


@router.get("/v1/responses/{response_id}/input_items")
async def input_items(response_id: str, request: Request) -> dict[str, Any]:
    context = await _owned(request, "response", response_id, store.current().chain_context, False)
    return _page(context.items, request)


# --- conversations ---------------------------------------------------------------------------------------
def _body(request: Request) -> dict[str, Any]:
    return context_of(request.scope).body or {}


def _new_items(body: dict[str, Any], required: bool) -> list[dict[str, Any]]:
    value = body.get("items")
    if value is None and not required:
        return []
    check_items(value, "items", MAX_NEW_ITEMS)
    return items.stored_items(value)


@router.post("/v1/conversations")
async def create_conversation(request: Request) -> dict[str, Any]:
    body = _body(request)
    check_metadata(body.get("metadata"))
    new = _new_items(body, required=False)
    caller = context_of(request.scope).caller
    assert caller is not None
    return await stored(
        store.current().create_conversation,
        items.new_id("conv"),
        store.owner_of(caller),
        body.get("metadata") or {},
        new,
    )


@router.get("/v1/conversations/{conversation_id}")
async def get_conversation(conversation_id: str, request: Request) -> dict[str, Any]:
    return await _owned(request, "conversation", conversation_id, store.current().conversation)


@router.post("/v1/conversations/{conversation_id}")
async def update_conversation(conversation_id: str, request: Request) -> dict[str, Any]:
    body = _body(request)
    if "metadata" not in body:
        raise bad_request("metadata", "'metadata' is required")
    check_metadata(body["metadata"])
    return await _owned(
        request, "conversation", conversation_id, store.current().update_conversation, body["metadata"] or {}
    )


@router.delete("/v1/conversations/{conversation_id}")
async def delete_conversation(conversation_id: str, request: Request) -> dict[str, Any]:
    await _owned(request, "conversation", conversation_id, store.current().delete_conversation)
    return _deleted("conversation", conversation_id)


@router.get("/v1/conversations/{conversation_id}/items")
async def list_items(conversation_id: str, request: Request) -> dict[str, Any]:
    context = await _owned(request, "conversation", conversation_id, store.current().conversation_context)
    return _page(context.items, request)


@router.post("/v1/conversations/{conversation_id}/items")
async def add_items(conversation_id: str, request: Request) -> dict[str, Any]:
    new = _new_items(_body(request), required=True)
    await _owned(request, "conversation", conversation_id, store.current().add_items, new)
    return _list(new)


@router.get("/v1/conversations/{conversation_id}/items/{item_id}")
async def get_item(conversation_id: str, item_id: str, request: Request) -> dict[str, Any]:
    await _owned(request, "conversation", conversation_id, store.current().conversation)
    found = await stored(store.current().item, conversation_id, item_id)
    if found is None:
        raise not_found("Item", item_id, "item_id")
    return found


@router.delete("/v1/conversations/{conversation_id}/items/{item_id}")
async def delete_item(conversation_id: str, item_id: str, request: Request) -> dict[str, Any]:
    conversation = await _owned(request, "conversation", conversation_id, store.current().conversation)
    if not await stored(store.current().delete_item, conversation_id, item_id):
        raise not_found("Item", item_id, "item_id")
    return conversation
