"""The batch writer: usage rows buffered in memory and written to SQL by threads of their own.

``submit()`` (on every request's path) appends the row to this process's journal (one ``write`` to the page
cache, see ``journal``: a killed process loses no row) and to the buffer, under a lock; it never waits for
the database. The *writer* thread inserts batches, retries with exponential backoff while the database is away, and
replays spilled rows once it answers again; the *spill* thread moves the buffer to the spill folder
(fsynced JSON lines, see ``spill``) whenever it holds ``max_buffer`` rows, so a slow or absent database
never holds more than that in memory. Refusals beyond a rate are aggregated (see ``refusals``). ``close()``
writes what is left, or spills it when the database is away. A row written, set aside or spilled is done in
the journal.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from hxp.core.database import Database
from hxp.core.settings import Settings
from hxp.gateway.usage.journal import Journal
from hxp.gateway.usage.record import INSERT_SQL, UsageRecord
from hxp.gateway.usage.refusals import RefusalAggregator
from hxp.gateway.usage.spill import SpillFolder

log = logging.getLogger(__name__)
PROBE_SQL = "SELECT 1 FROM llm_model_requests LIMIT 0"  # the database is back when this answers
_MB = 2**20


@dataclass(frozen=True)
class WriterSettings:
    batch_size: int = 200  # rows per INSERT batch; a full batch is written at once
    flush_interval_s: float = 1.0  # a partial batch waits at most this long
    max_buffer: int = 10_000  # rows kept in memory before spilling to disk
    retry_initial_s: float = 0.25  # first retry delay after a failed write, doubled up to retry_max_s
    retry_max_s: float = 5.0
    close_timeout_s: float = 10.0  # how long close() waits for the threads before spilling the rest
    max_spill_bytes: int = 256 * _MB  # bound on the spill folder; rows beyond are dropped (and counted)
    refusal_rows_per_minute: int = 3000  # refusal rows a minute kept one by one; beyond, aggregated

    @classmethod
    def from_settings(cls, cfg: Settings) -> WriterSettings:
        """The writer's part of the gateway settings (HXP_USAGE_*: see :mod:`hxp.core.settings`)."""
        return cls(
            batch_size=cfg.usage_batch_size,
            flush_interval_s=cfg.usage_flush_interval_s,
            max_buffer=cfg.usage_max_buffer,
            retry_max_s=cfg.usage_retry_max_s,
            max_spill_bytes=round(cfg.usage_spill_max_mb * _MB),
            refusal_rows_per_minute=cfg.usage_refusal_rows_per_min,
        )


