"""The gateway's Prometheus metrics (the requirements' ``llm_*`` names) and its /metrics route.

Per request, counted once by the request's observation (:mod:`hxp.gateway.observer`, through
:func:`observe`):

| metric                             | type      | labels                     |
|------------------------------------|-----------|----------------------------|
| llm_requests_total                 | counter   | model, status, user_id     |
| llm_request_duration_seconds       | histogram | model, status              |
| llm_time_to_first_token_seconds    | histogram | model (streams)            |
| llm_active_requests                | gauge     | model                      |
| llm_tokens_processed_total         | counter   | model, type=prompt|completion (cache hits excluded) |
| llm_cache_hits_total               | counter   | model                      |
| llm_rate_limit_rejections_total    | counter   | model, user_id             |

``status`` is the HTTP status code the client got (499: it left before the end);
``user_id`` is the key's alias (never the key); ``model`` is a catalogue name, or
``unknown``. Refusals before a backend call (401, 403, 400, 404, 413, 429) are counted too.

At scrape time:

| metric                        | meaning                                                          |
|-------------------------------|------------------------------------------------------------------|
| llm_model_memory_usage_bytes  | resident memory of each model's engine processes (all replicas)  |
| llm_backend_up                | 1 when every replica of the model answers /health                |
| llm_usage_log_backlog         | usage rows not yet in the database (all workers)                 |
| llm_gateway_event_loop_tasks  | asyncio tasks alive in each worker's event loop (label ``pid`` with several workers) |

Engine memory is the RSS of the process tree listening on the engine's port (as the usage rollup measures it)
when it runs on this host (engine core included), else the engine's own
``process_resident_memory_bytes`` from its /metrics (its API server process).

Several workers: the launcher calls :func:`prepare_multiprocess_dir` before
starting them, so every worker writes its samples to files under the state
directory and any worker's /metrics sums them (prometheus_client multiprocess
mode); without it the process's own registry is served.

/metrics answers without a key, like every exporter, unless HXP_METRICS_TOKEN is set: then the
route table's ``metrics`` access asks for that bearer token (Prometheus's ``authorization``
scrape setting); restrict it by network as well.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import litellm
from fastapi import APIRouter, Request, Response
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from hxp.core.paths import state_path
from hxp.gateway import deployments
from hxp.gateway.engines import EngineProcesses, local_port

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PROBE_TIMEOUT_S = 2.0
SCRAPE_CACHE_S = 5.0
BACKLOG_INTERVAL_S = 2.0

REQUESTS = Counter("llm_requests", "Requests answered by the gateway", ["model", "status", "user_id"])
DURATION = Histogram(
    "llm_request_duration_seconds",
    "Time from request to complete answer",
    ["model", "status"],
    buckets=(0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
TTFT = Histogram(
    "llm_time_to_first_token_seconds",
    "Time from request to the first streamed chunk",
    ["model"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
)
ACTIVE = Gauge("llm_active_requests", "Requests in progress", ["model"], multiprocess_mode="livesum")
TOKENS = Counter("llm_tokens_processed", "Tokens processed by the engines", ["model", "type"])
CACHE_HITS = Counter("llm_cache_hits", "Requests answered from the response cache", ["model"])
RATE_LIMITED = Counter("llm_rate_limit_rejections", "Requests rejected by a rate limit (429)", ["model", "user_id"])
BACKLOG = Gauge("llm_usage_log_backlog", "Usage rows not yet written to the database", multiprocess_mode="livesum")
TASKS = Gauge(
    "llm_gateway_event_loop_tasks", "asyncio tasks alive in the worker's event loop", multiprocess_mode="liveall"
)


def observe(
    model: str,
    status: int,
    user: str,
    latency_s: float,
    ttft_s: float | None,
    prompt_tokens: int | None,
    completion_tokens: int | None,
    cache_hit: bool,
) -> None:
    """Count one answered request (called once per request by :mod:`hxp.gateway.observer`)."""
    REQUESTS.labels(model, str(status), user).inc()
    DURATION.labels(model, str(status)).observe(latency_s)
    if ttft_s is not None:
        TTFT.labels(model).observe(ttft_s)
    if status == 429:
        RATE_LIMITED.labels(model, user).inc()
    if cache_hit:
        CACHE_HITS.labels(model).inc()
    for kind, count in (("prompt", prompt_tokens), ("completion", completion_tokens)):
        if count:
            TOKENS.labels(model, kind).inc(count)


def prepare_multiprocess_dir() -> str:
    """Empty PROMETHEUS_MULTIPROC_DIR (default <state>/prometheus-multiproc) of the previous run's samples and
    export it to the workers; the launcher calls this before they start."""
    path = Path(os.environ.get(MULTIPROC_ENV) or state_path("prometheus-multiproc"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    return str(path)


# --- scrape-time metrics: the engines as the gateway sees them --------------------------------------------
def engine_memory_from_metrics(client: httpx.Client, base_url: str) -> float | None:
    """An engine's own ``process_resident_memory_bytes`` (its API server process), from its /metrics."""
    try:
        text = client.get(deployments.engine_root(base_url) + "/metrics").text
    except httpx.HTTPError:
        return None
    values = [
        s.value
        for f in text_string_to_metric_families(text)
        if f.name == "process_resident_memory_bytes"
        for s in f.samples
    ]
    return float(sum(values)) if values else None


