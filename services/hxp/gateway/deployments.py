"""Where each catalogue model is served: its backends, and LiteLLM's model list and router settings.

Each catalogue model becomes one LiteLLM deployment per backend replica, named
after the model and pointing at ``openai/<name>`` on that replica's base URL.
Replicas of a model share its name, so LiteLLM's router balances between them.
:func:`served` is the catalogue this gateway process serves (read once) with each
model's backend base URLs (HXP_BACKENDS, else the URL template).
"""

from __future__ import annotations

from typing import Any

from hxp.core.catalogue import Catalogue, Model
from hxp.core.context import Runtime, runtime

# Idle connections to the backends are dropped before the servers' own keep-alive timeout (uvicorn's 5 s: the
# gateway's and vLLM's): reusing one the server is closing at that moment fails the call (httpx: ReadError('');
# aiohttp: ServerDisconnectedError, answered 500). The soak saw 8 of 1,960 Responses turns fail so with httpx's
# 5 s, and the streaming benchmark a relayed request with aiohttp's 15 s.
IDLE_CONNECTION_S = 2.0

# How long a backend's looked-up address is reused: a rolling update under compose sends the traffic back to a
# service's name once its old container is gone, at least this long after the name was last used.
DNS_TTL_S = 10


def catalogue() -> Catalogue:
    """The catalogue this gateway serves (loaded once per runtime)."""
    return runtime().catalogue


def current_backends(rt: Runtime) -> dict[str, list[str]]:
    """The backends this process routes to (HXP_BACKENDS at start; replaced by a live reload)."""
    return rt.settings.backends


def served() -> dict[str, list[str]]:
    """Each model this gateway serves, with its backends' base URLs (…/v1)."""
    rt = runtime()
    return {
        m.name: backend_urls(m, rt.get(current_backends), rt.settings.backend_url_template) for m in catalogue().models
    }


def backend_urls(model: Model, backends: dict[str, list[str]], template: str) -> list[str]:
    """The base URLs (…/v1) of a model's replicas: HXP_BACKENDS entry, else the URL template."""
    urls = backends.get(model.name) or [template.format(name=model.name, port=model.port)]
    return [url.rstrip("/") for url in urls]


def engine_root(base_url: str) -> str:
    """An engine's root URL (where /health and /metrics are) from its OpenAI base URL (…/v1)."""
    root = base_url.rstrip("/")
    return root[:-3] if root.endswith("/v1") else root


def prices(model: Model) -> tuple[float, float]:
    """A model's price per prompt token and per completion token (catalogue ``api.price_per_1k_tokens``; none:
    free, as self-hosted models are)."""
    price = model.api.price_per_1k_tokens
    return (0.0, 0.0) if price is None else (price.prompt / 1000, price.completion / 1000)


def cost(model: Model, prompt_tokens: int | None, completion_tokens: int | None) -> float | None:
    """What a request cost at the model's prices; None when its token counts are unknown."""
    if prompt_tokens is None and completion_tokens is None:
        return None
    prompt_price, completion_price = prices(model)
    return (prompt_tokens or 0) * prompt_price + (completion_tokens or 0) * completion_price


def model_list(catalogue: Catalogue, backends: dict[str, list[str]], template: str) -> list[dict[str, Any]]:
    """One LiteLLM deployment per (model, replica)."""
    deployments = []
    for model in catalogue.models:
        for index, url in enumerate(backend_urls(model, backends, template)):
            deployments.append(
                {
                    "model_name": model.name,
                    "litellm_params": {
                        "model": f"openai/{model.name}",
                        "api_base": url,
                        "api_key": "unused",  # vLLM engines run without keys behind the gateway
                        "timeout": model.api.timeout_s,
                        "stream_timeout": model.api.timeout_s,
                        "max_retries": 0,  # the HTTP client's own retries; the router's are num_retries
                        "num_retries": model.api.retries,
                        "max_parallel_requests": model.api.max_concurrent_requests,
                    },
                    "model_info": {
                        "id": f"{model.name}-{index}",
                        "mode": "embedding" if model.task == "embedding" else "chat",
                        "max_input_tokens": model.max_model_len,
                        "max_tokens": model.max_model_len,
                        "input_cost_per_token": prices(model)[0],
                        "output_cost_per_token": prices(model)[1],
                    },
                }
            )
    return deployments


def router_settings(catalogue: Catalogue) -> dict[str, Any]:
    """Retries, per-model fallbacks and load balancing between replicas."""
    return {
        "routing_strategy": "simple-shuffle",
        "num_retries": 0,  # each deployment carries its model's retries
        "fallbacks": [{m.name: list(m.api.fallbacks)} for m in catalogue.models if m.api.fallbacks],
        "allowed_fails": 0,  # a replica that fails is set aside (cooldown_time) and the retry goes elsewhere
        "cooldown_time": 5,
        "retry_after": 0,
    }