class UsageWriter:
    """Buffers ``UsageRecord``s and writes them in batches, surviving outages and shutdowns."""

    def __init__(
        self,
        db: Database,
        spill_dir: Path,
        settings: WriterSettings = WriterSettings(),
        on_written: Callable[[Sequence[UsageRecord]], None] | None = None,
    ) -> None:
        """``on_written`` is called (in the writer thread) with each batch once it is in the database."""
        self._db = db
        self.settings = settings
        self._on_written = on_written
        self._spill = SpillFolder(spill_dir, settings.max_spill_bytes)
        self._journal = Journal(spill_dir)
        self._refusals = RefusalAggregator(settings.refusal_rows_per_minute)
        self._rejected = spill_dir / "rejected-rows.json"  # rows the database refused while healthy (not replayed)
        self._buffer: deque[UsageRecord] = deque()
        self._inflight: list[UsageRecord] = []
        self._late: list[UsageRecord] = []  # rows submitted after close(), on their way to disk
        self._late_thread: threading.Thread | None = None
        self._spilling = 0  # rows taken from memory, on their way to disk
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)  # the writer thread waits for rows
        self._overflow = threading.Condition(self._lock)  # the spill thread waits for a full buffer
        self._progress = threading.Condition(self._lock)  # flush() waits for the backlog to shrink
        self._wake_at = min(settings.batch_size, settings.max_buffer)
        self._stopping = self._closed = self._flush_now = False
        self._healthy = True
        self._delay = 0.0
        self._retry_at = 0.0
        self._refresh_at = 0.0
        self.written = 0
        self._threads = [
            threading.Thread(target=self._run, name="usage-writer", daemon=True),
            threading.Thread(target=self._spill_overflow, name="usage-spill", daemon=True),
        ]

    # --- producer side -------------------------------------------------------
    def start(self) -> None:
        """Open the spill folder and start the threads (blocking I/O: never on an event loop)."""
        self._spill.open()
        for thread in self._threads:
            thread.start()

    def submit(self, record: UsageRecord) -> None:
        """Journal and queue one row; never waits for the database or the disk's flush."""
        with self._lock:
            if self._closed:
                self._late.append(record)
                if self._late_thread is None:
                    self._late_thread = threading.Thread(target=self._spill_late, name="usage-late-spill")
                    self._late_thread.start()  # not a daemon: the interpreter waits for it
                return
            kept = self._refusals.offer(record, time.time())
            if kept is None:
                return
            self._journal.append(kept)  # before the buffer: the writer marks it done only once it was there
            self._buffer.append(kept)
            size = len(self._buffer)  # wake a thread as the size crosses its mark (a busy one looks by itself)
            if size == self._wake_at:
                self._work.notify()
            if size == self.settings.max_buffer:
                self._overflow.notify()

    def backlog(self) -> int:
        """Rows not yet in the database: in memory, being written, aggregated, or spilled to disk (this
        writer's, and ended processes' when it holds the replay role)."""
        with self._lock:
            memory = self._memory()
        return memory + self._spill.pending()

    def _memory(self) -> int:
        """Rows in memory (under the lock): buffered, being written, aggregated, on their way to disk."""
        return len(self._buffer) + len(self._inflight) + self._refusals.pending() + len(self._late) + self._spilling

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def spill_folder(self) -> Path:
        return self._spill.folder

    @property
    def healthy(self) -> bool:
        """Whether the last write reached the database."""
        return self._healthy

    def flush(self, timeout: float = 10.0) -> bool:
        """Write everything now (aggregates of the current minute included); True when the backlog emptied
        within ``timeout``."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._memory() or self._spill.pending():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._threads[0].is_alive():
                    return False
                self._flush_now = True
                self._work.notify()
                self._progress.wait(min(remaining, 0.05))
            return True

    def close(self) -> None:
        """Stop the threads; write the rest, or spill it to disk when the database is away. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._stopping = True
            self._work.notify_all()
            self._overflow.notify_all()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(self.settings.close_timeout_s)
        with self._lock:
            self._closed = True
            # an in-flight batch may be written twice: idempotent
            rest = list(self._buffer) + list(self._inflight) + self._refusals.drain()
            self._buffer.clear()
        if rest and self._healthy:
            try:
                for i in range(0, len(rest), self.settings.batch_size):
                    self.written += self._insert_checked(rest[i : i + self.settings.batch_size])
                rest = []
            except Exception as exc:  # noqa: BLE001 - any failure means: keep them on disk
                log.warning("usage database unavailable at shutdown (%s); spilling rows", exc)
        if rest:
            self._spill.append(rest)
            self._journal.done(rest)
            log.warning("usage: %d rows spilled to %s, replayed at next start", len(rest), self._spill.folder)
        self._journal.close()
        self._spill.close()

    # --- spill and late threads ------------------------------------------------
    def _spill_overflow(self) -> None:
        while True:
            with self._lock:
                self._overflow.wait_for(lambda: self._stopping or len(self._buffer) >= self.settings.max_buffer)
                if self._stopping:
                    return
                rows = list(self._buffer)
                self._buffer.clear()
                self._spilling += len(rows)
            self._to_disk(rows)

    def _spill_late(self) -> None:
        while True:
            with self._lock:
                rows, self._late = self._late, []
                if not rows:
                    self._late_thread = None
                    return
                self._spilling += len(rows)
            self._to_disk(rows)

    def _to_disk(self, rows: list[UsageRecord]) -> None:
        """Append rows taken from memory (and counted in ``_spilling`` meanwhile) to the spill folder."""
        try:
            self._spill.append(rows)
            self._journal.done(rows)  # spilled, or dropped and counted: the journal keeps no more than the bound
        finally:
            with self._lock:
                self._spilling -= len(rows)
                self._progress.notify_all()

    # --- writer thread -------------------------------------------------------
    def _run(self) -> None:
        while True:
            self._maintain()
            with self._lock:
                self._progress.notify_all()
                self._work.wait_for(self._ready, timeout=self._wait_time())
                if self._stopping:
                    return
                self._buffer.extend(self._refusals.drain() if self._flush_now else self._refusals.due(time.time()))
                self._flush_now = False
                if time.monotonic() < self._retry_at:
                    continue
                while self._buffer and len(self._inflight) < self.settings.batch_size:
                    self._inflight.append(self._buffer.popleft())
                batch = list(self._inflight)
            if batch:
                self._write_batch(batch)
            elif not self._healthy:
                self._probe()

    def _maintain(self) -> None:
        """Spill folder upkeep (replay role, counts, size), at most once per flush interval; replay of
        spilled rows whenever the database answers."""
        if time.monotonic() >= self._refresh_at:
            self._refresh_at = time.monotonic() + self.settings.flush_interval_s
            try:
                self._spill.refresh()
            except OSError as exc:
                log.error("usage spill folder %s unreadable: %s", self._spill.folder, exc)
        if self._healthy and self._spill.pending():
            self._replay()

    def _ready(self) -> bool:
        if self._stopping:
            return True
        if time.monotonic() < self._retry_at:
            return False
        return len(self._buffer) >= self.settings.batch_size or (
            self._flush_now and bool(self._buffer or self._refusals.pending())
        )

    def _wait_time(self) -> float:
        if self._retry_at > time.monotonic():
            return max(0.01, self._retry_at - time.monotonic())
        return self.settings.flush_interval_s

    def _write_batch(self, batch: list[UsageRecord]) -> None:
        try:
            written = self._insert_checked(batch)
        except Exception as exc:  # noqa: BLE001 - the database's errors are many; all mean "not written"
            self._failed(exc)
            with self._lock:
                self._inflight.clear()
                self._buffer.extendleft(reversed(batch))
                if len(self._buffer) >= self.settings.max_buffer:
                    self._overflow.notify()
            return
        with self._lock:
            self._inflight.clear()
            self.written += written
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

    def _probe(self) -> None:
        try:
            self._db.fetchall(PROBE_SQL)
        except Exception as exc:  # noqa: BLE001 - still away
            self._failed(exc)
            return
        self._recovered()

    def _insert_checked(self, batch: list[UsageRecord]) -> int:
        """Insert a batch; when the database refuses it for its data, row by row, setting refused rows aside
        (in ``rejected-rows.json``, never retried); return the rows written. Raises when the database is away."""
        try:
            self._insert(batch)
        except Exception as exc:  # noqa: BLE001
            if not _is_bad_row(exc):
                raise
        else:
            self._journal.done(batch)
            return len(batch)
        written = 0
        for record in batch:
            try:
                self._insert([record])
                written += 1
            except Exception as exc:  # noqa: BLE001
                if not _is_bad_row(exc):
                    raise
                log.error(
                    "usage row %s refused by the database (%s); kept in %s", record.request_id, exc, self._rejected
                )
                with self._rejected.open("a") as f:
                    f.write(json.dumps(record.to_json()) + "\n")
        self._journal.done(batch)
        return written

    def _insert(self, batch: list[UsageRecord]) -> None:
        self._db.executemany(INSERT_SQL, [r.params() for r in batch])
        if self._on_written is not None:
            self._on_written(batch)

    def _replay(self) -> None:
        try:
            replayed = self._spill.replay(self._insert_checked, self.settings.batch_size)
        except Exception as exc:  # noqa: BLE001 - database away: the files stay for the next try
            self._failed(exc)
            return
        self._recovered()
        if replayed:
            log.warning("usage: replayed %d spilled rows", replayed)


def _is_bad_row(exc: BaseException) -> bool:
    """A DB-API DataError or IntegrityError: the row is at fault, not the database."""
    return any(cls.__name__ in ("DataError", "IntegrityError") for cls in type(exc).__mro__)
