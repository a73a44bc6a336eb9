"""`hxp usage report`: who used what, from the usage log (``llm_model_requests``).

Per model, key, owner or UTC day over a time window: requests, errors (in all and by
status), prompt and completion tokens, p50/p95 latency of the successful requests, and
the cost for models whose catalogue entry has ``api.price_per_1k_tokens``. Three queries
(sums, errors by status, latency percentiles), each reading the window through the index
on the time (``llm_model_requests_time``, migration 0007), the same SQL on PostgreSQL and
SQLite. One row may stand for N aggregated refusals: requests are ``SUM(request_count)``.
Percentiles are nearest-rank: the smallest latency with at least p% of the requests at or
below it.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from hxp.core.catalogue import Catalogue, Prices
from hxp.core.database import Database
from hxp.gateway.usage.record import iso
from hxp.ops import table

GROUPINGS = ("model", "key", "owner", "day")
NONE = "(none)"  # requests without a key (refused before authentication) or keys without an owner
_DURATION = re.compile(r"(\d+)([mhdw])")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_FROM = (
    "FROM llm_model_requests r LEFT JOIN api_keys k ON k.key_id = r.key_id WHERE r.timestamp >= ? AND r.timestamp < ?"
)


class ReportError(ValueError):
    """The report's arguments cannot be used; the message says how to write them."""


@dataclass(frozen=True)
class Window:
    since: datetime
    until: datetime


