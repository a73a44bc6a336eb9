"""The LiteLLM proxy configuration, generated from the catalogue and the settings.

Nothing in it is secret: the master key reaches LiteLLM through its
environment (LITELLM_MASTER_KEY), Redis through an ``os.environ/REDIS_URL``
reference (its URL may hold a password), and the SQL database is ours, not LiteLLM's.

LiteLLM makes two Redis clients of that URL in each worker: the response cache
(``cache_params``) and the coordination Redis (rate limits, router counters, spend).
Each gets a bounded blocking pool (``max_connections``: a request waits for a free
connection instead of opening one more) and a name that ``CLIENT LIST`` shows;
:mod:`hxp.gateway.redis_pools` keeps each on one pool for the worker's life.
"""

from __future__ import annotations

from typing import Any

from hxp.core.catalogue import Catalogue
from hxp.core.settings import Settings
from hxp.gateway import deployments, extensions

CACHED_CALL_TYPES = ["acompletion", "atext_completion", "aembedding"]
REDIS_URL_REF = "os.environ/REDIS_URL"
REDIS_CLIENT_NAMES = {"cache": "hxp-litellm-cache", "coordination": "hxp-litellm-coordination"}


def litellm_path(path: str) -> str:
    """``module:attribute`` as LiteLLM's dotted ``module.attribute``."""
    return path.replace(":", ".")


def callbacks() -> list[str]:
    """The CustomLogger callbacks, in LiteLLM's notation."""
    return [litellm_path(path) for path in extensions.CALLBACKS]


def build(cfg: Settings, catalogue: Catalogue) -> dict[str, Any]:
    """The whole proxy config as a dict (written as YAML by the launcher)."""
    cache_params: dict[str, Any] = {
        "mode": "default_off",
        "ttl": cfg.cache_ttl_s,
        "supported_call_types": CACHED_CALL_TYPES,
    }
    general: dict[str, Any] = {
        "custom_auth": "hxp.gateway.request_context.user_api_key_auth",
        "fail_closed_rate_limit_enforcement": cfg.rate_limit_fail_closed,
        "disable_spend_logs": True,
        "disable_reset_budget": True,
        "background_health_checks": False,
    }
    if cfg.redis_url:
        pool = {"url": REDIS_URL_REF, "max_connections": cfg.redis_max_connections}
        cache_params.update({"type": "redis", **pool, "client_name": REDIS_CLIENT_NAMES["cache"]})
        general["coordination_redis"] = {**pool, "client_name": REDIS_CLIENT_NAMES["coordination"]}
    else:
        cache_params["type"] = "local"
    return {
        "model_list": deployments.model_list(catalogue, cfg.backends, cfg.backend_url_template),
        "router_settings": deployments.router_settings(catalogue),
        "litellm_settings": {
            "callbacks": callbacks(),
            "cache": True,
            "cache_params": cache_params,
            "drop_params": False,
            "request_timeout": max(m.api.timeout_s for m in catalogue.models),
            "set_verbose": False,
            "json_logs": False,
        },
        "general_settings": general,
    }
