"""The process-wide usage pipeline: database, batch writer and performance rollup, started once.

Started off the event loop: by the gateway app's lifespan (``router`` in ``hxp.gateway.usage``, in a worker
thread), or by a thread of its own when a row comes first (such rows wait in memory meanwhile). Closed at
the lifespan's shutdown, which uvicorn runs after the last in-flight request was answered, and at
interpreter exit as a backstop. (uvicorn re-raises SIGTERM after its graceful shutdown, so atexit alone
would never run in a worker stopped by SIGTERM.)

Its settings (HXP_USAGE_*) are part of the gateway's settings object (:mod:`hxp.core.settings`, with their table).

Metrics (``hxp.gateway.usage.spill``, ``.refusals``): ``llm_usage_spill_bytes``, ``llm_usage_spill_limit_bytes``,
``llm_usage_rows_dropped_total``, ``llm_usage_refusals_aggregated_total``; ``backlog()`` feeds
``llm_usage_log_backlog`` (each row counted by one worker).
"""

from __future__ import annotations

import atexit
import logging
import threading
from pathlib import Path

from hxp.core.context import Runtime, runtime
from hxp.core.database import Database, redact
from hxp.core.paths import state_path
from hxp.core.settings import Settings
from hxp.gateway import deployments
from hxp.gateway.usage.record import UsageRecord
from hxp.gateway.usage.rollup import PerformanceRollup
from hxp.gateway.usage.writer import UsageWriter, WriterSettings

log = logging.getLogger(__name__)


class UsagePipeline:
    """The database, the writer and the rollup of one process."""

    def __init__(self, database_url: str, spill_dir: Path, settings: WriterSettings, rollup_interval_s: float) -> None:
        """Connects to nothing yet: ``start()`` does."""
        self.db = Database(database_url)
        self.rollup = PerformanceRollup(
            self.db, deployments.served, rollup_interval_s, grace_s=2 * settings.flush_interval_s + 1.0
        )
        self.writer = UsageWriter(self.db, spill_dir, settings, on_written=self.rollup.mark)
        self._lock = threading.Lock()
        self._started = False

    def start(self) -> None:
        """Migrations, the spill folder, the threads (blocking I/O: never on an event loop). Idempotent."""
        with self._lock:
            if self._started or self.writer.closed:
                return
            self._started = True
            try:
                self.db.migrate()
            except Exception as exc:  # noqa: BLE001 - the launcher migrated already; rows wait for the database
                log.warning("usage: database %s unavailable at start (%s); buffering", redact(self.db.url), exc)
            self.writer.start()
            self.rollup.start()
            log.info("usage logging to %s (spill folder %s)", redact(self.db.url), self.writer.spill_folder)

    @property
    def closed(self) -> bool:
        return self.writer.closed

    def close(self) -> None:
        with self._lock:
            if self.writer.closed:
                return
            self.rollup.close()
            self.writer.close()
            self.db.close()


class ProcessUsage:
    """The runtime's pipeline: created by the first ``start()``; rows submitted before it wait in memory
    while a thread starts it; after ``close()`` the next ``start()`` creates a new one."""

    def __init__(self, cfg: Settings) -> None:
        self._cfg = cfg
        self._lock = threading.Lock()
        self._pipeline: UsagePipeline | None = None
        self._early: list[UsageRecord] = []  # rows submitted before the first start() created the pipeline

    def start(self) -> UsagePipeline:
        """Start the pipeline (replaying spilled rows at once) unless it runs; return it. Blocking: call it off
        the event loop."""
        with self._lock:
            if self._pipeline is None or self._pipeline.closed:
                cfg = self._cfg
                spill_dir = Path(cfg.usage_spill_dir or state_path("usage-spill"))
                self._pipeline = UsagePipeline(
                    cfg.database_url, spill_dir, WriterSettings.from_settings(cfg), cfg.usage_rollup_interval_s
                )
                for record in self._early:
                    self._pipeline.writer.submit(record)
                self._early.clear()
            pipeline = self._pipeline
        pipeline.start()
        return pipeline

    def submit(self, record: UsageRecord) -> None:
        """Queue a row; no I/O. Before the pipeline exists it waits in memory while a thread starts the
        pipeline; after close() (a request outliving shutdown) a thread writes it to the spill folder."""
        pipeline = self._pipeline
        if pipeline is None:
            with self._lock:
                pipeline = self._pipeline
                if pipeline is None:
                    if not self._early:
                        threading.Thread(target=self.start, name="usage-start", daemon=True).start()
                    self._early.append(record)
                    return
        pipeline.writer.submit(record)

    def backlog(self) -> int:
        """Rows not yet in the database (see :func:`backlog`)."""
        pipeline = self._pipeline
        return pipeline.writer.backlog() if pipeline is not None else len(self._early)

    def close(self) -> None:
        """Write (or spill) every row and stop. Idempotent."""
        if self._early:
            self.start()  # rows came before the pipeline could start
        pipeline = self._pipeline
        if pipeline is not None and not pipeline.closed:
            pipeline.close()
            log.info("usage logging closed: %d rows written", pipeline.writer.written)


def _usage(rt: Runtime) -> ProcessUsage:
    return ProcessUsage(rt.settings)


def start() -> UsagePipeline:
    """Start this runtime's pipeline unless it runs, and return it (:meth:`ProcessUsage.start`)."""
    return runtime().get(_usage).start()


def submit(record: UsageRecord) -> None:
    """Queue a row; no I/O (:meth:`ProcessUsage.submit`)."""
    runtime().get(_usage).submit(record)


def backlog() -> int:
    """Usage rows of this process not yet in the database (memory and spill files), plus ended processes'
    spilled rows when this process holds the replay role: summed over the workers, each row once."""
    return runtime().get(_usage).backlog()


def close() -> None:
    """Write (or spill) every row of this runtime's pipeline and stop. Idempotent."""
    usage = runtime().peek(_usage)
    if usage is not None:
        usage.close()


atexit.register(close)
