"""Liveness, readiness and the per-model status view; and the Redis watch.

- ``GET /health/liveness`` (and LiteLLM's spelling ``/health/liveliness``): the process answers.
- ``GET /health/readiness``: 200 when the database and Redis (when configured) answer; the body
  also reports every backend's ``/health``. With ``?strict=true`` every backend must answer too.
- ``GET /health/models``: each model with each replica's health and response time.

The Redis watch (a LiteLLM worker startup hook) pings Redis every few seconds and,
when it goes away or comes back, says so in the log and in the
``hxp_gateway_redis_up`` gauge; rate limits then fail open or closed as configured.
"""
from __future__ import annotations

import asyncio
import logging
import time
from functools import lru_cache
from typing import Any

import httpx
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Gauge

from hxp import catalogue as catalogue_module
from hxp.gateway import routes, settings
from hxp.gateway.database import Database, redact

log = logging.getLogger("hxp.gateway")
router = APIRouter(tags=["health"])

REDIS_UP = Gauge("hxp_gateway_redis_up", "1 when the gateway's Redis answers, 0 when not (-1: no Redis configured)",
                 multiprocess_mode="min")
REDIS_OUTAGES = Counter("hxp_gateway_redis_outages_total", "Times the gateway found its Redis unreachable")
REDIS_WATCH_INTERVAL_S = 2.0
PROBE_TIMEOUT_S = 2.0


@lru_cache(maxsize=1)
def _database() -> Database:
    return Database(settings.current().database_url, pool_size=1)


@lru_cache(maxsize=1)
def _redis() -> Any:
    import redis.asyncio as aioredis

    return aioredis.from_url(settings.current().redis_url, socket_timeout=PROBE_TIMEOUT_S,
                             socket_connect_timeout=PROBE_TIMEOUT_S)


async def _timed(probe: Any) -> dict[str, Any]:
    start = time.perf_counter()
    try:
        await probe
        return {"healthy": True, "latency_ms": round((time.perf_counter() - start) * 1000, 1)}
    except Exception as exc:  # noqa: BLE001 - any failure is reported, not raised
        return {"healthy": False, "error": f"{type(exc).__name__}: {exc}"[:300]}


async def _check_database() -> dict[str, Any]:
    return await _timed(asyncio.wait_for(asyncio.to_thread(_database().ping), PROBE_TIMEOUT_S))


async def _check_redis() -> dict[str, Any] | None:
    if not settings.current().redis_url:
        return None
    return await _timed(asyncio.wait_for(_redis().ping(), PROBE_TIMEOUT_S))


def health_url(base_url: str) -> str:
    """A vLLM engine's /health, from its OpenAI base URL (…/v1)."""
    root = base_url.rstrip("/")
    return (root[:-3] if root.endswith("/v1") else root) + "/health"


async def _get_ok(client: httpx.AsyncClient, url: str) -> None:
    (await client.get(url)).raise_for_status()


async def model_status() -> list[dict[str, Any]]:
    """Every model with the health of each of its replicas."""
    cfg = settings.current()
    cat = catalogue_module.load()
    async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_S) as client:
        models = []
        for model in cat.models:
            urls = routes.backend_urls(model, cfg.backends, cfg.backend_url_template)
            probes = await asyncio.gather(*(_timed(_get_ok(client, health_url(u))) for u in urls))
            replicas = [{"url": u, **p} for u, p in zip(urls, probes)]
            models.append({"model": model.name, "task": model.task, "healthy": any(r["healthy"] for r in replicas),
                           "replicas": replicas})
    return models


@router.get("/health/liveness")
@router.get("/health/liveliness")
async def liveness() -> dict[str, str]:
    return {"status": "alive"}


@router.get("/health/readiness")
async def readiness(strict: bool = False) -> JSONResponse:
    database, redis_check, models = await asyncio.gather(_check_database(), _check_redis(), model_status())
    backends_ok = all(r["healthy"] for m in models for r in m["replicas"])
    cfg = settings.current()
    ready = database["healthy"] and (redis_check is None or redis_check["healthy"]) and (backends_ok or not strict)
    body = {
        "status": ("ready" if backends_ok else "degraded") if ready else "not ready",
        "database": {"url": redact(cfg.database_url), **database},
        "redis": {"url": redact(cfg.redis_url), **redis_check} if redis_check else {"mode": "in-process"},
        "models": {m["model"]: m["healthy"] for m in models},
    }
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
                log.warning("Redis at %s is reachable again: shared rate limits and cache resumed", redact(url))
            elif not healthy:
                REDIS_OUTAGES.inc()
                log.error("Redis at %s is unreachable: rate limits fail %s (%s) and the cache is bypassed",
                          redact(url), "closed" if fail_closed else "open",
                          "requests with limits are rejected with 503" if fail_closed else "requests are admitted")
            up = healthy
        await asyncio.sleep(REDIS_WATCH_INTERVAL_S)


def start_redis_watch() -> None:
    """LiteLLM worker startup hook: watch Redis in the background (or note in-process mode)."""
    cfg = settings.current()
    if not cfg.redis_url:
        REDIS_UP.set(-1)
        return
    _background.add(asyncio.get_running_loop().create_task(_watch_redis(cfg.redis_url, cfg.rate_limit_fail_closed)))


_background: set[asyncio.Task] = set()
