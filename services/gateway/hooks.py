"""The gateway's CustomLogger: checks before the backend call, cache opt-in and the cache header.

Before the call (``async_pre_call_hook``): the model must exist (404; a catalogue
alias stands for its model) and be allowed for the key (403), and the parameters
must be valid (400). A backend
that cannot be reached becomes a 503 (``async_post_call_failure_hook``). Requests at
temperature 0 to a model whose catalogue entry has ``api.cache`` opt in to
LiteLLM's response cache (configured ``mode: default_off``). After the call, the
response carries ``x-hxp-cache: hit|miss``; ``/v1/models`` lists only the
models the key may use.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping, Sequence

import aiohttp
import httpx
import litellm
import openai
from litellm.integrations.custom_logger import CustomLogger
from litellm.types.router import RouterRateLimitError
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth
from litellm.proxy.common_utils.proxy_rate_limit_error import ProxyRateLimitError
from litellm.proxy.hooks.parallel_request_limiter_v3 import RateLimitUnverifiableError

from hxp import catalogue as catalogue_module
from hxp.catalogue import Catalogue
from hxp.gateway import errors
from hxp.gateway.validation import validate

CACHE_HEADER = "x-hxp-cache"
CHECKED_CALLS = frozenset({"completion", "acompletion", "text_completion", "atext_completion",
                           "embeddings", "aembedding"})


_UNREACHABLE = (litellm.APIConnectionError, litellm.ServiceUnavailableError, RouterRateLimitError,
                openai.APIConnectionError, httpx.ConnectError, aiohttp.ClientConnectorError, ConnectionError)


def _unreachable(exc: BaseException | None, depth: int = 0) -> bool:
    """Whether an error (or one it was raised from) means no backend could be reached."""
    if exc is None or depth > 8:
        return False
    if isinstance(exc, _UNREACHABLE) and not isinstance(exc, openai.APITimeoutError):
        return True
    return any(_unreachable(inner, depth + 1) for inner in
               (exc.__cause__, exc.__context__, getattr(exc, "original_exception", None)) if inner is not exc)


@lru_cache(maxsize=1)
def catalogue() -> Catalogue:
    """The catalogue this gateway serves (loaded once per worker)."""
    return catalogue_module.load()


def requested_name(data: Mapping[str, Any]) -> str | None:
    """The model name the client sent (before our pre-call hook turns an alias into its model)."""
    name = data.get("_litellm_client_requested_model") or data.get("model")
    return name if isinstance(name, str) and name else None


def requested_model(data: Mapping[str, Any]) -> str | None:
    """The catalogue model a request asked for, by name or alias; None when it names none."""
    name = requested_name(data)
    return catalogue().canonical(name) if name else None


def _allowed(user: UserAPIKeyAuth, model: str) -> bool:
    return user.user_role == LitellmUserRoles.PROXY_ADMIN or not user.models or model in user.models


class GatewayHooks(CustomLogger):
    """Model access, request validation and response-cache opt-in."""

    async def async_pre_call_hook(self, user_api_key_dict: UserAPIKeyAuth, cache: Any, data: dict,
                                  call_type: str) -> dict:
        if call_type not in CHECKED_CALLS:
            return data
        name = data.get("model")
        if not name or not isinstance(name, str):
            raise errors.bad_request("model", "'model' is required")
        try:
            model = catalogue().get(name)  # by name or alias (e.g. text-embedding-ada-002)
        except KeyError:
            raise errors.model_not_found(name) from None
        if not _allowed(user_api_key_dict, model.name):
            raise errors.forbidden(f"API key '{user_api_key_dict.key_alias}' may not use model '{name}'", "model")
        data["model"] = model.name  # an alias is routed, limited and logged as its model
        validate(data, call_type, model)
        if model.api.cache and data.get("temperature") == 0:
            data["cache"] = {**(data.get("cache") or {}), "use-cache": True}
        else:
            data["caching"] = False  # LiteLLM then skips its cache lookup (~1 ms of CPU per request)
        return data

    async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                           user_api_key_dict: UserAPIKeyAuth,
                                           traceback_str: str | None = None) -> errors.ReplacementError | None:
        """OpenAI's shape for LiteLLM's limit errors; a backend that cannot be reached is a 503
        (not LiteLLM's 500, nor its cooldown 429)."""
        if isinstance(original_exception, errors.GatewayError):
            return None
        if isinstance(original_exception, ProxyRateLimitError):
            return errors.rate_limited(str(original_exception.detail), dict(original_exception.headers or {}))
        if isinstance(original_exception, RateLimitUnverifiableError):
            detail = original_exception.detail
            return errors.ReplacementError(503, str(detail.get("error") if isinstance(detail, dict) else detail),
                                           code="rate_limit_unverifiable", headers={"retry-after": "1"})
        if not _unreachable(original_exception):
            return None
        cooldown = getattr(original_exception, "cooldown_time", 0) or 1
        return errors.backend_unavailable(str(request_data.get("model")), "no backend answered; retry shortly",
                                          cooldown)

    async def async_post_call_response_headers_hook(self, data: dict, user_api_key_dict: UserAPIKeyAuth,
                                                    response: object, request_headers: dict[str, str] | None = None,
                                                    litellm_call_info: dict[str, object] | None = None,
                                                    ) -> dict[str, str] | None:
        if response is None:
            return None
        hidden = getattr(response, "_hidden_params", None) or {}
        return {CACHE_HEADER: "hit" if hidden.get("cache_hit") else "miss"}

    async def async_filter_listed_models(self, user_api_key_dict: UserAPIKeyAuth,
                                         model_names: Sequence[str]) -> Sequence[str]:
        return [name for name in model_names if _allowed(user_api_key_dict, name)]


gateway_hooks = GatewayHooks()


async def answered_error(request_data: dict, exc: Exception, user: UserAPIKeyAuth) -> Exception:
    """The error the client is answered with: the gateway hooks' replacement of ``exc`` when there is one
    (the usage row and the metrics record what the client saw)."""
    return await gateway_hooks.async_post_call_failure_hook(request_data, exc, user) or exc
