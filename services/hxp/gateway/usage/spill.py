"""The spill folder: usage rows that could not stay in memory, kept on disk until written.

Several gateway workers share the folder:

- A writer appends fsynced JSON lines to files of its own (``usage-<pid>-<random>.jsonl``) and holds an
  exclusive ``flock`` on each for as long as it lives. A file is created under a temporary name
  (``.tmp-usage-…``), locked, and only then renamed into place, so that no other process ever finds it
  unlocked while its owner lives.
- To replay its rows, a writer *seals* its current file (the next rows go to a new file), inserts the sealed
  file's rows without holding the lock that appending needs, then removes it.
- Files left unlocked (their process ended, or rows came after its writer closed), and the journals of ended
  processes (``journal-…``, :mod:`hxp.gateway.usage.journal`), are replayed by the one
  writer that holds the replay role (an ``flock`` on ``replay.lock``, taken by the first writer to find it
  free): each is locked, checked to be still the file at its path (same inode: never one replayed and
  removed meanwhile), inserted, removed. Rows are inserted idempotently (``request_id`` is the primary key),
  so a replay cut short is simply done again.
- ``pending()`` counts this writer's own rows and, for the role holder only, the rows of ended processes'
  files: summed over the workers, each row is counted once.
- The rows are any records with ``to_json()``, read back with ``decode`` (usage rows by default; the audit
  trail's refusal events use a folder of their own, :mod:`hxp.gateway.audited`).
- Beyond ``max_bytes`` in the folder (all its files), rows are dropped and counted in
  ``llm_usage_rows_dropped_total``; ``llm_usage_spill_bytes`` is the folder's size. Writers measure the folder
  and append under one ``flock`` (``append.lock``), so that workers spilling together stay within the bound.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

from hxp.gateway.usage.record import UsageRecord

log = logging.getLogger(__name__)
PREFIX, SUFFIX = "usage-", ".jsonl"
JOURNAL_PREFIX = "journal-"  # a process's journal (hxp.gateway.usage.journal): replayed once it ended, never bounded
_REPLAYED = (PREFIX, JOURNAL_PREFIX)
_TMP = ".tmp-"  # a file being created; one still here after _STALE_TMP_S belongs to a process that died
_STALE_TMP_S = 60.0
_ROLE = "replay.lock"
_APPEND_LOCK = "append.lock"

# The folder is shared: every worker measures all of it, the latest measurement stands (also once a worker ended).
SPILL_BYTES = Gauge(
    "llm_usage_spill_bytes", "Bytes of usage rows waiting in the spill folder", multiprocess_mode="mostrecent"
)
SPILL_LIMIT = Gauge(
    "llm_usage_spill_limit_bytes", "Bound on the spill folder (HXP_USAGE_SPILL_MAX_MB)", multiprocess_mode="mostrecent"
)
DROPPED = Counter("llm_usage_rows_dropped", "Usage rows lost: the spill folder was full (or failed)")


class Spillable(Protocol):
    def to_json(self) -> dict[str, Any]: ...


Decode = Callable[[dict[str, Any]], Any]


@dataclass
class _OwnFile:
    path: Path
    fd: int  # holds the exclusive flock
    rows: int = 0


class SpillFolder:
    """This writer's spill files, and replay of ended processes' files when it holds the replay role."""

    def __init__(self, folder: Path, max_bytes: int, decode: Decode = UsageRecord.from_json) -> None:
        self.folder = folder
        self.max_bytes = max_bytes
        self.decode = decode
        self.path: Path | None = None  # the file appended to last
        self._lock = threading.Lock()  # appending (the current file) and the list of sealed files
        self._current: _OwnFile | None = None
        self._sealed: list[_OwnFile] = []
        self._open = False
        self._role_fd = -1
        self._ended: dict[tuple[str, int, int], int] = {}  # (name, inode, size) -> rows, as the role holder

    def open(self) -> None:
        """Create the folder, take the replay role when it is free, count what waits (blocking I/O)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._open = True
        SPILL_LIMIT.set(self.max_bytes)
        self.refresh()

    # --- writing -----------------------------------------------------------------------------------------
    def append(self, records: Iterable[Spillable]) -> int:
        """Write the records durably (one write, then fsync) as far as the bound allows; return how many.

        The rest are dropped and counted (also all of them when the disk fails). After ``close()`` (rows of a
        request that outlived the shutdown) they go to a new file, left unlocked for the next replay."""
        lines = [line_of(r) for r in records]
        if not lines:
            return 0
        kept = 0
        with self._lock:
            try:
                with _exclusive(self.folder):  # measured and filled by one writer at a time (of any process)
                    room, size = self.max_bytes - self.size(), 0
                    while kept < len(lines) and size + len(lines[kept]) <= room:
                        size += len(lines[kept])
                        kept += 1
                    if kept:
                        self._write(b"".join(lines[:kept]), kept)
                SPILL_BYTES.set(self.max_bytes - room + size)
            except OSError as exc:
                log.error("usage spill folder %s failed (%s): %d rows lost", self.folder, exc, len(lines))
                DROPPED.inc(len(lines))
                return 0
        if kept < len(lines):
            DROPPED.inc(len(lines) - kept)
            log.error(
                "usage spill folder %s is full (%d bytes): %d rows dropped",
                self.folder,
                self.max_bytes,
                len(lines) - kept,
            )
        return kept

    def _write(self, data: bytes, rows: int) -> None:
        """Append ``rows`` lines to the current file (or a new one). When that fails, the file is cut back to
        its last whole line and retired (replayed as it is): no later row is appended to a torn line."""
        file, self._current = self._current or self._create(), None
        end = -1
        try:
            end = os.fstat(file.fd).st_size
            view = memoryview(data)
            while view:
                view = view[os.write(file.fd, view) :]
            os.fsync(file.fd)
        except OSError:
            if end >= 0:
                with contextlib.suppress(OSError):
                    os.ftruncate(file.fd, end)
            if self._open:
                self._sealed.append(file)
            else:
                os.close(file.fd)
            raise
        file.rows += rows
        if self._open:
            self._current = file
        else:
            os.close(file.fd)

    def _create(self) -> _OwnFile:
        path, fd = create_locked(self.folder, PREFIX)
        try:
            _fsync_dir(self.folder)
        except OSError:
            os.close(fd)  # unlocked: replayed as an ended process's file
            raise
        self.path = path
        return _OwnFile(path, fd)

    def size(self) -> int:
        """Bytes in the folder's spill files (every process's)."""
        total = 0
        for path in _spill_files(self.folder):
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass
        return total

    # --- replay and counting -------------------------------------------------------------------------------
    def pending(self) -> int:
        """Rows waiting on disk: this writer's, plus ended processes' when it holds the replay role."""
        with self._lock:
            own = sum(f.rows for f in self._sealed) + (self._current.rows if self._current else 0)
        return own + sum(self._ended.values())

    def refresh(self) -> None:
        """Take the replay role when free; as its holder, count ended processes' rows; publish the size."""
        if self._role_fd < 0:
            self._take_role()
        if self._role_fd >= 0:
            self._count_ended()
        SPILL_BYTES.set(self.size())

    def replay(self, write: Callable[[list[Any]], object], batch_size: int) -> int:
        """Insert this writer's spilled rows (and, as the role holder, ended processes'), removing each file
        once written; return the rows replayed. Raises what ``write`` raises: files not finished stay."""
        with self._lock:
            if self._current is not None:
                self._sealed.append(self._current)
                self._current = None
            sealed = list(self._sealed)
        replayed = 0
        for file in sealed:
            replayed += _write_all(_read(file.path, self.decode), write, batch_size)
            with self._lock:
                if file not in self._sealed:  # close() released it meanwhile: the next replayer's (idempotent)
                    continue
                self._sealed.remove(file)
                file.path.unlink()
                os.close(file.fd)
        if self._role_fd >= 0:
            for path, _ in self._ended_files(fcntl.LOCK_EX):
                replayed += _write_all(_read(path, self.decode), write, batch_size)
                path.unlink()
            self._count_ended()
        return replayed

    def close(self) -> None:
        """Release this writer's files (their rows stay for the next replay) and the replay role."""
        with self._lock:
            self._open = False
            files = self._sealed + ([self._current] if self._current else [])
            self._sealed, self._current = [], None
        for file in files:
            os.close(file.fd)
        if self._role_fd >= 0:
            os.close(self._role_fd)
            self._role_fd = -1
        self._ended = {}

    def _take_role(self) -> None:
        fd = os.open(self.folder / _ROLE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return
        self._role_fd = fd

    def _count_ended(self) -> None:
        counted: dict[tuple[str, int, int], int] = {}
        for path, stat in self._ended_files(fcntl.LOCK_SH):
            key = (path.name, stat.st_ino, stat.st_size)
            counted[key] = self._ended[key] if key in self._ended else _count_lines(path)
        self._ended = counted

    def _ended_files(self, lock: int) -> Iterator[tuple[Path, os.stat_result]]:
        """Spill files no live writer holds (this one's included), each locked with ``lock`` and checked to
        be the file at its path while yielded."""
        for path in _spill_files(self.folder, _REPLAYED):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                stat = os.fstat(fd)
                if path.name.startswith(_TMP) and time.time() - stat.st_mtime < _STALE_TMP_S:
                    continue  # being created: its owner locks it in a moment
                try:
                    fcntl.flock(fd, lock | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a live writer's
                if _same_file(path, stat):
                    yield path, stat
            finally:
                os.close(fd)


def line_of(record: Spillable) -> bytes:
    """A record as one line of a spill or journal file."""
    return json.dumps(record.to_json(), separators=(",", ":")).encode() + b"\n"


def create_locked(folder: Path, prefix: str) -> tuple[Path, int]:
    """A new file of this process (``<prefix><pid>-<random>.jsonl``, open for appending), locked before it
    appears under its replayable name; its path and descriptor."""
    name = f"{prefix}{os.getpid()}-{uuid.uuid4().hex[:12]}{SUFFIX}"
    temporary, path = folder / f"{_TMP}{name}", folder / name
    fd = os.open(temporary, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.rename(temporary, path)
    except BaseException:
        os.close(fd)
        temporary.unlink(missing_ok=True)
        raise
    return path, fd


def _spill_files(folder: Path, prefixes: tuple[str, ...] = (PREFIX,)) -> list[Path]:
    """The folder's files of these kinds (spill files by default), those being created included."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return []
    starts = prefixes + tuple(_TMP + p for p in prefixes)
    return [folder / n for n in sorted(names) if n.endswith(SUFFIX) and n.startswith(starts)]


def _same_file(path: Path, stat: os.stat_result) -> bool:
    """Whether ``path`` still names the file ``stat`` describes (not removed, not replaced)."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    return (now.st_ino, now.st_dev) == (stat.st_ino, stat.st_dev)


@contextlib.contextmanager
def _exclusive(folder: Path) -> Iterator[None]:
    """The folder's append lock, held while a writer measures the folder and appends within its bound."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / _APPEND_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path: Path, decode: Decode) -> Iterator[Any]:
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield decode(json.loads(line))
            except (ValueError, TypeError) as exc:  # a line torn by a crash mid-write
                log.warning("usage spill %s line %d unreadable, skipped: %s", path.name, number, exc)


def _write_all(records: Iterable[Any], write: Callable[[list[Any]], object], batch_size: int) -> int:
    batch: list[Any] = []
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
