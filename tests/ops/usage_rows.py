"""Generated usage rows for the report tests, written the way the gateway writes them, and the
report they must give, computed in Python (the test's own oracle, independent of the report's SQL)."""

from __future__ import annotations

import math
import random
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from hxp.core.database import Database
from hxp.gateway.usage.record import iso

# key id -> (alias, owner) of the keys in api_keys; "gone" was deleted (its rows keep the alias in user_id)
KEYS = {"k-alpha": ("alpha", "team-a"), "k-beta": ("beta", "team-a"), "k-gamma": ("gamma", None)}
STATUSES = ["success"] * 7 + ["rate_limited", "unauthorized", "unavailable"]


@dataclass(frozen=True)
class Row:
    model_name: str
    timestamp: datetime
    key_id: str | None
    user_id: str | None
    status: str
    latency_ms: int | None
    prompt_tokens: int | None
    completion_tokens: int | None
    request_count: int

    def label(self, by: str) -> str:
        if by == "model":
            return self.model_name
        if by == "day":
            return f"{self.timestamp.astimezone(UTC):%Y-%m-%d}"
        known = KEYS.get(self.key_id or "")
        if by == "key":
            return known[0] if known else (self.user_id or "(none)")
        return (known[1] if known else None) or "(none)"


def generate(db: Database, models: list[str], now: datetime, count: int = 800, seed: int = 7) -> list[Row]:
    """Write ``count`` rows spread over the 10 days before ``now`` (and a few after it); return them."""
    rnd = random.Random(seed)
    db.executemany(
        "INSERT INTO api_keys (key_id, key_hash, key_prefix, alias, owner) VALUES (?, ?, ?, ?, ?)",
        [(k, f"hash-{k}", "sk-x", alias, owner) for k, (alias, owner) in KEYS.items()],
    )
    rows = []
    for _ in range(count):
        key = rnd.choice([*KEYS, "gone", None])
        status = rnd.choice(STATUSES)
        rows.append(
            Row(
                model_name=rnd.choice(models),
                timestamp=now - timedelta(seconds=rnd.uniform(-3600, 10 * 86400)),
                key_id=key,
                user_id=KEYS[key][0] if key in KEYS else ("old-alias" if key == "gone" else None),
                status=status,
                latency_ms=rnd.choice([None, rnd.randint(1, 5000), rnd.randint(1, 200)]),
                prompt_tokens=rnd.choice([None, rnd.randint(0, 900)]),
                completion_tokens=rnd.choice([None, rnd.randint(0, 400)]),
                request_count=rnd.randint(1, 5) if status != "success" else 1,  # aggregated refusals
            )
        )
    columns = [
        "request_id",
        "model_name",
        "timestamp",
        "key_id",
        "user_id",
        "status",
        "latency_ms",
        "prompt_tokens",
        "completion_tokens",
        "request_count",
    ]
    db.executemany(
        f"INSERT INTO llm_model_requests ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [
            (
                str(uuid.uuid4()),
                r.model_name,
                iso(r.timestamp),
                r.key_id,
                r.user_id,
                r.status,
                r.latency_ms,
                r.prompt_tokens,
                r.completion_tokens,
                r.request_count,
            )
            for r in rows
        ],
    )
    return rows


def nearest_rank(values: list[int], p: float) -> int | None:
    ordered = sorted(values)
    return ordered[math.ceil(p * len(ordered)) - 1] if ordered else None


def expected(
    rows: list[Row], by: str, since: datetime, until: datetime, prices: dict[str, tuple[float, float]] | None = None
) -> dict[str, dict[str, Any]]:
    """Each group's figures as the report must give them."""
    groups: dict[str, list[Row]] = defaultdict(list)
    for row in rows:
        if since <= row.timestamp < until:
            groups[row.label(by)].append(row)
    result = {}
    for name, members in groups.items():
        errors: dict[str, int] = defaultdict(int)
        for r in members:
            if r.status != "success":
                errors[r.status] += r.request_count
        latencies = [r.latency_ms for r in members if r.status == "success" and r.latency_ms is not None]
        priced = [r for r in members if prices and r.model_name in prices]
        result[name] = {
            "requests": sum(r.request_count for r in members),
            "errors": sum(errors.values()),
            "prompt_tokens": sum(r.prompt_tokens or 0 for r in members),
            "completion_tokens": sum(r.completion_tokens or 0 for r in members),
            "p50_ms": nearest_rank(latencies, 0.5),
            "p95_ms": nearest_rank(latencies, 0.95),
            "errors_by_status": dict(errors),
            "cost": (
                sum(
                    (
                        (r.prompt_tokens or 0) * prices[r.model_name][0]
                        + (r.completion_tokens or 0) * prices[r.model_name][1]
                    )
                    / 1000
                    for r in priced
                )
                if priced
                else None
            ),
        }
    return result
