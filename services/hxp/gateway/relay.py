"""The relay: OpenAI-wire backends answered with their own bytes, not re-encoded by LiteLLM.

For /v1/chat/completions, /v1/completions and /v1/embeddings on a model whose deployments all
speak the OpenAI wire format (every vLLM engine), the boundary hands the admitted request here
instead of to LiteLLM's route. What LiteLLM decides stays LiteLLM's, through its own APIs:

- before the call, ``ProxyBaseLLMRequestProcessing.common_processing_pre_call_logic``: the
  pre-call hooks (ours, the rpm/tpm limiter with its token reservation);
- the call, ``Router._ageneric_api_call_with_fallbacks`` with :func:`_open` as the function it
  runs: the router picks the deployment (its cooldowns, load balancing and our session affinity
  filter), holds its ``max_parallel_requests`` slot, retries and falls back until a backend has
  answered with a success status; a deployment that failed is put in cooldown
  (``set_cooldown_deployments``) as LiteLLM does for its own calls;
- a refusal or a failure before the first byte, ``handle_llm_api_exception``: the failure hooks
  (our error shapes, the limiter's refund) and LiteLLM's own OpenAI-shaped error response;
- after the answer, the limiter's success (or failure) event with the engine's exact usage, so the
  key's tpm window is charged what the engine counted.

The answer itself is relayed as it comes: the upstream's status, content type and bytes, SSE
events whole (an event split across reads is held until its end, so that the observer sees the
usage chunk as one message and can hold it back when the client did not ask for it). A client
that leaves closes the upstream connection (the engine stops generating). A stream that breaks
after its first byte ends with LiteLLM's error event, which the observer records as failed.

Requests that need LiteLLM's transformation keep its path: a backend of another provider, the
response cache (a cacheable request) and retrieval-augmented chat (its answer carries sources).
"""

from __future__ import annotations

import asyncio
import re
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, Literal

import aiohttp
import litellm
import orjson
from fastapi import APIRouter, FastAPI
from litellm.constants import (
    AIOHTTP_TCP_KEEPCNT,
    AIOHTTP_TCP_KEEPIDLE,
    AIOHTTP_TCP_KEEPINTVL,
    HTTP_HANDLER_CONNECT_TIMEOUT_SECONDS,
)
from litellm.llms.custom_httpx.http_handler import build_aiohttp_keepalive_socket_factory
from litellm.proxy._types import ProxyException, UserAPIKeyAuth
from litellm.proxy.common_request_processing import ProxyBaseLLMRequestProcessing
from litellm.router_utils.cooldown_handlers import set_cooldown_deployments
from litellm.types.utils import Usage
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from hxp.core.catalogue import Model
from hxp.core.context import Runtime, runtime
from hxp.gateway import deployments, hooks
from hxp.gateway.observer import CACHE_HEADER, usage_tokens

CallType = Literal["acompletion", "atext_completion", "aembedding"]
ROUTES: dict[str, CallType] = {
    "/v1/chat/completions": "acompletion",
    "/v1/completions": "atext_completion",
    "/v1/embeddings": "aembedding",
}  # path -> LiteLLM's call type
OPENAI_WIRE = ("openai/", "hosted_vllm/")  # LiteLLM providers whose backends speak the OpenAI wire format
_EVENT_END = b"\n\n"
_USAGE_MARK = b'"prompt_tokens":'
_MODEL_FIELD = re.compile(rb'"model": ?"(?:[^"\\]|\\.)*"')  # the answer's model name, as JSON writes it
_KEPT_HEADERS = frozenset({b"content-type"})
_NOT_FORWARDED = frozenset({"metadata"})  # LiteLLM's bookkeeping field in the request data, never the engine's


def _wire(rt: Runtime) -> dict[str, bool]:
    """Model name -> whether every deployment of its group speaks the OpenAI wire format."""
    return {}


def _sessions(rt: Runtime) -> dict[asyncio.AbstractEventLoop, aiohttp.ClientSession]:
    """The connection pools to the backends, one per event loop."""
    return {}


class UpstreamError(Exception):
    """A backend answered with an error status (before any byte of the answer was relayed)."""

    def __init__(self, status: int, body: bytes) -> None:
        self.status_code = status
        error = _error_of(body)
        super().__init__(f"{error.get('type') or 'upstream error'}: {error.get('message') or body[:500]!r}")


