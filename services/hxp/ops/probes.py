"""Probes of the stack's parts, shared by `hxp status`, `hxp validate` and `hxp doctor`: whether each
answers, how fast, what it reports, and why not (a refused password told apart from an unreachable host).

Every text that leaves here has its credentials masked (:func:`hxp.core.redaction.redact`).
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from hxp.core.redaction import redact
from hxp.core.stores import QdrantLocation
from hxp.gateway.deployments import engine_root

TIMEOUT_S = 5.0
NETWORK, AUTHENTICATION, OTHER = "network", "authentication", "other"
_AUTH_WORDS = (
    "password authentication failed",
    "no password supplied",
    "authentication",
    "noauth",
    "wrongpass",
    "invalid password",
    "unauthorized",
    "forbidden",
    "permission denied",
    "401",
    "403",
)
_NETWORK_WORDS = (
    "connection refused",
    "timed out",
    "timeout",
    "could not translate host name",
    "name or service not known",
    "no route to host",
    "network is unreachable",
    "connection reset",
    "connecterror",
    "server closed the connection",
    "temporary failure in name resolution",
)


def describe(error: BaseException | str) -> str:
    """An error as one short line, credentials masked."""
    text = (
        error
        if isinstance(error, str)
        else (f"{type(error).__name__}: {error}" if str(error) else type(error).__name__)
    )
    return redact(" ".join(text.split()))[:300]


def classify(error: BaseException | str) -> str:
    """Why a connection failed: the server refused the credentials, or it could not be reached."""
    name = "" if isinstance(error, str) else type(error).__name__.lower()
    text = f"{name} {error}".lower()
    if "authentication" in name or any(w in text for w in _AUTH_WORDS):
        return AUTHENTICATION
    if any(w in text for w in _NETWORK_WORDS) or isinstance(error, (OSError, httpx.TransportError)):
        return NETWORK
    return OTHER


@dataclass(frozen=True)
class Probe:
    ok: bool
    detail: str = ""  # what answered, or why not
    latency_ms: float | None = None
    cause: str | None = None  # a failure's: network | authentication | other

    @classmethod
    def failure(cls, error: BaseException | str) -> Probe:
        return cls(False, describe(error), cause=classify(error))


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 1)


# --- stores ---------------------------------------------------------------------------------


def database(url: str) -> Probe:
    """Connect and run ``SELECT 1``."""
    start = time.perf_counter()
    try:
        if url.startswith("sqlite:///"):
            path = Path(url[len("sqlite:///") :])
            if not path.exists():
                return Probe(
                    False, f"SQLite file {path} does not exist (the gateway creates it when it starts)", cause=OTHER
                )
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=3)) as conn:
                conn.execute("SELECT 1")
        else:
            import psycopg

            with psycopg.connect(url, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - every failure is a finding
        return Probe.failure(exc)
    return Probe(True, "answers", _ms(start))


def database_clock_skew_s(url: str) -> float:
    """The database's clock minus this host's, in seconds (PostgreSQL; the round trip halved)."""
    import psycopg

    with psycopg.connect(url, connect_timeout=3) as conn:
        before = time.time()
        row = conn.execute("SELECT extract(epoch FROM clock_timestamp())").fetchone()
        after = time.time()
    assert row is not None  # a SELECT without FROM returns exactly one row
    return float(row[0]) - (before + after) / 2


def _redis(url: str) -> Any:
    import redis

    return redis.Redis.from_url(url, socket_timeout=3, socket_connect_timeout=3)


def redis_ping(url: str) -> Probe:
    start = time.perf_counter()
    try:
        with closing(_redis(url)) as client:
            client.ping()
    except Exception as exc:  # noqa: BLE001
        return Probe.failure(exc)
    return Probe(True, "answers PING", _ms(start))


def redis_round_trip(url: str) -> Probe:
    """Write a short-lived key, read it back, delete it."""
    key, value = f"hxp:validate:{secrets.token_hex(6)}", secrets.token_hex(8)
    start = time.perf_counter()
    try:
        with closing(_redis(url)) as client:
            client.set(key, value, ex=60)
            got = client.get(key)
            client.delete(key)
    except Exception as exc:  # noqa: BLE001
        return Probe.failure(exc)
    if got is None or got.decode() != value:
        return Probe(False, f"wrote {key} but read back {got!r}", cause=OTHER)
    return Probe(True, "SET/GET/DEL round trip", _ms(start))


def qdrant(location: QdrantLocation, client: httpx.Client) -> Probe:
    """A Qdrant server's collections (GET /collections), or what a local storage folder holds."""
    if "url" in location:
        start = time.perf_counter()
        headers = {"api-key": location["api_key"]} if location.get("api_key") else {}
        try:
            response = client.get(f"{location['url'].rstrip('/')}/collections", headers=headers, timeout=TIMEOUT_S)
        except httpx.HTTPError as exc:
            return Probe.failure(exc)
        if response.status_code in (401, 403):
            return Probe(False, f"refused the API key (HTTP {response.status_code})", cause=AUTHENTICATION)
        if response.is_error:
            return Probe(False, f"HTTP {response.status_code}", cause=OTHER)
        names = sorted(c["name"] for c in response.json()["result"]["collections"])
        return Probe(True, f"{len(names)} collections ({', '.join(names) or 'none'})", _ms(start))
    path = Path(location["path"])
    folder = path / "collection"
    names = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    return Probe(
        path.is_dir(),
        f"local folder {path}: {len(names)} collections ({', '.join(names) or 'none'})"
        if path.is_dir()
        else f"local folder {path} does not exist (the gateway creates it)",
        cause=None if path.is_dir() else OTHER,
    )


