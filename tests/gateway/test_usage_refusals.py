"""Refusals beyond a rate: aggregated into one row per minute, model, status and key, counted exactly."""

from __future__ import annotations

from pathlib import Path

import pytest

from hxp.gateway.usage import refusals
from hxp.gateway.usage.record import REFUSALS, UsageRecord, iso_at
from hxp.gateway.usage.refusals import RefusalAggregator
from hxp.gateway.usage.writer import UsageWriter, WriterSettings
from tests.fixtures.usage import CountingDatabase

MINUTE = 1_800_000_000.0  # a minute boundary


def refusal(
    at: float, status: str = "unauthorized", key: str | None = None, model: str = "phi-3-mini", latency: int | None = 10
) -> UsageRecord:
    return UsageRecord(
        model_name=model,
        status=status,
        key_id=key,
        user_id=key and f"alias-{key}",
        timestamp=iso_at(at),
        latency_ms=latency,
        error_message=f"{status} at {at}",
    )


def test_refusals_beyond_the_budget_become_one_row_per_minute_and_key() -> None:
    aggregator = RefusalAggregator(rows_per_minute=3)
    kept = [aggregator.offer(refusal(MINUTE + n, latency=10 * n), MINUTE + n) for n in range(10)]
    success = UsageRecord(model_name="phi-3-mini", status="success", timestamp=iso_at(MINUTE + 11))
    assert aggregator.offer(success, MINUTE + 11) is success  # answered requests are never aggregated
    assert [r is not None for r in kept] == [True] * 3 + [False] * 7
    assert aggregator.pending() == 1 and aggregator.due(MINUTE + 59) == []
    [row] = aggregator.due(MINUTE + 60)
    assert (row.model_name, row.status, row.request_count, row.timestamp) == (
        "phi-3-mini",
        "unauthorized",
        7,
        iso_at(MINUTE),
    )
    assert row.latency_ms == round(sum(10 * n for n in range(3, 10)) / 7)
    assert row.error_message.startswith("7 refused requests") and f"unauthorized at {MINUTE + 3}" in row.error_message
    assert aggregator.pending() == 0
    assert aggregator.offer(refusal(MINUTE + 61), MINUTE + 61) is not None  # a new minute: a new budget


def test_aggregates_keep_model_status_and_key_apart_and_their_number_bounded(monkeypatch) -> None:
    aggregator = RefusalAggregator(rows_per_minute=0)
    for key in ("k1", "k2"):
        for status in ("unauthorized", "rate_limited"):
            for _ in range(3):
                assert aggregator.offer(refusal(MINUTE + 1, status, key), MINUTE + 1) is None
    rows = aggregator.drain()
    assert sorted((r.key_id, r.user_id, r.status, r.request_count) for r in rows) == [
        ("k1", "alias-k1", "rate_limited", 3),
        ("k1", "alias-k1", "unauthorized", 3),
        ("k2", "alias-k2", "rate_limited", 3),
        ("k2", "alias-k2", "unauthorized", 3),
    ]
    monkeypatch.setattr(refusals, "MAX_GROUPS", 2)
    for model in ("a", "b", "c", "d"):  # names a client made up
        aggregator.offer(refusal(MINUTE + 1, model=model), MINUTE + 1)
    assert sorted((r.model_name, r.request_count) for r in aggregator.drain()) == [("a", 1), ("b", 1), ("unknown", 2)]


@pytest.mark.parametrize("status", sorted(REFUSALS))
def test_every_refusal_status_is_aggregated(status: str) -> None:
    aggregator = RefusalAggregator(rows_per_minute=0)
    assert aggregator.offer(refusal(MINUTE, status), MINUTE) is None
    for answered in ("success", "backend_error", "unavailable", "timeout", "cancelled"):
        record = refusal(MINUTE, answered)
        assert aggregator.offer(record, MINUTE) is record


def test_the_database_counts_every_refusal_with_few_rows(usage_db: CountingDatabase, tmp_path: Path) -> None:
    writer = UsageWriter(usage_db, tmp_path / "spill", WriterSettings(flush_interval_s=0.05, refusal_rows_per_minute=5))
    writer.start()
    for n in range(200):
        writer.submit(
            UsageRecord(
                model_name="phi-3-mini",
                status="unauthorized" if n % 2 else "forbidden",
                key_id=None if n % 2 else "k1",
                latency_ms=n,
            )
        )
    for _ in range(10):
        writer.submit(UsageRecord(model_name="phi-3-mini", status="success", key_id="k1"))
    assert writer.flush(10)
    totals = {
        r["status"]: (r["requests"], r["rows"])
        for r in usage_db.fetchall(
            "SELECT status, SUM(request_count) AS requests, COUNT(*) AS rows FROM llm_model_requests GROUP BY status"
        )
    }
    assert {status: requests for status, (requests, _) in totals.items()} == {
        "unauthorized": 100,
        "forbidden": 100,
        "success": 10,
    }
    assert sum(rows for _, rows in totals.values()) <= 5 + 2 * 2 + 10  # 5 rows, then an aggregate per minute
    aggregates = usage_db.fetchall("SELECT * FROM llm_model_requests WHERE request_count > 1")
    assert aggregates and all("refused requests of this minute in one row" in r["error_message"] for r in aggregates)
    writer.close()
