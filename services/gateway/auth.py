"""The ``general_settings.custom_auth`` hook: API keys from our own table.

LiteLLM calls :func:`user_api_key_auth` for every authenticated route instead of
its Prisma-backed key checks. The master key gets the admin role; a stored key
gets its limits (rpm/tpm, enforced by LiteLLM's rate limiter keyed on the key's
hash) and its allowed models. Lookups are cached in memory for a short TTL so a
request costs no SQL query; revoking through the admin API clears the cache of
that process at once, other processes within HXP_KEY_CACHE_TTL_S.
"""
from __future__ import annotations

import asyncio
import hmac
import time
from functools import lru_cache

from fastapi import Request
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

from hxp.gateway import errors, settings
from hxp.gateway.database import Database
from hxp.gateway.keys import ApiKey, KeyStore, hash_secret


class KeyCache:
    """Key lookups by secret hash, each trusted for ``ttl`` seconds (misses included)."""

    def __init__(self, store: KeyStore, ttl: float) -> None:
        self.store = store
        self.ttl = ttl
        self._entries: dict[str, tuple[float, ApiKey | None]] = {}

    async def get(self, secret: str) -> ApiKey | None:
        digest = hash_secret(secret)
        hit = self._entries.get(digest)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        key = await asyncio.to_thread(self.store.lookup, secret)
        if len(self._entries) > 10_000:
            self._entries.clear()
        self._entries[digest] = (now + self.ttl, key)
        return key

    def clear(self) -> None:
        self._entries.clear()


@lru_cache(maxsize=1)
def key_store() -> KeyStore:
    """This process's key store on the gateway database."""
    return KeyStore(Database(settings.current().database_url))


@lru_cache(maxsize=1)
def key_cache() -> KeyCache:
    return KeyCache(key_store(), settings.current().key_cache_ttl_s)


def is_master_key(secret: str | None) -> bool:
    master = settings.current().master_key
    return bool(secret and master and hmac.compare_digest(secret.encode(), master.encode()))


def bearer(value: str | None) -> str:
    """The secret in an Authorization header value (with or without 'Bearer ')."""
    value = (value or "").strip()
    return value[7:].strip() if value[:7].lower() == "bearer " else value


async def authenticate(secret: str) -> ApiKey:
    """The live key a secret belongs to, or a 401."""
    if not secret:
        raise errors.unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
    key = await key_cache().get(secret)
    if key is None:
        raise errors.unauthorized("Invalid API key")
    refusal = key.refusal()
    if refusal:
        raise errors.unauthorized(refusal)
    return key


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """LiteLLM's custom_auth entry point."""
    secret = bearer(api_key)
    if is_master_key(secret):
        return UserAPIKeyAuth(api_key=secret, user_role=LitellmUserRoles.PROXY_ADMIN, key_alias="master")
    key = await authenticate(secret)
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
