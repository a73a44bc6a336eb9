"""The overview: every catalogue model with its engines and recent traffic, and the stores with their health.

Engine health comes from the gateway's readiness details (:func:`hxp.gateway.health.readiness_details`),
served names and queues from the engines themselves (:mod:`hxp.console.engines`), traffic over the
last 5 and 60 minutes from the usage log (:func:`hxp.console.queries.traffic`), engine memory and CPU
from the latest performance rollup.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from hxp.console import engines, queries
from hxp.core import stores
from hxp.core.redaction import redact, redact_url
from hxp.gateway import auth, deployments, health
from hxp.gateway.usage import backlog

WINDOWS_MIN = (5, 60)
REFRESH_S = 5  # how often an open overview asks again
SAMPLE_AGE = timedelta(minutes=10)  # performance rollups older than this say nothing about the engine now


def _rates(stats: dict[str, Any], minutes: int) -> dict[str, Any]:
    """A model's traffic over a window as rates (per minute, tokens per second) and latency percentiles."""
    seconds = minutes * 60
    return {
        "requests": stats.get("requests", 0),
        "errors": stats.get("errors", 0),
        "requests_per_min": round(stats.get("requests", 0) / minutes, 2),
        "errors_per_min": round(stats.get("errors", 0) / minutes, 2),
        "tokens_per_s": round(stats.get("completion_tokens", 0) / seconds, 2),
        **{name: stats.get(name) for name in ("latency_p50_ms", "latency_p95_ms", "ttft_p50_ms", "ttft_p95_ms")},
    }


def _traffic(names: list[str]) -> tuple[dict[int, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    db = auth.key_store().db
    now = datetime.now(UTC)
    windows = {m: queries.traffic(db, names, now - timedelta(minutes=m)) for m in WINDOWS_MIN}
    return windows, queries.engine_samples(db, names, now - SAMPLE_AGE)


def _total(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


async def _qdrant() -> dict[str, Any]:
    from hxp.vector.errors import VectorError
    from hxp.vector.service import get_service

    location = stores.qdrant_location()
    where = {"url": redact_url(location["url"])} if "url" in location else {"path": location["path"]}
    start = time.perf_counter()
    try:
        service = await get_service()
        counts = await asyncio.wait_for(
            asyncio.gather(*(service.store.count(c.name) for c in service.config.collections)), health.PROBE_TIMEOUT_S
        )
    except Exception as exc:  # noqa: BLE001 - any failure is reported, not raised
        message = exc.message if isinstance(exc, VectorError) else f"{type(exc).__name__}: {exc}"
        return {**where, "healthy": False, "error": redact(message)[:300]}
    return {
        **where,
        "healthy": True,
        "latency_ms": round((time.perf_counter() - start) * 1000, 1),
        "collections": {c.name: n for c, n in zip(service.config.collections, counts)},
    }


async def overview() -> dict[str, Any]:
    """Models (status, served names, queues, traffic, engine resources) and stores (database, Redis, Qdrant)."""
    cat = deployments.catalogue()
    backends = deployments.served()
    (windows, samples), details, reports, qdrant = await asyncio.gather(
        asyncio.to_thread(_traffic, cat.names), health.readiness_details(), engines.reports.details(), _qdrant()
    )
    models = []
    for model in cat.models:
        probed = details["models"].get(model.name, {}).get("replicas", [])
        replicas = []
        for url, probe in zip(backends[model.name], probed):
            report = reports.get(deployments.engine_root(url), {})
            replicas.append(
                {
                    **probe,
                    "served_names": report.get("served_names", []),
                    "running": report.get("running"),
                    "waiting": report.get("waiting"),
                }
            )
        models.append(
            {
                "name": model.name,
                "task": model.task,
                "port": model.port,
                "healthy": any(r.get("healthy") for r in replicas),
                "replicas": replicas,
                "served_names": sorted({n for r in replicas for n in r["served_names"]}),
                "running": _total([r["running"] for r in replicas]),
                "waiting": _total([r["waiting"] for r in replicas]),
                "engine": samples.get(model.name),
                "windows": {f"{m}m": _rates(windows[m].get(model.name, {}), m) for m in WINDOWS_MIN},
            }
        )
    stores = {"database": details["database"], "redis": details["redis"], "qdrant": qdrant}
    return {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "profile": cat.profile,
        "models": models,
        "stores": stores,
        "usage_backlog": backlog(),
        "refresh_s": REFRESH_S,
    }
