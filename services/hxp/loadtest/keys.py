"""The API key the load test sends: HXP_LOADTEST_KEY, or a short-lived key made with a master key.

The master key is HXP_MASTER_KEY, else the one the native stack (`make run`, hxp.runner)
keeps in its state directory (``.state/master.key``). A created key has no rate limits
(the test measures the models, not the limiter), is owned by ``loadtest`` so its usage
is told apart in the request log, expires after a day, and is revoked when the test ends.

Without a usable key (none given, none found, or one the gateway refuses) the run stops
before it sends a request, saying how to give one.
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from dataclasses import dataclass

import httpx

from hxp.runner import master_key_file

log = logging.getLogger(__name__)

HOW = (
    "give the load test a key: HXP_LOADTEST_KEY=<an API key of the gateway> (`make run` prints one), or "
    "HXP_MASTER_KEY=<the gateway's master key> to let the run create one (`make run` keeps its master key in "
    ".state/master.key, which is used when present)"
)


@dataclass(frozen=True)
class TestKey:
    secret: str
    alias: str | None = None  # set when this run created the key
    master: str | None = None  # the master key that created it (to revoke it)


def gateway_root(host: str) -> str:
    """The gateway's root URL, given with or without the /v1 suffix."""
    host = host.rstrip("/")
    return host[: -len("/v1")] if host.endswith("/v1") else host


def master_key() -> tuple[str, str] | None:
    """The master key and where it came from: HXP_MASTER_KEY, else the native stack's key file; else None."""
    if key := os.environ.get("HXP_MASTER_KEY"):
        return key, "HXP_MASTER_KEY"
    path = master_key_file()
    key = path.read_text().strip() if path.is_file() else ""
    return (key, str(path)) if key else None


def provision(host: str) -> TestKey:
    """HXP_LOADTEST_KEY when set; else a new key from the gateway's admin API with the master key.

    Raises SystemExit (the run stops before any request) when there is no usable key.
    """
    root = gateway_root(host)
    if secret := os.environ.get("HXP_LOADTEST_KEY"):
        _check(root, secret)
        return TestKey(secret)
    found = master_key()
    if found is None:
        raise SystemExit(
            f"no API key for the load test (neither HXP_LOADTEST_KEY nor HXP_MASTER_KEY is set and "
            f"there is no {master_key_file()}): {HOW}"
        )
    master, origin = found
    alias = f"loadtest-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    try:
        resp = httpx.post(
            f"{root}/admin/keys",
            headers={"Authorization": f"Bearer {master}"},
            json={"alias": alias, "owner": "loadtest", "days": 1},
            timeout=30,
        )
    except httpx.HTTPError as err:
        raise SystemExit(
            f"could not reach the gateway at {root} to create a load-test key ({err}); "
            "is the stack running (`make run`)?"
        ) from None
    if resp.status_code in (401, 403):
        raise SystemExit(f"the gateway at {root} refused the master key from {origin} (HTTP {resp.status_code}): {HOW}")
    if resp.status_code != 201:
        raise SystemExit(f"could not create a load-test key at {root}: HTTP {resp.status_code} {resp.text}")
    return TestKey(resp.json()["key"], alias, master)


def _check(root: str, secret: str) -> None:
    """Stop when the gateway refuses ``secret``; an unreachable gateway is left to the run's verdict."""
    try:
        resp = httpx.get(f"{root}/v1/models", headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    except httpx.HTTPError as err:
        log.warning("could not check HXP_LOADTEST_KEY at %s: %s", root, err)
        return
    if resp.status_code in (401, 403):
        raise SystemExit(f"the gateway at {root} refused HXP_LOADTEST_KEY (HTTP {resp.status_code}): {HOW}")


def revoke(host: str, key: TestKey) -> None:
    """Revoke a key this run created (a no-op for a given key)."""
    if key.alias is None:
        return
    try:
        httpx.post(
            f"{gateway_root(host)}/admin/keys/{key.alias}/revoke",
            headers={"Authorization": f"Bearer {key.master}"},
            timeout=30,
        )
    except httpx.HTTPError as err:
        log.warning("could not revoke load-test key %s: %s", key.alias, err)
