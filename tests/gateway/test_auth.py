"""The key cache (misses cannot evict valid keys) and readiness computed at most once a second per worker."""

from __future__ import annotations

import asyncio
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from hxp.gateway.auth import KeyCache, LruCache
from hxp.gateway.keys import ApiKey, hash_secret


class CountingStore:
    """A key store with one valid key that counts its lookups."""

    def __init__(self, secret: str) -> None:
        self.valid = hash_secret(secret)
        self.lookups: dict[str, int] = {}
        self.key = ApiKey(
            key_id="k",
            key_hash=self.valid,
            key_prefix="sk-hxp-",
            alias="valid",
            owner=None,
            models=(),
            read_collections=("*",),
            write_collections=(),
            rpm_limit=None,
            tpm_limit=None,
            expires_at=None,
            created_at=None,
            revoked_at=None,
        )

    def lookup_hash(self, key_hash: str) -> ApiKey | None:
        self.lookups[key_hash] = self.lookups.get(key_hash, 0) + 1
        return self.key if key_hash == self.valid else None


def test_a_flood_of_unknown_secrets_never_evicts_a_valid_key() -> None:
    secret = "sk-hxp-" + secrets.token_urlsafe(32)
    store = CountingStore(secret)
    cache = KeyCache(store, ttl=60, size=10, unknown_size=100)

    async def flood() -> None:
        assert await cache.get(secret) is store.key
        for _ in range(5_000):
            assert await cache.get("sk-hxp-" + secrets.token_hex(16)) is None
        assert await cache.get(secret) is store.key

    asyncio.run(flood())
    assert store.lookups[store.valid] == 1  # the valid key was never looked up again
    assert len(cache.unknown) == 100 and len(cache.found) == 1  # both bounded


def test_an_unknown_secret_is_remembered_briefly() -> None:
    store = CountingStore("sk-hxp-" + "v" * 40)
    cache = KeyCache(store, ttl=60, size=10, unknown_size=10, unknown_ttl=0.2)
    wrong = "sk-hxp-" + "w" * 40

    async def twice() -> None:
        await cache.get(wrong)
        await cache.get(wrong)

    asyncio.run(twice())
    assert store.lookups[hash_secret(wrong)] == 1
    time.sleep(0.3)
    asyncio.run(twice())
    assert store.lookups[hash_secret(wrong)] == 2  # looked up again: a key created meanwhile would be found


def test_lru_keeps_the_recently_used() -> None:
    lru: LruCache[int] = LruCache(size=2, ttl=60)
    now = time.monotonic()
    lru.put("a", 1, now)
    lru.put("b", 2, now)
    assert lru.get("a", now) == 1  # a is now the most recent
    lru.put("c", 3, now)
    assert (lru.get("a", now), lru.get("b", now), lru.get("c", now)) == (1, None, 3)
    assert lru.get("a", now + 61) is None  # expired


def test_readiness_is_computed_at_most_once_a_second(gateway, fake_upstream) -> None:
    time.sleep(1.1)  # whatever the earlier tests asked
    before = fake_upstream.stats()["health_checks"]
    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda _: httpx.get(f"{gateway.url}/health/readiness", timeout=30), range(48)))
    seconds = time.monotonic() - started
    assert all(a.status_code == 200 for a in answers)
    probes = fake_upstream.stats()["health_checks"] - before
    replicas = len(answers[0].json()["components"]["models"])  # one fake backend per model
    computed = probes / replicas
    assert probes % replicas == 0 and 1 <= computed <= int(seconds) + 1, (probes, seconds)  # not 48 times
