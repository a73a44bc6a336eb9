"""The overflow file: usage rows that could not stay in memory, kept on disk until written.

Each writer appends JSON lines, fsynced, to its own file in the spill folder
and holds an exclusive ``flock`` on it while it lives. Replay reads every file
it can lock: its own, and those left by processes that ended (other gateway
workers, or a previous run). Rows are inserted idempotently (``request_id``
is the primary key), so a replay cut short is simply done again.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator

from hxp.gateway.usage.record import UsageRecord

log = logging.getLogger(__name__)
_SUFFIX = ".jsonl"


class SpillFile:
    """This process's append-only overflow file, plus replay of every unlocked spill file in ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"usage-{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}"
        self._lock = threading.Lock()
        self._fd = -1
        self._open()
        self._count = 0  # rows in our own file
        self._foreign = self._count_replayable()

    def append(self, records: Iterable[UsageRecord]) -> int:
        """Write the records durably (one write, then fsync); return how many."""
        lines = [json.dumps(r.to_json(), separators=(",", ":")) + "\n" for r in records]
        if not lines:
            return 0
        data = "".join(lines).encode()
        with self._lock:
            late = self._fd < 0  # rows arriving after close(): kept all the same, the file left unlocked
            if late:
                self._open()
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view):]
            os.fsync(self._fd)
            self._count += len(lines)
            if late:
                os.close(self._fd)
                self._fd = -1
        return len(lines)

    def pending(self) -> int:
        """Rows waiting on disk: this file's, and those of ended processes (as of start or the last replay)."""
        return self._count + self._foreign

    def replay(self, write: Callable[[list[UsageRecord]], None], batch_size: int) -> int:
        """Insert every spilled row with ``write`` (idempotent), then drop the files; return rows replayed.

        Raises what ``write`` raises (the database is still away): files not finished stay.
        """
        replayed = 0
        for path in self._ended_files(fcntl.LOCK_EX):
            if not path.exists():
                continue  # replayed and removed by another process meanwhile
            replayed += _write_all(_read(path), write, batch_size)
            path.unlink()
        self._foreign = self._count_replayable()
        with self._lock:
            if self._count:
                replayed += _write_all(_read(self.path), write, batch_size)
                os.ftruncate(self._fd, 0)
                os.fsync(self._fd)
                self._count = 0
        return replayed

    def close(self) -> None:
        """Release the file; remove it when it holds nothing."""
        with self._lock:
            if self._fd < 0:
                return
            if self._count == 0:
                self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = -1

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_EX)

    def _count_replayable(self) -> int:
        """Rows in the files of ended processes (a live writer's file is its own to count)."""
        return sum(_count_lines(path) for path in self._ended_files(fcntl.LOCK_SH))

    def _ended_files(self, lock: int) -> Iterator[Path]:
        """Other processes' spill files that no live writer holds, each locked with ``lock`` while yielded."""
        for path in sorted(p for p in self.folder.glob(f"usage-*{_SUFFIX}") if p != self.path):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, lock | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # a live writer owns it
            try:
                yield path
            finally:
                os.close(fd)


def _read(path: Path) -> Iterator[UsageRecord]:
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield UsageRecord.from_json(json.loads(line))
            except (ValueError, TypeError) as exc:  # a line torn by a crash mid-write
                log.warning("usage spill %s line %d unreadable, skipped: %s", path.name, number, exc)


def _write_all(records: Iterable[UsageRecord], write: Callable[[list[UsageRecord]], None], batch_size: int) -> int:
    batch: list[UsageRecord] = []
    total = 0
    for record in records:
        batch.append(record)
        if len(batch) >= batch_size:
            write(batch)
            total += len(batch)
            batch = []
    if batch:
        write(batch)
        total += len(batch)
    return total


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    except FileNotFoundError:
        return 0
