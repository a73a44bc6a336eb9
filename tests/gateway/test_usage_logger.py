"""The usage logger's process pipeline: rejections recorded, secrets redacted, rows after shutdown kept on disk."""
from __future__ import annotations

from pathlib import Path

import pytest

from hxp.gateway.database import Database
from hxp.gateway.usage import backlog, pipeline, record_rejection
from hxp.gateway.usage.logger import status_name


@pytest.fixture
def usage_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    url = f"sqlite:///{tmp_path / 'gateway.sqlite3'}"
    monkeypatch.setenv("HXP_DATABASE_URL", url)
    monkeypatch.setenv("HXP_USAGE_SPILL_DIR", str(tmp_path / "spill"))
    monkeypatch.setenv("HXP_USAGE_FLUSH_INTERVAL_S", "60")
    db = Database(url)
    yield db
    pipeline.close()
    db.close()


def rows(db: Database) -> list[dict]:
    return db.fetchall("SELECT * FROM llm_model_requests ORDER BY timestamp")


@pytest.mark.parametrize("code, status", [(200, "success"), (400, "invalid_request"), (401, "unauthorized"),
                                          (403, "forbidden"), (404, "not_found"), (429, "rate_limited"),
                                          (418, "client_error"), (500, "backend_error"), (502, "backend_error"),
                                          (503, "unavailable"), (504, "timeout")])
def test_status_names(code: int, status: str) -> None:
    assert status_name(code) == status


def test_a_rejection_is_one_row_without_the_secret(usage_env: Database) -> None:
    secret = "sk-hxp-" + "Q" * 32
    pipeline.start()
    record_rejection("phi-3-mini", 429, f"limit of key {secret} exceeded", key_alias="alice", key_id="k-1")
    assert backlog() == 1  # buffered: the interval is long
    pipeline.close()
    [row] = rows(usage_env)
    assert (row["model_name"], row["status"], row["user_id"], row["key_id"]) == ("phi-3-mini", "rate_limited",
                                                                                   "alice", "k-1")
    assert row["error_message"].startswith("429") and secret not in row["error_message"]


def test_a_row_arriving_after_shutdown_is_kept_on_disk_and_replayed_at_start(usage_env: Database,
                                                                            tmp_path: Path) -> None:
    pipeline.start()
    pipeline.close()
    record_rejection("phi-3-mini", 503, "backend down")  # a request that outlived the shutdown
    assert rows(usage_env) == []
    assert sum(1 for p in (tmp_path / "spill").glob("usage-*.jsonl") for _ in p.open()) == 1
    pipeline.start()  # the next start replays it
    assert pipeline.start().writer.flush(10)
    assert [r["status"] for r in rows(usage_env)] == ["unavailable"]
