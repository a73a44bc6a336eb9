"""The API key the load test sends: HXP_LOADTEST_KEY, or a short-lived key made with the master key.

A created key has no rate limits (the test measures the models, not the
limiter), is owned by ``loadtest`` so its usage is told apart in the request
log, expires after a day, and is revoked when the test ends.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass

import httpx

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestKey:
    secret: str  # empty: requests go without a key (e.g. straight to an engine)
    alias: str | None = None  # set when this run created the key


def gateway_root(host: str) -> str:
    """The gateway's root URL, given with or without the /v1 suffix."""
    host = host.rstrip("/")
    return host[: -len("/v1")] if host.endswith("/v1") else host


def provision(host: str) -> TestKey:
    """HXP_LOADTEST_KEY when set; else a new key from the gateway's admin API (HXP_MASTER_KEY); else none."""
    if secret := os.environ.get("HXP_LOADTEST_KEY"):
        return TestKey(secret)
    master = os.environ.get("HXP_MASTER_KEY")
    if not master:
        log.warning("neither HXP_LOADTEST_KEY nor HXP_MASTER_KEY is set: requests are sent without an API key")
        return TestKey("")
    alias = f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    resp = httpx.post(f"{gateway_root(host)}/admin/keys", headers={"Authorization": f"Bearer {master}"},
                      json={"alias": alias, "owner": "loadtest", "days": 1}, timeout=30)
    if resp.status_code != 201:
        raise SystemExit(f"could not create a load-test key at {gateway_root(host)}: "
                         f"HTTP {resp.status_code} {resp.text}")
    return TestKey(resp.json()["key"], alias)


def revoke(host: str, key: TestKey) -> None:
    """Revoke a key this run created (a no-op for a given key)."""
    if key.alias is None:
        return
    try:
        httpx.post(f"{gateway_root(host)}/admin/keys/{key.alias}/revoke",
                   headers={"Authorization": f"Bearer {os.environ['HXP_MASTER_KEY']}"}, timeout=30)
    except httpx.HTTPError as err:
        log.warning("could not revoke load-test key %s: %s", key.alias, err)
