"""The gateway's settings, read from the environment once per process.

| variable                   | meaning                                                        | default          |
|----------------------------|----------------------------------------------------------------|------------------|
| HXP_MASTER_KEY             | the operator's key (admin API, every model)                    | required to serve|
| HXP_DATABASE_URL           | SQL store for keys and usage (set by the launcher from         | default_url()    |
|                            | DATABASE_URL, which is hidden from LiteLLM)                    |                  |
| REDIS_URL                  | shared rate limits and cache; absent: in-process, one replica  | none             |
| HXP_RATE_LIMIT_FAIL_CLOSED | reject (503) instead of admitting when Redis cannot count      | false            |
| HXP_CACHE_TTL_S            | response cache time to live                                    | 3600             |
| HXP_KEY_CACHE_TTL_S        | how long a key lookup is trusted before the store is re-read   | 10               |
| HXP_BACKENDS               | JSON {model name: [base URL, ...]} overriding the template     | none             |
| HXP_BACKEND_URL_TEMPLATE   | base URL of each model's engine, with {name} and {port}        | see below        |
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import lru_cache

DEFAULT_BACKEND_URL_TEMPLATE = "http://127.0.0.1:{port}/v1"
DATABASE_URL_VAR = "HXP_DATABASE_URL"


def _flag(name: str, default: bool = False) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on", "closed")


@dataclass(frozen=True)
class Settings:
    master_key: str | None
    database_url: str
    redis_url: str | None
    rate_limit_fail_closed: bool
    cache_ttl_s: int
    key_cache_ttl_s: float
    backend_url_template: str
    backends: dict[str, list[str]] = field(default_factory=dict)


def load() -> Settings:
    """The settings from the environment (see the module docstring)."""
    from hxp.gateway.database import default_url

    raw_backends = os.environ.get("HXP_BACKENDS")
    backends = json.loads(raw_backends) if raw_backends else {}
    if not isinstance(backends, dict) or not all(isinstance(v, list) for v in backends.values()):
        raise ValueError("HXP_BACKENDS must be a JSON object {model name: [base URL, ...]}")
    return Settings(
        master_key=os.environ.get("HXP_MASTER_KEY") or None,
        database_url=default_url(),
        redis_url=os.environ.get("REDIS_URL") or None,
        rate_limit_fail_closed=_flag("HXP_RATE_LIMIT_FAIL_CLOSED"),
        cache_ttl_s=int(os.environ.get("HXP_CACHE_TTL_S", "3600")),
        key_cache_ttl_s=float(os.environ.get("HXP_KEY_CACHE_TTL_S", "10")),
        backend_url_template=os.environ.get("HXP_BACKEND_URL_TEMPLATE") or DEFAULT_BACKEND_URL_TEMPLATE,
        backends=backends,
    )


@lru_cache(maxsize=1)
def current() -> Settings:
    """This process's settings, read once."""
    return load()