def _engine_health(client: httpx.Client, base_url: str) -> bool:
    try:
        return client.get(deployments.engine_root(base_url) + "/health").status_code == 200
    except httpx.HTTPError:
        return False


class EngineCollector:
    """``llm_model_memory_usage_bytes`` and ``llm_backend_up`` per catalogue model, probed at scrape time."""

    def __init__(self) -> None:
        self._cached: tuple[float, list[GaugeMetricFamily]] = (0.0, [])
        self._local = EngineProcesses()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="hxp-metrics-probe")
        self._client = httpx.Client(timeout=PROBE_TIMEOUT_S)  # one, not one per scrape (hxp.gateway.clients)

    def _probe(self) -> list[GaugeMetricFamily]:
        memory = GaugeMetricFamily(
            "llm_model_memory_usage_bytes", "Resident memory of the model's engines", labels=["model"]
        )
        up = GaugeMetricFamily("llm_backend_up", "1 when every replica of the model answers /health", labels=["model"])
        models = list(deployments.served().items())
        client = self._client
        health = {(n, u): self._pool.submit(_engine_health, client, u) for n, urls in models for u in urls}
        remote = {
            (n, u): self._pool.submit(engine_memory_from_metrics, client, u)
            for n, urls in models
            for u in urls
            if local_port(u) is None
        }
        for name, urls in models:
            up.add_metric([name], float(all(health[(name, u)].result() for u in urls)))
            local_gb, _ = self._local.sample(name, urls)
            sizes = [s for s in (remote[(name, u)].result() for u in urls if (name, u) in remote) if s is not None]
            if local_gb is not None:
                sizes.append(local_gb * 2**30)
            if sizes:
                memory.add_metric([name], sum(sizes))
        return [memory, up]

    def collect(self) -> Iterable[GaugeMetricFamily]:
        at, families = self._cached
        if time.monotonic() - at > SCRAPE_CACHE_S:
            families = self._probe()
            self._cached = (time.monotonic(), families)
        return families


ENGINES = EngineCollector()
if not os.environ.get(MULTIPROC_ENV):
    REGISTRY.register(ENGINES)


def _registry() -> CollectorRegistry:
    """Every worker's samples (multiprocess mode) or this process's registry, with the engines'."""
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(ENGINES)
    return registry


def _sample_backlog() -> None:
    from hxp.gateway import usage

    BACKLOG.set(usage.backlog())


async def _watch() -> None:
    """Every BACKLOG_INTERVAL_S: the usage backlog (off the loop) and this worker's task count."""
    while True:
        TASKS.set(len(asyncio.all_tasks()))
        await asyncio.to_thread(_sample_backlog)
        await asyncio.sleep(BACKLOG_INTERVAL_S)


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(_watch())
    try:
        yield
    finally:
        task.cancel()
        if os.environ.get(MULTIPROC_ENV):  # a stopped worker's live gauges (in flight, backlog) stop counting
            multiprocess.mark_process_dead(os.getpid())


router = APIRouter(lifespan=_lifespan)
litellm.require_auth_for_metrics_endpoint = False


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition of every worker's metrics plus the engines' (rendered off the event loop)."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    body = await asyncio.to_thread(lambda: encoder(_registry()))
    return Response(body, media_type=content_type)
