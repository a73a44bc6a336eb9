"""The command line's own audit events: an operator command that changes state is recorded, or refused.

The actor is ``cli:<OS user>@<host>``. :func:`recorded` checks that the trail can be written before the
command does anything (:class:`~hxp.audit.trail.AuditUnavailable` otherwise: nothing is changed), then
appends one event with the command's outcome.
"""

from __future__ import annotations

import getpass
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from hxp.audit.trail import Event, Trail
from hxp.core.database import Database


def actor() -> str:
    """Who runs this command: the OS user and the host."""
    return f"cli:{getpass.getuser()}@{socket.gethostname()}"


@contextmanager
def recorded(db: Database, action: str, target: str = "", **details: Any) -> Iterator[dict[str, Any]]:
    """Run a state change as one audited action: yields ``details`` (the command may add to them); the event's
    outcome is ``ok``, or ``failed`` with the error's type when the block raises."""
    trail = Trail(db)
    trail.check_writable()
    outcome = "failed"
    try:
        yield details
        outcome = "ok"
    except BaseException as exc:
        details["error"] = type(exc).__name__
        raise
    finally:
        trail.append([Event(action, actor(), outcome, target=target, details=details)])
