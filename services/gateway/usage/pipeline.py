"""The process-wide usage pipeline: database, batch writer and performance rollup, started once.

Started off the event loop: by the gateway app's lifespan (``router`` in ``hxp.gateway.usage``, in a worker
thread), or by a thread of its own when a row comes first (such rows wait in memory meanwhile). Closed at
the lifespan's shutdown, which uvicorn runs after the last in-flight request was answered, and at
interpreter exit as a backstop. (uvicorn re-raises SIGTERM after its graceful shutdown, so atexit alone
would never run in a worker stopped by SIGTERM.)

| variable                       | meaning                                                        | default             |
|--------------------------------|----------------------------------------------------------------|---------------------|
| HXP_USAGE_BATCH_SIZE           | rows per INSERT                                                | 200                 |
| HXP_USAGE_FLUSH_INTERVAL_S     | longest wait of a partial batch                                | 1.0                 |
| HXP_USAGE_MAX_BUFFER           | rows in memory before spilling to disk (1: every row spills)   | 10000               |
| HXP_USAGE_RETRY_MAX_S          | longest retry delay while the database is away                 | 5.0                 |
| HXP_USAGE_SPILL_MAX_MB         | bound on the spill folder (all workers); rows beyond it are    | 256                 |
|                                | dropped and counted in ``llm_usage_rows_dropped_total``        |                     |
| HXP_USAGE_REFUSAL_ROWS_PER_MIN | refused requests (400, 401, 403, 404, 429...) a minute that    | 3000                |
|                                | each process logs one row each; beyond, one row per minute,    |                     |
|                                | model, status and key, with ``request_count`` requests         |                     |
| HXP_USAGE_ROLLUP_INTERVAL_S    | llm_model_performance interval                                 | 60                  |
| HXP_USAGE_SPILL_DIR            | spill files                                                    | <state>/usage-spill |

Metrics (``hxp.gateway.usage.spill``, ``.refusals``): ``llm_usage_spill_bytes``, ``llm_usage_spill_limit_bytes``,
``llm_usage_rows_dropped_total``, ``llm_usage_refusals_aggregated_total``; ``backlog()`` feeds
``llm_usage_log_backlog`` (each row counted by one worker).
"""
from __future__ import annotations

import atexit
import logging
import os
import threading
from pathlib import Path

from hxp.gateway.database import Database, default_url, redact
from hxp.gateway.usage.record import UsageRecord
from hxp.gateway.usage.rollup import PerformanceRollup
from hxp.gateway.usage.writer import UsageWriter, WriterSettings
from hxp.paths import state_path

log = logging.getLogger(__name__)


class UsagePipeline:
    """The database, the writer and the rollup of one process."""

    def __init__(self, database_url: str, spill_dir: Path, settings: WriterSettings, rollup_interval_s: float) -> None:
        """Connects to nothing yet: ``start()`` does."""
        self.db = Database(database_url)
        self.rollup = PerformanceRollup(self.db, _model_backends, rollup_interval_s,
                                        grace_s=2 * settings.flush_interval_s + 1.0)
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


def _model_backends() -> dict[str, list[str]]:
    """Each catalogue model's backend base URLs, as the gateway routes them."""
    from hxp import catalogue
    from hxp.gateway import deployments, settings

    cfg = settings.current()
    return {m.name: deployments.backend_urls(m, cfg.backends, cfg.backend_url_template) for m in catalogue.load().models}


_lock = threading.Lock()
_pipeline: UsagePipeline | None = None
_early: list[UsageRecord] = []  # rows submitted before the first start() created the pipeline


def start() -> UsagePipeline:
    """Start this process's pipeline (replaying spilled rows at once) unless it runs; return it. Blocking:
    call it off the event loop."""
    global _pipeline
    with _lock:
        if _pipeline is None or _pipeline.closed:
            env = os.environ.get
            spill_dir = Path(env("HXP_USAGE_SPILL_DIR") or state_path("usage-spill"))
            _pipeline = UsagePipeline(default_url(), spill_dir, WriterSettings.from_env(),
                                      float(env("HXP_USAGE_ROLLUP_INTERVAL_S", "60")))
            for record in _early:
                _pipeline.writer.submit(record)
            _early.clear()
        pipeline = _pipeline
    pipeline.start()
    return pipeline


def submit(record: UsageRecord) -> None:
    """Queue a row; no I/O. Before the pipeline exists it waits in memory while a thread starts the
    pipeline; after close() (a request outliving shutdown) a thread writes it to the spill folder."""
    pipeline = _pipeline
    if pipeline is None:
        with _lock:
            pipeline = _pipeline
            if pipeline is None:
                if not _early:
                    threading.Thread(target=start, name="usage-start", daemon=True).start()
                _early.append(record)
                return
    pipeline.writer.submit(record)


def backlog() -> int:
    """Usage rows of this process not yet in the database (memory and spill files), plus ended processes'
    spilled rows when this process holds the replay role: summed over the workers, each row once."""
    pipeline = _pipeline
    return pipeline.writer.backlog() if pipeline is not None else len(_early)


def close() -> None:
    """Write (or spill) every row and stop. Idempotent."""
    if _early:
        start()  # rows came before the pipeline could start
    pipeline = _pipeline
    if pipeline is not None and not pipeline.closed:
        pipeline.close()
        log.info("usage logging closed: %d rows written", pipeline.writer.written)


atexit.register(close)
