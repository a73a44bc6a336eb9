"""The usage page's data: requests, tokens and errors per model, key or day over a range of UTC days.

One query (:func:`hxp.console.queries.usage`) reads the range per day, model and key; the table
is its rows summed per the chosen grouping, the charts per day and per model (or key), and the
CSV is the table.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from hxp.console import queries
from hxp.core.database import Database

GROUPINGS = ("model", "key", "day")
DEFAULT_DAYS = 7
MAX_DAYS = 366
NO_KEY = "(no key)"
COLUMNS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens", "avg_latency_ms")


class UsageRequestError(ValueError):
    """The range or grouping asked for cannot be used; ``field`` names it."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Range:
    """UTC days ``first`` to ``last``, both included."""

    first: date
    last: date

    @property
    def days(self) -> list[str]:
        return [(self.first + timedelta(days=i)).isoformat() for i in range((self.last - self.first).days + 1)]

    def bounds(self) -> tuple[datetime, datetime]:
        start = datetime.combine(self.first, time(), UTC)
        return start, datetime.combine(self.last + timedelta(days=1), time(), UTC)


def _day(text: str | None, field: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise UsageRequestError(f"{field}: {text!r} is not a date (YYYY-MM-DD)", field) from None


def parse_range(since: str | None, until: str | None, today: date | None = None) -> Range:
    """The days from ``since`` to ``until`` (default: the last seven days, today included)."""
    last = _day(until, "until") or today or datetime.now(UTC).date()
    first = _day(since, "since") or last - timedelta(days=DEFAULT_DAYS - 1)
    if first > last:
        raise UsageRequestError(f"since ({first}) is after until ({last})", "since")
    if (last - first).days >= MAX_DAYS:
        raise UsageRequestError(f"the range is longer than {MAX_DAYS} days", "since")
    return Range(first, last)


def _group_of(row: dict[str, Any], by: str, aliases: dict[str, str]) -> str:
    if by == "model":
        return row["model"]
    if by == "day":
        return row["day"]
    return aliases.get(row["key_id"] or "") or row["user_id"] or NO_KEY


def _add(into: dict[str, int], row: dict[str, Any]) -> None:
    for name in ("requests", "errors", "prompt_tokens", "completion_tokens", "latency_sum", "latency_count"):
        into[name] += row[name]


def _finish(sums: dict[str, int]) -> dict[str, Any]:
    return {
        "requests": sums["requests"],
        "errors": sums["errors"],
        "prompt_tokens": sums["prompt_tokens"],
        "completion_tokens": sums["completion_tokens"],
        "total_tokens": sums["prompt_tokens"] + sums["completion_tokens"],
        "avg_latency_ms": round(sums["latency_sum"] / sums["latency_count"]) if sums["latency_count"] else None,
    }


def report(db: Database, span: Range, by: str, aliases: dict[str, str]) -> dict[str, Any]:
    """The table (rows per ``by``), the charts' series (per day, per model or key) and the totals over ``span``;
    ``aliases`` names keys by id."""
    if by not in GROUPINGS:
        raise UsageRequestError(f"by: use one of {', '.join(GROUPINGS)}", "by")
    rows = queries.usage(db, *span.bounds())
    stack = by if by != "day" else "model"
    table: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    series: dict[str, dict[str, dict[str, int]]] = defaultdict(lambda: defaultdict(lambda: defaultdict(int)))
    totals: dict[str, int] = defaultdict(int)
    for row in rows:
        _add(table[_group_of(row, by, aliases)], row)
        _add(series[_group_of(row, stack, aliases)][row["day"]], row)
        _add(totals, row)
    days = span.days
    return {
        "since": days[0],
        "until": days[-1],
        "by": by,
        "days": days,
        "columns": list(COLUMNS),
        "rows": [{"group": group, **_finish(sums)} for group, sums in sorted(table.items())],
        "series": {
            "stacked_by": stack,
            "groups": [
                {
                    "name": name,
                    **{m: [per_day[d][m] if d in per_day else 0 for d in days] for m in ("requests", "errors")},
                    "tokens": [
                        per_day[d]["prompt_tokens"] + per_day[d]["completion_tokens"] if d in per_day else 0
                        for d in days
                    ],
                }
                for name, per_day in sorted(series.items())
            ],
        },
        "totals": _finish(totals),
    }


def csv_text(data: dict[str, Any]) -> str:
    """The report's table as CSV: one line per row, the grouping first."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([data["by"], *data["columns"]])
    for row in data["rows"]:
        writer.writerow([_cell(row["group"]), *("" if row[c] is None else row[c] for c in data["columns"])])
    return out.getvalue()


def _cell(text: str) -> str:
    """A text cell a spreadsheet will not run as a formula (an alias is chosen by whoever created the key)."""
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text
