"""SQL storage chosen by URL: PostgreSQL (psycopg 3, pooled) or SQLite (embedded default).

SQL is written once with ``?`` placeholders and portable types; this module
translates placeholders for PostgreSQL and applies the versioned migrations in
``migrations/`` (``NNNN_name.sql``) at start, under a lock so that several
gateway workers can start together.
"""

from __future__ import annotations

import queue
import re
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hxp.core.paths import state_dir
from hxp.core.redaction import redact_url as redact

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_LOCK_ID = 0x4858_5001  # pg_advisory_lock key for schema migrations


def embedded_url() -> str:
    """The embedded default store: an SQLite file in the state directory (when DATABASE_URL names none; see
    :mod:`hxp.core.settings`)."""
    return f"sqlite:///{state_dir() / 'gateway.sqlite3'}"


class Database:
    """A small portable SQL interface over a pooled PostgreSQL or an SQLite file.

    Writes (``transaction``, ``execute``, ``executemany``, ``migrate``) are serialized; reads (``read``,
    ``fetchall``, ``fetchone``, ``ping``) on SQLite use their own read-only connections (WAL readers), so they
    never wait for a writer of this or another process. Nothing is opened before the first statement.
    """

    def __init__(self, url: str, pool_size: int = 4) -> None:
        self.url = url
        self.dialect = "postgresql" if url.startswith(("postgresql://", "postgres://")) else "sqlite"
        if self.dialect == "postgresql":
            from psycopg_pool import ConnectionPool

            self._pool = ConnectionPool(
                url, min_size=1, max_size=pool_size, open=False, timeout=5.0, kwargs={"connect_timeout": 3}
            )
            self._pool.open(wait=False)
        elif url.startswith("sqlite:///"):
            self._path = url[len("sqlite:///") :]
            self._lock = threading.Lock()  # the one write connection
            self._writer: sqlite3.Connection | None = None
            self._readers: queue.LifoQueue[sqlite3.Connection] = queue.LifoQueue()
            self._reader_slots = threading.Semaphore(pool_size)
            self._opened: list[sqlite3.Connection] = []
            self._opened_lock = threading.Lock()
        else:
            raise ValueError(f"unsupported DATABASE_URL scheme: {redact(url)} (use postgresql:// or sqlite:///)")

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    def _connect(self, read_only: bool) -> sqlite3.Connection:
        if self._path != ":memory:":
            Path(self._path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self._path, check_same_thread=False, timeout=30, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=30000")
        if read_only:
            conn.execute("PRAGMA query_only=ON")
        else:
            conn.execute("PRAGMA journal_mode=WAL")
        with self._opened_lock:
            self._opened.append(conn)
        return conn

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside one write transaction (committed on success, rolled back on error)."""
        if self.dialect == "postgresql":
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as pg_cur:
                yield _Cursor(pg_cur, self._sql)
            return
        with self._lock:
            if self._writer is None:
                self._writer = self._connect(read_only=False)
            cur = self._writer.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield _Cursor(cur, self._sql)
            except BaseException:
                cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[Any]:
        """A cursor for reads: on SQLite a read-only connection in autocommit (each statement sees the last
        commit, takes no write lock); on PostgreSQL a pooled connection."""
        if self.dialect == "postgresql" or self._path == ":memory:":  # one in-memory database per connection
            with self.transaction() as cur:
                yield cur
            return
        with self._reader_slots:
            try:
                conn = self._readers.get_nowait()
            except queue.Empty:
                conn = self._connect(read_only=True)
            cur = conn.cursor()
            try:
                yield _Cursor(cur, self._sql)
            finally:
                cur.close()  # ends the statement, hence its read snapshot
                self._readers.put(conn)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.transaction() as cur:
            return cur.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.transaction() as cur:
            cur.executemany(sql, rows)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """The rows of a query, on the read path."""
        with self.read() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    def fetchone(self, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
        rows = self.fetchall(sql, params)
        return rows[0] if rows else None

    def ping(self) -> None:
        """Raise if the database cannot answer."""
        self.fetchall("SELECT 1 AS ok")

    def migrate(self) -> list[str]:
        """Apply pending migrations in order; return the names applied."""
        applied: list[str] = []
        with self.transaction() as cur:
            if self.dialect == "postgresql":
                cur.execute(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK_ID})")
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                "version INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "applied_at TIMESTAMP WITH TIME ZONE DEFAULT CURRENT_TIMESTAMP)"
            )
            cur.execute("SELECT version FROM schema_migrations")
            done = {row["version"] for row in cur.fetchall()}
            for path in sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql")):
                version = int(path.name[:4])
                if version in done:
                    continue
                for statement in _statements(path.read_text()):
                    cur.execute(statement)
                cur.execute("INSERT INTO schema_migrations (version, name) VALUES (?, ?)", (version, path.stem))
                applied.append(path.stem)
        return applied

    def close(self) -> None:
        if self.dialect == "postgresql":
            self._pool.close()
            return
        with self._lock, self._opened_lock:
            for conn in self._opened:
                conn.close()
            self._opened.clear()
            self._writer = None
            self._readers = queue.LifoQueue()


class _Cursor:
    """A DB-API cursor returning rows as dicts, with portable placeholders."""

    def __init__(self, cur: Any, translate: Any) -> None:
        self._cur = cur
        self._translate = translate

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        self._cur.execute(self._translate(sql), tuple(params))
        return self._cur.rowcount

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._cur.executemany(self._translate(sql), [tuple(r) for r in rows])

    def fetchall(self) -> list[dict[str, Any]]:
        if self._cur.description is None:
            return []
        cols = [d[0] for d in self._cur.description]
        return [dict(zip(cols, row)) for row in self._cur.fetchall()]


def _statements(script: str) -> list[str]:
    """Split a migration script on semicolons at line ends, dropping comments."""
    body = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("--"))
    return [s.strip() for s in re.split(r";\s*(?:\n|$)", body) if s.strip()]
