"""The batch writer: usage rows buffered in memory and written to SQL by a background thread.

Nothing is dropped: a failed batch goes back to the buffer and is retried with
exponential backoff (the database may be restarting); beyond ``max_buffer``
rows the buffer is moved to the spill file (fsynced JSON lines), which is
replayed at start and whenever the database answers again. ``close()`` writes
what is left, or spills it when the database is away.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

from hxp.gateway.database import Database
from hxp.gateway.usage.record import INSERT_SQL, UsageRecord
from hxp.gateway.usage.spill import SpillFile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WriterSettings:
    batch_size: int = 200           # rows per INSERT batch; a full batch is written at once
    flush_interval_s: float = 1.0   # a partial batch waits at most this long
    max_buffer: int = 10_000        # rows kept in memory before spilling to disk
    retry_initial_s: float = 0.25   # first retry delay after a failed write, doubled up to retry_max_s
    retry_max_s: float = 5.0
    close_timeout_s: float = 10.0   # how long close() waits for the writer before spilling the rest

    @classmethod
    def from_env(cls) -> "WriterSettings":
        """Settings from HXP_USAGE_BATCH_SIZE, _FLUSH_INTERVAL_S, _MAX_BUFFER, _RETRY_MAX_S (defaults otherwise)."""
        env = os.environ.get
        d = cls()
        return cls(
            batch_size=int(env("HXP_USAGE_BATCH_SIZE", d.batch_size)),
            flush_interval_s=float(env("HXP_USAGE_FLUSH_INTERVAL_S", d.flush_interval_s)),
            max_buffer=int(env("HXP_USAGE_MAX_BUFFER", d.max_buffer)),
            retry_max_s=float(env("HXP_USAGE_RETRY_MAX_S", d.retry_max_s)),
        )


class UsageWriter:
    """Buffers ``UsageRecord``s and writes them in batches, surviving outages and shutdowns."""

    def __init__(self, db: Database, spill_dir: Path, settings: WriterSettings = WriterSettings()) -> None:
        self._db = db
        self.settings = settings
        self._spill = SpillFile(spill_dir)
        self._rejected = spill_dir / "rejected-rows.json"  # rows the database refused while healthy (not replayed)
        self._buffer: deque[UsageRecord] = deque()
        self._inflight: list[UsageRecord] = []
        self._cond = threading.Condition()
        self._stopping = self._closed = self._flush_now = False
        self._healthy = True
        self._delay = 0.0
        self._retry_at = 0.0
        self.written = 0
        self._thread = threading.Thread(target=self._run, name="usage-writer", daemon=True)

    # --- producer side -------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    def submit(self, record: UsageRecord) -> None:
        """Queue one row (never blocks on the database)."""
        overflow: list[UsageRecord] = []
        with self._cond:
            if self._closed:
                overflow = [record]
            else:
                self._buffer.append(record)
                if len(self._buffer) >= self.settings.max_buffer:
                    overflow = list(self._buffer)
                    self._buffer.clear()
                elif len(self._buffer) >= self.settings.batch_size:
                    self._cond.notify_all()
        if overflow:
            self._spill.append(overflow)

    def backlog(self) -> int:
        """Rows not yet in the database: in memory, being written, or spilled to disk."""
        with self._cond:
            return len(self._buffer) + len(self._inflight) + self._spill.pending()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def healthy(self) -> bool:
        """Whether the last write reached the database."""
        return self._healthy

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything buffered now; True when the buffer and spill emptied within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._flush_now = True
            self._cond.notify_all()
            while self._buffer or self._inflight or self._spill.pending():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    return False
                self._cond.wait(min(remaining, 0.05))
                self._flush_now = True
                self._cond.notify_all()
            return True

    def close(self) -> None:
        """Stop the thread; write the rest, or spill it to disk when the database is away. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(self.settings.close_timeout_s)
        with self._cond:
            self._closed = True
            rest = list(self._buffer) + list(self._inflight)  # an in-flight batch may be written twice: idempotent
            self._buffer.clear()
        if rest and self._healthy:
            try:
                for i in range(0, len(rest), self.settings.batch_size):
                    self._insert(rest[i:i + self.settings.batch_size])
                    self.written += len(rest[i:i + self.settings.batch_size])
                rest = []
            except Exception as exc:  # noqa: BLE001 - any failure means: keep them on disk
                log.warning("usage database unavailable at shutdown (%s); spilling rows", exc)
        if rest:
            self._spill.append(rest)
            log.warning("usage: %d rows spilled to %s, replayed at next start", len(rest), self._spill.path)
        self._spill.close()

    # --- writer thread -------------------------------------------------------
    def _run(self) -> None:
        self._replay()
        while True:
            with self._cond:
                self._cond.wait_for(self._ready, timeout=self._wait_time())
                if self._stopping:
                    return
                if time.monotonic() < self._retry_at:
                    continue
                self._flush_now = False
                while self._buffer and len(self._inflight) < self.settings.batch_size:
                    self._inflight.append(self._buffer.popleft())
                batch = list(self._inflight)
            if batch:
                self._write_batch(batch)
            if self._spill.pending() and (self._healthy or time.monotonic() >= self._retry_at):
                self._replay()  # also the probe that finds the database back when nothing new arrives
            with self._cond:
                self._cond.notify_all()  # wake flush() waiters

    def _ready(self) -> bool:
        if self._stopping:
            return True
        if time.monotonic() < self._retry_at:
            return False
        return len(self._buffer) >= self.settings.batch_size or (self._flush_now and bool(self._buffer))

    def _wait_time(self) -> float:
        if self._retry_at > time.monotonic():
            return max(0.01, self._retry_at - time.monotonic())
        return self.settings.flush_interval_s

    def _write_batch(self, batch: list[UsageRecord]) -> None:
        try:
            self._insert(batch)
        except Exception as exc:  # noqa: BLE001 - the database's errors are many; all mean "not written"
            error: Exception = exc
            if _is_bad_row(exc):
                try:
                    self._write_singly(batch)
                    return
                except Exception as outage:  # noqa: BLE001 - went away meanwhile: retry the batch (idempotent)
                    error = outage
            self._failed(error)
            with self._cond:
                self._inflight.clear()
                self._buffer.extendleft(reversed(batch))
                overflow = list(self._buffer) if len(self._buffer) >= self.settings.max_buffer else []
                if overflow:
                    self._buffer.clear()
            self._spill.append(overflow)
            return
        self._done(batch)

    def _done(self, batch: list[UsageRecord]) -> None:
        with self._cond:
            self._inflight.clear()
            self.written += len(batch)
        self._recovered()

    def _recovered(self) -> None:
        if not self._healthy:
            log.warning("usage database reachable again; writing the backlog")
        self._healthy, self._delay, self._retry_at = True, 0.0, 0.0

    def _failed(self, exc: Exception) -> None:
        if self._healthy:
            log.warning("usage database unavailable (%s); buffering rows and retrying", exc)
        self._healthy = False
        self._delay = min(self.settings.retry_max_s, max(self.settings.retry_initial_s, self._delay * 2))
        self._retry_at = time.monotonic() + self._delay

    def _write_singly(self, batch: list[UsageRecord]) -> None:
        """A batch the database refused for its data: write row by row, setting refused rows aside."""
        written: list[UsageRecord] = []
        for record in batch:
            try:
                self._insert([record])
                written.append(record)
            except Exception as exc:  # noqa: BLE001
                if not _is_bad_row(exc):
                    raise
                log.error("usage row %s refused by the database (%s); kept in %s", record.request_id, exc,
                          self._rejected)
                with self._rejected.open("a") as f:
                    f.write(json.dumps(record.to_json()) + "\n")
        self._done(written)

    def _insert(self, batch: list[UsageRecord]) -> None:
        self._db.executemany(INSERT_SQL, [r.params() for r in batch])

    def _replay(self) -> None:
        try:
            replayed = self._spill.replay(self._insert, self.settings.batch_size)
        except Exception as exc:  # noqa: BLE001 - database away: the files stay for the next try
            self._failed(exc)
            return
        self._recovered()
        if replayed:
            log.warning("usage: replayed %d spilled rows", replayed)



def _is_bad_row(exc: BaseException) -> bool:
    """A DB-API DataError or IntegrityError: the row is at fault, not the database."""
    return any(cls.__name__ in ("DataError", "IntegrityError") for cls in type(exc).__mro__)
