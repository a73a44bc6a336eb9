"""The journal: each usage row on disk before its answer's last byte, so that a killed process loses none.

The writer appends every row it keeps (``UsageWriter.submit``) to this process's journal file: one
``write``, no fsync. The page cache outlives a killed process (SIGKILL, the OOM killer, a crash), so the row
survives it; a power cut may lose the last rows (the spill folder's fsync is for that). The observer
submits a request's row before it passes on the answer's last message (:mod:`hxp.gateway.observer`):
a client that received a whole answer means its row was journaled.

The writer marks rows ``done`` once they are in the database, set aside, or spilled (fsynced). The current
file is emptied when all its rows are done; a new one is started every ``rotate_rows`` rows, and an older
one is removed when all its rows are done, so files go while the database is away and rows spill. The
journal holds at most the rows in memory plus ``rotate_rows``, outside the spill folder's byte bound.

Journal files are in the spill folder (``journal-<pid>-<random>.jsonl``), created and locked as spill files
are (:func:`hxp.gateway.usage.spill.create_locked`): the flock keeps them from other processes while this
one lives; once it ended, the replay role's holder inserts their rows as it does an ended process's spill
file. Rows already written are skipped (``request_id`` is the key), so a replay repeats nothing.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import Counter

from hxp.gateway.usage.record import UsageRecord
from hxp.gateway.usage.spill import JOURNAL_PREFIX, create_locked, line_of

log = logging.getLogger(__name__)
UNJOURNALED = Counter(
    "llm_usage_rows_unjournaled", "Usage rows kept in memory only: the journal could not be written (disk full?)"
)
_LOG_EVERY_S = 60.0


@dataclass(eq=False)
class _File:
    path: Path
    fd: int  # holds the exclusive flock
    rows: int = 0  # lines in the file
    outstanding: int = 0  # of them, rows not yet done


class Journal:
    """This process's journal files: rows appended as they come, files emptied or removed once done."""

    def __init__(self, folder: Path, rotate_rows: int = 1000) -> None:
        self.folder = folder
        self.rotate_rows = rotate_rows
        self._lock = threading.Lock()
        self._current: _File | None = None
        self._older: list[_File] = []
        self._where: dict[str, _File] = {}  # request_id -> the file holding the row, while not done
        self._closed = False
        self._logged_at = 0.0

    def append(self, record: UsageRecord) -> None:
        """Write the row to the current file (a new one every ``rotate_rows`` rows). A failure is logged and
        counted: the row stays in memory, as it was before the journal."""
        line = line_of(record)
        with self._lock:
            if self._closed or record.request_id in self._where:
                return
            try:
                file = self._file()
                os.write(file.fd, line)  # O_APPEND: one write, whole or not at all for a line this size
            except OSError as exc:
                UNJOURNALED.inc()
                if time.monotonic() - self._logged_at > _LOG_EVERY_S:
                    self._logged_at = time.monotonic()
                    log.error("usage journal in %s failed (%s): rows kept in memory only", self.folder, exc)
                return
            file.rows += 1
            file.outstanding += 1
            self._where[record.request_id] = file

    def done(self, records: Iterable[UsageRecord]) -> None:
        """These rows are in the database or spilled: their files may go."""
        with self._lock:
            for record in records:
                file = self._where.pop(record.request_id, None)
                if file is None:
                    continue  # not journaled (an aggregate, a replayed row, a failed append)
                file.outstanding -= 1
                if file.outstanding == 0:
                    self._settle(file)

    def close(self) -> None:
        """Remove the files whose rows are all done; release the others (their rows are replayed as an
        ended process's). Rows appended later are not journaled."""
        with self._lock:
            self._closed = True
            files = self._older + ([self._current] if self._current else [])
            self._older, self._current, self._where = [], None, {}
            for file in files:
                if file.outstanding == 0:
                    file.path.unlink(missing_ok=True)
                os.close(file.fd)

    def _file(self) -> _File:
        """The file to append to (under the lock): the current one, or a new one when it is full."""
        current = self._current
        if current is not None and current.rows < self.rotate_rows:
            return current
        self.folder.mkdir(parents=True, exist_ok=True)
        path, fd = create_locked(self.folder, JOURNAL_PREFIX)
        if current is not None:
            self._older.append(current)  # full, rows outstanding (a settled one is emptied and stays current)
        self._current = _File(path, fd)
        return self._current

    def _settle(self, file: _File) -> None:
        """All rows of ``file`` are done (under the lock): empty the current file, remove an older one."""
        try:
            if file is self._current:
                os.ftruncate(file.fd, 0)
                file.rows = 0
                return
            self._older.remove(file)
            file.path.unlink(missing_ok=True)
            os.close(file.fd)
        except OSError as exc:  # left as it is: replayed (idempotently) should the process end
            log.warning("usage journal %s not cleared: %s", file.path.name, exc)
