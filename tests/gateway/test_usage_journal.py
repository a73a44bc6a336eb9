"""The usage journal: rows on disk as they are submitted, files emptied or removed once their rows are done,
and a killed process's rows replayed by the next writer."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import time
from pathlib import Path

from hxp.core.database import Database
from hxp.gateway.usage.journal import Journal
from hxp.gateway.usage.record import UsageRecord
from hxp.gateway.usage.writer import UsageWriter, WriterSettings

NEVER_FLUSHED = WriterSettings(batch_size=100_000, flush_interval_s=600.0)


def rows(n: int) -> list[UsageRecord]:
    return [UsageRecord(model_name="phi-3-mini", status="success", prompt_tokens=i) for i in range(n)]


def journaled(folder: Path) -> set[str]:
    """The request ids in the folder's journal files."""
    lines = [line for p in folder.glob("journal-*.jsonl") for line in p.open() if line.strip()]
    return {json.loads(line)["request_id"] for line in lines}


def test_rows_are_on_disk_until_done_then_files_are_emptied_or_removed(tmp_path: Path) -> None:
    journal = Journal(tmp_path, rotate_rows=3)
    records = rows(7)
    for record in records:
        journal.append(record)
    assert journaled(tmp_path) == {r.request_id for r in records}
    assert len(list(tmp_path.glob("journal-*.jsonl"))) == 3  # 3 + 3 + 1
    ids = [r.request_id for r in records]
    journal.done(records[3:6])  # the second file's rows: removed
    journal.done(records[:2])  # the first file's, all but one: the file stays as it is
    assert journaled(tmp_path) == {*ids[:3], ids[6]}
    journal.done([records[6]])  # the current file: emptied, and still the one appended to
    assert journaled(tmp_path) == set(ids[:3])
    journal.append(records[6])  # submitted again after it was done: journaled again
    assert journaled(tmp_path) == {*ids[:3], ids[6]} and len(list(tmp_path.glob("journal-*.jsonl"))) == 2
    journal.close()  # neither file is done: both left for the replay of an ended process
    assert journaled(tmp_path) == {*ids[:3], ids[6]}


def test_a_closed_journal_removes_its_done_files(tmp_path: Path) -> None:
    journal = Journal(tmp_path, rotate_rows=2)
    records = rows(3)
    for record in records:
        journal.append(record)
    journal.done(records)
    journal.close()
    assert not list(tmp_path.glob("journal-*"))


def test_rows_written_or_spilled_by_the_writer_leave_the_journal(tmp_path: Path) -> None:
    db = Database(f"sqlite:///{tmp_path / 'usage.sqlite3'}")
    db.migrate()
    writer = UsageWriter(db, tmp_path / "spill", NEVER_FLUSHED)
    writer.start()
    for record in rows(20):
        writer.submit(record)
    assert len(journaled(tmp_path / "spill")) == 20
    assert writer.flush()
    assert journaled(tmp_path / "spill") == set()
    writer.close()
    assert not list((tmp_path / "spill").glob("journal-*"))
    db.close()


def _submit_and_die(spill_dir: str, ids: multiprocessing.Queue) -> None:
    """A writer whose database never answers (no tables), killed with its rows in memory only."""
    writer = UsageWriter(Database(f"sqlite:///{spill_dir}/unmigrated.sqlite3"), Path(spill_dir), NEVER_FLUSHED)
    writer.start()
    for record in rows(25):
        writer.submit(record)
        ids.put(record.request_id)
    ids.put(None)
    time.sleep(60)
    os.kill(os.getpid(), signal.SIGKILL)


def test_rows_of_a_killed_process_are_replayed_by_the_next_writer(tmp_path: Path) -> None:
    spill_dir = tmp_path / "spill"
    ids: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
    child = multiprocessing.get_context("spawn").Process(target=_submit_and_die, args=(str(spill_dir), ids))
    child.start()
    submitted = list(iter(lambda: ids.get(timeout=120), None))
    os.kill(child.pid, signal.SIGKILL)  # no close(), no atexit: only what is on disk survives
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert not list(spill_dir.glob("usage-*.jsonl"))  # nothing was spilled: the rows were in memory

    db = Database(f"sqlite:///{tmp_path / 'usage.sqlite3'}")
    db.migrate()
    survivor = UsageWriter(db, spill_dir, WriterSettings(flush_interval_s=0.05))
    survivor.start()
    assert survivor.flush(30)
    stored = {str(r["request_id"]) for r in db.fetchall("SELECT request_id FROM llm_model_requests")}
    assert stored == set(submitted) and len(submitted) == 25
    survivor.close()
    assert not list(spill_dir.glob("journal-*"))
    db.close()
