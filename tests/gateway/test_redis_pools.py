"""LiteLLM's Redis caches keep one bounded pool for the worker's life (hxp.gateway.redis_pools)."""

from __future__ import annotations

import asyncio

import litellm
from litellm.caching.redis_cache import RedisCache

from hxp.gateway import redis_pools

URL = "redis://127.0.0.1:1/0"  # nothing listens: building clients and pools connects to nothing


def _cache() -> RedisCache:
    return RedisCache(url=URL, max_connections=8, client_name="hxp-litellm-coordination")


def _client_after_eviction(cache: RedisCache) -> tuple[object, object]:
    async def both() -> tuple[object, object]:
        first = cache.init_async_client()
        litellm.in_memory_llm_clients_cache.flush_cache()  # what the 10-minute TTL (or 200 other clients) does
        return first, cache.init_async_client()

    return asyncio.run(both())


def test_unpinned_litellm_builds_a_new_pool_after_its_client_cache_drops_the_client() -> None:
    first, second = _client_after_eviction(_cache())
    assert first is not second
    assert first.connection_pool is not second.connection_pool  # type: ignore[attr-defined]


def test_a_pinned_cache_keeps_its_client_and_its_bounded_blocking_pool() -> None:
    cache = _cache()

    async def pin() -> object:
        return redis_pools.pin(cache)

    pinned = asyncio.run(pin())
    first, second = _client_after_eviction(cache)
    assert first is pinned and second is pinned
    pool = pinned.connection_pool  # type: ignore[attr-defined]
    assert type(pool).__name__ == "BlockingConnectionPool" and pool.max_connections == 8
    assert pool.connection_kwargs["client_name"] == "hxp-litellm-coordination"
