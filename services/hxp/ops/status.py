"""`hxp status`: the stack in one look.

Each catalogue model with the engine(s) serving it (reachable, the names it serves, vLLM
version, running/waiting requests, KV-cache use, memory) and its traffic over the last five
minutes from the usage log (requests, error rate, p50/p95 latency); each gateway replica
(readiness, usage rows not yet written); the database, Redis and Qdrant (reachability and
latency); Prometheus' targets when a Prometheus URL is known. The exit status is 0 only when
every model has every replica up, every gateway is ready and every configured store answers;
Prometheus is reported, not required. ``--watch`` redraws in place.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from hxp.ops import probes, table
from hxp.ops.stack import Stack

TRAFFIC_WINDOW = "5m"
UP, DOWN, DEGRADED, SKIP = "up", "down", "degraded", "skip"
_CLEAR = "\x1b[H\x1b[2J"


def _address(url: str) -> str:
    return urlsplit(url).netloc or url


def _traffic(stack: Stack, database: probes.Probe) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Per model: requests, error rate and latency over the last minutes; or why they are not known."""
    if not stack.database_url or not database.ok:
        return {}, "the usage log is in the database, which does not answer"
    from hxp.core.database import Database
    from hxp.ops import report

    try:
        db = Database(stack.database_url, pool_size=1)
        try:
            found = report.build(db, stack.catalogue, report.window(TRAFFIC_WINDOW), "model")
        finally:
            db.close()
    except Exception as exc:  # noqa: BLE001 - e.g. no usage table before the gateway's first start
        return {}, f"usage log unreadable: {probes.describe(exc)}"
    return {
        row["model"]: {
            "requests": row["requests"],
            "error_rate": row["errors"] / row["requests"],
            "p50_ms": row["p50_ms"],
            "p95_ms": row["p95_ms"],
        }
        for row in found.rows
        if row["requests"]
    }, None


def _model(
    model: Any, urls: list[str], engines: dict[str, probes.EngineState], traffic: dict[str, Any]
) -> dict[str, Any]:
    replicas = []
    for url in urls:
        state = engines[url]
        serves = not state.served or model.name in state.served
        problem = state.error or (None if serves else f"serves {', '.join(state.served)}, not {model.name}")
        replicas.append({**asdict(state), "serves_model": serves, "healthy": state.up and serves, "problem": problem})
    healthy = sum(r["healthy"] for r in replicas)
    overall = UP if replicas and healthy == len(replicas) else DEGRADED if healthy else DOWN
    return {
        "model": model.name,
        "task": model.task,
        "state": overall,
        "replicas": replicas,
        "traffic": traffic.get(model.name),
    }


def _service(name: str, state: str, detail: str, required: bool) -> dict[str, Any]:
    return {"name": name, "state": state, "detail": detail, "required": required}


def _probe_service(name: str, probe: probes.Probe, what: str, required: bool = True) -> dict[str, Any]:
    latency = f" · {probe.latency_ms} ms" if probe.latency_ms is not None else ""
    cause = f" ({probe.cause})" if probe.cause and probe.cause != probes.OTHER else ""
    return _service(name, UP if probe.ok else DOWN, f"{what}: {probe.detail}{cause}{latency}", required)


def _gateway_service(g: probes.GatewayState) -> dict[str, Any]:
    if g.error or not g.alive:
        return _service(f"gateway {_address(g.url)}", DOWN, g.error or "liveness failed", True)
    backlog = f" · usage backlog {g.backlog:.0f}" if g.backlog is not None else ""
    return _service(
        f"gateway {_address(g.url)}",
        UP if g.ready_code == 200 else DOWN,
        f"{g.readiness} (HTTP {g.ready_code}) · {g.latency_ms} ms{backlog}",
        True,
    )


