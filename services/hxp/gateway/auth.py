"""Who is calling: API keys from our own table, the master key, and what LiteLLM is told.

:func:`identify` turns a request's secret into a :class:`Caller` (the master key, a live
key, or a 401); the boundary (:mod:`hxp.gateway.boundary`) calls it once per request and
keeps the result in the request's context. LiteLLM's ``custom_auth`` hook
(:func:`hxp.gateway.request_context.user_api_key_auth`) hands LiteLLM that same caller: LiteLLM never
checks a key itself.

Key lookups are cached per worker: found keys in a bounded LRU trusted for
HXP_KEY_CACHE_TTL_S, unknown secrets in a separate bounded LRU, so a flood of random
secrets can never evict a valid key (each miss costs one SQL query, off the event loop).
A miss while the database cannot answer is a 503 with Retry-After (cached keys keep working).
Revoking or rotating through the admin API clears the cache of that worker at once, other
workers within the TTL.

The master key never reaches LiteLLM in clear: LiteLLM is given a hash of it
(:func:`litellm_master_key`), and the identity handed to LiteLLM for master calls carries
that hash too.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

from hxp.core import errors
from hxp.core.context import Runtime, runtime
from hxp.core.database import Database
from hxp.core.redaction import redact
from hxp.gateway.keys import ApiKey, KeyStore, hash_secret

KEY_HEADERS = ("authorization", "x-api-key", "api-key")  # OpenAI and Azure clients' spellings
UNKNOWN_KEY_TTL_S = 2.0  # how long an unknown secret is remembered (a key created meanwhile works after this)
T = TypeVar("T")


class LruCache(Generic[T]):
    """A bounded least-recently-used map whose entries expire after ``ttl`` seconds."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[str, tuple[float, T]] = OrderedDict()

    def get(self, name: str, now: float) -> T | None:
        entry = self._entries.get(name)
        if entry is None or entry[0] <= now:
            return None
        self._entries.move_to_end(name)
        return entry[1]

    def put(self, name: str, value: T, now: float) -> None:
        self._entries[name] = (now + self.ttl, value)
        self._entries.move_to_end(name)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def pop(self, name: str) -> None:
        self._entries.pop(name, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class KeyCache:
    """Key lookups by secret hash: found keys and unknown secrets in separate LRUs."""

    def __init__(
        self, store: KeyStore, ttl: float, size: int, unknown_size: int, unknown_ttl: float = UNKNOWN_KEY_TTL_S
    ) -> None:
        self.store = store
        self.found: LruCache[ApiKey] = LruCache(size, ttl)
        self.unknown: LruCache[bool] = LruCache(unknown_size, min(ttl, unknown_ttl))

    async def get(self, secret: str) -> ApiKey | None:
        digest = hash_secret(secret)
        now = time.monotonic()
        key = self.found.get(digest, now)
        if key is not None or self.unknown.get(digest, now):
            return key
        try:
            key = await asyncio.to_thread(self.store.lookup_hash, digest)
        except Exception as exc:  # noqa: BLE001 - whatever the driver raises (database away), the client may retry
            raise errors.GatewayError(
                503,
                f"the key store cannot answer: {redact(str(exc))[:300]}",
                code="key_store_unavailable",
                headers={"retry-after": "1"},
            ) from None
        if key is None:
            self.unknown.put(digest, True, now)
        else:
            self.found.put(digest, key, now)
        return key

    def clear(self) -> None:
        self.found.clear()
        self.unknown.clear()


def _key_store(rt: Runtime) -> KeyStore:
    return KeyStore(Database(rt.settings.database_url))


def _key_cache(rt: Runtime) -> KeyCache:
    cfg = rt.settings
    return KeyCache(rt.get(_key_store), cfg.key_cache_ttl_s, cfg.key_cache_size, cfg.unknown_key_cache_size)


def key_store() -> KeyStore:
    """This runtime's key store on the gateway database."""
    return runtime().get(_key_store)


def key_cache() -> KeyCache:
    """This runtime's key cache in front of :func:`key_store`."""
    return runtime().get(_key_cache)


def litellm_master_key(master: str) -> str:
    """What LiteLLM is given as its master key: a hash of ours, whatever its prefix, never ours in clear."""
    return "sk-hxp-master-" + hashlib.sha256(master.encode()).hexdigest()


def _same(secret: str | None, expected: str | None) -> bool:
    """Whether ``secret`` is ``expected``, compared in constant time."""
    return bool(secret and expected and hmac.compare_digest(secret.encode(), expected.encode()))


def is_master_key(secret: str | None) -> bool:
    return _same(secret, runtime().settings.master_secret)


def is_metrics_token(secret: str | None) -> bool:
    """Whether ``secret`` may read /metrics: anything when HXP_METRICS_TOKEN is unset, else that token."""
    token = runtime().settings.metrics_token
    return token is None or _same(secret, token.get_secret_value())


def bearer(value: str | None) -> str:
    """The secret in an Authorization header value (with or without 'Bearer ')."""
    value = (value or "").strip()
    return value[7:].strip() if value[:7].lower() == "bearer " else value


def secret_of(headers: dict[str, str]) -> str:
    """The API key a request sends, in any of the headers OpenAI and Azure clients use."""
    for name in KEY_HEADERS:
        if headers.get(name):
            return bearer(headers[name])
    return ""


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the master key, or a live API key."""

    key: ApiKey | None  # None: the master key

    @property
    def master(self) -> bool:
        return self.key is None

    @property
    def alias(self) -> str:
        return "master" if self.key is None else self.key.alias

    def allows(self, model: str) -> bool:
        return self.key is None or self.key.allows(model)

    def may_read(self, collection: str) -> bool:
        return self.key is None or self.key.may_read(collection)

    def may_write(self, collection: str) -> bool:
        return self.key is None or self.key.may_write(collection)

    def litellm_identity(self) -> UserAPIKeyAuth:
        """The identity LiteLLM works with: the key's hash, alias, owner, limits and models."""
        if self.key is None:
            master = runtime().settings.master_secret or ""
            return UserAPIKeyAuth(
                api_key=hash_secret(litellm_master_key(master)),
                user_role=LitellmUserRoles.PROXY_ADMIN,
                key_alias="master",
            )
        key = self.key
        return UserAPIKeyAuth(
            api_key=key.key_hash,
            key_alias=key.alias,
            key_name=key.key_prefix,
            user_id=key.owner,
            models=list(key.models),
            rpm_limit=key.rpm_limit,
            tpm_limit=key.tpm_limit,
            user_role=LitellmUserRoles.INTERNAL_USER,
            metadata={"hxp_key_id": key.key_id},
        )


async def identify(secret: str) -> Caller:
    """The caller a secret belongs to, or a 401 naming why not."""
    if not secret:
        raise errors.unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
    if is_master_key(secret):
        return Caller(None)
    key = await key_cache().get(secret)
    if key is None:
        raise errors.unauthorized("Invalid API key")
    refusal = key.refusal()
    if refusal:
        raise errors.unauthorized(refusal)
    return Caller(key)
