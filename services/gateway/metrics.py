"""The gateway's Prometheus metrics (the requirements' ``llm_*`` names) and its /metrics route.

Per request, observed in the proxy's request path by :data:`metrics_logger`:

| metric                             | type      | labels                     |
|------------------------------------|-----------|----------------------------|
| llm_requests_total                 | counter   | model, status, user_id     |
| llm_request_duration_seconds       | histogram | model, status              |
| llm_time_to_first_token_seconds    | histogram | model (streams)            |
| llm_active_requests                | gauge     | model                      |
| llm_tokens_processed_total         | counter   | model, type=prompt|completion (cache hits excluded) |
| llm_cache_hits_total               | counter   | model                      |
| llm_rate_limit_rejections_total    | counter   | model, user_id             |

``status`` is the HTTP status code answered; ``user_id`` is the key's alias
(never the key); ``model`` is a catalogue name, or ``unknown``. Rejections
before a backend call (401, 403, 400, 404, 429) are counted too; their
duration is observed when LiteLLM's hooks saw the request start.

At scrape time:

| metric                        | meaning                                                          |
|-------------------------------|------------------------------------------------------------------|
| llm_model_memory_usage_bytes  | resident memory of each model's engine processes (all replicas)  |
| llm_backend_up                | 1 when every replica of the model answers /health                |
| llm_usage_log_backlog         | usage rows not yet in the database (all workers)                 |

Engine memory is the RSS of the process tree listening on the engine's port (as the usage rollup measures it)
when it runs on this host (engine core included), else the engine's own
``process_resident_memory_bytes`` from its /metrics (its API server process).

Several workers: the launcher calls :func:`prepare_multiprocess_dir` before
starting them, so every worker writes its samples to files under the state
directory and any worker's /metrics sums them (prometheus_client multiprocess
mode); without it the process's own registry is served.

/metrics answers without a key, like every exporter (LiteLLM's own auth on that
path is switched off here): restrict it by network, not by API key.
"""
from __future__ import annotations

import asyncio
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncGenerator, AsyncIterator, Iterable, Mapping

import httpx
import litellm
from fastapi import APIRouter, Request, Response
from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import UserAPIKeyAuth
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.parser import text_string_to_metric_families

from hxp.gateway import request_log
from hxp.gateway.errors import status_of
from hxp.gateway.hooks import answered_error, requested_model
from hxp.gateway.engines import EngineProcesses, local_port
from hxp.paths import state_path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNKNOWN = "unknown"
PROBE_TIMEOUT_S = 2.0
SCRAPE_CACHE_S = 5.0
BACKLOG_INTERVAL_S = 2.0

REQUESTS = Counter("llm_requests", "Requests answered by the gateway", ["model", "status", "user_id"])
DURATION = Histogram("llm_request_duration_seconds", "Time from request to complete answer", ["model", "status"],
                     buckets=(0.1, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0))
TTFT = Histogram("llm_time_to_first_token_seconds", "Time from request to the first streamed chunk", ["model"],
                 buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0))
ACTIVE = Gauge("llm_active_requests", "Requests in progress", ["model"], multiprocess_mode="livesum")
TOKENS = Counter("llm_tokens_processed", "Tokens processed by the engines", ["model", "type"])
CACHE_HITS = Counter("llm_cache_hits", "Requests answered from the response cache", ["model"])
RATE_LIMITED = Counter("llm_rate_limit_rejections", "Requests rejected by a rate limit (429)", ["model", "user_id"])
BACKLOG = Gauge("llm_usage_log_backlog", "Usage rows not yet written to the database", multiprocess_mode="livesum")

# Key in the request's LiteLLM metadata (which, unlike a top-level key, is never sent to the backend):
# (model, start) while the request is in flight, None once it has been observed.
_STATE = "hxp_metrics"


def _metadata(data: dict) -> dict:
    """The request's LiteLLM metadata dict (created when missing)."""
    metadata = data.get("metadata")
    if not isinstance(metadata, dict):
        metadata = data["metadata"] = {}
    return metadata