def _redis_service(stack: Stack, gateways: list[probes.GatewayState]) -> dict[str, Any]:
    if stack.redis_url:
        return _probe_service("redis", probes.redis_ping(stack.redis_url), probes.redact(stack.redis_url))
    seen = [probes.component_ok(g.components.get("redis")) for g in gateways if "redis" in g.components]
    if stack.compose and seen and None not in seen:  # compose does not publish Redis: the gateways' view
        return _service("redis", UP if all(seen) else DOWN, "as the gateway sees it (not published)", True)
    return _service("redis", SKIP, "not configured: limits and cache are in-process (one gateway replica)", False)


def _qdrant_service(stack: Stack, client: httpx.Client) -> dict[str, Any]:
    if "url" in stack.qdrant:
        return _probe_service("qdrant", probes.qdrant(stack.qdrant, client), probes.redact(stack.qdrant["url"]))
    for gateway in stack.gateways:  # local mode: the gateway holds the folder; ask it
        try:
            response = client.get(f"{gateway}/v1/vector/collections", headers=stack.headers(), timeout=10)
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            names = [c["name"] for c in response.json()["data"]]
            return _service(
                "qdrant",
                UP,
                f"local mode, through {_address(gateway)}: {len(names)} collections ({', '.join(names)})",
                True,
            )
        return _service(
            "qdrant",
            DOWN,
            f"the gateway's vector API answered HTTP {response.status_code}: {probes.describe(response.text)}",
            True,
        )
    if "path" not in stack.qdrant:
        return _service("qdrant", DOWN, "local mode inside the gateway, which does not answer", True)
    return _probe_service("qdrant", probes.qdrant(stack.qdrant, client), "no gateway answers")