def handles(path: str, model: Model | None, body: dict[str, Any] | None) -> bool:
    """Whether the relay answers this admitted request (else LiteLLM's route does)."""
    if path not in ROUTES or model is None or body is None:
        return False
    if "rag" in body or hooks.cacheable(model, body):
        return False
    return all(_openai_wire(name) for name in (model.name, *model.api.fallbacks))  # the router may fall back


def _openai_wire(name: str) -> bool:
    """Whether every deployment of the model group speaks the OpenAI wire format (cached per name)."""
    wire = runtime().get(_wire)
    known = wire.get(name)
    if known is None:
        router = _proxy().llm_router
        models = (router.get_model_list(model_name=name) if router is not None else None) or []
        known = bool(models) and all(str(d["litellm_params"]["model"]).startswith(OPENAI_WIRE) for d in models)
        wire[name] = known
    return known


def _proxy() -> Any:
    from litellm.proxy import proxy_server

    return proxy_server


def _session() -> aiohttp.ClientSession:
    """This worker's connection pool to the backends (one per event loop)."""
    loop = asyncio.get_running_loop()
    sessions = runtime().get(_sessions)
    session = sessions.get(loop)
    if session is None or session.closed:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                limit=0,
                ttl_dns_cache=deployments.DNS_TTL_S,
                keepalive_timeout=deployments.IDLE_CONNECTION_S,
                socket_factory=_socket_factory(),
            ),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        sessions[loop] = session
    return session


def _socket_factory() -> Callable[[Any], socket.socket] | None:
    """Sockets that notice a vanished engine host (no reset ever comes from it) within seconds, so that the
    request is retried elsewhere instead of waiting for the model's timeout: TCP keep-alive as on LiteLLM's
    own connections (:mod:`hxp.gateway.litellm_env`) for a request waiting for its answer, and a user timeout
    as long for a request the host never acknowledged (the kernel would retransmit for some 15 minutes)."""
    keepalive = build_aiohttp_keepalive_socket_factory()
    if keepalive is None:
        return None
    give_up_ms = 1000 * (AIOHTTP_TCP_KEEPIDLE + AIOHTTP_TCP_KEEPINTVL * AIOHTTP_TCP_KEEPCNT)

    def factory(addr_info: Any) -> socket.socket:
        sock = keepalive(addr_info)
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, give_up_ms)
        return sock

    return factory


async def relay(scope: Scope, receive: Receive, send: Send, identity: UserAPIKeyAuth, body: dict[str, Any]) -> None:
    """Answer one admitted request through the router, relaying the backend's bytes."""
    proxy = _proxy()
    route_type = ROUTES[scope["path"]]
    forwarded = [name for name in body if name not in _NOT_FORWARDED]
    processor = ProxyBaseLLMRequestProcessing(data=dict(body))
    request = Request(scope, receive)
    started = time.time()
    try:
        data, _ = await processor.common_processing_pre_call_logic(
            request=request,
            general_settings=proxy.general_settings,
            user_api_key_dict=identity,
            proxy_logging_obj=proxy.proxy_logging_obj,
            proxy_config=proxy.proxy_config,
            route_type=route_type,
            llm_router=proxy.llm_router,
        )
        payload = {name: data[name] for name in forwarded if name in data}
        call = dict(data)
        response: aiohttp.ClientResponse = await proxy.llm_router._ageneric_api_call_with_fallbacks(
            model=call.pop("model"), original_function=_opener(scope["path"], payload), **call
        )
    except Exception as exc:  # noqa: BLE001 - every failure is answered as LiteLLM answers it
        await _answer_failure(processor, exc, identity, request, scope, receive, send)
        return
    usage = await _Answer(response, receive, send, str(body.get("model", ""))).relay()
    await _settle(processor.data, usage, started, identity)


