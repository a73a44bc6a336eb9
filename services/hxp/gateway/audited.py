"""The gateway's audit events (:mod:`hxp.audit.trail`): administrative actions, console events and refusals.

- :func:`admin_action` runs an administrative change as one audited action: refused with 503 before anything
  changes when the trail cannot be written (fail closed), then one event with its outcome.
- :func:`record` appends a single event now (a console sign-in, sign-out, expiry); when the database is away
  it is spilled like a refusal.
- :func:`refused` (the boundary, on every 401, 403 and 429 answer) counts a refusal: no I/O. Refusals are
  folded into one event per HXP_AUDIT_REFUSAL_WINDOW_S window, status, actor (the key's alias, or
  ``anonymous``) and client address, written once the window has ended. When the database is away they go to
  the spill folder ``<state>/audit-spill`` (:class:`~hxp.gateway.usage.spill.SpillFolder`, shared by the
  workers, replayed once it answers: an event already written is skipped, never doubled).

The recorder's thread also purges events past HXP_AUDIT_RETENTION_DAYS once an hour. ``router``'s lifespan
starts it (replaying what an earlier run spilled) and writes (or spills) what is left at shutdown.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from hxp.audit.trail import AuditUnavailable, Event, Trail
from hxp.core import errors
from hxp.core.context import Runtime, runtime
from hxp.core.paths import state_path
from hxp.core.settings import Settings
from hxp.gateway import auth
from hxp.gateway.request_context import RequestContext, current
from hxp.gateway.usage.spill import SpillFolder

log = logging.getLogger(__name__)
REFUSED = frozenset({401, 403, 429})
MAX_GROUPS = 1000  # refusal groups open at once; beyond, new ones are folded under client "other"
SPILL_MAX_BYTES = 64 * 2**20
TICK_S = 1.0  # how often the recorder writes ended windows and replays the spill folder
PURGE_INTERVAL_S = 3600.0


def _trail(rt: Runtime) -> Trail:
    return Trail(rt.get(auth._key_store).db)


def trail() -> Trail:
    """This runtime's audit trail, on the gateway database (the key store's)."""
    return runtime().get(_trail)


def actor_of(ctx: RequestContext | None) -> str:
    """Who acts in a request: the console session, the caller's alias (``master``), or ``anonymous``."""
    if ctx is None:
        return "anonymous"
    return ctx.actor or (ctx.caller.alias if ctx.caller else "anonymous")


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    return {400: "invalid", 404: "not_found", 403: "denied", 401: "denied"}.get(status, "failed")


async def admin_action(action: str, target: str, change: Callable[[], Awaitable[Response]], **details: Any) -> Response:
    """Run ``change`` (an admin handler's work) as one audited action; 503 and nothing changed when the trail
    cannot be written."""
    trail_now = trail()
    try:
        await asyncio.to_thread(trail_now.check_writable)
    except AuditUnavailable as exc:
        log.error("audit: refused %s %s: the audit trail cannot be written (%s)", action, target, exc)
        return errors.GatewayError(
            503,
            "The audit trail cannot be written (database unavailable): the action was not performed; try again later",
            code="audit_unavailable",
        ).response()
    response = await change()
    result = _json(response)
    if isinstance(result, dict) and result.get("key_id"):
        details["key_id"] = result["key_id"]
    await record(_event(action, target, _outcome(response.status_code), details))
    return response


def _json(response: Response) -> Any:
    try:
        return json.loads(bytes(response.body))
    except ValueError:
        return None


def _event(action: str, target: str, outcome: str, details: dict[str, Any], actor: str | None = None) -> Event:
    ctx = current()
    return Event(
        action,
        actor or actor_of(ctx),
        outcome,
        target=target,
        client=ctx.client if ctx else "",
        request_id=ctx.request_id if ctx else "",
        details=details,
    )


async def record(event: Event) -> None:
    """Append one event now; spilled (replayed later) when the database is away."""
    try:
        await asyncio.to_thread(trail().append, [event])
    except Exception as exc:  # noqa: BLE001 - any database failure (two drivers): the event is spilled
        log.error("audit: database unavailable (%s); event %s spilled", exc, event.action)
        await asyncio.to_thread(runtime().get(_recorder).spill, [event])


async def action_event(
    action: str, target: str = "", outcome: str = "ok", *, actor: str | None = None, **details: Any
) -> None:
    """Record an event of the request being handled (its client and request id; its actor unless given)."""
    await record(_event(action, target, outcome, details, actor))