def _prometheus_service(stack: Stack, client: httpx.Client) -> dict[str, Any]:
    if not stack.prometheus_url:
        return _service("prometheus", SKIP, "no URL (--prometheus or HXP_PROMETHEUS_URL)", False)
    try:
        targets = client.get(
            f"{stack.prometheus_url}/api/v1/targets", params={"state": "active"}, timeout=probes.TIMEOUT_S
        ).json()["data"]["activeTargets"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        return _service("prometheus", DOWN, f"{stack.prometheus_url}: {probes.describe(exc)}", False)
    down = [f"{t['labels'].get('job')} {t['labels'].get('instance')}" for t in targets if t.get("health") != "up"]
    detail = f"{len(targets) - len(down)}/{len(targets)} targets up" + (f"; down: {', '.join(down)}" if down else "")
    return _service("prometheus", UP if not down else DEGRADED, detail, False)


def collect(stack: Stack) -> dict[str, Any]:
    """Everything `hxp status` shows, as data."""
    db_probe = (
        probes.database(stack.database_url)
        if stack.database_url
        else probes.Probe(False, stack.database_problem or "no database URL")
    )
    config = _config(stack) if db_probe.ok else None
    with httpx.Client() as client:
        engines_of, source = stack.engines(client)
        engines_of.update(config["backends"] if config else {})  # engines replaced by `hxp model update`
        urls = sorted({u for urls in engines_of.values() for u in urls})
        with ThreadPoolExecutor(max_workers=8) as pool:
            engine_states = dict(
                zip(
                    urls,
                    pool.map(lambda u: probes.engine(client, u, local=not stack.compose and probes.local_url(u)), urls),
                )
            )
            gateways = list(
                pool.map(lambda g: probes.gateway(client, g, stack.headers(), stack.metrics_headers()), stack.gateways)
            )
        traffic, traffic_problem = _traffic(stack, db_probe)
        models = [_model(m, engines_of.get(m.name, []), engine_states, traffic) for m in stack.catalogue.models]
        database = _probe_service("database", db_probe, probes.redact(stack.database_url or "database"))
        services = [
            *(_gateway_service(g) for g in gateways),
            database,
            _redis_service(stack, gateways),
            _qdrant_service(stack, client),
            _prometheus_service(stack, client),
        ]
    problems = _problems(models, services)
    return {
        "healthy": not problems,
        "stack": stack.kind,
        "profile": stack.catalogue.profile,
        "time": datetime.now(UTC).isoformat(timespec="seconds"),
        "engines_from": source,
        "traffic_window": TRAFFIC_WINDOW,
        "traffic_problem": traffic_problem,
        "models": models,
        "services": services,
        "problems": problems,
        "config": config,
    }


def _config(stack: Stack) -> dict[str, Any] | None:
    """The live configuration version and the engine updates under way (None: none applied, or no database)."""
    from hxp.core.versions import summary

    try:
        return summary(stack.database_url) if stack.database_url else None
    except Exception:  # noqa: BLE001 - e.g. a database older than the versions' tables: status shows none
        return None


def _problems(models: list[dict[str, Any]], services: list[dict[str, Any]]) -> list[str]:
    """One line per model or required service that is not up, with what its probe said."""
    found = []
    for m in models:
        if m["state"] != UP:
            causes = [f"{r['url']}: {r['problem']}" for r in m["replicas"] if r["problem"]] or ["no engine known"]
            found.append(f"model {m['model']} {m['state']}: {'; '.join(causes)}")
    found += [f"{s['name']} {s['state']}: {s['detail']}" for s in services if s["required"] and s["state"] != UP]
    return found


def _percent(value: float | None) -> str | None:
    return None if value is None else f"{100 * value:.1f}%"


def _count(value: float | None) -> int | None:
    return None if value is None else round(value)


def render(status: dict[str, Any]) -> str:
    head = (
        f"hxp status · {status['stack']} stack · profile {status['profile']} · {status['time']} · "
        f"engines from {status['engines_from']}"
    )
    rows = []
    for m in status["models"]:
        t = m["traffic"] or {}
        replicas = m["replicas"] or [{"url": "-", "up": False}]
        for i, r in enumerate(replicas):
            rows.append(
                [
                    m["model"] if i == 0 else "",
                    m["state"] if i == 0 else "",
                    _address(r["url"]),
                    "up" if r.get("healthy") else "DOWN",
                    r.get("version"),
                    _count(r.get("running")),
                    _count(r.get("waiting")),
                    _percent(r.get("kv_cache_used")),
                    None if r.get("memory_gb") is None else round(r["memory_gb"], 2),
                    t.get("requests") if i == 0 else None,
                    _percent(t.get("error_rate")) if i == 0 else None,
                    t.get("p50_ms") if i == 0 else None,
                    t.get("p95_ms") if i == 0 else None,
                ]
            )
    models = table.render(
        [
            "MODEL",
            "STATE",
            "ENGINE",
            "ENGINE STATE",
            "VLLM",
            "RUNNING",
            "WAITING",
            "KV CACHE",
            "MEMORY GB",
            f"REQ {status['traffic_window']}",
            "ERRORS",
            "P50 MS",
            "P95 MS",
        ],
        rows,
    )
    services = table.render(
        ["SERVICE", "STATE", "DETAIL"], [[s["name"], s["state"], s["detail"]] for s in status["services"]]
    )
    lines = [head, "", models]
    config = status.get("config")
    if config:
        lines.append(f"configuration: v{config['version']} (sha256 {config['sha256'][:12]}, {config['author']})")
        lines += [f"update in progress: {u}" for u in config["updates"]]
    if status["traffic_problem"]:
        lines.append(f"traffic: {status['traffic_problem']}")
    lines += ["", services, ""]
    if status["healthy"]:
        lines.append("HEALTHY")
    else:
        lines.append("UNHEALTHY:")
        lines += [f"  - {p}" for p in status["problems"]]
        lines.append("  (`hxp doctor` looks for the causes; `hxp validate` checks the whole path)")
    return "\n".join(lines)


def run(stack: Stack, as_json: bool = False, watch: float | None = None) -> int:
    """Print the status (once, or every ``watch`` seconds until Ctrl-C); 0 when healthy."""
    code = 1
    try:
        while True:
            status = collect(stack)
            code = 0 if status["healthy"] else 1
            text = json.dumps(status, indent=2, default=str) if as_json else render(status)
            print((_CLEAR if watch and not as_json else "") + text, flush=True)
            if not watch:
                return code
            time.sleep(watch)
    except KeyboardInterrupt:
        return code
