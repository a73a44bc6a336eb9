"""Per-model performance rows (``llm_model_performance``), rolled up from the request rows.

Every ``interval_s`` (60 by default) and for each model of the catalogue, one
row describes the interval that just ended: average latency, requests per
second, error rate (requests counted as ``SUM(request_count)``), and the memory and CPU of the model's engine
processes when they run on this machine (NULL otherwise; never guessed). The row id is derived from the model
and the interval, so the gateway workers that all compute it write one row.

Rows are exact, not first-come: an interval is computed again whenever request rows land in it after it was
computed (the writer marks the intervals of every batch it writes, replays of spilled rows included, with
``mark``), and each computation is an upsert from all the interval's rows. An upsert never replaces a row
counting more requests (a concurrent worker's computation from an older snapshot loses), and keeps the
memory and CPU sampled when the interval ended.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable, Iterable

from hxp.core.database import Database
from hxp.gateway.engines import EngineProcesses
from hxp.gateway.usage.record import UsageRecord, epoch_of, iso_at

log = logging.getLogger(__name__)
_NAMESPACE = uuid.UUID("6f1c2d4e-8f0a-4b7e-9c51-3d2a1e0f4b77")
_MAX_CATCH_UP = 60  # intervals computed after an outage, at most
UPSERT_SQL = (
    "INSERT INTO llm_model_performance (metric_id, model_name, timestamp, avg_latency_ms, requests_per_second,"
    " memory_usage_gb, cpu_utilization, error_rate) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (metric_id) DO UPDATE SET avg_latency_ms = excluded.avg_latency_ms,"
    " requests_per_second = excluded.requests_per_second, error_rate = excluded.error_rate,"
    " memory_usage_gb = COALESCE(excluded.memory_usage_gb, llm_model_performance.memory_usage_gb),"
    " cpu_utilization = COALESCE(excluded.cpu_utilization, llm_model_performance.cpu_utilization)"
    " WHERE excluded.requests_per_second >= llm_model_performance.requests_per_second"
)
SUMMARY_SQL = (
    "SELECT model_name, SUM(request_count) AS requests,"
    " SUM(CAST(latency_ms AS DOUBLE PRECISION) * request_count) AS latency_total,"
    " SUM(CASE WHEN latency_ms IS NULL THEN 0 ELSE request_count END) AS timed,"
    " SUM(CASE WHEN status = 'success' THEN 0 ELSE request_count END) AS errors"
    " FROM llm_model_requests WHERE timestamp >= ? AND timestamp < ? GROUP BY model_name"
)


class PerformanceRollup:
    """Writes one ``llm_model_performance`` row per model for each completed interval, again when it changes."""

    def __init__(
        self,
        db: Database,
        models: Callable[[], dict[str, list[str]]],
        interval_s: float = 60.0,
        grace_s: float = 3.0,
        since: float | None = None,
    ) -> None:
        """``models`` gives each model's backend base URLs; ``grace_s`` lets buffered request rows land first;
        ``since`` (epoch seconds) is the start of the first interval (default: the current one)."""
        self._db = db
        self._models = models
        self.interval_s = interval_s
        self.grace_s = grace_s
        self._engines = EngineProcesses()
        self._next = self._bucket_start(time.time() if since is None else since) + interval_s  # first interval's end
        self._marked: set[float] = set()  # starts of intervals that received rows
        self._marked_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="usage-rollup", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def mark(self, records: Iterable[UsageRecord]) -> None:
        """Note the intervals of rows just written: each is computed (again) once it has ended."""
        starts = {self._bucket_start(epoch_of(r.timestamp)) for r in records}
        with self._marked_lock:
            self._marked |= starts

    def _bucket_start(self, epoch: float) -> float:
        return math.floor(epoch / self.interval_s) * self.interval_s

    def _run(self) -> None:
        while not self._stop.wait(max(0.0, self._next + self.grace_s - time.time())):
            try:
                self.roll_up_until(time.time() - self.grace_s)
            except Exception as exc:  # noqa: BLE001 - database away: the intervals are computed on the next tick
                log.warning("usage rollup postponed (%s)", exc)
                self._stop.wait(min(self.interval_s, 5.0))

    def roll_up_until(self, epoch: float) -> int:
        """Write the rows of every completed interval ending at or before ``epoch``, and rewrite the marked
        intervals that have ended; return the rows written."""
        ends = []
        while self._next <= epoch:
            ends.append(self._next)
            self._next += self.interval_s
        with self._marked_lock:
            again = {s for s in self._marked if s + self.interval_s <= epoch}
            self._marked -= again
        new = {end - self.interval_s for end in ends[-_MAX_CATCH_UP:]}
        latest = ends[-1] - self.interval_s if ends else None  # the one whose engines are sampled now
        written = 0
        try:
            for start in sorted(new | again):
                written += self._roll_up(start, start + self.interval_s, sample=start == latest)
        except BaseException:
            with self._marked_lock:
                self._marked |= again  # computed at the next pass
            raise
        return written

    def _roll_up(self, start: float, end: float, sample: bool) -> int:
        begin, finish = iso_at(start), iso_at(end)
        summary = {r["model_name"]: r for r in self._db.fetchall(SUMMARY_SQL, (begin, finish))}
        backends = self._models()
        rows = []
        for model in sorted(backends):  # the catalogue's models (a client's unknown names get no rows)
            stats = summary.get(model)
            requests = int(stats["requests"]) if stats else 0
            timed = int(stats["timed"]) if stats else 0
            memory_gb, cpu = self._engines.sample(model, backends.get(model, [])) if sample else (None, None)
            rows.append(
                (
                    str(uuid.uuid5(_NAMESPACE, f"{model}|{begin}|{self.interval_s}")),
                    model,
                    begin,
                    float(stats["latency_total"]) / timed if stats and timed else None,
                    requests / self.interval_s,
                    memory_gb,
                    cpu,
                    int(stats["errors"]) / requests if stats and requests else None,
                )
            )
        if rows:
            self._db.executemany(UPSERT_SQL, rows)
        return len(rows)
