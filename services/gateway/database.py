"""SQL storage chosen by URL: PostgreSQL (psycopg 3, pooled) or SQLite (embedded default).

SQL is written once with ``?`` placeholders and portable types; this module
translates placeholders for PostgreSQL and applies the versioned migrations in
``migrations/`` (``NNNN_name.sql``) at start, under a lock so that several
gateway workers can start together.
"""
from __future__ import annotations

import os
import re
import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from hxp.paths import state_dir
from hxp.redaction import redact_url as redact

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
_MIGRATION_LOCK_ID = 0x4858_5001  # pg_advisory_lock key for schema migrations


def default_url() -> str:
    """HXP_DATABASE_URL, DATABASE_URL, or an SQLite file in the state directory.

    The gateway launcher moves DATABASE_URL to HXP_DATABASE_URL before LiteLLM is
    imported, because LiteLLM would otherwise try to start its Prisma client on it.
    """
    url = os.environ.get("HXP_DATABASE_URL") or os.environ.get("DATABASE_URL")
    return url or f"sqlite:///{state_dir() / 'gateway.sqlite3'}"


class Database:
    """A small portable SQL interface over a pooled PostgreSQL or an SQLite file."""

    def __init__(self, url: str, pool_size: int = 4) -> None:
        self.url = url
        self.dialect = "postgresql" if url.startswith(("postgresql://", "postgres://")) else "sqlite"
        if self.dialect == "postgresql":
            from psycopg_pool import ConnectionPool

            self._pool = ConnectionPool(url, min_size=1, max_size=pool_size, open=False, timeout=5.0,
                                        kwargs={"connect_timeout": 3})
            self._pool.open(wait=False)
        elif url.startswith("sqlite:///"):
            path = url[len("sqlite:///"):]
            if path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self._sqlite = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
            self._sqlite.execute("PRAGMA journal_mode=WAL")
            self._sqlite.execute("PRAGMA busy_timeout=30000")
            self._lock = threading.Lock()
        else:
            raise ValueError(f"unsupported DATABASE_URL scheme: {redact(url)} (use postgresql:// or sqlite:///)")

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s") if self.dialect == "postgresql" else sql

    @contextmanager
    def transaction(self) -> Iterator[Any]:
        """A cursor inside one transaction (committed on success, rolled back on error)."""
        if self.dialect == "postgresql":
            with self._pool.connection() as conn, conn.transaction(), conn.cursor() as cur:
                yield _Cursor(cur, self._sql)
        else:
            with self._lock:
                cur = self._sqlite.cursor()
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield _Cursor(cur, self._sql)
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        with self.transaction() as cur:
            return cur.execute(sql, params)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.transaction() as cur:
            cur.executemany(sql, rows)

    def fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self.transaction() as cur:
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
        else:
            self._sqlite.close()


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
