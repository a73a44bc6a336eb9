"""The Grafana dashboards, as code: ``hxp grafana generate`` writes grafana/dashboards/*.json.

Every panel queries the datasource chosen in the ``datasource`` variable and
filters on the ``model`` variable, so the same dashboards work on the
development Grafana and on the operators' one. Metric names: the gateway's
(hxp.gateway.metrics), vLLM's (``vllm:*``, job llm-server-models, target label
``model``) and the node, PostgreSQL and Redis exporters'.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hxp.core.paths import PROJECT_ROOT
from hxp.monitoring.targets import JOB_GATEWAY, JOB_MODELS, JOB_NODE, JOB_POSTGRES, JOB_REDIS

DASHBOARDS_DIR = PROJECT_ROOT / "grafana" / "dashboards"
FOLDER = "AI Infrastructure"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
M = 'model=~"$model"'
RI = "$__rate_interval"
GRID_WIDTH = 24


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    title: str
    queries: list[Query]
    unit: str = "short"
    kind: str = "timeseries"  # timeseries | stat | table
    width: int = 12
    height: int = 8
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    file: str
    description: str
    panels: list[Panel] = field(default_factory=list)


def rate(metric: str, selector: str = M, by: str = "model") -> str:
    return f"sum by ({by}) (rate({metric}{{{selector}}}[{RI}]))"


def quantile(q: float, histogram: str, selector: str = M) -> str:
    return f"histogram_quantile({q}, sum by (model, le) (rate({histogram}_bucket{{{selector}}}[{RI}])))"


def ratio(part: str, whole: str) -> str:
    """part / whole per model, 0 (not "no data") where part has no series."""
    return f"({part} or {whole} * 0) / {whole}"


def latency(title: str, histogram: str, selector: str = M, description: str = "") -> Panel:
    return Panel(
        title,
        [
            Query(quantile(0.5, histogram, selector), "{{model}} p50"),
            Query(quantile(0.95, histogram, selector), "{{model}} p95"),
        ],
        "s",
        description=description,
    )


REQUESTS = rate("llm_requests_total")
ERRORS = rate("llm_requests_total", f'{M},status=~"5.."')
OK = rate("llm_requests_total", f'{M},status="200"')

OVERVIEW = Dashboard(
    "hxp-llm-overview",
    "LLM Server Overview",
    "llm_server_overview.json",
    "Traffic, errors, rejections and health of the LLM gateway and its model engines",
    [
        Panel("Requests/s", [Query(f"sum(rate(llm_requests_total{{{M}}}[{RI}]))")], "reqps", "stat", 6, 4),
        Panel(
            "Server error ratio",
            [
                Query(
                    ratio(
                        f'sum(rate(llm_requests_total{{{M},status=~"5.."}}[{RI}]))',
                        f"sum(rate(llm_requests_total{{{M}}}[{RI}]))",
                    )
                )
            ],
            "percentunit",
            "stat",
            6,
            4,
        ),
        Panel("Active requests", [Query(f"sum(llm_active_requests{{{M}}})")], "short", "stat", 6, 4),
        Panel("Engines up", [Query(f'sum(up{{job="{JOB_MODELS}",{M}}})')], "short", "stat", 6, 4),
        Panel("Requests/s per model", [Query(REQUESTS, "{{model}}")], "reqps"),
        Panel(
            "Server error ratio per model",
            [Query(ratio(ERRORS, REQUESTS), "{{model}}")],
            "percentunit",
            description="Share of requests answered with a 5xx status",
        ),
        Panel(
            "Requests/s by status",
            [Query(rate("llm_requests_total", by="model, status"), "{{model}} {{status}}")],
            "reqps",
        ),
        Panel(
            "Rate-limit rejections/s per key",
            [Query(rate("llm_rate_limit_rejections_total", by="model, user_id"), "{{user_id}} on {{model}}")],
            "reqps",
        ),
        Panel(
            "Requests/s per key and model",
            [Query(rate("llm_requests_total", by="user_id, model"), "{{user_id}} on {{model}}")],
            "reqps",
        ),
        Panel(
            "Requests per key in the time range",
            [Query(f"sum by (user_id) (increase(llm_requests_total{{{M}}}[$__range]))", "{{user_id}}")],
            "short",
            "table",
        ),
        Panel(
            "Scrape targets up",
            [
                Query(
                    f'up{{job=~"{JOB_GATEWAY}|{JOB_MODELS}|{JOB_NODE}|{JOB_POSTGRES}|{JOB_REDIS}"}}',
                    "{{job}} {{instance}} {{model}}",
                )
            ],
            "short",
        ),
        Panel("Backends healthy (gateway probe)", [Query(f"llm_backend_up{{{M}}}", "{{model}}")], "short"),
        Panel(
            "Usage log backlog",
            [Query("sum(llm_usage_log_backlog)", "rows waiting")],
            "short",
            description="Usage rows not yet written to the database (grows while the database is away)",
        ),
        Panel("Gateway sees Redis", [Query("min(hxp_gateway_redis_up)", "redis up (-1: not configured)")], "short"),
    ],
)

PERFORMANCE = Dashboard(
    "hxp-llm-model-performance",
    "Model Performance",
    "model_performance.json",
    "Latency, time to first token, throughput, queues and KV cache per model",
    [
        latency("Latency p50/p95 (gateway, successful requests)", "llm_request_duration_seconds", f'{M},status="200"'),
        latency("Time to first token p50/p95 (gateway, streams)", "llm_time_to_first_token_seconds"),
        latency("Time to first token p50/p95 (engine)", "vllm:time_to_first_token_seconds"),
        latency("End-to-end latency p50/p95 (engine)", "vllm:e2e_request_latency_seconds"),
        Panel(
            "Tokens/s at the gateway",
            [Query(rate("llm_tokens_processed_total", by="model, type"), "{{model}} {{type}}")],
            "short",
        ),
        Panel(
            "Tokens/s in the engines",
            [
                Query(rate("vllm:prompt_tokens_total"), "{{model}} prompt"),
                Query(rate("vllm:generation_tokens_total"), "{{model}} generation"),
            ],
            "short",
        ),
        Panel(
            "Running and queued requests (engine)",
            [
                Query(f"sum by (model) (vllm:num_requests_running{{{M}}})", "{{model}} running"),
                Query(f"sum by (model) (vllm:num_requests_waiting{{{M}}})", "{{model}} waiting"),
            ],
            "short",
        ),
        Panel(
            "Active requests (gateway)", [Query(f"sum by (model) (llm_active_requests{{{M}}})", "{{model}}")], "short"
        ),
        Panel(
            "KV-cache usage", [Query(f"max by (model) (vllm:kv_cache_usage_perc{{{M}}})", "{{model}}")], "percentunit"
        ),
        Panel("Response cache hit ratio", [Query(ratio(rate("llm_cache_hits_total"), OK), "{{model}}")], "percentunit"),
        latency("Inter-token latency p50/p95 (engine)", "vllm:inter_token_latency_seconds"),
        Panel(
            "Request latency vs target p95",
            [Query(quantile(0.95, "llm_request_duration_seconds", f'{M},status="200"'), "{{model}} p95")],
            "s",
            description="Alert HighLatency fires above 3 s for 2 minutes",
        ),
    ],
)

RESOURCES = Dashboard(
    "hxp-llm-resources",
    "Resource Utilization",
    "resource_utilization.json",
    "Memory of each model, the host's CPU and memory, PostgreSQL and Redis",
    [
        Panel(
            "Memory per model (engine processes)", [Query(f"llm_model_memory_usage_bytes{{{M}}}", "{{model}}")], "bytes"
        ),
        Panel(
            "Engine API server memory (vLLM process)",
            [Query(f'process_resident_memory_bytes{{job="{JOB_MODELS}",{M}}}', "{{model}} {{instance}}")],
            "bytes",
        ),
        Panel(
            "Host CPU busy",
            [Query(f'1 - avg by (instance) (rate(node_cpu_seconds_total{{mode="idle"}}[{RI}]))', "{{instance}}")],
            "percentunit",
        ),
        Panel(
            "Host memory",
            [
                Query("node_memory_MemTotal_bytes - node_memory_MemAvailable_bytes", "{{instance}} used"),
                Query("node_memory_MemTotal_bytes", "{{instance}} total"),
            ],
            "bytes",
        ),
        Panel("Host load", [Query("node_load1", "{{instance}} 1m"), Query("node_load5", "{{instance}} 5m")], "short"),
        Panel("Root filesystem free", [Query('node_filesystem_avail_bytes{mountpoint="/"}', "{{instance}}")], "bytes"),
        Panel(
            "PostgreSQL",
            [
                Query("pg_up", "up {{instance}}"),
                Query("sum by (instance) (pg_stat_database_numbackends)", "connections {{instance}}"),
            ],
            "short",
        ),
        Panel(
            "Redis",
            [Query("redis_up", "up {{instance}}"), Query("redis_connected_clients", "clients {{instance}}")],
            "short",
        ),
        Panel("Redis memory", [Query("redis_memory_used_bytes", "{{instance}}")], "bytes"),
        Panel("Gateway workers' usage log backlog", [Query("sum(llm_usage_log_backlog)", "rows")], "short"),
    ],
)

DASHBOARDS = [OVERVIEW, PERFORMANCE, RESOURCES]


def _variables() -> dict[str, Any]:
    return {
        "list": [
            {
                "name": "datasource",
                "label": "Data source",
                "type": "datasource",
                "query": "prometheus",
                "current": {},
                "hide": 0,
                "refresh": 1,
                "regex": "",
            },
            {
                "name": "model",
                "label": "Model",
                "type": "query",
                "datasource": DATASOURCE,
                "query": {"query": "label_values(llm_requests_total, model)", "refId": "model"},
                "definition": "label_values(llm_requests_total, model)",
                "refresh": 2,
                "multi": True,
                "includeAll": True,
                "allValue": ".*",
                "current": {"text": "All", "value": "$__all"},
                "sort": 1,
            },
        ]
    }


def _layout(panels: list[Panel]) -> list[dict[str, int]]:
    """Grid positions filling rows left to right, a row as tall as its tallest panel."""
    positions, x, y, row_height = [], 0, 0, 0
    for panel in panels:
        if x + panel.width > GRID_WIDTH:
            x, y, row_height = 0, y + row_height, 0
        positions.append({"x": x, "y": y, "w": panel.width, "h": panel.height})
        x += panel.width
        row_height = max(row_height, panel.height)
    return positions


def _panel(panel_id: int, panel: Panel, grid: dict[str, int]) -> dict[str, Any]:
    targets = [
        {
            "refId": chr(ord("A") + i),
            "datasource": DATASOURCE,
            "expr": q.expr,
            "legendFormat": q.legend,
            **({"format": "table", "instant": True} if panel.kind == "table" else {"range": True}),
        }
        for i, q in enumerate(panel.queries)
    ]
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": grid,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {},
    }


def render(dashboard: Dashboard) -> dict[str, Any]:
    """The Grafana dashboard JSON model."""
    panels = [_panel(i, p, g) for i, (p, g) in enumerate(zip(dashboard.panels, _layout(dashboard.panels)), start=1)]
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["hxp", "llm"],
        "timezone": "browser",
        "editable": True,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": _variables(),
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def dumps(dashboard: Dashboard) -> str:
    return json.dumps(render(dashboard), indent=2) + "\n"


def write(out: Path = DASHBOARDS_DIR) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for dashboard in DASHBOARDS:
        path = out / dashboard.file
        path.write_text(dumps(dashboard))
        written.append(path)
    return written


def queries() -> list[str]:
    """Every PromQL expression of every dashboard (with Grafana's variables still in)."""
    return [q.expr for d in DASHBOARDS for p in d.panels for q in p.queries]


def resolve(expr: str, *, model: str = ".*", rate_interval: str = "1m", time_range: str = "1h") -> str:
    """``expr`` with Grafana's variables replaced, as Grafana sends it to Prometheus."""
    return expr.replace("$model", model).replace("$__rate_interval", rate_interval).replace("$__range", time_range)
