"""The SQL layer: migrations and portable queries on SQLite and on a real PostgreSQL."""
from __future__ import annotations

import uuid
from typing import Iterator

import pytest

from hxp.gateway.database import Database, redact


@pytest.fixture
def db(empty_db_url: str) -> Iterator[Database]:
    database = Database(empty_db_url)
    yield database
    database.close()


def test_migrations_apply_once_and_record_versions(db: Database) -> None:
    first = db.migrate()
    assert first[:2] == ["0001_api_keys", "0002_usage"]
    assert db.migrate() == []
    versions = [r["version"] for r in db.fetchall("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions[:2] == [1, 2]


def test_usage_row_round_trip(db: Database) -> None:
    db.migrate()
    rid = str(uuid.uuid4())
    db.executemany(
        "INSERT INTO llm_model_requests (request_id, model_name, timestamp, user_id, prompt_tokens, stream, status)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        [(rid, "phi-3-mini", "2026-11-27T10:00:00+00:00", "alice", 12, True, "success")],
    )
    row = db.fetchone("SELECT * FROM llm_model_requests WHERE request_id = ?", (rid,))
    assert row is not None
    assert str(row["request_id"]) == rid and row["prompt_tokens"] == 12 and bool(row["stream"]) is True


def test_failed_transaction_rolls_back(db: Database) -> None:
    db.migrate()
    with pytest.raises(Exception):
        with db.transaction() as cur:
            cur.execute("INSERT INTO llm_model_requests (request_id, model_name) VALUES (?, ?)", (str(uuid.uuid4()), "m"))
            cur.execute("INSERT INTO no_such_table VALUES (1)")
    assert db.fetchall("SELECT * FROM llm_model_requests") == []


def test_unknown_scheme_is_refused_and_passwords_redacted() -> None:
    with pytest.raises(ValueError, match="unsupported DATABASE_URL"):
        Database("mysql://u:secret@host/db")
    assert redact("postgresql://u:secret@host:5432/db") == "postgresql://u:***@host:5432/db"
