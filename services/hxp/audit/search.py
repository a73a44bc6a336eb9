"""Searching the audit trail: the filters ``hxp audit search`` and the console's Audit page share.

Filters: ``actor``, ``action``, ``target`` (exact, or a prefix ending in ``*``), ``since`` and ``until`` (a UTC
date ``YYYY-MM-DD`` or an ISO 8601 time; ``until`` a date means the end of that day), ``limit``. Each filter
with the time is served by an index of migration 0008 (newest first). Bad input raises :class:`SearchError`
naming the field.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from hxp.audit.trail import COLUMNS, utc_iso
from hxp.core.database import Database

FIELDS = ("actor", "action", "target")
FILTERS = (*FIELDS, "since", "until", "limit")
DEFAULT_LIMIT = 100
MAX_LIMIT = 10_000
CSV_COLUMNS = ("seq", "at", "actor", "client", "action", "target", "outcome", "count", "request_id", "details", "hash")


class SearchError(ValueError):
    """A filter that cannot be used; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Filters:
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = DEFAULT_LIMIT

    def describe(self) -> dict[str, Any]:
        return {name: (utc_iso(v) if isinstance(v, datetime) else v) for name, v in vars(self).items() if v is not None}


def _moment(field: str, text: str, end_of_day: bool) -> datetime:
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            start = datetime(day.year, day.month, day.day, tzinfo=UTC)
            return start + timedelta(days=1) if end_of_day else start
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SearchError(
            field, f"{field}: {text!r} is not a date (YYYY-MM-DD) or an ISO 8601 time (YYYY-MM-DDTHH:MM[:SS][+HH:MM])"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse(query: Mapping[str, str | None]) -> Filters:
    """The filters a query names (a mapping of strings: command-line options, a URL's query)."""
    unknown = sorted(set(query) - set(FILTERS))
    if unknown:
        raise SearchError(unknown[0], f"unknown filter {unknown[0]!r}: use {', '.join(FILTERS)}")
    values = {k: v for k, v in query.items() if v not in (None, "")}
    for name in FIELDS:
        text = values.get(name)
        if text is not None and (len(text) > 200 or "*" in text[:-1]):
            raise SearchError(name, f"{name}: at most 200 characters, with '*' only at the end (a prefix)")
    since = _moment("since", values["since"], False) if "since" in values else None
    until = _moment("until", values["until"], True) if "until" in values else None
    if since and until and since >= until:
        raise SearchError("until", "until must be after since")
    limit = DEFAULT_LIMIT
    if "limit" in values:
        text = str(values["limit"])
        if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
            raise SearchError("limit", f"limit: a whole number from 1 to {MAX_LIMIT}, not {text!r}")
        limit = int(text)
    return Filters(values.get("actor"), values.get("action"), values.get("target"), since, until, limit)


def query(filters: Filters) -> tuple[str, list[Any]]:
    """The SQL and parameters of a search (newest first)."""
    where, params = [], []
    for name in FIELDS:
        value = getattr(filters, name)
        if value is None:
            continue
        if value.endswith("*"):
            prefix = value[:-1]
            where.append(f"{name} >= ? AND {name} < ?")
            params += [prefix, prefix + "\U0010ffff"]
        else:
            where.append(f"{name} = ?")
            params.append(value)
    if filters.since:
        where.append("at >= ?")
        params.append(utc_iso(filters.since))
    if filters.until:
        where.append("at < ?")
        params.append(utc_iso(filters.until))
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT {', '.join(COLUMNS)} FROM audit_events{clause} ORDER BY at DESC LIMIT {filters.limit}", params


def search(db: Database, filters: Filters) -> list[dict[str, Any]]:
    """The matching rows, newest first, times as UTC ISO strings and details as objects."""
    sql, params = query(filters)
    return [
        {**row, "seq": int(row["seq"]), "at": utc_iso(row["at"]), "details": json.loads(row["details"])}
        for row in db.fetchall(sql, params)
    ]


def _cell(value: Any) -> Any:
    """A CSV cell a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def csv_text(rows: list[dict[str, Any]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow([_cell(json.dumps(row[c], sort_keys=True) if c == "details" else row[c]) for c in CSV_COLUMNS])
    return out.getvalue()
