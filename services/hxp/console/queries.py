"""The console's SQL over the usage log: recent traffic per model, usage over a range, each key's last use.

The same statements run on PostgreSQL and SQLite (``?`` placeholders; times compared as the usage
writer stores them, ISO-8601 UTC strings from :func:`hxp.gateway.usage.record.iso`). Each reads
``llm_model_requests`` through an index, searched, never scanned whole: by model and time (a recent
window of the catalogue's models), by time (a range of days, ``llm_model_requests_time``) or by key
and time (``llm_model_requests_key_time``, migration 0007); ``llm_model_performance`` by model and time.
Percentiles are nearest-rank (the smallest value with at least p% of the requests at or below it).
One row may stand for N aggregated refusals: requests are counted as ``SUM(request_count)``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from hxp.core.database import Database
from hxp.gateway.usage.record import iso

_TRAFFIC = (
    "SELECT r.model_name AS model, SUM(r.request_count) AS requests,"
    " SUM(CASE WHEN r.status = 'success' THEN 0 ELSE r.request_count END) AS errors,"
    " SUM(r.prompt_tokens) AS prompt_tokens, SUM(r.completion_tokens) AS completion_tokens"
    " FROM llm_model_requests r WHERE r.model_name IN ({names}) AND r.timestamp >= ? GROUP BY r.model_name"
)
_PERCENTILES = (
    "SELECT model, MIN(CASE WHEN rn >= 0.5 * n THEN v END) AS p50, MIN(CASE WHEN rn >= 0.95 * n THEN v END) AS p95"
    " FROM (SELECT r.model_name AS model, r.{column} AS v,"
    " ROW_NUMBER() OVER (PARTITION BY r.model_name ORDER BY r.{column}) AS rn,"
    " COUNT(*) OVER (PARTITION BY r.model_name) AS n"
    " FROM llm_model_requests r WHERE r.model_name IN ({names}) AND r.timestamp >= ? AND r.status = 'success'"
    " AND r.{column} IS NOT NULL) ranked"
    " GROUP BY model"
)
_USAGE = (
    "SELECT {day} AS day, r.model_name AS model, r.key_id AS key_id, MAX(r.user_id) AS user_id,"
    " SUM(r.request_count) AS requests, SUM(CASE WHEN r.status = 'success' THEN 0 ELSE r.request_count END) AS errors,"
    " SUM(r.prompt_tokens) AS prompt_tokens, SUM(r.completion_tokens) AS completion_tokens,"
    " SUM(r.latency_ms) AS latency_sum, COUNT(r.latency_ms) AS latency_count"
    " FROM llm_model_requests r WHERE r.timestamp >= ? AND r.timestamp < ? GROUP BY {day}, r.model_name, r.key_id"
)
_DAY = {"postgresql": "to_char(r.timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD')", "sqlite": "substr(r.timestamp, 1, 10)"}
_KEY_ACTIVITY = (
    "SELECT k.key_id AS key_id,"
    " (SELECT MAX(r.timestamp) FROM llm_model_requests r WHERE r.key_id = k.key_id) AS last_used,"
    " (SELECT SUM(r.request_count) FROM llm_model_requests r WHERE r.key_id = k.key_id AND r.timestamp >= ?) AS recent"
    " FROM api_keys k"
)
_ENGINE_SAMPLES = (
    "SELECT p.model_name AS model, p.timestamp AS at, p.memory_usage_gb AS memory_gb, p.cpu_utilization AS cpu"
    " FROM llm_model_performance p WHERE p.model_name IN ({names}) AND p.timestamp >= ? ORDER BY p.timestamp"
)


def when(value: Any) -> str | None:
    """A stored time (a datetime from PostgreSQL, a string from SQLite) as ISO-8601 UTC."""
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return iso(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _placeholders(names: list[str]) -> str:
    return ", ".join("?" * len(names))


def traffic(db: Database, models: list[str], since: datetime) -> dict[str, dict[str, Any]]:
    """Per model (of ``models``) since ``since``: requests, errors, tokens, and the p50/p95 latency and time to
    first token of the successful requests (ms)."""
    if not models:
        return {}
    names, bound = _placeholders(models), (*models, iso(since))
    found: dict[str, dict[str, Any]] = {}
    for row in db.fetchall(_TRAFFIC.format(names=names), bound):
        found[row["model"]] = {
            k: int(row[k] or 0) for k in ("requests", "errors", "prompt_tokens", "completion_tokens")
        }
    for column, name in (("latency_ms", "latency"), ("time_to_first_token_ms", "ttft")):
        for row in db.fetchall(_PERCENTILES.format(column=column, names=names), bound):
            stats = found.setdefault(row["model"], {})
            stats[f"{name}_p50_ms"], stats[f"{name}_p95_ms"] = row["p50"], row["p95"]
    return found


def usage(db: Database, since: datetime, until: datetime) -> list[dict[str, Any]]:
    """The usage log over [since, until) per UTC day, model and key: requests, errors, tokens, latency sums."""
    sql = _USAGE.format(day=_DAY[db.dialect])
    return [
        {
            **row,
            **{
                k: int(row[k] or 0)
                for k in ("requests", "errors", "prompt_tokens", "completion_tokens", "latency_sum", "latency_count")
            },
        }
        for row in db.fetchall(sql, (iso(since), iso(until)))
    ]


def key_activity(db: Database, since: datetime) -> dict[str, dict[str, Any]]:
    """Each key's last request (ever) and its requests since ``since``."""
    rows = db.fetchall(_KEY_ACTIVITY, (iso(since),))
    return {r["key_id"]: {"last_used": when(r["last_used"]), "recent_requests": int(r["recent"] or 0)} for r in rows}


def engine_samples(db: Database, models: list[str], since: datetime) -> dict[str, dict[str, Any]]:
    """Each model's latest engine memory (GB) and CPU (% of a core) from the performance rollups since ``since``
    (models whose engines are not on this machine have none)."""
    if not models:
        return {}
    sql = _ENGINE_SAMPLES.format(names=_placeholders(models))
    latest: dict[str, dict[str, Any]] = {}
    for row in db.fetchall(sql, (*models, iso(since))):
        if row["memory_gb"] is not None or row["cpu"] is not None:
            latest[row["model"]] = {"at": when(row["at"]), "memory_gb": row["memory_gb"], "cpu_percent": row["cpu"]}
    return latest
