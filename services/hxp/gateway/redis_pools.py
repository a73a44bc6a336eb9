"""LiteLLM's Redis clients, kept on one bounded pool each for the worker's life.

A ``RedisCache`` asks LiteLLM's in-memory client cache for its async client on every call,
and that cache drops an entry after 10 minutes (or when 200 other clients crowd it out).
The next call then builds a new client on a new connection pool, and the old pool is never
closed (LiteLLM closes only the clients it marks as its own): its connections stay open
until the garbage collector happens to reach them, which after ``gc.freeze``
(:mod:`hxp.gateway.tuning`) can be never. Redis' connection count grew that way by a pool's
worth every few minutes under the soak (docs/reliability.md).

``router``'s lifespan runs after LiteLLM's start-up has built its caches from the proxy
config (:mod:`hxp.gateway.proxy_config` gives each a bounded blocking pool) and pins each
Redis cache to the client it has now, in this worker's event loop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter


def litellm_redis_caches() -> list[Any]:
    """The distinct ``RedisCache`` objects LiteLLM's proxy uses: the response cache and the coordination Redis."""
    import litellm
    from litellm.caching.redis_cache import RedisCache
    from litellm.proxy import proxy_server

    found = [getattr(litellm.cache, "cache", None), proxy_server.redis_usage_cache]
    unique = {id(cache): cache for cache in found if isinstance(cache, RedisCache)}
    return list(unique.values())


def pin(cache: Any) -> Any:
    """Make ``cache`` use the async client it has now for every later call; that client."""
    client = cache.init_async_client()
    cache.init_async_client = lambda: client
    return client


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    for cache in litellm_redis_caches():
        pin(cache)
    yield


router = APIRouter(lifespan=_lifespan)
