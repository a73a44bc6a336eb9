"""Searching the trail: filters, bad input named clearly (CLI and parser), and every filter served by an index
on a million rows (EXPLAIN on PostgreSQL and SQLite)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hxp.audit import search
from hxp.audit.search import SearchError
from hxp.audit.trail import Event, Trail
from hxp.core.database import Database
from tests.fixtures.stores import drop_postgres_database, fresh_postgres_database
from tests.support.servers import PostgresServer

ROOT = Path(__file__).resolve().parents[2]
MILLION = 1_000_000


@pytest.mark.parametrize(
    ("query", "field", "words"),
    [
        ({"since": "yesterday"}, "since", "not a date"),
        ({"until": "2026-13-01"}, "until", "not a date"),
        ({"since": "2026-05-02", "until": "2026-05-01"}, "until", "after since"),
        ({"limit": "0"}, "limit", "from 1 to"),
        ({"limit": "many"}, "limit", "whole number"),
        ({"colour": "red"}, "colour", "unknown filter 'colour'"),
        ({"actor": "ma*ster"}, "actor", "only at the end"),
    ],
)
def test_bad_input_is_named(query: dict[str, str], field: str, words: str) -> None:
    with pytest.raises(SearchError) as caught:
        search.parse(query)
    assert caught.value.field == field and words in str(caught.value)


def test_the_command_line_rejects_bad_input_clearly(tmp_path) -> None:
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "PYTHONPATH": str(ROOT / "services"),
        "PATH": "/usr/bin:/bin",
    }
    for args, words in (
        (["--since", "last week"], "since: 'last week' is not a date"),
        (["--colour", "red"], "unrecognized arguments: --colour red"),
        (["--limit", "-3"], "limit: a whole number"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "hxp.cli", "audit", "search", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and words in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_filters_find_their_events(empty_db_url: str) -> None:
    db = Database(empty_db_url)
    db.migrate()
    trail = Trail(db)
    trail.append(
        [
            Event("key.create", "master", target="alpha", at="2026-05-01T10:00:00+00:00"),
            Event("key.revoke", "console:abc", target="alpha", at="2026-05-02T10:00:00+00:00"),
            Event("key.create", "cli:op@host", target="beta", at="2026-05-03T10:00:00+00:00"),
        ]
    )
    found = lambda **q: [r["seq"] for r in search.search(db, search.parse(q))]  # noqa: E731
    assert found() == [3, 2, 1]
    assert found(action="key.create") == [3, 1]
    assert found(actor="console:*") == [2]
    assert found(target="alpha", until="2026-05-01") == [1]
    assert found(since="2026-05-02", until="2026-05-02T23:00") == [2]
    assert found(limit="1") == [3]
    rows = search.search(db, search.parse({"actor": "master"}))
    text = search.csv_text(rows)
    assert text.splitlines()[0].startswith("seq,at,actor") and "key.create" in text
    assert search.csv_text([{**rows[0], "target": "=HYPERLINK(1)"}]).count("'=HYPERLINK") == 1
    db.close()


# --- a million rows: the plan of each filter ----------------------------------------------------------------
_SQLITE_ROWS = (
    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < {count}) "
    "INSERT INTO audit_events (seq, event_id, at, actor, client, action, target, outcome, request_id, count, details, "
    "prev_hash, hash) SELECT i, 'e' || i, strftime('%Y-%m-%dT%H:%M:%f+00:00', 1700000000 + i * 30, 'unixepoch'), "
    "'actor-' || (i % 500), '', 'action-' || (i % 40), 'target-' || (i % 5000), 'ok', '', 1, '{{}}', '', '' FROM n"
)
_POSTGRES_ROWS = (
    "INSERT INTO audit_events (seq, event_id, at, actor, client, action, target, outcome, request_id, count, details, "
    "prev_hash, hash) SELECT i, 'e' || i, to_timestamp(1700000000 + i * 30), 'actor-' || mod(i, 500), '', "
    "'action-' || mod(i, 40), 'target-' || mod(i, 5000), 'ok', '', 1, '{{}}', '', '' "
    "FROM generate_series(1, {count}) AS i"
)
FULL_SCAN = re.compile(r"SCAN audit_events(?! USING)")  # SQLite reading the whole table, no index
QUERIES = {
    "actor": {"actor": "actor-7"},
    "action": {"action": "action-3", "since": "2024-01-01"},
    "target": {"target": "target-42"},
    "time": {"since": "2024-01-01", "until": "2024-01-02"},
    "none": {},
}


MIGRATION = ROOT / "services" / "hxp" / "core" / "migrations" / "0008_audit.sql"
INDEXES = [line.rstrip(";") for line in MIGRATION.read_text().splitlines() if line.startswith("CREATE INDEX")]


def _fill(db: Database, rows_sql: str) -> None:
    """A million rows in one INSERT ... SELECT, the migration's indexes built afterwards (faster than row by row)."""
    db.migrate()
    for statement in INDEXES:
        db.execute(f"DROP INDEX {statement.split()[5]}")
    db.execute(rows_sql.format(count=MILLION))
    for statement in INDEXES:
        db.execute(statement)
    db.execute("ANALYZE")


@pytest.fixture(scope="module")
def million(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Database]]:
    server: PostgresServer = request.getfixturevalue("postgres")
    url = fresh_postgres_database(server)
    stores = {
        "sqlite": Database(f"sqlite:///{tmp_path_factory.mktemp('million') / 'audit.sqlite3'}"),
        "postgresql": Database(url),
    }
    with ThreadPoolExecutor(2) as pool:  # one server process each: both cores
        list(pool.map(_fill, stores.values(), [_SQLITE_ROWS, _POSTGRES_ROWS]))
    yield stores
    for db in stores.values():
        db.close()
    drop_postgres_database(server, url)


def _unindexed(db: Database, sql: str, params: list[str]) -> str | None:
    """The plan when it reads the whole table instead of one of the migration's indexes; None when it does not."""
    if db.dialect == "sqlite":
        plan = " | ".join(r["detail"] for r in db.fetchall("EXPLAIN QUERY PLAN " + sql, params))
        return plan if FULL_SCAN.search(plan) or "USING INDEX audit_events_" not in plan else None
    plan = json.dumps(db.fetchall("EXPLAIN (FORMAT JSON) " + sql, params))
    indexes = [statement.split()[5] for statement in INDEXES]
    return plan if "Seq Scan" in plan or not any(name in plan for name in indexes) else None


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
@pytest.mark.parametrize("name", sorted(QUERIES))
def test_each_filter_uses_an_index_on_a_million_rows(million: dict[str, Database], dialect: str, name: str) -> None:
    db = million[dialect]
    sql, params = search.query(search.parse(QUERIES[name]))
    assert _unindexed(db, sql, params) is None
    assert len(search.search(db, search.parse(QUERIES[name]))) >= 1


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_planted_full_scan_is_caught(million: dict[str, Database], dialect: str) -> None:
    """The check above fails on a query no index serves (a filter on the outcome)."""
    assert _unindexed(million[dialect], "SELECT * FROM audit_events WHERE outcome = ?", ["denied"]) is not None


def test_time_bounds_are_utc(million: dict[str, Database]) -> None:
    filters = search.parse({"since": "2024-01-01T01:00+01:00"})
    assert filters.since == datetime(2024, 1, 1, tzinfo=UTC)