def prepare_multiprocess_dir() -> str:
    """Empty PROMETHEUS_MULTIPROC_DIR (default <state>/prometheus-multiproc) of the previous run's samples and
    export it to the workers; the launcher calls this before they start."""
    path = Path(os.environ.get(MULTIPROC_ENV) or state_path("prometheus-multiproc"))
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(path)
    return str(path)


def model_label(data: Mapping[str, Any]) -> str:
    """The catalogue model a request asked for (``unknown`` for anything else: bounded cardinality)."""
    return requested_model(data) or UNKNOWN


def _field(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


def _usage(obj: Any) -> tuple[int | None, int | None]:
    usage = _field(obj, "usage")
    return (_field(usage, "prompt_tokens"), _field(usage, "completion_tokens")) if usage is not None else (None, None)


def _cache_hit(obj: Any) -> bool:
    hidden = _field(obj, "_hidden_params")
    return bool(isinstance(hidden, Mapping) and hidden.get("cache_hit"))


def _completion_text(obj: Any) -> str | None:
    choices = _field(obj, "choices") or []
    texts = [_field(_field(c, "message"), "content") for c in choices]
    return "".join(t for t in texts if isinstance(t, str)) or None


def _start_of(data: Mapping[str, Any]) -> float | None:
    """When the request started (perf_counter seconds), if a pre-call hook saw it."""
    metadata = data.get("metadata")
    state = metadata.get(_STATE) if isinstance(metadata, Mapping) else None
    return state[1] if state else None


class MetricsLogger(CustomLogger):
    """Counts every request the proxy answers, and writes its JSON log line (hxp.gateway.request_log)."""

    async def async_pre_call_hook(self, user_api_key_dict: UserAPIKeyAuth, cache: Any, data: dict,
                                  call_type: str) -> dict:
        metadata = _metadata(data)
        if _STATE not in metadata:
            model = model_label(data)
            metadata[_STATE] = (model, time.perf_counter())
            ACTIVE.labels(model).inc()
        return data

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: UserAPIKeyAuth,
                                           response: Any) -> None:
        prompt, completion = _usage(response)
        self._finish(data, user_api_key_dict, 200, prompt_tokens=prompt, completion_tokens=completion,
                     cache_hit=_cache_hit(response), completion=_completion_text(response))

    async def async_post_call_streaming_iterator_hook(self, user_api_key_dict: UserAPIKeyAuth, response: Any,
                                                      request_data: dict) -> AsyncGenerator[Any, None]:
        start = _start_of(request_data)
        first: float | None = None
        usage: tuple[int | None, int | None] = (None, None)
        parts: list[str] = []
        keep_text = request_log.content_enabled()
        status = 499  # the client went away before the end
        try:
            async for chunk in response:
                if first is None:
                    first = time.perf_counter()
                    if start is not None:
                        TTFT.labels(model_label(request_data)).observe(first - start)
                if _usage(chunk) != (None, None):
                    usage = _usage(chunk)
                if keep_text:
                    parts.extend(t for t in (_field(_field(c, "delta"), "content")
                                             for c in _field(chunk, "choices") or []) if isinstance(t, str))
                yield chunk
            status = 200
        except (GeneratorExit, asyncio.CancelledError):
            raise
        except Exception:
            status = 0  # LiteLLM reports it to async_post_call_failure_hook
            raise
        finally:
            if status:
                self._finish(request_data, user_api_key_dict, status, prompt_tokens=usage[0],
                             completion_tokens=usage[1], cache_hit=_cache_hit(response), stream=True,
                             ttft_s=None if first is None or start is None else first - start,
                             completion="".join(parts) if keep_text else None)

    async def async_post_call_failure_hook(self, request_data: dict, original_exception: Exception,
                                           user_api_key_dict: UserAPIKeyAuth, traceback_str: str | None = None
                                           ) -> None:
        answered = await answered_error(request_data, original_exception, user_api_key_dict)
        message = getattr(answered, "message", None) or str(answered)
        self._finish(request_data, user_api_key_dict, status_of(answered), stream=request_data.get("stream") is True,
                     error=f"{type(original_exception).__name__}: {message}")

    def _finish(self, data: dict, user: UserAPIKeyAuth | None, status: int, *, prompt_tokens: int | None = None,
                completion_tokens: int | None = None, cache_hit: bool = False, stream: bool = False,
                ttft_s: float | None = None, error: str | None = None, completion: str | None = None) -> None:
        """Observe one answered request, once (a request may pass several hooks)."""
        metadata = _metadata(data)
        state = metadata.get(_STATE, ())
        if state is None:
            return
        metadata[_STATE] = None
        model = state[0] if state else model_label(data)
        alias = (user.key_alias if user is not None else None) or UNKNOWN
        latency = time.perf_counter() - state[1] if state else None
        if state:
            ACTIVE.labels(model).dec()
        REQUESTS.labels(model, str(status), alias).inc()
        if latency is not None:
            DURATION.labels(model, str(status)).observe(latency)
        if status == 429:
            RATE_LIMITED.labels(model, alias).inc()
        if cache_hit:
            CACHE_HITS.labels(model).inc()
        else:
            for kind, count in (("prompt", prompt_tokens), ("completion", completion_tokens)):
                if count:
                    TOKENS.labels(model, kind).inc(count)
        request_log.emit(request_log.entry(
            request_id=data.get("litellm_call_id"), model=model, key_alias=alias, status=status, latency_s=latency,
            ttft_s=ttft_s, prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, cache_hit=cache_hit,
            stream=stream, error=error, prompt=data.get("messages", data.get("input")), completion=completion))


