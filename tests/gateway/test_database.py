"""The SQL layer: migrations and portable queries on SQLite and on a real PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from hxp.core.database import Database, redact


@pytest.fixture
def db(empty_db_url: str) -> Iterator[Database]:
    database = Database(empty_db_url)
    yield database
    database.close()


def test_migrations_apply_once_and_record_versions(db: Database) -> None:
    first = db.migrate()
    assert first[:4] == ["0001_api_keys", "0002_usage", "0003_key_collections", "0004_request_count"]
    assert db.migrate() == []
    versions = [r["version"] for r in db.fetchall("SELECT version FROM schema_migrations ORDER BY version")]
    assert versions[:4] == [1, 2, 3, 4]


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
    assert row["request_count"] == 1  # a row stands for one request unless it says otherwise


def test_reads_do_not_wait_for_an_open_write_transaction(db: Database, empty_db_url: str) -> None:
    db.migrate()
    insert = "INSERT INTO llm_model_requests (request_id, model_name) VALUES (?, ?)"
    db.execute(insert, (str(uuid.uuid4()), "committed"))
    other_worker = Database(empty_db_url)
    for writer in (other_worker, db):  # another process's transaction, and one of this Database in another thread
        inside, release = threading.Event(), threading.Event()

        def hold(
            writer: Database = writer, inside: threading.Event = inside, release: threading.Event = release
        ) -> None:
            with writer.transaction() as cur:
                cur.execute(insert, (str(uuid.uuid4()), "uncommitted"))
                inside.set()
                release.wait(60)

        holder = threading.Thread(target=hold)
        holder.start()
        assert inside.wait(10)
        seen: list = []

        def read(seen: list = seen) -> None:
            seen.extend([db.fetchall("SELECT model_name FROM llm_model_requests"), db.ping()])

        reader = threading.Thread(target=read)
        reader.start()
        reader.join(10)
        waited = reader.is_alive()
        release.set()
        holder.join(10)
        reader.join(60)
        assert not waited, "a read queued behind a write transaction"
        assert seen[0] == [{"model_name": "committed"}]  # the last commit, nothing uncommitted
        db.execute("DELETE FROM llm_model_requests WHERE model_name = 'uncommitted'")
    other_worker.close()


def test_a_read_sees_the_last_commit_of_another_connection(db: Database, empty_db_url: str) -> None:
    db.migrate()
    assert db.fetchone("SELECT COUNT(*) AS n FROM api_keys")["n"] == 0
    other_worker = Database(empty_db_url)
    other_worker.execute("INSERT INTO api_keys (key_id, key_hash, key_prefix, alias) VALUES ('k', 'h', 'p', 'a')")
    assert db.fetchone("SELECT alias FROM api_keys")["alias"] == "a"  # no stale snapshot kept by a read connection
    other_worker.close()


def test_failed_transaction_rolls_back(db: Database) -> None:
    db.migrate()
    with pytest.raises(Exception):  # noqa: B017 - the driver's own error for a missing table (sqlite3 or psycopg)
        with db.transaction() as cur:
            cur.execute(
                "INSERT INTO llm_model_requests (request_id, model_name) VALUES (?, ?)", (str(uuid.uuid4()), "m")
            )
            cur.execute("INSERT INTO no_such_table VALUES (1)")
    assert db.fetchall("SELECT * FROM llm_model_requests") == []


def test_unknown_scheme_is_refused_and_passwords_redacted() -> None:
    with pytest.raises(ValueError, match="unsupported DATABASE_URL"):
        Database("mysql://u:secret@host/db")
    assert redact("postgresql://u:secret@host:5432/db") == "postgresql://u:***@host:5432/db"
