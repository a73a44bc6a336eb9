"""`hxp usage report` against generated usage rows on SQLite and the real PostgreSQL: every figure of
every grouping equals what the rows say, CSV and JSON parse, and the window is read through an index."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from hxp.cli import main
from hxp.core import catalogue
from hxp.core.database import Database
from hxp.gateway.usage import record
from hxp.ops import report
from tests.fixtures.stores import drop_postgres_database, fresh_postgres_database
from tests.ops import usage_rows

NOW = datetime.now(UTC).replace(microsecond=0)
MODELS = ["mixtral-8x7b", "phi-3-mini", "all-minilm-l6-v2", "not-in-catalogue"]


@pytest.fixture
def usage(empty_db_url: str) -> Iterator[tuple[Database, list[usage_rows.Row]]]:
    db = Database(empty_db_url)
    db.migrate()
    rows = usage_rows.generate(db, MODELS, NOW)
    yield db, rows
    db.close()


def _priced_catalogue(tmp_path: Path) -> catalogue.Catalogue:
    doc = yaml.safe_load(catalogue.DEFAULT_PATH.read_text())
    for model in doc["models"]:
        if model["name"] == "phi-3-mini":
            model["api"]["price_per_1k_tokens"] = {"prompt": 0.5, "completion": 1.5}
    path = tmp_path / "models.yaml"
    path.write_text(yaml.safe_dump(doc))
    return catalogue.load(path)


def _compare(got: report.Report, want: dict[str, dict]) -> None:
    by_name = {row[got.by]: row for row in got.rows}
    assert set(by_name) == set(want)
    for name, figures in want.items():
        row = by_name[name]
        for column, value in figures.items():
            if column == "cost" and value is not None:
                assert row["cost"] == pytest.approx(value, rel=1e-9), (name, column)
            else:
                assert row[column] == value, (name, column, row[column], value)


@pytest.mark.parametrize("by", report.GROUPINGS)
def test_each_grouping_matches_the_rows(usage, by: str, tmp_path: Path) -> None:
    db, rows = usage
    span = report.window("7d", now=NOW)
    got = report.build(db, _priced_catalogue(tmp_path), span, by)
    want = usage_rows.expected(rows, by, span.since, span.until, prices={"phi-3-mini": (0.5, 1.5)})
    _compare(got, want)
    assert got.totals["requests"] == sum(g["requests"] for g in want.values())
    assert got.totals["errors"] == sum(g["errors"] for g in want.values())
    assert got.totals["cost"] == pytest.approx(sum(g["cost"] or 0 for g in want.values()))
    in_window = [r for r in rows if span.since <= r.timestamp < span.until]
    assert got.totals["p95_ms"] == usage_rows.nearest_rank(
        [r.latency_ms for r in in_window if r.status == "success" and r.latency_ms is not None], 0.95
    )
    counted = db.fetchone(
        "SELECT SUM(request_count) AS n FROM llm_model_requests WHERE timestamp >= ? AND timestamp < ?",
        (record.iso(span.since), record.iso(span.until)),
    )
    assert got.totals["requests"] == counted["n"]  # the table's own count agrees
    assert got.priced == ["phi-3-mini"]


def test_an_explicit_window_and_no_prices(usage) -> None:
    db, rows = usage
    span = report.window((NOW - timedelta(days=3)).isoformat(), (NOW - timedelta(days=1)).isoformat(), now=NOW)
    got = report.build(db, catalogue.load(), span, "day")
    _compare(got, usage_rows.expected(rows, "day", span.since, span.until))
    assert [r["day"] for r in got.rows] == sorted(r["day"] for r in got.rows)
    assert got.priced == [] and got.totals["cost"] is None


def test_the_cli_writes_csv_and_json(usage, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    db, rows = usage
    monkeypatch.delenv("HXP_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", db.url)
    assert main(["usage", "report", "--since", "7d", "--by", "owner", "--csv"]) == 0
    parsed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    span = report.window("7d")
    want = usage_rows.expected(rows, "owner", span.since, span.until)
    assert {r["owner"]: int(r["requests"]) for r in parsed} == {k: v["requests"] for k, v in want.items()}
    for r in parsed:
        assert sum(int(v) for k, v in r.items() if k.startswith("errors_")) == int(r["errors"])
    assert main(["usage", "report", "--since", "7d", "--by", "key", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert {r["key"] for r in body["rows"]} == set(usage_rows.expected(rows, "key", span.since, span.until))
    assert main(["usage", "report", "--since", "7d"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("Usage from ") and "TOTAL" in text and "mixtral-8x7b" in text


def test_unreadable_arguments_are_refused(
    capsys: pytest.CaptureFixture, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HXP_DATABASE_URL", raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'db.sqlite3'}")
    assert main(["usage", "report", "--since", "last week"]) == 2
    assert "cannot read the time 'last week'" in capsys.readouterr().err
    assert main(["usage", "report", "--since", "1d", "--until", "2d"]) == 2
    assert "the window is empty" in capsys.readouterr().err


# --- the query plans ----------------------------------------------------------------------


def _plan(db: Database, statement: tuple[str, list]) -> str:
    sql, params = statement
    if db.dialect == "postgresql":
        return "\n".join(r["QUERY PLAN"] for r in db.fetchall("EXPLAIN " + sql, params))
    return "\n".join(r["detail"] for r in db.fetchall("EXPLAIN QUERY PLAN " + sql, params))


def _statements(db: Database, by: str) -> list[tuple[str, list]]:
    q = report.queries(report.group_expression(by, db.dialect), {}, report.window("7d", now=NOW))
    return [q.sums, q.statuses, q.latency]


@pytest.fixture(scope="module")
def large_postgres(postgres) -> Iterator[Database]:  # noqa: ANN001 - the session server
    """300,000 usage rows over 90 days on the real PostgreSQL, analysed."""
    url = fresh_postgres_database(postgres)
    db = Database(url)
    db.migrate()
    db.execute(
        "INSERT INTO llm_model_requests (request_id, model_name, timestamp, key_id, user_id, status, latency_ms,"
        " prompt_tokens, completion_tokens)"
        " SELECT gen_random_uuid(), (ARRAY['mixtral-8x7b','hermes-2','phi-3-mini'])[1 + mod(i, 3)],"
        " now() - random() * interval '90 days', 'key-' || mod(i, 50), 'alias-' || mod(i, 50),"
        " CASE WHEN mod(i, 10) = 0 THEN 'rate_limited' ELSE 'success' END, (random() * 4000)::int,"
        " (random() * 500)::int, (random() * 200)::int FROM generate_series(1, 300000) AS i"
    )
    db.execute("ANALYZE llm_model_requests")
    yield db
    db.close()
    drop_postgres_database(postgres, url)


@pytest.mark.parametrize("by", report.GROUPINGS)
def test_postgres_reads_the_window_through_the_time_index(large_postgres: Database, by: str) -> None:
    for statement in _statements(large_postgres, by):
        plan = _plan(large_postgres, statement)
        assert "llm_model_requests_time" in plan, plan
        assert "Seq Scan on llm_model_requests" not in plan, plan
    span = report.window("7d")
    got = report.build(large_postgres, catalogue.load(), span, by)
    counted = large_postgres.fetchone(
        "SELECT COUNT(*) AS n FROM llm_model_requests WHERE timestamp >= ? AND timestamp < ?",
        (record.iso(span.since), record.iso(span.until)),
    )
    assert got.totals["requests"] == counted["n"] > 0
    assert sum(r["requests"] for r in got.rows) == counted["n"]


def test_sqlite_reads_the_window_through_the_time_index(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'db.sqlite3'}")
    db.migrate()
    usage_rows.generate(db, MODELS, NOW, count=3000)
    for by in report.GROUPINGS:
        for statement in _statements(db, by):
            plan = _plan(db, statement)
            assert "USING INDEX llm_model_requests_time" in plan, plan
    db.close()
