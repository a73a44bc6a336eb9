"""The LiteLLM CustomLogger that turns each proxy request into one usage row.

Rows are recorded in the proxy's request path, before the response leaves
(not in LiteLLM's background success/failure callbacks, whose queue loses rows
at shutdown):

- ``async_post_call_success_hook``: a non-streamed answer (cache hits included);
- ``async_post_call_streaming_iterator_hook``: a stream, when it ends (time to
  first token measured on the way);
- ``async_post_call_failure_hook``: every error LiteLLM answers, also before a
  backend call (401/403 from the auth hook, 400/404 from validation, 429, 503).

The key is identified by its alias (``user_id``) and id from the
``UserAPIKeyAuth`` that ``hxp.gateway.auth`` returns; its secret and the
prompt are never read into the row.
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from datetime import datetime, timezone
from typing import Any, AsyncGenerator, Mapping

from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import UserAPIKeyAuth

from hxp.gateway.errors import status_of
from hxp.gateway.hooks import answered_error, requested_model, requested_name
from hxp.gateway.usage import pipeline
from hxp.gateway.usage.record import UsageRecord, iso, request_uuid

log = logging.getLogger(__name__)
_LOGGED = "_hxp_usage_logged"  # set in the request data once its row is recorded
_SECRET = re.compile(r"\b(sk-[A-Za-z0-9]{0,4})[A-Za-z0-9_\-]{8,}")
_STATUS = {400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 408: "timeout",
           413: "invalid_request", 422: "invalid_request", 429: "rate_limited", 499: "cancelled", 503: "unavailable",
           504: "timeout"}


def status_name(code: int) -> str:
    """The ``status`` column for an HTTP status code."""
    if code < 400:
        return "success"
    return _STATUS.get(code, "backend_error" if code >= 500 else "client_error")


def record_rejection(model_name: str | None, status_code: int, message: str, *, key_alias: str | None = None,
                     key_id: str | None = None, request_id: str | None = None, stream: bool = False,
                     latency_ms: float | None = None) -> None:
    """Log a request the gateway refused outside LiteLLM's hooks (its own middleware or routes)."""
    pipeline.submit(UsageRecord(
        request_id=request_uuid(request_id), model_name=model_name or "unknown", user_id=key_alias, key_id=key_id,
        status=status_name(status_code), error_message=_error_text(status_code, None, message), stream=stream,
        latency_ms=None if latency_ms is None else round(latency_ms),
    ))


def _error_text(code: int, kind: str | None, message: str) -> str:
    return _SECRET.sub(r"\1***", f"{code} {kind}: {message}" if kind else f"{code}: {message}")


def _identity(user: UserAPIKeyAuth | None) -> dict[str, Any]:
    if user is None:
        return {}
    metadata = user.metadata if isinstance(user.metadata, dict) else {}
    return {"user_id": user.key_alias, "key_id": metadata.get("hxp_key_id")}


def _started(data: Mapping[str, Any]) -> float | None:
    """The request's start (epoch seconds), from LiteLLM's logging object or the failure's request data."""
    for start in (getattr(data.get("litellm_logging_obj"), "start_time", None), data.get("start_time")):
        if isinstance(start, datetime):
            return start.timestamp()
        if isinstance(start, (int, float)) and start > 0:
            return float(start)
    return None


def _since(start: float | None, now: float) -> int | None:
    return None if start is None else round(1000 * (now - start))


def _model(data: Mapping[str, Any]) -> str:
    """The catalogue model (an alias is logged as its model), else the name the client sent."""
    return requested_model(data) or requested_name(data) or "unknown"


def _usage_of(obj: Any) -> dict[str, int | None]:
    usage = getattr(obj, "usage", None)
    if usage is None and isinstance(obj, dict):
        usage = obj.get("usage")
    if usage is None:
        return {}
    get = usage.get if isinstance(usage, dict) else (lambda k: getattr(usage, k, None))
    return {k: get(k) for k in ("prompt_tokens", "completion_tokens", "total_tokens") if get(k) is not None}


def _hidden(obj: Any) -> Mapping[str, Any]:
    hidden = getattr(obj, "_hidden_params", None)
    if hidden is None and isinstance(obj, dict):
        hidden = obj.get("_hidden_params")
    return hidden if isinstance(hidden, Mapping) else {}


def _cost(hidden: Mapping[str, Any]) -> float | None:
    cost = hidden.get("response_cost")
    return float(cost) if isinstance(cost, (int, float)) else None


class UsageLogger(CustomLogger):
    """One ``llm_model_requests`` row per proxy request, success or failure."""

    def _record(self, data: dict, user: UserAPIKeyAuth | None, **fields: Any) -> None:
        if data.get(_LOGGED):
            return
        data[_LOGGED] = True
        start = _started(data)
        fields.setdefault("latency_ms", _since(start, time.time()))
        try:
            pipeline.submit(UsageRecord(
                request_id=request_uuid(data.get("litellm_call_id")), model_name=_model(data),
                timestamp=iso(datetime.fromtimestamp(start or time.time(), timezone.utc)),
                **_identity(user), **fields,
            ))
        except Exception:  # noqa: BLE001 - logging must never fail the request it describes
            log.exception("usage row for request %s could not be queued", data.get("litellm_call_id"))

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: UserAPIKeyAuth,
                                           response: Any) -> None:
        hidden = _hidden(response)
        self._record(data, user_api_key_dict, status="success", cache_hit=bool(hidden.get("cache_hit")),
                     cost=_cost(hidden), **_usage_of(response))

    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict: UserAPIKeyAuth, response: Any,
                                                      request_data: dict) -> AsyncGenerator[Any, None]:
        first: float | None = None
        usage: dict[str, int | None] = {}
        hidden: Mapping[str, Any] = _hidden(response)
        outcome = "cancelled"
        try:
            async for chunk in response:
                if first is None:
                    first = time.time()
                usage = _usage_of(chunk) or usage
                yield chunk
            outcome = "success"
        except (GeneratorExit, asyncio.CancelledError):
            raise
        except Exception:
            outcome = ""  # LiteLLM reports it to async_post_call_failure_hook, which records the row
            raise
        finally:
            if outcome:
                hidden = _hidden(response) or hidden
                self._record(request_data, user_api_key_dict, status=outcome, stream=True,
                             time_to_first_token_ms=_since(_started(request_data), first) if first else None,
                             cache_hit=bool(hidden.get("cache_hit")), cost=_cost(hidden),
                             error_message="client disconnected before the end of the stream"
                             if outcome == "cancelled" else None, **usage)

    async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                           user_api_key_dict: UserAPIKeyAuth, traceback_str: str | None = None
                                           ) -> None:
        code = status_of(await answered_error(request_data, original_exception, user_api_key_dict))
        message = getattr(original_exception, "message", None) or str(original_exception)
        kind = getattr(original_exception, "type", None) or type(original_exception).__name__
        self._record(request_data, user_api_key_dict, status=status_name(code),
                     stream=request_data.get("stream") is True, error_message=_error_text(code, kind, str(message)))


usage_logger = UsageLogger()