def _opener(path: str, payload: dict[str, Any]) -> Callable[..., Awaitable[aiohttp.ClientResponse]]:
    """The function the router calls with the deployment it chose: the upstream request, up to its status."""

    async def open_upstream(**kwargs: Any) -> aiohttp.ClientResponse:
        deployment_model = str(kwargs["model"])
        body = orjson.dumps({**payload, "model": deployment_model.split("/", 1)[1]})
        stream = payload.get("stream") is True
        timeout = float((kwargs.get("stream_timeout") if stream else None) or kwargs.get("timeout") or 600)
        url = f"{str(kwargs['api_base']).rstrip('/')}{path.removeprefix('/v1')}"
        headers = {"content-type": "application/json", "authorization": f"Bearer {kwargs.get('api_key') or ''}"}
        try:
            response = await _session().post(
                url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(
                    total=None if stream else timeout,
                    sock_connect=min(timeout, HTTP_HANDLER_CONNECT_TIMEOUT_SECONDS),  # as LiteLLM's own calls
                    sock_read=timeout,
                ),
            )
            if response.status >= 400:
                raise UpstreamError(response.status, await _read_closing(response))
            if not _streamed(response):
                await response.read()  # a JSON answer is read whole here: failing to, the router may retry
            return response
        except Exception as exc:
            raise _failed(exc, kwargs) from exc

    return open_upstream


def _streamed(response: aiohttp.ClientResponse) -> bool:
    return response.content_type == "text/event-stream"


async def _read_closing(response: aiohttp.ClientResponse) -> bytes:
    try:
        return await response.read()
    finally:
        response.release()


def _failed(exc: Exception, kwargs: dict[str, Any]) -> Exception:
    """LiteLLM's exception for a failed upstream call, after putting the deployment in cooldown."""
    model, provider = str(kwargs["model"]), "openai"
    message = f"OpenAIException - {exc}"
    failure: Exception
    if isinstance(exc, UpstreamError):
        status = exc.status_code
        failure = _status_exception(status, message, model, provider)
    elif isinstance(exc, TimeoutError):
        status, failure = 408, litellm.Timeout(message, model, provider)
    else:  # as LiteLLM's OpenAI provider maps a connection error: cooled down, unlike its APIConnectionError
        status, failure = 500, litellm.InternalServerError(message, provider, model)
    metadata = kwargs.get("litellm_metadata") or {}
    deployment_id = (metadata.get("model_info") or {}).get("id")
    set_cooldown_deployments(
        _proxy().llm_router,
        failure,
        status,
        deployment_id,
        requested_model_group=metadata.get("model_group"),
        request_kwargs=kwargs,
    )
    return failure


def _status_exception(status: int, message: str, model: str, provider: str) -> Exception:
    """LiteLLM's exception class for an upstream error status (as its OpenAI provider maps them)."""
    if status == 408:
        return litellm.Timeout(message, model, provider)
    kinds: dict[int, Callable[..., Exception]] = {
        400: litellm.BadRequestError,
        401: litellm.AuthenticationError,
        403: litellm.PermissionDeniedError,
        404: litellm.NotFoundError,
        422: litellm.UnprocessableEntityError,
        429: litellm.RateLimitError,
        503: litellm.ServiceUnavailableError,
    }
    kind = kinds.get(status)
    if kind is not None:
        return kind(message, model=model, llm_provider=provider)
    if status >= 500:
        return litellm.InternalServerError(message, llm_provider=provider, model=model)
    return litellm.BadRequestError(message, model=model, llm_provider=provider)


