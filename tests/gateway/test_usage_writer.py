"""The usage batch writer: batching, outages, spill and replay, flush on close (SQLite and real PostgreSQL)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from hxp.core.database import Database
from hxp.gateway.usage.record import UsageRecord
from hxp.gateway.usage.spill import SpillFolder
from hxp.gateway.usage.writer import UsageWriter, WriterSettings
from tests.fixtures.stores import drop_postgres_database, fresh_postgres_database
from tests.fixtures.usage import CountingDatabase

SLOW_FLUSH = WriterSettings(batch_size=10, flush_interval_s=60.0, retry_initial_s=0.05, retry_max_s=0.5)


def rows(n: int, model: str = "phi-3-mini") -> list[UsageRecord]:
    return [
        UsageRecord(model_name=model, status="success", user_id="alice", prompt_tokens=i, latency_ms=5)
        for i in range(n)
    ]


def count(db: Database) -> int:
    return db.fetchone("SELECT COUNT(*) AS n FROM llm_model_requests")["n"]


def spilled_lines(spill_dir: Path) -> int:
    return sum(1 for p in spill_dir.glob("usage-*.jsonl") for line in p.open() if line.strip())


def wait_until(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


@pytest.fixture
def db(usage_db: CountingDatabase) -> CountingDatabase:
    return usage_db


def test_full_batches_are_written_at_once_and_the_rest_on_flush(db: CountingDatabase, tmp_path: Path) -> None:
    writer = UsageWriter(db, tmp_path / "spill", SLOW_FLUSH)
    writer.start()
    for record in rows(25):
        writer.submit(record)
    wait_until(lambda: writer.written == 20)
    assert writer.backlog() == 5  # the partial batch waits for the interval
    assert writer.flush(10)
    assert count(db) == 25 and writer.backlog() == 0
    assert db.batches == [10, 10, 5]
    writer.close()


def test_partial_batch_is_written_after_the_interval(db: CountingDatabase, tmp_path: Path) -> None:
    writer = UsageWriter(db, tmp_path / "spill", WriterSettings(batch_size=100, flush_interval_s=0.2))
    writer.start()
    for record in rows(3):
        writer.submit(record)
    wait_until(lambda: count(db) == 3, timeout=10)
    writer.close()


def test_close_writes_everything_buffered(db: CountingDatabase, tmp_path: Path) -> None:
    writer = UsageWriter(db, tmp_path / "spill", SLOW_FLUSH)
    writer.start()
    records = rows(37)
    for record in records:
        writer.submit(record)
    writer.close()
    assert count(db) == 37
    stored = {str(r["request_id"]) for r in db.fetchall("SELECT request_id FROM llm_model_requests")}
    assert stored == {r.request_id for r in records}
    assert not list((tmp_path / "spill").glob("usage-*.jsonl"))


def test_rows_submitted_from_many_threads_are_all_written(db: CountingDatabase, tmp_path: Path) -> None:
    writer = UsageWriter(db, tmp_path / "spill", WriterSettings(batch_size=50, flush_interval_s=0.05))
    writer.start()

    def produce() -> None:
        for record in rows(200):
            writer.submit(record)

    threads = [threading.Thread(target=produce) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writer.flush(30)
    assert count(db) == 800
    writer.close()


def test_beyond_the_bound_rows_spill_to_disk_and_are_replayed_at_start(empty_db_url: str, tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    down = Database(f"sqlite:///{tmp_path / 'unmigrated.sqlite3'}")  # no tables: every write fails
    writer = UsageWriter(
        down,
        spill_dir,
        WriterSettings(batch_size=5, flush_interval_s=0.05, max_buffer=10, retry_initial_s=0.05, retry_max_s=0.1),
    )
    writer.start()
    records = rows(35)
    for record in records:
        writer.submit(record)
    wait_until(lambda: not writer.healthy and spilled_lines(spill_dir) >= 30)  # beyond the bound: on disk
    assert writer.backlog() == 35
    writer.close()  # the database is still away: the rest goes to disk too
    spilled = list(spill_dir.glob("usage-*.jsonl"))
    lines = [json.loads(line) for line in spilled[0].open()]
    assert len(spilled) == 1 and sorted(r["request_id"] for r in lines) == sorted(r.request_id for r in records)
    counting = UsageWriter(down, spill_dir, SLOW_FLUSH)
    counting.start()
    assert counting.backlog() == 35  # the ended writer's rows, counted by the next one: a metric sees them
    counting.close()
    down.close()

    up = Database(empty_db_url)
    up.migrate()
    restarted = UsageWriter(up, spill_dir, SLOW_FLUSH)
    restarted.start()
    wait_until(lambda: restarted.backlog() == 0)
    assert count(up) == 35
    restarted.close()
    assert not list(spill_dir.glob("usage-*.jsonl"))
    up.close()


def test_replay_is_idempotent(db: CountingDatabase, tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    records = rows(12)
    writer = UsageWriter(db, spill_dir, SLOW_FLUSH)
    writer.start()
    for record in records:
        writer.submit(record)
    writer.close()
    # the same rows spilled again (a crash after the insert, before the file was removed), plus a torn last line
    old = SpillFolder(spill_dir, 2**20)
    old.open()
    old.append(records + rows(3))
    old.close()
    with old.path.open("a") as f:
        f.write('{"request_id": "torn')
    again = UsageWriter(db, spill_dir, SLOW_FLUSH)
    again.start()
    wait_until(lambda: again.backlog() == 0)
    assert count(db) == 15
    again.close()


def test_a_row_the_database_refuses_is_set_aside_without_blocking_the_others(
    db: CountingDatabase, tmp_path: Path
) -> None:
    writer = UsageWriter(db, tmp_path / "spill", SLOW_FLUSH)
    writer.start()
    bad = UsageRecord(model_name=None, status="success")  # type: ignore[arg-type]  # NOT NULL violated
    for record in [*rows(4), bad, *rows(4)]:
        writer.submit(record)
    assert writer.flush(10)
    assert count(db) == 8
    assert bad.request_id in (tmp_path / "spill" / "rejected-rows.json").read_text()
    writer.close()


def test_a_spilled_row_the_database_refuses_does_not_hold_up_the_replay(db: CountingDatabase, tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    bad = UsageRecord(model_name=None, status="success")  # type: ignore[arg-type]  # NOT NULL violated
    spilled = SpillFolder(spill_dir, 2**20)
    spilled.append([*rows(3), bad, *rows(3)])  # left by a worker that ended during an outage
    writer = UsageWriter(db, spill_dir, SLOW_FLUSH)
    writer.start()
    assert writer.flush(10) and writer.healthy
    assert count(db) == 6 and bad.request_id in (spill_dir / "rejected-rows.json").read_text()
    assert not list(spill_dir.glob("usage-*.jsonl"))
    writer.close()


def test_postgres_outage_rows_are_retried_until_all_are_written(postgres, tmp_path: Path) -> None:
    url = fresh_postgres_database(postgres)
    db = Database(url)
    db.migrate()
    writer = UsageWriter(
        db,
        tmp_path / "spill",
        WriterSettings(batch_size=20, flush_interval_s=0.05, max_buffer=1, retry_initial_s=0.1, retry_max_s=0.5),
    )
    writer.start()
    records = rows(200)
    try:
        for record in records[:50]:
            writer.submit(record)
        assert writer.flush(10)
        postgres.stop()
        for record in records[50:]:
            writer.submit(record)
        wait_until(lambda: not writer.healthy, timeout=30)
        assert writer.backlog() >= 150
        assert list((tmp_path / "spill").glob("usage-*.jsonl"))[0].stat().st_size > 0  # beyond the bound
    finally:
        postgres.start()
    assert writer.flush(60)  # nothing new arrives: the writer finds the database back by itself
    assert writer.healthy
    stored = {str(r["request_id"]) for r in db.fetchall("SELECT request_id FROM llm_model_requests")}
    assert stored == {r.request_id for r in records}
    writer.close()
    db.close()
    drop_postgres_database(postgres, url)


def test_a_live_writers_spill_file_is_neither_counted_nor_replayed_by_another(
    usage_db: CountingDatabase, tmp_path: Path
) -> None:
    spill_dir = tmp_path / "spill"
    down = Database(f"sqlite:///{tmp_path / 'unmigrated.sqlite3'}")
    # no batch is ever due (batch_size > max_buffer): every full buffer goes to disk, in worker A's own file
    worker_a = UsageWriter(down, spill_dir, WriterSettings(batch_size=100, max_buffer=5, flush_interval_s=60))
    worker_a.start()
    records = rows(10)
    for spilled in (5, 10):  # the buffer at its bound each time (rows beyond it would wait in memory)
        for record in records[spilled - 5 : spilled]:
            worker_a.submit(record)
        wait_until(lambda n=spilled: spilled_lines(spill_dir) == n)
    worker_b = UsageWriter(usage_db, spill_dir, SLOW_FLUSH)
    worker_b.start()
    assert worker_b.backlog() == 0 and worker_b.flush(5)
    assert count(usage_db) == 0  # A's rows are A's to write
    worker_b.close()  # before A ends: once A's file is ownerless, any live writer may replay it
    worker_a.close()  # A ends (its database still away): its file is left for the next start
    down.close()
    worker_c = UsageWriter(usage_db, spill_dir, SLOW_FLUSH)
    worker_c.start()
    assert worker_c.flush(10) and count(usage_db) == 10
    worker_c.close()


def test_the_backlog_of_several_writers_counts_each_row_once(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    down = Database(f"sqlite:///{tmp_path / 'unmigrated.sqlite3'}")  # nothing is ever written: rows stay
    spilling = WriterSettings(max_buffer=1, flush_interval_s=0.05, retry_initial_s=0.05, retry_max_s=0.1)
    ended = UsageWriter(down, spill_dir, spilling)
    ended.start()
    for record in rows(7):
        ended.submit(record)
    ended.close()  # a worker that ended: its 7 rows wait in a file nobody holds
    workers = [UsageWriter(down, spill_dir, spilling) for _ in range(3)]
    for n, worker in enumerate(workers):
        worker.start()
        for record in rows(5 + n):
            worker.submit(record)
    wait_until(lambda: spilled_lines(spill_dir) == 7 + 5 + 6 + 7)
    assert sum(w.backlog() for w in workers) == 25  # each live worker its own, one of them the ended one's
    workers[0].close()  # the worker counting ended files goes: another takes its place, and its rows
    wait_until(lambda: sum(w.backlog() for w in workers[1:]) == 25, timeout=10)
    for worker in workers[1:]:
        worker.close()
    down.close()
