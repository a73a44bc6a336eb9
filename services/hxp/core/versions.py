"""The configuration's versions in the database: every catalogue applied, what the gateways serve, each step.

``config_versions`` keeps every catalogue applied (its bytes, sha256, time, author, action and diff against
the one before); ``config_live`` the version the gateways serve now and the backends overriding their start-up
ones (an engine replaced on another port), with a generation every change bumps and every gateway worker
polls (:mod:`hxp.lifecycle.reload`); ``config_events`` each step of a change, in order.
"""

from __future__ import annotations

import difflib
import getpass
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from hxp.core import settings
from hxp.core.database import Database

LIVE_ID = 1
POLL_S = 1.0  # how often each gateway worker polls the live generation
_LOCK_ID = 0x4858_5011  # pg_advisory_xact_lock key: one writer of versions and events at a time
# Steps that end an engine update; any other last step of a subject means an update is under way.
FINAL_STEPS = frozenset({"update-done", "update-rolled-back", "update-refused"})


class VersionError(ValueError):
    """A version that does not exist, or a change that cannot be recorded."""


@dataclass(frozen=True)
class Version:
    version: int
    sha256: str
    applied_at: datetime
    author: str
    action: str
    catalogue: str
    diff: str


@dataclass(frozen=True)
class Live:
    """What the gateways serve: a stored version, plus backends overriding their start-up ones."""

    generation: int
    version: int
    backends: dict[str, list[str]]
    standby: dict[str, list[str]]  # backends a model falls back to while the ones above fail (a rolling update)


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def author() -> str:
    """Who applies: HXP_CONFIG_AUTHOR (e.g. an admin key's alias), else the operating-system user."""
    return os.environ.get("HXP_CONFIG_AUTHOR") or getpass.getuser()


def unified_diff(old: str, new: str, old_name: str, new_name: str) -> str:
    return "".join(
        difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), old_name, new_name)
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _live(row: dict[str, Any]) -> Live:
    return Live(int(row["generation"]), int(row["version"]), json.loads(row["backends"]), json.loads(row["standby"]))


def _version(row: dict[str, Any]) -> Version:
    applied = row["applied_at"]
    if isinstance(applied, str):  # SQLite hands timestamps back as text
        applied = datetime.fromisoformat(applied)
    return Version(
        int(row["version"]), row["sha256"], applied, row["author"], row["action"], row["catalogue"], row["diff"]
    )


