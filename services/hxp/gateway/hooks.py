"""The gateway's LiteLLM hooks: the model call as the boundary admitted it, cache opt-in, error shapes.

Before the call (``async_pre_call_hook``): the boundary (:mod:`hxp.gateway.boundary`) has
already checked the key, the body and the model; the hook makes sure the model LiteLLM is
about to call is the one the boundary admitted (a route that reaches LiteLLM without
naming its model is refused, 403), routes a catalogue alias as its model, and lets requests
at temperature 0 to a model whose catalogue entry has ``api.cache`` use LiteLLM's response
cache (configured ``mode: default_off``). A backend that cannot be reached becomes a 503 and
LiteLLM's limit errors get OpenAI's shape (``async_post_call_failure_hook``). After the call,
the response carries ``x-hxp-cache: hit|miss``.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import httpx
import litellm
import openai
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import UserAPIKeyAuth
from litellm.proxy.common_utils.proxy_rate_limit_error import ProxyRateLimitError
from litellm.proxy.hooks.parallel_request_limiter_v3 import RateLimitUnverifiableError
from litellm.types.router import RouterRateLimitError

from hxp.core import errors
from hxp.core.catalogue import Model
from hxp.gateway import deployments, request_context

CACHE_HEADER = "x-hxp-cache"


_UNREACHABLE = (
    litellm.APIConnectionError,
    litellm.ServiceUnavailableError,
    RouterRateLimitError,
    openai.APIConnectionError,
    httpx.ConnectError,
    aiohttp.ClientConnectorError,
    ConnectionError,
)


def _unreachable(exc: BaseException | None, depth: int = 0) -> bool:
    """Whether an error (or one it was raised from) means no backend could be reached."""
    if exc is None or depth > 8:
        return False
    if isinstance(exc, _UNREACHABLE) and not isinstance(exc, openai.APITimeoutError):
        return True
    return any(
        _unreachable(inner, depth + 1)
        for inner in (exc.__cause__, exc.__context__, getattr(exc, "original_exception", None))
        if inner is not exc
    )


def cache_hit(response: object) -> bool:
    """Whether LiteLLM answered from its response cache. LiteLLM says so only in the response's private
    ``_hidden_params`` (tests/gateway/test_hooks.py fails if an upgrade changes that)."""
    hidden = getattr(response, "_hidden_params", None)
    return bool(isinstance(hidden, dict) and hidden.get("cache_hit"))


def cacheable(model: Model, data: dict[str, Any]) -> bool:
    """Whether a request may be answered from the response cache: temperature 0 on a model with ``api.cache``."""
    return model.api.cache and data.get("temperature") == 0


class GatewayHooks(CustomLogger):
    """The admitted model, cache opt-in, error shapes and the cache header."""

    async def async_pre_call_hook(
        self, user_api_key_dict: UserAPIKeyAuth, cache: Any, data: dict, call_type: str
    ) -> dict:
        ctx = request_context.current()
        name = data.get("model")
        canonical = deployments.catalogue().canonical(name) if isinstance(name, str) else None
        if ctx is None or ctx.model is None or canonical != ctx.model.name:
            raise errors.forbidden(f"the call to model {name!r} was not admitted by the gateway's route table", "model")
        model = ctx.model
        data["model"] = model.name  # an alias is routed, limited and logged as its model
        if cacheable(model, data):
            data["cache"] = {**(data.get("cache") or {}), "use-cache": True}
        else:
            data["caching"] = False  # LiteLLM then skips its cache lookup (~1 ms of CPU per request)
        return data

    async def async_post_call_failure_hook(
        self,
        request_data: dict,
        original_exception: Exception,
        user_api_key_dict: UserAPIKeyAuth,
        traceback_str: str | None = None,
    ) -> errors.ReplacementError | None:
        """OpenAI's shape for LiteLLM's limit errors; a backend that cannot be reached is a 503
        (not LiteLLM's 500, nor its cooldown 429)."""
        if isinstance(original_exception, errors.GatewayError):
            return None
        if isinstance(original_exception, ProxyRateLimitError):
            return errors.rate_limited(str(original_exception.detail), dict(original_exception.headers or {}))
        if isinstance(original_exception, RateLimitUnverifiableError):
            detail = original_exception.detail
            return errors.ReplacementError(
                503,
                str(detail.get("error") if isinstance(detail, dict) else detail),
                code="rate_limit_unverifiable",
                headers={"retry-after": "1"},
            )
        if not _unreachable(original_exception):
            return None
        cooldown = getattr(original_exception, "cooldown_time", 0) or 1
        return errors.backend_unavailable(
            str(request_data.get("model")), "no backend answered; retry shortly", cooldown
        )

    async def async_post_call_response_headers_hook(
        self,
        data: dict,
        user_api_key_dict: UserAPIKeyAuth,
        response: object,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, object] | None = None,
    ) -> dict[str, str] | None:
        if response is None:
            return None
        return {CACHE_HEADER: "hit" if cache_hit(response) else "miss"}


gateway_hooks = GatewayHooks()