def refused(ctx: RequestContext, status: int, path: str) -> None:
    """Count a refusal of ``path`` (its target: the route table's pattern when one matched). No I/O."""
    runtime().get(_recorder).note(ctx, status, ctx.route.path if ctx.route else path)


@dataclass
class _Group:
    count: int
    path: str
    request_id: str


class Recorder:
    """Refusal windows in memory, their events written by a thread; spill and replay; hourly retention."""

    def __init__(self, trail_: Trail, spill_dir: Path, window_s: float, retention_days: float) -> None:
        self.trail = trail_
        self.window_s = window_s
        self.retention = timedelta(days=retention_days)
        self._spill = SpillFolder(spill_dir, SPILL_MAX_BYTES, decode=Event.from_json)
        self._groups: dict[tuple[int, int, str, str], _Group] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._purge_at = 0.0

    def note(self, ctx: RequestContext, status: int, path: str) -> None:
        window = int(time.time() // self.window_s)
        key = (window, status, actor_of(ctx), ctx.client)
        with self._lock:
            if key not in self._groups and len(self._groups) >= MAX_GROUPS:
                key = (window, status, key[2], "other")
            group = self._groups.get(key)
            if group is None:
                self._groups[key] = _Group(1, path, ctx.request_id)
            else:
                group.count += 1

    def start(self) -> None:
        """Open the spill folder and start the thread (blocking I/O). Idempotent."""
        with self._lock:
            if self._thread is not None:
                return
            self._spill.open()
            try:
                self.trail.publish_head()
            except Exception as exc:  # noqa: BLE001 - the database may be away at start: published at the first append
                log.warning("audit: chain head not published at start (%s)", exc)
            self._thread = threading.Thread(target=self._run, name="audit-recorder", daemon=True)
            self._thread.start()

    def spill(self, events: list[Event]) -> None:
        self._spill.append(events)

    def _due(self, everything: bool) -> list[Event]:
        now_window = int(time.time() // self.window_s)
        with self._lock:
            ended = [k for k in self._groups if everything or k[0] < now_window]
            groups = [(k, self._groups.pop(k)) for k in ended]
        return [
            Event(
                "request.refused",
                actor,
                str(status),
                target=group.path,
                client=client,
                request_id=group.request_id,
                count=group.count,
                at=datetime.fromtimestamp(window * self.window_s, UTC).isoformat(),
                details={"window_s": self.window_s},
            )
            for (window, status, actor, client), group in groups
        ]

    def _write(self, events: list[Event]) -> None:
        """Append ``events``, or spill them when the database is away."""
        if not events:
            return
        try:
            self.trail.append(events)
        except Exception as exc:  # noqa: BLE001 - any database failure (two drivers): the events are spilled
            log.warning("audit: database unavailable (%s); %d events spilled", exc, len(events))
            self._spill.append(events)

    def _replay(self) -> None:
        try:
            self._spill.refresh()
            if self._spill.pending():
                replayed = self._spill.replay(self.trail.append, 500)
                log.warning("audit: replayed %d spilled events", replayed)
        except Exception as exc:  # noqa: BLE001 - the database still away: the files stay for the next try
            log.debug("audit: replay deferred (%s)", exc)

    def _purge(self) -> None:
        if time.monotonic() < self._purge_at:
            return
        self._purge_at = time.monotonic() + PURGE_INTERVAL_S
        try:
            self.trail.purge(datetime.now(UTC) - self.retention, "hxp:retention")
        except Exception as exc:  # noqa: BLE001 - retried at the next interval; never stops the recorder
            log.warning("audit: retention purge failed (%s)", exc)

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            self._write(self._due(everything=False))
            self._replay()
            self._purge()

    def close(self) -> None:
        """Stop the thread; write every open window (or spill it). Idempotent."""
        if self._stop.is_set():
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        self._write(self._due(everything=True))
        self._spill.close()


def _recorder(rt: Runtime) -> Recorder:
    cfg: Settings = rt.settings
    return Recorder(rt.get(_trail), state_path("audit-spill"), cfg.audit_refusal_window_s, cfg.audit_retention_days)


def close() -> None:
    recorder = runtime().peek(_recorder)
    if recorder is not None:
        recorder.close()


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    await asyncio.to_thread(runtime().get(_recorder).start)
    try:
        yield
    finally:
        await asyncio.to_thread(close)


router = APIRouter(lifespan=_lifespan)
atexit.register(close)