metrics_logger = MetricsLogger()


# --- scrape-time metrics: the engines as the gateway sees them --------------------------------------------
def _engine_root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root[:-3] if root.endswith("/v1") else root


def engine_memory_from_metrics(client: httpx.Client, base_url: str) -> float | None:
    """An engine's own ``process_resident_memory_bytes`` (its API server process), from its /metrics."""
    try:
        text = client.get(_engine_root(base_url) + "/metrics").text
    except httpx.HTTPError:
        return None
    values = [s.value for f in text_string_to_metric_families(text) if f.name == "process_resident_memory_bytes"
              for s in f.samples]
    return float(sum(values)) if values else None


def _engine_health(client: httpx.Client, base_url: str) -> bool:
    try:
        return client.get(_engine_root(base_url) + "/health").status_code == 200
    except httpx.HTTPError:
        return False


class EngineCollector:
    """``llm_model_memory_usage_bytes`` and ``llm_backend_up`` per catalogue model, probed at scrape time."""

    def __init__(self) -> None:
        self._cached: tuple[float, list[GaugeMetricFamily]] = (0.0, [])
        self._local = EngineProcesses()
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="hxp-metrics-probe")

    def _probe(self) -> list[GaugeMetricFamily]:
        from hxp import catalogue
        from hxp.gateway import routes, settings

        cfg = settings.current()
        memory = GaugeMetricFamily("llm_model_memory_usage_bytes", "Resident memory of the model's engines",
                                   labels=["model"])
        up = GaugeMetricFamily("llm_backend_up", "1 when every replica of the model answers /health",
                               labels=["model"])
        models = [(m.name, routes.backend_urls(m, cfg.backends, cfg.backend_url_template))
                  for m in catalogue.load().models]
        with httpx.Client(timeout=PROBE_TIMEOUT_S) as client:
            health = {(n, u): self._pool.submit(_engine_health, client, u) for n, urls in models for u in urls}
            remote = {(n, u): self._pool.submit(engine_memory_from_metrics, client, u)
                      for n, urls in models for u in urls if local_port(u) is None}
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


async def _watch_backlog() -> None:
    while True:
        await asyncio.to_thread(_sample_backlog)
        await asyncio.sleep(BACKLOG_INTERVAL_S)


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    task = asyncio.get_running_loop().create_task(_watch_backlog())
    try:
        yield
    finally:
        task.cancel()


router = APIRouter(lifespan=_lifespan)
litellm.require_auth_for_metrics_endpoint = False


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """Prometheus exposition of every worker's metrics plus the engines' (rendered off the event loop)."""
    encoder, content_type = choose_encoder(request.headers.get("accept", ""))
    body = await asyncio.to_thread(lambda: encoder(_registry()))
    return Response(body, media_type=content_type)
