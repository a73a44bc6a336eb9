"""The process-wide usage pipeline: database, batch writer and performance rollup, started once.

Started by the gateway app's lifespan (``router`` in ``hxp.gateway.usage``) or
by the first row; closed at the lifespan's shutdown, which uvicorn runs after
the last in-flight request was answered, and at interpreter exit as a backstop.
(uvicorn re-raises SIGTERM after its graceful shutdown, so atexit alone would
never run in a worker stopped by SIGTERM.)

| variable                    | meaning                                         | default        |
|-----------------------------|-------------------------------------------------|----------------|
| HXP_USAGE_BATCH_SIZE        | rows per INSERT                                 | 200            |
| HXP_USAGE_FLUSH_INTERVAL_S  | longest wait of a partial batch                 | 1.0            |
| HXP_USAGE_MAX_BUFFER        | rows in memory before spilling to disk          | 10000          |
| HXP_USAGE_RETRY_MAX_S       | longest retry delay while the database is away  | 5.0            |
| HXP_USAGE_ROLLUP_INTERVAL_S | llm_model_performance interval                  | 60             |
| HXP_USAGE_SPILL_DIR         | spill files                                     | <state>/usage-spill |
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
        self.db = Database(database_url)
        try:
            self.db.migrate()
        except Exception as exc:  # noqa: BLE001 - the launcher migrated already; rows wait for the database
            log.warning("usage: database %s unavailable at start (%s); buffering", redact(database_url), exc)
        self.writer = UsageWriter(self.db, spill_dir, settings)
        self.rollup = PerformanceRollup(self.db, _model_backends, rollup_interval_s,
                                        grace_s=2 * settings.flush_interval_s + 1.0)
        self.writer.start()
        self.rollup.start()
        log.info("usage logging to %s (spill folder %s)", redact(database_url), spill_dir)

    @property
    def closed(self) -> bool:
        return self.writer.closed

    def close(self) -> None:
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


def start() -> UsagePipeline:
    """Start this process's pipeline (replaying spilled rows at once) unless it runs; return it."""
    global _pipeline
    with _lock:
        if _pipeline is None or _pipeline.closed:
            env = os.environ.get
            spill_dir = Path(env("HXP_USAGE_SPILL_DIR") or state_path("usage-spill"))
            _pipeline = UsagePipeline(default_url(), spill_dir, WriterSettings.from_env(),
                                      float(env("HXP_USAGE_ROLLUP_INTERVAL_S", "60")))
        return _pipeline


def submit(record: UsageRecord) -> None:
    """Queue a row; after close() (a request outliving shutdown) it goes straight to the spill file."""
    (_pipeline or start()).writer.submit(record)


def backlog() -> int:
    """Usage rows not yet in the database (memory and spill file); 0 before the pipeline starts."""
    return _pipeline.writer.backlog() if _pipeline is not None else 0


def close() -> None:
    """Write (or spill) every row and stop. Idempotent."""
    with _lock:
        if _pipeline is not None and not _pipeline.closed:
            _pipeline.close()
            log.info("usage logging closed: %d rows written", _pipeline.writer.written)


atexit.register(close)
