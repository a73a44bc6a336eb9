"""The process pipeline: started off the caller's thread when a row comes first, settings from the environment."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from hxp.core import context, settings
from hxp.core.database import Database
from hxp.gateway.usage import pipeline
from hxp.gateway.usage.record import UsageRecord
from hxp.gateway.usage.writer import WriterSettings


def test_a_row_before_the_start_starts_the_pipeline_in_a_thread_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'gateway.sqlite3'}"
    monkeypatch.setenv("HXP_DATABASE_URL", url)
    monkeypatch.setenv("HXP_USAGE_SPILL_DIR", str(tmp_path / "spill"))
    context.use()  # a fresh process
    migrated_by: list[threading.Thread] = []
    migrate = Database.migrate
    monkeypatch.setattr(Database, "migrate", lambda db: migrated_by.append(threading.current_thread()) or migrate(db))
    record = UsageRecord(model_name="phi-3-mini", status="success")
    pipeline.submit(record)
    assert pipeline.backlog() == 1  # kept in memory meanwhile
    deadline = time.monotonic() + 30
    while not migrated_by:
        assert time.monotonic() < deadline, "the pipeline never started"
        time.sleep(0.01)
    assert migrated_by[0] is not threading.current_thread()
    started = pipeline.start()  # the lifespan's call finds it running
    assert started.writer.flush(10)
    pipeline.close()
    db = Database(url)
    assert [str(r["request_id"]) for r in db.fetchall("SELECT request_id FROM llm_model_requests")] == [
        record.request_id
    ]
    db.close()


def test_writer_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "BATCH_SIZE": "7",
        "FLUSH_INTERVAL_S": "0.5",
        "MAX_BUFFER": "1",
        "RETRY_MAX_S": "2",
        "SPILL_MAX_MB": "0.5",
        "REFUSAL_ROWS_PER_MIN": "10",
    }
    for name in values:
        monkeypatch.delenv(f"HXP_USAGE_{name}", raising=False)
    assert WriterSettings.from_settings(settings.load()) == WriterSettings()
    assert WriterSettings().max_spill_bytes == 256 * 2**20 and WriterSettings().refusal_rows_per_minute == 3000
    for name, value in values.items():
        monkeypatch.setenv(f"HXP_USAGE_{name}", value)
    assert WriterSettings.from_settings(settings.load()) == WriterSettings(
        batch_size=7,
        flush_interval_s=0.5,
        max_buffer=1,
        retry_max_s=2.0,
        max_spill_bytes=2**19,
        refusal_rows_per_minute=10,
    )