async def _answer_failure(
    processor: ProxyBaseLLMRequestProcessing,
    exc: Exception,
    identity: UserAPIKeyAuth,
    request: Request,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """The failure hooks, then LiteLLM's own error answer."""
    try:
        await processor.handle_llm_api_exception(
            e=exc, user_api_key_dict=identity, proxy_logging_obj=_proxy().proxy_logging_obj
        )
    except ProxyException as error:
        response = await _proxy().openai_exception_handler(request, error)
        await response(scope, receive, send)


class _Answer:
    """The backend's answer relayed to the client: status, content type, then its bytes as they come, naming the
    model the client asked for (an engine serving several names answers with its first; LiteLLM's path names
    the one asked for, and so does OpenAI's API)."""

    def __init__(self, response: aiohttp.ClientResponse, receive: Receive, send: Send, model: str) -> None:
        self.response = response
        self.receive = receive
        self.send = send
        self.usage: dict[str, int] = {}
        self._model = b'"model":' + orjson.dumps(model)
        self._engine_model: bytes | None = None  # the engine's `"model":"…"`, once seen, when it differs

    def _named(self, data: bytes) -> bytes:
        """``data`` with the engine's model name replaced by the one asked for (one bytes.replace a read)."""
        if self._engine_model is None:
            found = _MODEL_FIELD.search(data)
            if found is None:
                return data
            self._engine_model = found.group(0) if found.group(0) != self._model else b""
        return data.replace(self._engine_model, self._model) if self._engine_model else data

    async def relay(self) -> dict[str, int] | None:
        """Relay the whole answer; the usage it reported (None when it broke off or the client left first)."""
        copying = asyncio.ensure_future(self._copy())
        watching = asyncio.ensure_future(self._watch())
        try:
            await asyncio.wait((copying, watching), return_when=asyncio.FIRST_COMPLETED)
        finally:
            watching.cancel()
            left = not copying.done()
            if left:  # the client went away (or the request was cancelled): stop, close the upstream connection
                copying.cancel()
            self.response.close()
        if left:
            await asyncio.gather(copying, return_exceptions=True)
            return None
        return copying.result()

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass

    async def _copy(self) -> dict[str, int] | None:
        response = self.response
        headers = [(n.lower(), v) for n, v in response.raw_headers if n.lower() in _KEPT_HEADERS]
        await self.send(
            {"type": "http.response.start", "status": response.status, "headers": headers + [(CACHE_HEADER, b"miss")]}
        )
        if not _streamed(response):
            body = self._named(await response.read())  # already read by the upstream call
            self.usage = usage_tokens(body[body.rfind(b'"usage":') :])
            await self.send({"type": "http.response.body", "body": body, "more_body": False})
            return self.usage
        return await self._copy_events()

    async def _copy_events(self) -> dict[str, int] | None:
        """The SSE events as they come, whole (a read's unfinished event waits for its end)."""
        send, held = self.send, b""
        try:
            async for data in self.response.content.iter_any():
                end = data.rfind(_EVENT_END)
                if end < 0:
                    held += data
                    continue
                events, held = self._named(held + data[: end + 2]), data[end + 2 :]
                if _USAGE_MARK in events:
                    await self._events(events)
                else:
                    await send({"type": "http.response.body", "body": events, "more_body": True})
        except (aiohttp.ClientError, TimeoutError) as exc:
            await send({"type": "http.response.body", "body": _stream_error(exc), "more_body": False})
            return None
        await send({"type": "http.response.body", "body": self._named(held), "more_body": False})
        return self.usage

    async def _events(self, events: bytes) -> None:
        """Events that include the usage chunk, one message each."""
        for event in events.split(_EVENT_END)[:-1]:
            if _USAGE_MARK in event:
                self.usage = usage_tokens(event)
            await self.send({"type": "http.response.body", "body": event + _EVENT_END, "more_body": True})


def _stream_error(exc: BaseException) -> bytes:
    """LiteLLM's event for a stream that failed after it started."""
    error = {
        "message": f"the backend's stream broke off: {exc or type(exc).__name__}",
        "type": "api_error",
        "param": None,
        "code": "502",
    }
    return b"data: " + orjson.dumps({"error": error}) + _EVENT_END


def _error_of(body: bytes) -> dict[str, Any]:
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {"message": str(error)}


async def _settle(data: dict[str, Any], usage: dict[str, int] | None, started: float, identity: UserAPIKeyAuth) -> None:
    """The limiter's success event with the engine's usage (its failure event when the answer broke off)."""
    limiter = _proxy().proxy_logging_obj.get_proxy_hook("parallel_request_limiter")
    kwargs = {
        "litellm_call_id": data.get("litellm_call_id"),
        "litellm_params": {"metadata": data.get("metadata")},
        "standard_logging_object": {"metadata": _logging_metadata(data, identity)},
        "combined_usage_object": Usage(
            prompt_tokens=(usage or {}).get("prompt_tokens", 0),
            completion_tokens=(usage or {}).get("completion_tokens", 0),
            total_tokens=(usage or {}).get("total_tokens", 0),
        ),
    }
    ended = time.time()
    if usage is None:
        await limiter.async_log_failure_event(kwargs, None, started, ended)
    else:
        await limiter.async_log_success_event(kwargs, None, started, ended)


def _logging_metadata(data: dict[str, Any], identity: UserAPIKeyAuth) -> dict[str, Any]:
    metadata = data.get("metadata") or {}
    return {
        "user_api_key_hash": metadata.get("user_api_key_hash") or identity.api_key,
        "user_api_key_user_id": metadata.get("user_api_key_user_id"),
        "user_api_key_team_id": metadata.get("user_api_key_team_id"),
        "user_api_key_org_id": metadata.get("user_api_key_org_id"),
    }


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    for session in list((runtime().drop(_sessions) or {}).values()):
        await session.close()


router = APIRouter(lifespan=_lifespan)
