"""The trust boundary: every request passes here first, and only what the route table allows goes on.

:class:`Boundary` is the ASGI app the gateway serves, wrapped around the proxy app (LiteLLM's
FastAPI app with our routers). For each request, in this order:

1. the route: a path and method the table (route_table.yaml) does not list is answered 404,
   for every caller, and reaches no handler;
2. the caller: the route's access (public, client key, master key, metrics token, console session
   with its CSRF token on a POST) decides 401/403 (a console page without a session: a redirect to
   sign in); the caller found is kept in the request's context, and LiteLLM's custom_auth hands
   it to LiteLLM (:func:`hxp.gateway.auth.user_api_key_auth`). An unknown caller's body is never read;
3. the body: larger than HXP_MAX_BODY_BYTES is 413; it must be a JSON object (400);
4. the request: its fields are checked by kind (:mod:`hxp.gateway.validation`, 400), the model it
   names must exist (404) and be granted to the key (403), a vector collection must be granted for
   reading or writing (403), and so must the collection of a retrieval-augmented chat.

This is the one place these decisions are made: a new route is only served once the table
lists it, with the model and collection it names. An admitted request that the relay answers
(:mod:`hxp.gateway.relay`: an OpenAI-wire backend's own bytes) goes there instead of LiteLLM's
route. Routes marked ``usage`` are observed from arrival to the last byte
(:mod:`hxp.gateway.observer`), refusals included. Every answer gets an ``x-request-id`` (the
usage row's id, also given to LiteLLM as its call id) and loses the headers that would describe
the backends (``llm_provider-*``, ``x-litellm-model-api-base``...). Every 401, 403 and 429
answered is counted for the audit trail (:func:`hxp.gateway.audited.refused`).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hxp.core import errors
from hxp.core.catalogue import Model
from hxp.core.context import runtime
from hxp.gateway import audited, auth, deployments, extensions, relay, request_log, validation
from hxp.gateway.auth import Caller
from hxp.gateway.observer import Observation
from hxp.gateway.request_context import CURRENT, SCOPE_KEY, RequestContext
from hxp.gateway.route_table import Route, table

App = ASGIApp
AccessCheck = Callable[[str, str, dict[str, str]], Awaitable[Caller]]  # extensions.ACCESS_CHECKS' signature

REQUEST_ID_HEADER = b"x-request-id"
CALL_ID_HEADER = b"x-litellm-call-id"
_KEPT_LITELLM_HEADERS = frozenset({CALL_ID_HEADER})  # LiteLLM's other x-litellm-* headers describe internals


class Boundary:
    """ASGI middleware enforcing the route table in front of ``app``."""

    def __init__(self, app: App) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        if scope["type"] != "http":  # no WebSocket route is served
            await send({"type": "websocket.close", "code": 1008})
            return
        client = scope.get("client")
        ctx = RequestContext(request_id=str(uuid.uuid4()), client=client[0] if client else "")
        scope[SCOPE_KEY] = ctx
        scope["headers"] = [(n, v) for n, v in scope["headers"] if n != CALL_ID_HEADER] + [
            (CALL_ID_HEADER, ctx.request_id.encode())
        ]
        answer_headers = _answer_headers(ctx, scope["path"])
        outgoing = _outgoing(send, answer_headers)
        match = table().match(scope["method"], scope["path"])
        if match.route is None:
            await _refuse(scope, receive, outgoing, _not_served(scope, match.allowed))
            return
        ctx.route, ctx.params = match.route, match.params
        observation = Observation(ctx.request_id) if ctx.route.usage else None
        token = CURRENT.set(ctx)
        try:
            try:
                receive = await self._admit(scope, receive, ctx, observation)
            except errors.GatewayError as refusal:
                if observation is not None:
                    observation.refused(refusal.status_code, f"{refusal.type}: {refusal.message}")
                    observation.finish()  # recorded before the answer goes out, as an answer's last message is
                await _refuse(scope, receive, outgoing, refusal)
                return
            if observation is not None:
                observation.admitted()
                observed = observation.sender(send, answer_headers)  # one wrapper for both
                if relay.handles(scope["path"], ctx.model, ctx.body):
                    assert ctx.caller is not None and ctx.body is not None
                    await relay.relay(scope, receive, observed, ctx.caller.litellm_identity(), ctx.body)
                else:
                    await self.app(scope, receive, observed)
            else:
                await self.app(scope, receive, outgoing)
        finally:
            CURRENT.reset(token)
            if observation is not None:
                observation.finish()

    async def _admit(
        self, scope: Scope, receive: Receive, ctx: RequestContext, observation: Observation | None
    ) -> Receive:
        """Check the request against its route; return the ``receive`` that replays the body read here."""
        route, cfg = ctx.route, runtime().settings
        assert route is not None
        headers = {n.decode("latin-1"): v.decode("latin-1") for n, v in scope["headers"]}
        ctx.caller = await _authorize(route, headers, scope)  # before the body: an unknown caller's body is never read
        if observation is not None and ctx.caller is not None:
            observation.key_alias = ctx.caller.alias
            observation.key_id = ctx.caller.key.key_id if ctx.caller.key else None
        raw = await _read_body(receive, headers, cfg.max_body_bytes)
        if route.takes_body(scope["method"]):
            ctx.body = validation.check_object(_parse(raw))
            if observation is not None and isinstance(ctx.body.get("model"), str):
                observation.requested = ctx.body["model"][:100]
                observation.model = deployments.catalogue().canonical(ctx.body["model"])
        model = _named_model(route, ctx)
        if model is not None:
            ctx.model = model
            validation.validate(route.body or "", ctx.body or {}, model, cfg.max_inputs)
            if ctx.body is not None:
                validation.check_destination(ctx.body, scope["path"])
        _check_collections(route, ctx)
        if observation is not None and ctx.body is not None:
            raw = _observe_body(observation, ctx.body) or raw
        return _replay(raw, receive)


async def _authorize(route: Route, headers: dict[str, str], scope: Scope) -> Caller | None:
    """The caller the route's access requires (401/403 otherwise); None for an anonymous public call."""
    if route.access in extensions.ACCESS_CHECKS:  # an access kind a feature defines (the console's session)
        check: AccessCheck = extensions.resolve(extensions.ACCESS_CHECKS[route.access])
        return await check(scope["method"], scope["path"], headers)
    secret = auth.secret_of(headers)
    if route.access in ("public", "metrics"):
        if auth.is_master_key(secret):
            return Caller(None)
        if route.access == "public" or auth.is_metrics_token(secret):
            return None
        raise errors.unauthorized("/metrics needs 'Authorization: Bearer <HXP_METRICS_TOKEN>'")
    caller = await auth.identify(secret)
    if route.access == "master" and not caller.master:
        raise errors.GatewayError(403, "This route requires the master key", code="admin_only")
    return caller