# --- engines --------------------------------------------------------------------------------


@dataclass
class EngineState:
    """One vLLM engine as it answers: health, served names, version, load, KV cache and memory."""

    url: str
    up: bool = False
    latency_ms: float | None = None
    served: list[str] = field(default_factory=list)
    version: str | None = None
    running: float | None = None
    waiting: float | None = None
    kv_cache_used: float | None = None  # 0..1
    memory_gb: float | None = None
    memory_source: str | None = None  # "processes" (this host) | "api server" (its /metrics)
    error: str | None = None


def metric_sums(text: str, names: tuple[str, ...]) -> dict[str, float]:
    """The sum of each named metric's samples in a Prometheus exposition (absent names left out)."""
    from prometheus_client.parser import text_string_to_metric_families

    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


def engine(client: httpx.Client, base_url: str, local: bool) -> EngineState:
    """Probe an engine; ``local``: measure the memory of the processes serving its port on this host."""
    state = EngineState(base_url)
    root = engine_root(base_url)
    start = time.perf_counter()
    try:
        health = client.get(f"{root}/health", timeout=TIMEOUT_S)
    except httpx.HTTPError as exc:
        state.error = describe(exc)
        return state
    state.latency_ms = _ms(start)
    state.up = health.status_code == 200
    if not state.up:
        state.error = f"/health answered HTTP {health.status_code}"
    try:
        state.served = [m["id"] for m in client.get(f"{root}/v1/models", timeout=TIMEOUT_S).json()["data"]]
        state.version = client.get(f"{root}/version", timeout=TIMEOUT_S).json().get("version")
        sums = metric_sums(
            client.get(f"{root}/metrics", timeout=TIMEOUT_S).text,
            (
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:kv_cache_usage_perc",
                "process_resident_memory_bytes",
            ),
        )
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        sums = {}
    state.running = sums.get("vllm:num_requests_running")
    state.waiting = sums.get("vllm:num_requests_waiting")
    state.kv_cache_used = sums.get("vllm:kv_cache_usage_perc")
    if local:
        from hxp.gateway.engines import EngineProcesses

        state.memory_gb, _ = EngineProcesses().sample(base_url, [base_url])
        state.memory_source = "processes" if state.memory_gb is not None else None
    if state.memory_gb is None and "process_resident_memory_bytes" in sums:
        state.memory_gb, state.memory_source = sums["process_resident_memory_bytes"] / 2**30, "api server"
    return state


# --- the gateway ----------------------------------------------------------------------------


@dataclass
class GatewayState:
    url: str
    alive: bool = False
    latency_ms: float | None = None
    readiness: str | None = None  # ready | degraded | not ready (as the gateway says)
    ready_code: int | None = None
    components: dict[str, Any] = field(default_factory=dict)  # database / redis: their readiness states
    backlog: float | None = None  # usage rows not yet in the database
    errors: dict[str, str] = field(default_factory=dict)  # component -> its error (master key details)
    error: str | None = None


def component_ok(state: Any) -> bool | None:
    """Whether a readiness component ("up", "down", or "in-process"/"off" when not configured) is healthy."""
    if state in ("up", "down"):
        return state == "up"
    return None


def gateway(client: httpx.Client, url: str, headers: dict[str, str], metrics_headers: dict[str, str]) -> GatewayState:
    state = GatewayState(url)
    start = time.perf_counter()
    try:
        state.alive = client.get(f"{url}/health/liveness", timeout=TIMEOUT_S).status_code == 200
        state.latency_ms = _ms(start)
        ready = client.get(f"{url}/health/readiness", headers=headers, timeout=TIMEOUT_S * 2)
    except httpx.HTTPError as exc:
        state.error = describe(exc)
        return state
    state.ready_code = ready.status_code
    try:
        body = ready.json()
    except ValueError:
        body = {}
    state.readiness = str(body.get("status") or ("ready" if ready.status_code == 200 else "not ready"))
    components = body.get("components") or {}
    state.components = {name: components[name] for name in ("database", "redis") if name in components}
    details = body.get("details") or {}  # the master key's view: why a component is down
    state.errors = {
        name: redact(str(details[name]["error"]))
        for name in state.components
        if isinstance(details.get(name), dict) and details[name].get("error")
    }
    try:
        metrics = client.get(f"{url}/metrics", headers=metrics_headers, timeout=TIMEOUT_S)
        if metrics.status_code == 200:
            state.backlog = metric_sums(metrics.text, ("llm_usage_log_backlog",)).get("llm_usage_log_backlog")
    except httpx.HTTPError:
        pass
    return state


def local_url(url: str) -> bool:
    from hxp.gateway.engines import local_port

    return local_port(url) is not None
