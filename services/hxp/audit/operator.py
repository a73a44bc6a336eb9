"""The command line's own audit events: an operator command that changes state is recorded, or refused.

The actor is ``cli:<OS user>@<host>``. :func:`recorded` checks that the trail can be written before the
command does anything (:class:`~hxp.audit.trail.AuditUnavailable` otherwise: nothing is changed), then
appends one event with the command's outcome, through a connection of its own opened afterwards (the command
may have replaced the database: a restore).
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hxp.audit.trail import AuditUnavailable, Event, Head, Trail
from hxp.core.database import Database


def actor() -> str:
    """Who runs this command: the OS user and the host."""
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


@contextmanager
def _trail(url: str) -> Iterator[Trail]:
    """The trail of the database at ``url``, migrated (AuditUnavailable when it does not answer), then closed."""
    db = Database(url)
    try:
        try:
            db.migrate()
        except Exception as exc:
            raise AuditUnavailable(str(exc)) from exc
        yield Trail(db)
    finally:
        db.close()


def head(url: str) -> Head:
    """The chain's head in the database at ``url``."""
    with _trail(url) as trail:
        return trail.head()


@contextmanager
def recorded(url: str, action: str, target: str = "", **details: Any) -> Iterator[dict[str, Any]]:
    """Run a state change of the database at ``url`` as one audited action: yields ``details`` (the command may
    add to them); the event's outcome is ``ok``, or ``failed`` with the error's type when the block raises."""
    with _trail(url) as trail:
        trail.check_writable()
    outcome = "failed"
    try:
        yield details
        outcome = "ok"
    except BaseException as exc:
        details["error"] = type(exc).__name__
        raise
    finally:
        with _trail(url) as trail:
            trail.append([Event(action, actor(), outcome, target=target, details=details)])