class ConfigStore:
    """Versions, the live state and the event log over one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @classmethod
    def open(cls, database_url: str | None = None) -> ConfigStore:
        """The store of ``database_url`` (default: the configured DATABASE_URL), its migrations applied."""
        db = Database(database_url or settings.load().database_url, pool_size=1)
        db.migrate()
        return cls(db)

    def close(self) -> None:
        self.db.close()

    def _lock(self, cur: Any) -> None:
        if self.db.dialect == "postgresql":
            cur.execute(f"SELECT pg_advisory_xact_lock({_LOCK_ID})")

    def latest(self) -> Version | None:
        row = self.db.fetchone("SELECT * FROM config_versions ORDER BY version DESC LIMIT 1")
        return _version(row) if row else None

    def get(self, version: int) -> Version:
        row = self.db.fetchone("SELECT * FROM config_versions WHERE version = ?", (version,))
        if row is None:
            raise VersionError(f"no configuration version {version} (see `hxp config history`)")
        return _version(row)

    def history(self, limit: int = 20) -> list[Version]:
        rows = self.db.fetchall("SELECT * FROM config_versions ORDER BY version DESC LIMIT ?", (limit,))
        return [_version(r) for r in rows]

    def record(self, text: str, action: str, who: str | None = None) -> Version:
        """Store ``text`` as a new version (unless it is the latest already), make it live; the version."""
        with self.db.transaction() as cur:
            self._lock(cur)
            cur.execute("SELECT * FROM config_versions ORDER BY version DESC LIMIT 1")
            rows = cur.fetchall()
            previous = _version(rows[0]) if rows else None
            if previous is not None and previous.sha256 == sha256(text):
                version = previous
            else:
                number = previous.version + 1 if previous else 1
                old = previous.catalogue if previous else ""
                diff = unified_diff(old, text, f"v{number - 1}" if previous else "/dev/null", f"v{number}")
                version = Version(number, sha256(text), _now(), who or author(), action, text, diff)
                cur.execute(
                    "INSERT INTO config_versions (version, sha256, applied_at, author, action, catalogue, "
                    "diff) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (version.version, version.sha256, version.applied_at, version.author, version.action, text, diff),
                )
            self._set_live(cur, version=version.version)
            self._event(
                cur,
                version.version,
                "catalogue",
                action,
                f"v{version.version} sha256 {version.sha256[:12]} by {version.author}",
            )
        return version

    def live(self) -> Live | None:
        row = self.db.fetchone("SELECT * FROM config_live WHERE id = ?", (LIVE_ID,))
        return _live(row) if row else None

    def generation(self) -> int:
        """The live generation (0: nothing applied yet): the one cheap query each gateway worker polls."""
        row = self.db.fetchone("SELECT generation FROM config_live WHERE id = ?", (LIVE_ID,))
        return int(row["generation"]) if row else 0

    def set_backends(
        self,
        backends: dict[str, list[str]],
        subject: str,
        step: str,
        detail: str,
        standby: dict[str, list[str]] | None = None,
    ) -> Live:
        """Route these models to these backends, with these standby backends (used only when the others fail;
        none: no standby), the other models unchanged; log the step; the new live state."""
        with self.db.transaction() as cur:
            self._lock(cur)
            live = self._set_live(cur, backends=backends, standby=standby or {})
            self._event(cur, live.version, subject, step, detail)
        return live

    def reset_backends(self) -> None:
        """Forget the overriding backends (a stack starting its engines on their catalogue ports)."""
        with self.db.transaction() as cur:
            self._lock(cur)
            cur.execute("SELECT * FROM config_live WHERE id = ?", (LIVE_ID,))
            rows = cur.fetchall()
            if rows and (_live(rows[0]).backends or _live(rows[0]).standby):
                self._set_live(cur)

    def _set_live(
        self,
        cur: Any,
        version: int | None = None,
        backends: dict[str, list[str]] | None = None,
        standby: dict[str, list[str]] | None = None,
    ) -> Live:
        """Bump the generation: ``version`` replaces the live one; ``backends`` (with ``standby``) replace those
        of their models; neither given: every override is cleared."""
        cur.execute("SELECT * FROM config_live WHERE id = ?", (LIVE_ID,))
        rows = cur.fetchall()
        if not rows:
            if version is None:
                raise VersionError("no configuration applied yet (`hxp config apply`)")
            live = Live(1, version, backends or {}, standby or {})
            cur.execute(
                "INSERT INTO config_live (id, generation, version, backends, standby, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (LIVE_ID, 1, version, json.dumps(live.backends), json.dumps(live.standby), _now()),
            )
            return live
        old = _live(rows[0])
        if version is None and backends is None:
            merged, spare = {}, {}
        else:
            merged = {**old.backends, **(backends or {})}
            spare = {k: v for k, v in old.standby.items() if k not in (backends or {})} | (standby or {})
        live = Live(old.generation + 1, version or old.version, merged, spare)
        cur.execute(
            "UPDATE config_live SET generation = ?, version = ?, backends = ?, standby = ?, updated_at = ? "
            "WHERE id = ?",
            (live.generation, live.version, json.dumps(merged), json.dumps(spare), _now(), LIVE_ID),
        )
        return live

    def log(self, subject: str, step: str, detail: str = "") -> None:
        """Record one step of a change against the live version."""
        with self.db.transaction() as cur:
            self._lock(cur)
            cur.execute("SELECT version FROM config_live WHERE id = ?", (LIVE_ID,))
            rows = cur.fetchall()
            self._event(cur, int(rows[0]["version"]) if rows else 0, subject, step, detail)

    def _event(self, cur: Any, version: int, subject: str, step: str, detail: str) -> None:
        cur.execute("SELECT COALESCE(MAX(id), 0) AS last FROM config_events")
        cur.execute(
            "INSERT INTO config_events (id, at, version, subject, step, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (int(cur.fetchall()[0]["last"]) + 1, _now(), version, subject, step, detail),
        )

    def events(self, version: int | None = None, limit: int = 200) -> list[dict[str, Any]]:
        """The latest steps (of one version, or all), oldest first."""
        where, params = ("WHERE version = ?", (version, limit)) if version is not None else ("", (limit,))
        rows = self.db.fetchall(f"SELECT * FROM config_events {where} ORDER BY id DESC LIMIT ?", params)
        return rows[::-1]

    def updates_in_progress(self) -> list[dict[str, Any]]:
        """The engine updates started and not finished: each subject's last step when it is not a final one."""
        rows = self.db.fetchall(
            "SELECT e.* FROM config_events e JOIN (SELECT subject, MAX(id) AS last FROM config_events "
            "WHERE subject LIKE ? GROUP BY subject) l ON e.id = l.last",
            ("update %",),
        )
        return [r for r in rows if r["step"] not in FINAL_STEPS]


def summary(database_url: str) -> dict[str, Any] | None:
    """For `hxp status`: the live version, its backends and the updates under way; None before any apply."""
    store = ConfigStore(Database(database_url, pool_size=1))
    try:
        live = store.live()
        if live is None:
            return None
        version = store.get(live.version)
        updates = [f"{e['subject']}: {e['step']} since {str(e['at'])[:19]}" for e in store.updates_in_progress()]
        return {
            "version": live.version,
            "sha256": version.sha256,
            "applied_at": version.applied_at,
            "author": version.author,
            "backends": live.backends,
            "updates": updates,
        }
    finally:
        store.close()