def parse_time(text: str, now: datetime) -> datetime:
    """``7d``, ``12h``, ``30m``, ``2w`` before ``now``, or an ISO date/time (UTC unless it names a zone)."""
    found = _DURATION.fullmatch(text.strip())
    if found:
        return now - timedelta(**{_UNITS[found.group(2)]: int(found.group(1))})
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ReportError(
            f"cannot read the time {text!r}: use 30m, 12h, 7d, 2w or an ISO date like 2026-11-01"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def window(since: str, until: str | None = None, now: datetime | None = None) -> Window:
    now = now or datetime.now(UTC)
    result = Window(parse_time(since, now), parse_time(until, now) if until else now)
    if result.since >= result.until:
        raise ReportError(f"the window is empty: --since {since} is not before --until {until or 'now'}")
    return result


def group_expression(by: str, dialect: str) -> str:
    if by == "model":
        return "r.model_name"
    if by == "key":
        return f"COALESCE(k.alias, r.user_id, '{NONE}')"
    if by == "owner":
        return f"COALESCE(k.owner, '{NONE}')"
    if by == "day":
        return (
            "to_char(r.timestamp AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
            if dialect == "postgresql"
            else "substr(r.timestamp, 1, 10)"
        )
    raise ReportError(f"unknown grouping {by!r} (use one of {', '.join(GROUPINGS)})")


def cost_expression(prices: dict[str, Prices]) -> tuple[str, list[Any]]:
    """SUM of each priced model's token cost (models without a price count nothing), and its parameters."""
    cases = " ".join(
        "WHEN ? THEN (COALESCE(r.prompt_tokens, 0) * ? + COALESCE(r.completion_tokens, 0) * ?) / 1000.0" for _ in prices
    )
    params = [v for name, p in sorted(prices.items()) for v in (name, p.prompt, p.completion)]
    return f"SUM(CASE r.model_name {cases} END)", params


@dataclass(frozen=True)
class Queries:
    """The report's three statements with their parameters (``?`` placeholders)."""

    sums: tuple[str, list[Any]]
    statuses: tuple[str, list[Any]]
    latency: tuple[str, list[Any]]


def queries(group: str, prices: dict[str, Prices], span: Window) -> Queries:
    """The statements for one grouping expression (a constant such as ``'total'`` gives one row)."""
    bounds = [iso(span.since), iso(span.until)]
    cost, cost_params = cost_expression(prices) if prices else ("NULL", [])
    sums = (
        f"SELECT {group} AS grp, SUM(r.request_count) AS requests,"
        " SUM(CASE WHEN r.status = 'success' THEN 0 ELSE r.request_count END) AS errors,"
        " SUM(r.prompt_tokens) AS prompt_tokens, SUM(r.completion_tokens) AS completion_tokens,"
        f" {cost} AS cost {_FROM} GROUP BY grp"
    )
    statuses = (
        f"SELECT {group} AS grp, COALESCE(r.status, 'unknown') AS status, SUM(r.request_count) AS requests"
        f" {_FROM} AND (r.status IS NULL OR r.status <> 'success') GROUP BY grp, status"
    )
    latency = (
        "SELECT grp, MIN(CASE WHEN rn >= 0.5 * n THEN latency_ms END) AS p50_ms,"
        " MIN(CASE WHEN rn >= 0.95 * n THEN latency_ms END) AS p95_ms FROM ("
        f"SELECT {group} AS grp, r.latency_ms AS latency_ms,"
        f" ROW_NUMBER() OVER (PARTITION BY {group} ORDER BY r.latency_ms) AS rn,"
        f" COUNT(*) OVER (PARTITION BY {group}) AS n"
        f" {_FROM} AND r.status = 'success' AND r.latency_ms IS NOT NULL) ranked GROUP BY grp"
    )
    return Queries((sums, cost_params + bounds), (statuses, list(bounds)), (latency, list(bounds)))


@dataclass
class Report:
    by: str
    window: Window
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    statuses: list[str] = field(default_factory=list)  # the error statuses seen, each a column
    priced: list[str] = field(default_factory=list)  # models with a price (cost is shown when any)


def _empty() -> dict[str, Any]:
    return {
        "requests": 0,
        "errors": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "cost": None,
        "p50_ms": None,
        "p95_ms": None,
        "errors_by_status": {},
    }


def _collect(db: Database, q: Queries) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for row in db.fetchall(*q.sums):
        found[str(row["grp"])] = {
            **_empty(),
            "requests": int(row["requests"] or 0),
            "errors": int(row["errors"] or 0),
            "prompt_tokens": int(row["prompt_tokens"] or 0),
            "completion_tokens": int(row["completion_tokens"] or 0),
            "cost": None if row["cost"] is None else round(float(row["cost"]), 6),
        }
    for row in db.fetchall(*q.statuses):
        found[str(row["grp"])]["errors_by_status"][row["status"]] = int(row["requests"])
    for row in db.fetchall(*q.latency):
        found[str(row["grp"])].update(p50_ms=_number(row["p50_ms"]), p95_ms=_number(row["p95_ms"]))
    return found


def _number(value: Any) -> int | None:
    return None if value is None else int(value)


def build(db: Database, cat: Catalogue, span: Window, by: str = "model") -> Report:
    """The report over ``span``, one row per group (busiest first; by day in date order) and the totals."""
    prices = {m.name: m.api.price_per_1k_tokens for m in cat.models if m.api.price_per_1k_tokens is not None}
    groups = _collect(db, queries(group_expression(by, db.dialect), prices, span))
    totals = _collect(db, queries("'total'", prices, span)).get("total") or _empty()
    rows = [{by: name, **values} for name, values in groups.items()]
    rows.sort(key=(lambda r: r[by]) if by == "day" else (lambda r: (-r["requests"], r[by])))
    statuses = sorted({s for r in rows for s in r["errors_by_status"]})
    return Report(by, span, rows, totals, statuses, sorted(prices))


# --- output ------------------------------------------------------------------------------


def _columns(report: Report) -> list[str]:
    return [
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "p50_ms",
        "p95_ms",
        *(["cost"] if report.priced else []),
    ]


def to_csv(report: Report) -> str:
    """One line per group (no total line): the grouping, the sums, and one ``errors_<status>`` column each."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    columns = _columns(report)
    writer.writerow([report.by, *columns, *(f"errors_{s}" for s in report.statuses)])
    for row in report.rows:
        writer.writerow(
            [
                row[report.by],
                *("" if row[c] is None else row[c] for c in columns),
                *(row["errors_by_status"].get(s, 0) for s in report.statuses),
            ]
        )
    return out.getvalue()


def to_json(report: Report) -> dict[str, Any]:
    return {
        "by": report.by,
        "since": iso(report.window.since),
        "until": iso(report.window.until),
        "rows": report.rows,
        "totals": report.totals,
        "priced_models": report.priced,
    }


def _by_status(counts: dict[str, int]) -> str:
    return ", ".join(f"{status} {n:,}" for status, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def render(report: Report) -> str:
    span = f"{report.window.since:%Y-%m-%d %H:%M} to {report.window.until:%Y-%m-%d %H:%M} UTC"
    head = f"Usage from {span}, by {report.by}"
    if not report.rows:
        return f"{head}\nno requests in this window"
    columns = _columns(report)
    headers = [report.by.upper(), *(c.upper().replace("_", " ") for c in columns), "ERRORS BY STATUS"]
    lines = [[row[report.by], *(row[c] for c in columns), _by_status(row["errors_by_status"])] for row in report.rows]
    lines.append(["TOTAL", *(report.totals[c] for c in columns), _by_status(report.totals["errors_by_status"])])
    notes = [
        f"latency: successful requests only; cost: models with a price in models.yaml ({', '.join(report.priced)})"
        if report.priced
        else "latency: successful requests only"
    ]
    return "\n".join([head, table.render(headers, lines), *notes])
