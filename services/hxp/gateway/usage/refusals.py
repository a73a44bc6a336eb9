"""Refused requests beyond a rate, folded into one usage row per minute, model, status and key.

A flood of refusals (a client retrying with a wrong key, a scanner) must not become one row each: during a
database outage those rows would fill the spill folder, and afterwards the table. Each writer keeps up to
``rows_per_minute`` refusal rows a minute one by one; beyond that, refusals are counted into one aggregate
row per (minute, model, status, key, stream), written once its minute has ended (or at a flush):
``request_count`` is the number of requests it stands for, ``latency_ms`` their mean, ``error_message``
says so and quotes the first one. Whatever counts requests sums ``request_count``.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import Counter

from hxp.gateway.usage.record import REFUSALS, UsageRecord, epoch_of, iso_at

MAX_GROUPS = 1000  # aggregates open at once; beyond, new (model, key) pairs are folded under model "unknown"
MINUTE_S = 60

AGGREGATED = Counter("llm_usage_refusals_aggregated", "Refused requests folded into an aggregate usage row")

_Key = tuple[int, str, str, str | None, str | None, bool]  # minute, model, status, key id, key alias, stream


@dataclass
class _Aggregate:
    count: int = 0
    latency_total: int = 0
    timed: int = 0
    first_error: str | None = None


class RefusalAggregator:
    """Keeps refusals as rows up to a budget a minute, aggregates the rest. Not thread-safe: the writer calls
    it under its lock."""

    def __init__(self, rows_per_minute: int) -> None:
        self.rows_per_minute = rows_per_minute
        self._minute = -1  # the minute whose budget is being spent
        self._used = 0
        self._open: dict[_Key, _Aggregate] = {}

    def offer(self, record: UsageRecord, now: float) -> UsageRecord | None:
        """``record`` when it keeps a row of its own; None when it was counted into an aggregate."""
        if record.status not in REFUSALS:
            return record
        minute = int(now // MINUTE_S)
        if minute != self._minute:
            self._minute, self._used = minute, 0
        if self._used < self.rows_per_minute:
            self._used += 1
            return record
        key: _Key = (
            int(epoch_of(record.timestamp) // MINUTE_S),
            record.model_name,
            record.status,
            record.key_id,
            record.user_id,
            record.stream,
        )
        if key not in self._open and len(self._open) >= MAX_GROUPS:
            key = (key[0], "unknown", record.status, None, None, record.stream)
        group = self._open.setdefault(key, _Aggregate())
        group.count += record.request_count
        if record.latency_ms is not None:
            group.latency_total += record.latency_ms * record.request_count
            group.timed += record.request_count
        if group.first_error is None:
            group.first_error = record.error_message
        AGGREGATED.inc(record.request_count)
        return None

    def pending(self) -> int:
        """Aggregate rows not yet handed out."""
        return len(self._open)

    def due(self, now: float) -> list[UsageRecord]:
        """The aggregate rows of every minute that has ended by ``now``."""
        ended = [key for key in self._open if (key[0] + 1) * MINUTE_S <= now]
        return [self._row(key, self._open.pop(key)) for key in ended]

    def drain(self) -> list[UsageRecord]:
        """Every aggregate row, also of the current minute (its later refusals start a new aggregate)."""
        rows = [self._row(key, group) for key, group in self._open.items()]
        self._open.clear()
        return rows

    def _row(self, key: _Key, group: _Aggregate) -> UsageRecord:
        minute, model, status, key_id, alias, stream = key
        return UsageRecord(
            model_name=model,
            status=status,
            timestamp=iso_at(minute * MINUTE_S),
            key_id=key_id,
            user_id=alias,
            stream=stream,
            request_count=group.count,
            latency_ms=round(group.latency_total / group.timed) if group.timed else None,
            error_message=f"{group.count} refused requests of this minute in one row (beyond "
            f"{self.rows_per_minute} refusal rows a minute per gateway process); the first: "
            f"{group.first_error}",
        )
