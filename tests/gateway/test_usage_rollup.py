"""Per-model performance rows rolled up from the request rows, and the engine's memory and CPU."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hxp.core.database import Database
from hxp.gateway.engines import EngineProcesses
from hxp.gateway.usage.record import INSERT_SQL, UsageRecord, iso
from hxp.gateway.usage.rollup import UPSERT_SQL, PerformanceRollup
from hxp.gateway.usage.spill import SpillFolder
from hxp.gateway.usage.writer import UsageWriter, WriterSettings
from tests.support.servers import free_port, wait_port

T0 = 1_800_000_000.0  # an interval boundary (divisible by 60)
REMOTE = ["http://10.255.0.1:11401/v1"]  # not this machine: resources unknown (never contacted)


@pytest.fixture
def db(usage_db: Database) -> Database:
    return usage_db


def record(model: str, at: float, latency: int, status: str = "success", count: int = 1) -> UsageRecord:
    return UsageRecord(
        model_name=model,
        status=status,
        latency_ms=latency,
        request_count=count,
        timestamp=iso(datetime.fromtimestamp(at, UTC)),
    )


def add(db: Database, model: str, at: float, latency: int, status: str = "success", count: int = 1) -> None:
    db.executemany(INSERT_SQL, [record(model, at, latency, status, count).params()])


def performance(db: Database, start: float) -> dict:
    [row] = db.fetchall(
        "SELECT * FROM llm_model_performance WHERE timestamp = ?", (iso(datetime.fromtimestamp(start, UTC)),)
    )
    return row


def test_one_row_per_model_and_interval_from_the_request_rows(db: Database) -> None:
    for offset, latency, status in [
        (1, 100, "success"),
        (20, 200, "success"),
        (59.5, 300, "success"),
        (30, 400, "rate_limited"),
    ]:
        add(db, "phi-3-mini", T0 + offset, latency, status)
    add(db, "phi-3-mini", T0 + 60, 999)  # the next interval
    add(db, "phi-3-mini", T0 - 1, 999)  # the previous one
    models = {"phi-3-mini": REMOTE, "hermes-2": REMOTE}
    rollup = PerformanceRollup(db, lambda: models, interval_s=60, since=T0)
    assert rollup.roll_up_until(T0 + 59) == 0  # the interval has not ended
    assert rollup.roll_up_until(T0 + 61) == 2
    rows = {r["model_name"]: r for r in db.fetchall("SELECT * FROM llm_model_performance")}
    phi, hermes = rows["phi-3-mini"], rows["hermes-2"]
    assert phi["avg_latency_ms"] == pytest.approx(250.0)
    assert phi["requests_per_second"] == pytest.approx(4 / 60)
    assert phi["error_rate"] == pytest.approx(0.25)
    assert phi["memory_usage_gb"] is None and phi["cpu_utilization"] is None  # remote engine: not invented
    assert hermes["requests_per_second"] == 0 and hermes["avg_latency_ms"] is None and hermes["error_rate"] is None
    assert str(phi["timestamp"]).startswith("2027-01-15")


def test_every_worker_computing_an_interval_writes_it_once(db: Database) -> None:
    add(db, "phi-3-mini", T0 + 5, 100)
    models = {"phi-3-mini": REMOTE}
    for _worker in range(3):
        PerformanceRollup(db, lambda: models, interval_s=60, since=T0).roll_up_until(T0 + 130)
    counts = db.fetchall("SELECT COUNT(*) AS n FROM llm_model_performance")
    assert counts[0]["n"] == 2  # two intervals, one row each


def test_a_second_workers_rows_landing_after_both_rollups_make_the_interval_exact(db: Database, tmp_path: Path) -> None:
    models = {"phi-3-mini": REMOTE}
    workers = []
    for n in range(2):  # each gateway worker: its rollup, fed by its writer's marks
        rollup = PerformanceRollup(db, lambda: models, interval_s=60, since=T0)
        writer = UsageWriter(db, tmp_path / f"spill-{n}", WriterSettings(flush_interval_s=60), on_written=rollup.mark)
        writer.start()
        workers.append((writer, rollup))
    (first, first_rollup), (second, second_rollup) = workers
    for offset in (1, 2, 3):
        first.submit(record("phi-3-mini", T0 + offset, 100))
    assert first.flush(10)
    for rollup in (first_rollup, second_rollup):
        rollup.roll_up_until(T0 + 61)
    assert performance(db, T0)["requests_per_second"] == pytest.approx(3 / 60)
    # the second worker's rows of that minute land late (its buffer waited for the database)
    second.submit(record("phi-3-mini", T0 + 30, 400, "rate_limited"))
    second.submit(record("phi-3-mini", T0 + 59, 400, "unauthorized", count=10))  # an aggregate of 10 refusals
    assert second.flush(10)
    for rollup in (first_rollup, second_rollup):
        rollup.roll_up_until(T0 + 121)
    row = performance(db, T0)
    assert row["requests_per_second"] == pytest.approx(14 / 60)
    assert row["error_rate"] == pytest.approx(11 / 14)
    assert row["avg_latency_ms"] == pytest.approx((3 * 100 + 11 * 400) / 14)
    assert db.fetchone("SELECT COUNT(*) AS n FROM llm_model_performance")["n"] == 2  # T0 once, and T0 + 60
    for writer, _ in workers:
        writer.close()


def test_rows_replayed_long_after_their_interval_are_rolled_up_again(db: Database, tmp_path: Path) -> None:
    models = {"phi-3-mini": REMOTE}
    add(db, "phi-3-mini", T0 + 1, 100)
    PerformanceRollup(db, lambda: models, interval_s=60, since=T0).roll_up_until(T0 + 61)
    spill = SpillFolder(tmp_path / "spill", 2**20)  # rows of that minute spilled by a worker during an outage
    spill.append([record("phi-3-mini", T0 + 10 + n, 300) for n in range(4)])
    an_hour_later = PerformanceRollup(db, lambda: models, interval_s=60, since=T0 + 3600)
    writer = UsageWriter(db, tmp_path / "spill", WriterSettings(flush_interval_s=60), on_written=an_hour_later.mark)
    writer.start()  # the next start replays them
    assert writer.flush(10)
    an_hour_later.roll_up_until(T0 + 3661)
    row = performance(db, T0)
    assert row["requests_per_second"] == pytest.approx(5 / 60)
    assert row["avg_latency_ms"] == pytest.approx((100 + 4 * 300) / 5)
    writer.close()


def test_an_upsert_never_replaces_a_row_counting_more_requests(db: Database) -> None:
    row_id = "5b2f6c1e-0a9d-4c1b-8e3f-2d7a9b0c4e61"

    def upsert(rps: float, memory: float | None) -> dict:
        db.executemany(
            UPSERT_SQL, [(row_id, "phi-3-mini", iso(datetime.fromtimestamp(T0, UTC)), 10.0, rps, memory, None, 0.0)]
        )
        return performance(db, T0)

    assert upsert(5 / 60, 1.5)["requests_per_second"] == pytest.approx(5 / 60)
    assert upsert(3 / 60, None)["requests_per_second"] == pytest.approx(5 / 60)  # an older snapshot's: ignored
    row = upsert(6 / 60, None)
    assert row["requests_per_second"] == pytest.approx(6 / 60) and row["memory_usage_gb"] == 1.5  # sample kept


def test_the_thread_rolls_up_each_interval(db: Database) -> None:
    rollup = PerformanceRollup(db, lambda: {"phi-3-mini": REMOTE}, interval_s=0.5, grace_s=0.1)
    rollup.start()
    deadline = time.monotonic() + 10
    while db.fetchone("SELECT COUNT(*) AS n FROM llm_model_performance")["n"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    rollup.close()


def test_memory_and_cpu_of_a_local_engine_process() -> None:
    port = free_port()
    script = (
        "import socket,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
        f"s.bind(('127.0.0.1',{port}));s.listen()\nend=time.time()+30\n"
        "while time.time()<end: sum(range(10000))\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script])
    try:
        wait_port(port)
        engines = EngineProcesses()
        url = [f"http://127.0.0.1:{port}/v1"]
        memory, cpu = engines.sample("m", url)
        assert memory is not None and 0.001 < memory < 4 and cpu is None  # no previous sample yet
        with socket.create_connection(("127.0.0.1", port)):
            pass
        time.sleep(0.5)
        memory, cpu = engines.sample("m", url)
        assert cpu is not None and cpu > 10  # the process spins: a real share of a core
        assert engines.sample("m", REMOTE) == (None, None)
        assert engines.sample("m", [f"http://127.0.0.1:{free_port()}/v1"]) == (None, None)  # nothing listens
    finally:
        proc.kill()
        proc.wait(10)
