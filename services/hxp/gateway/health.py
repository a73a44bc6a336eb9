"""Liveness, readiness and the per-model status view; and the Redis watch.

- ``GET /health/liveness`` (and LiteLLM's spelling ``/health/liveliness``): the process answers.
- ``GET /health/readiness``: 200 when the database and Redis (when configured) answer; with
  ``?strict=true`` every backend must answer too. Anyone gets a status per component; the master
  key also gets the details (latencies, redacted URLs and errors). Each worker computes it at
  most once a second, whoever asks and however often.
- ``GET /health/models`` (master key): each model with each replica's health and response time.

The Redis watch (a LiteLLM worker startup hook) pings Redis every few seconds and,
when it goes away or comes back, says so in the log and in the
``hxp_gateway_redis_up`` gauge; rate limits then fail open or closed as configured.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Gauge

from hxp.core.context import Runtime, runtime
from hxp.core.database import Database
from hxp.core.redaction import redact, redact_url
from hxp.gateway import clients, deployments
from hxp.gateway.request_context import context_of

log = logging.getLogger("hxp.gateway")
router = APIRouter(tags=["health"])

REDIS_UP = Gauge(
    "hxp_gateway_redis_up",
    "1 when the gateway's Redis answers, 0 when not (-1: no Redis configured)",
    multiprocess_mode="min",
)
REDIS_OUTAGES = Counter("hxp_gateway_redis_outages_total", "Times the gateway found its Redis unreachable")
REDIS_WATCH_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 2.0
REDIS_PROBE_CLIENT_NAME = "hxp-health"
READINESS_CACHE_S = 1.0


def _database(rt: Runtime) -> Database:
    return Database(rt.settings.database_url, pool_size=1)


def _redis(rt: Runtime) -> Any:
    import redis.asyncio as aioredis

    url = rt.settings.redis_url
    assert url is not None  # built only when REDIS_URL is set (_check_redis)
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=1,  # one probe at a time: the others wait (READINESS_CACHE_S spares most of them)
        timeout=PROBE_TIMEOUT_S,
        socket_timeout=PROBE_TIMEOUT_S,
        socket_connect_timeout=PROBE_TIMEOUT_S,
        client_name=REDIS_PROBE_CLIENT_NAME,
    )
    return aioredis.Redis(connection_pool=pool)


async def _timed(probe: Any) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        await probe
        return {"healthy": True, "latency_ms": round((time.perf_counter() - start) * 1000, 1)}
    except Exception as exc:  # noqa: BLE001 - any failure is reported, not raised
        return {"healthy": False, "error": redact(f"{type(exc).__name__}: {exc}")[:300]}


async def _check_database() -> dict[str, Any]:
    return await _timed(asyncio.wait_for(asyncio.to_thread(runtime().get(_database).ping), PROBE_TIMEOUT_S))


async def _check_redis() -> dict[str, Any] | None:
    if not runtime().settings.redis_url:
        return None
    return await _timed(asyncio.wait_for(runtime().get(_redis).ping(), PROBE_TIMEOUT_S))


async def _get_ok(client: httpx.AsyncClient, url: str) -> None:
    (await client.get(url, timeout=PROBE_TIMEOUT_S)).raise_for_status()


async def model_status() -> list[dict[str, Any]]:
    """Every model with the health of each of its replicas."""
    cat = deployments.catalogue()
    backends = deployments.served()
    client = clients.shared()
    models = []
    for model in cat.models:
        urls = backends[model.name]
        probes = await asyncio.gather(*(_timed(_get_ok(client, deployments.engine_root(u) + "/health")) for u in urls))
        replicas = [{"url": redact_url(u), **p} for u, p in zip(urls, probes)]
        models.append(
            {
                "model": model.name,
                "task": model.task,
                "healthy": any(r["healthy"] for r in replicas),
                "replicas": replicas,
            }
        )
    return models


class Readiness:
    """The readiness answer, computed at most once per ``max_age`` seconds (concurrent askers share one)."""

    def __init__(self, max_age: float = READINESS_CACHE_S) -> None:
        self.max_age = max_age
        self._at = float("-inf")
        self._details: dict[str, Any] = {}
        self._lock: asyncio.Lock | None = None

    async def details(self) -> dict[str, Any]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if time.monotonic() - self._at >= self.max_age:
                self._details = await self._compute()
                self._at = time.monotonic()
        return self._details

    @staticmethod
    async def _compute() -> dict[str, Any]:
        database, redis_check, models = await asyncio.gather(_check_database(), _check_redis(), model_status())
        cfg = runtime().settings
        return {
            "database": {"url": redact_url(cfg.database_url), **database},
            "redis": {"url": redact_url(cfg.redis_url), **redis_check} if redis_check else {"mode": "in-process"},
            "models": {m["model"]: m for m in models},
        }


_readiness = Readiness()


async def readiness_details() -> dict[str, Any]:
    """The master's view of readiness (database, Redis, every model's replicas), at most a second old."""
    return await _readiness.details()


def _state(component: dict[str, Any]) -> str:
    if "healthy" not in component:
        return component.get("mode", "off")
    return "up" if component["healthy"] else "down"


@router.get("/health/liveness")
@router.get("/health/liveliness")
async def liveness() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/health/readiness")
async def readiness(request: Request, strict: bool = False) -> JSONResponse:
    details = await readiness_details()
    backends_ok = all(m["healthy"] for m in details["models"].values())
    ready = details["database"]["healthy"] and details["redis"].get("healthy", True) and (backends_ok or not strict)
    body: dict[str, Any] = {
        "status": ("ready" if backends_ok else "degraded") if ready else "not ready",
        "components": {
            "database": _state(details["database"]),
            "redis": _state(details["redis"]),
            "models": {name: _state(m) for name, m in details["models"].items()},
        },
    }
    caller = context_of(request.scope).caller
    if caller is not None and caller.master:
        body["details"] = details
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/health/models")
async def models_view() -> dict[str, Any]:
    return {"data": await model_status()}


async def _watch_redis(url: str, fail_closed: bool) -> None:
    up: bool | None = None
    while True:
        healthy = (await _check_redis() or {}).get("healthy", False)
        if healthy != up:
            REDIS_UP.set(1 if healthy else 0)
            if healthy and up is not None:
                log.warning("Redis at %s is reachable again: shared rate limits and cache resumed", redact_url(url))
            elif not healthy:
                REDIS_OUTAGES.inc()
                log.error(
                    "Redis at %s is unreachable: rate limits fail %s (%s) and the cache is bypassed",
                    redact_url(url),
                    "closed" if fail_closed else "open",
                    "requests with limits are rejected with 503" if fail_closed else "requests are admitted",
                )
            up = healthy
        await asyncio.sleep(REDIS_WATCH_INTERVAL_S)


def start_redis_watch() -> None:
    """LiteLLM worker startup hook: watch Redis in the background (or note in-process mode)."""
    cfg = runtime().settings
    if not cfg.redis_url:
        REDIS_UP.set(-1)
        return
    _background.add(asyncio.get_running_loop().create_task(_watch_redis(cfg.redis_url, cfg.rate_limit_fail_closed)))


_background: set[asyncio.Task] = set()
