"""Console sessions: the master key exchanged for a cookie, checked by the boundary on every console route.

A session is a random token in the ``hxp_console`` cookie (HttpOnly, SameSite=Strict, Secure when
served over TLS, path /console, expiring after HXP_CONSOLE_SESSION_TTL_S). The database keeps an
HMAC of it with its expiry (``console_sessions``, migration 0007), so every worker and replica
sharing the database accepts it, and signing out deletes it: the cookie stops working everywhere
at once. The HMAC key is derived from the master key, so changing the master key ends every session.

The CSRF token is derived from the session token with the same key (nothing stored): every state
change (POST) must send it in ``X-CSRF-Token``; the pages carry it in a ``<meta>`` tag.

:func:`authorize` is what the boundary calls for routes whose access is ``console``: without a live
session a page (GET outside /console/api/) is redirected to the sign-in page, anything else is 401. The
request's actor, for the audit trail, is ``console:<session id>`` (the first 12 hex digits of the session's
HMAC: it names the session, never reveals the cookie); a session found expired is audited once
(``console.session_expired``) and deleted.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from datetime import UTC, datetime, timedelta
from http.cookies import CookieError, SimpleCookie
from urllib.parse import quote

from fastapi.responses import JSONResponse, RedirectResponse

from hxp.core import errors
from hxp.core.context import Runtime, runtime
from hxp.core.database import Database
from hxp.gateway import audited, auth
from hxp.gateway.auth import Caller
from hxp.gateway.request_context import current
from hxp.gateway.usage.record import iso

COOKIE = "hxp_console"
COOKIE_PATH = "/console"
CSRF_HEADER = "x-csrf-token"
SIGN_IN_PATH = "/console/sign-in"
API_PREFIX = "/console/api/"
SAFE_METHODS = frozenset({"GET", "HEAD"})
_KEY_LABEL = b"hxp-console-session-v1"


def _key() -> bytes:
    """The HMAC key of sessions and CSRF tokens, derived from the master key."""
    master = runtime().settings.master_secret or ""
    return hmac.new(master.encode(), _KEY_LABEL, hashlib.sha256).digest()


def _digest(purpose: str, token: str) -> str:
    return hmac.new(_key(), f"{purpose}:{token}".encode(), hashlib.sha256).hexdigest()


def csrf_token(token: str) -> str:
    """The CSRF token that goes with a session token."""
    return _digest("csrf", token)


class SessionStore:
    """Open, check and end sessions in the gateway database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def open(self, ttl_s: int) -> str:
        """A new session's token (its expired predecessors are deleted on the way)."""
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (iso(now),))
            cur.execute(
                "INSERT INTO console_sessions (session_hash, created_at, expires_at) VALUES (?, ?, ?)",
                (_digest("session", token), iso(now), iso(now + timedelta(seconds=ttl_s))),
            )
        return token

    def is_live(self, token: str) -> bool:
        row = self.db.fetchone(
            "SELECT 1 AS live FROM console_sessions WHERE session_hash = ? AND expires_at > ?",
            (_digest("session", token), iso(datetime.now(UTC))),
        )
        return row is not None

    def end_expired(self, token: str) -> bool:
        """Delete the token's session if it has expired; whether it had (a read first: an unknown token, the
        common case, takes no write)."""
        where = "WHERE session_hash = ? AND expires_at <= ?"
        params = (_digest("session", token), iso(datetime.now(UTC)))
        if self.db.fetchone(f"SELECT 1 AS expired FROM console_sessions {where}", params) is None:
            return False
        return self.db.execute(f"DELETE FROM console_sessions {where}", params) > 0

    def end(self, token: str) -> None:
        self.db.execute("DELETE FROM console_sessions WHERE session_hash = ?", (_digest("session", token),))


def _store(rt: Runtime) -> SessionStore:
    return SessionStore(rt.get(auth._key_store).db)


def store() -> SessionStore:
    """This runtime's session store, on the gateway database (the key store's)."""
    return runtime().get(_store)


def session_id(token: str) -> str:
    """The audit trail's name for a session: ``console:`` and 12 hex digits of its HMAC."""
    return "console:" + _digest("session", token)[:12]


def token_of(cookie_header: str | None) -> str | None:
    """The session token in a Cookie header, if any."""
    if not cookie_header:
        return None
    jar = SimpleCookie()
    try:
        jar.load(cookie_header)
    except CookieError:
        return None
    morsel = jar.get(COOKIE)
    return morsel.value if morsel and morsel.value else None


class SignInRequired(errors.GatewayError):
    """No live session: a page is sent to the sign-in page (coming back afterwards), anything else gets 401."""

    def __init__(self, path: str, page: bool) -> None:
        super().__init__(
            401,
            "Sign in to the console first (POST /console/sign-in with the master key)",
            code="console_sign_in_required",
        )
        self.path, self.page = path, page

    # a page gets a redirect instead of GatewayError's JSON (only the boundary answers this error, as an ASGI app)
    def response(self) -> JSONResponse | RedirectResponse:  # type: ignore[override]
        if self.page:
            return RedirectResponse(f"{SIGN_IN_PATH}?next={quote(self.path, safe='/')}", status_code=303)
        return super().response()


async def authorize(method: str, path: str, headers: dict[str, str]) -> Caller:
    """The operator behind a live session (as the master key); refuses without one, or without the CSRF token on
    a state change."""
    token = token_of(headers.get("cookie"))
    if token is None or not await asyncio.to_thread(store().is_live, token):
        if token is not None and await asyncio.to_thread(store().end_expired, token):
            await audited.action_event("console.session_expired", session_id(token), actor=session_id(token))
        raise SignInRequired(path, page=method in SAFE_METHODS and not path.startswith(API_PREFIX))
    ctx = current()
    if ctx is not None:
        ctx.actor = session_id(token)
    sent = headers.get(CSRF_HEADER, "").encode("latin-1")
    if method not in SAFE_METHODS and not hmac.compare_digest(sent, csrf_token(token).encode()):
        raise errors.GatewayError(
            403, f"Missing or wrong CSRF token: send the page's token in {CSRF_HEADER}", code="csrf_token_invalid"
        )
    return Caller(None)