def _named_model(route: Route, ctx: RequestContext) -> Model | None:
    """The catalogue model the request names (404 unknown, 403 not granted), or None."""
    if route.model is None:
        return None
    name = validation.model_name(ctx.body or {}) if route.model == "body" else ctx.params["model_id"]
    try:
        model = deployments.catalogue().get(name)
    except KeyError:
        raise errors.model_not_found(name) from None
    assert ctx.caller is not None
    if not ctx.caller.allows(model.name):
        raise errors.forbidden(f"API key '{ctx.caller.alias}' may not use model '{name}'", "model")
    return model


def _check_collections(route: Route, ctx: RequestContext) -> None:
    """The vector collection the route names, or the one a chat retrieves from, must be granted to the key."""
    wanted: list[tuple[str, str, str]] = []  # (collection, read|write, param)
    if route.collection is not None:
        wanted.append((ctx.params["collection"], route.collection, "collection"))
    rag = (ctx.body or {}).get("rag") if route.body == "chat" else None
    if isinstance(rag, dict) and isinstance(rag.get("collection"), str):
        wanted.append((rag["collection"], "read", "rag.collection"))
    for name, action, param in wanted:
        assert ctx.caller is not None
        allowed = ctx.caller.may_read(name) if action == "read" else ctx.caller.may_write(name)
        if not allowed:
            raise errors.GatewayError(
                403,
                f"API key '{ctx.caller.alias}' may not {action} collection '{name}'",
                param=param,
                code="collection_not_allowed",
            )


def _observe_body(observation: Observation, body: dict[str, Any]) -> bytes | None:
    """Note what the observation needs from the body; a stream is made to report its usage. Returns the body
    to pass on when it had to change."""
    observation.stream = body.get("stream") is True
    if request_log.content_enabled():
        observation.prompt = body.get("messages", body.get("prompt", body.get("input")))
    if not observation.stream:
        return None
    options = body.get("stream_options") or {}
    if options.get("include_usage") is True:
        return None
    observation.strip_usage = True
    body["stream_options"] = {**options, "include_usage": True}
    return orjson.dumps(body)


async def _read_body(receive: Receive, headers: dict[str, str], limit: int) -> bytes:
    """The whole request body (413 past ``limit`` bytes, before reading it when its length is announced)."""
    length = headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    if length in (None, "0") and "chunked" not in headers.get("transfer-encoding", ""):
        return b""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _too_large(limit: int) -> errors.GatewayError:
    return errors.GatewayError(
        413,
        f"The request body is larger than {limit} bytes (HXP_MAX_BODY_BYTES)",
        param="body",
        code="request_too_large",
    )


def _parse(raw: bytes) -> Any:
    """The body parsed as JSON (400 when it is not)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        problem = "the body is empty" if not raw.strip() else f"{exc}"
        raise errors.GatewayError(
            400, f"The request body is not valid JSON: {problem}", param="body", code="invalid_json"
        ) from None


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that gives the handler the body read here, then the client's later messages."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _answer_headers(ctx: RequestContext, path: str) -> Callable[[Message], None]:
    """Edits an answer's start message: adds the request id, drops the headers that describe the backends; counts
    a refusal for the audit trail."""
    rid = ctx.request_id.encode()

    def clean(message: Message) -> None:
        message["headers"] = [(n, v) for n, v in message.get("headers", ()) if _kept(n)] + [(REQUEST_ID_HEADER, rid)]
        if message["status"] in audited.REFUSED:
            audited.refused(ctx, message["status"], path)

    return clean


def _outgoing(send: Send, answer_headers: Callable[[Message], None]) -> Send:
    """``send`` with the answer's headers edited."""

    async def outgoing(message: Message) -> None:
        if message["type"] == "http.response.start":
            answer_headers(message)
        await send(message)

    return outgoing


def _kept(name: bytes) -> bool:
    name = name.lower()
    if name.startswith(b"llm_provider-"):
        return False
    return not name.startswith(b"x-litellm-") or name in _KEPT_LITELLM_HEADERS


def _not_served(scope: Scope, allowed: tuple[str, ...]) -> errors.GatewayError:
    """404 for whatever the table does not list, a listed path with another method included."""
    hint = f" (this path answers {', '.join(allowed)})" if allowed else ""
    return errors.GatewayError(404, f"Unknown route: {scope['method']} {scope['path']}{hint}", code="unknown_route")


async def _refuse(scope: Scope, receive: Receive, send: Send, refusal: errors.GatewayError) -> None:
    await refusal.response()(scope, receive, send)
