"""The console on 100,000 usage rows (SQLite and PostgreSQL): every query it runs reads through an index
(checked with EXPLAIN, not with a clock), and its pages answer with the totals the database holds."""

from __future__ import annotations

import random
import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hxp.console import queries, usage
from hxp.core import catalogue
from hxp.core.database import Database
from hxp.gateway.keys import KeyStore
from hxp.gateway.usage import rollup
from hxp.gateway.usage.record import COLUMNS, INSERT_SQL, iso
from tests.support.console import ConsoleSession

ROWS = 100_000
DAYS = 90
KEYS = 50
RECENT = 300  # rows in the last five minutes
USAGE_TABLES = ("llm_model_requests", "llm_model_performance")


class RecordingDatabase(Database):
    """A real Database that records every statement it reads with."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.statements: list[tuple[str, tuple[Any, ...]]] = []

    def fetchall(self, sql, params=()):  # type: ignore[override]
        rows = super().fetchall(sql, params)
        self.statements.append((sql, tuple(params)))
        return rows


def _fill(db: Database, now: datetime) -> list[str]:
    """50 keys, 100,000 request rows over 90 days (300 in the last five minutes) and 10-minute performance rollups
    over 30 days; returns the key ids."""
    store = KeyStore(db)
    key_ids = [store.create(f"scale-{i}")[0].key_id for i in range(KEYS)]
    names = catalogue.load().names
    rng = random.Random(14)
    rows = []
    for i in range(ROWS):
        age = rng.uniform(0, 290) if i < RECENT else rng.uniform(0, DAYS * 86400)
        streamed = i % 3 == 0
        failed = i % 25 == 0
        values = {
            "request_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "model_name": names[i % len(names)],
            "timestamp": iso(now - timedelta(seconds=age)),
            "user_id": "master" if i % 97 == 0 else f"scale-{i % KEYS}",  # the master key's calls have no key id
            "key_id": None if i % 97 == 0 else key_ids[i % KEYS],
            "prompt_tokens": rng.randint(5, 500),
            "completion_tokens": 0 if failed else rng.randint(1, 300),
            "total_tokens": None,
            "latency_ms": rng.randint(20, 9000),
            "time_to_first_token_ms": rng.randint(5, 900) if streamed and not failed else None,
            "stream": streamed,
            "cache_hit": False,
            "cost": None,
            "status": "rate_limited" if failed else "success",
            "error_message": "429 rate limited" if failed else None,
            "request_count": 1,
        }
        rows.append(tuple(values[c] for c in COLUMNS))
    for start in range(0, ROWS, 5000):
        db.executemany(INSERT_SQL, rows[start : start + 5000])
    samples = [
        (str(uuid.uuid4()), name, iso(now - timedelta(minutes=10 * j)), 100.0, 1.0, 3.5, 40.0, 0.0)
        for name in names
        for j in range(30 * 144)
    ]
    db.executemany(rollup.UPSERT_SQL, samples)
    return key_ids


@pytest.fixture
def filled(empty_db_url: str) -> Any:
    db = Database(empty_db_url)
    db.migrate()
    now = datetime.now(UTC)
    key_ids = _fill(db, now)
    if db.dialect == "postgresql":
        db.execute("ANALYZE")  # what autovacuum does after a bulk load
    yield empty_db_url, db, now, key_ids
    db.close()


def _plan(db: Database, sql: str, params: tuple[Any, ...]) -> list[str]:
    if db.dialect == "sqlite":
        return [r["detail"] for r in db.fetchall("EXPLAIN QUERY PLAN " + sql, params)]
    return [r["QUERY PLAN"] for r in db.fetchall("EXPLAIN " + sql, params)]


def _reads_through_indexes(dialect: str, plan: list[str]) -> bool:
    """No scan of a whole usage table or of a whole index on it; at least one index searched."""
    if dialect == "sqlite":
        full = [line for line in plan if re.match(r"SCAN (r|p|llm_model_\w+)\b", line)]
        return not full and any(re.match(r"SEARCH (r|p) USING (COVERING )?INDEX llm_model_", line) for line in plan)
    full = [line for line in plan if re.search(r"Seq Scan on (" + "|".join(USAGE_TABLES) + r")\b", line)]
    return not full and any("Index Cond" in line for line in plan)


def test_every_console_query_reads_the_usage_tables_through_an_index(filled) -> None:
    url, db, now, key_ids = filled
    recording = RecordingDatabase(url)
    try:
        traffic = {m: queries.traffic(recording, catalogue.load().names, now - timedelta(minutes=m)) for m in (5, 60)}
        span = usage.parse_range(None, None, now.date())
        week = usage.report(recording, span, "key", {})
        activity = queries.key_activity(recording, now - timedelta(hours=24))
        samples = queries.engine_samples(recording, catalogue.load().names, now - timedelta(minutes=10))
        statements = [(sql, params) for sql, params in recording.statements if "WHERE 1 = 0" not in sql]
    finally:
        recording.close()
    assert len(statements) == 2 * 3 + 1 + 1 + 1
    for sql, params in statements:
        plan = _plan(db, sql, params)
        assert _reads_through_indexes(db.dialect, plan), f"{sql}\n" + "\n".join(plan)
    assert sum(s["requests"] for s in traffic[5].values()) >= RECENT
    assert 0 < week["totals"]["requests"] < ROWS
    assert set(activity) == set(key_ids) and all(a["last_used"] for a in activity.values())
    assert set(samples) == set(catalogue.load().names)


def test_the_console_answers_on_100000_rows_with_the_databases_totals(filled, gateway_factory, fake_upstream) -> None:
    url, db, now, key_ids = filled
    gateway = gateway_factory(fake_upstream.url, env={"DATABASE_URL": url})
    console = ConsoleSession(gateway)
    try:
        since = (now - timedelta(days=DAYS)).date().isoformat()
        every = console.get(f"/console/api/usage?since={since}&by=day")
        assert every.status_code == 200
        totals = every.json()["totals"]
        expected = db.fetchone(
            "SELECT COUNT(*) AS requests, SUM(CASE WHEN status = 'success' THEN 0 ELSE 1 END)"
            " AS errors, SUM(prompt_tokens) AS prompt FROM llm_model_requests"
        )
        assert (totals["requests"], totals["errors"], totals["prompt_tokens"]) == (
            expected["requests"],
            expected["errors"],
            expected["prompt"],
        )
        assert len(every.json()["rows"]) == DAYS + 1
        csv_lines = console.get(f"/console/api/usage.csv?since={since}&by=key").text.splitlines()
        assert len(csv_lines) == 1 + KEYS + 1  # header, each key, the master key's calls
        keys = console.get("/console/api/keys").json()["data"]
        last = db.fetchone("SELECT MAX(timestamp) AS t FROM llm_model_requests WHERE key_id = ?", (key_ids[0],))["t"]
        assert {k["key_id"]: k["last_used"] for k in keys}[key_ids[0]] == queries.when(last)
        overview = console.get("/console/api/overview").json()
        assert sum(m["windows"]["60m"]["requests"] for m in overview["models"]) >= RECENT
        for path in (
            "/console",
            "/console/keys",
            "/console/usage",
            "/console/configuration",
            "/console/api/configuration",
        ):
            assert console.get(path).status_code == 200, path
    finally:
        console.close()


def test_requests_are_counted_by_request_count(empty_db_url) -> None:
    """One row may stand for N aggregated refusals (request_count): counted as N."""
    db = Database(empty_db_url)
    db.migrate()
    now = datetime.now(UTC)
    rows = [
        {
            "request_id": str(uuid.uuid4()),
            "model_name": "phi-3-mini",
            "timestamp": iso(now),
            "status": status,
            "request_count": 1,
        }
        for status in ("success", "success", "rate_limited")
    ]
    db.executemany(
        INSERT_SQL, [tuple(r.get(c, False if c in ("stream", "cache_hit") else None) for c in COLUMNS) for r in rows]
    )
    span = usage.parse_range(None, None, now.date())
    assert usage.report(db, span, "model", {})["totals"]["requests"] == 3
    db.execute("UPDATE llm_model_requests SET request_count = 5 WHERE status = 'rate_limited'")
    report = usage.report(db, span, "model", {})
    assert (report["totals"]["requests"], report["totals"]["errors"]) == (7, 5)
    assert queries.traffic(db, ["phi-3-mini"], now - timedelta(minutes=5))["phi-3-mini"]["requests"] == 7
    db.close()
