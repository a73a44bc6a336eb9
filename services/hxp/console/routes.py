"""The console's routes: its pages, the JSON they read, sign-in and sign-out, and its static files.

Who may call each one is decided by the boundary from the route table (access ``console``: a live
session, and its CSRF token on a POST; the sign-in page and the static files are public). Failed
sign-ins are throttled per client address (:mod:`hxp.console.throttle`). Signing in (or failing to) and out
is audited, and the Audit page searches the trail (:mod:`hxp.audit.search`, CSV download). Keys are
changed through the admin API's own handlers (:mod:`hxp.gateway.admin`), so a change made here
behaves exactly like one made there. Every answer carries the console's security headers (a CSP
allowing only the gateway's own scripts and styles, no framing, no referrer, no caching).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from html import escape
from pathlib import Path
from string import Template
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError

from hxp.audit import search as audit_search
from hxp.console import (
    configuration as configuration_module,
)
from hxp.console import (
    overview as overview_module,
)
from hxp.console import (
    queries,
    sessions,
    throttle,
    usage,
)
from hxp.core import errors
from hxp.core.context import runtime
from hxp.gateway import admin, audited, auth, deployments
from hxp.gateway.request_context import context_of
from hxp.vector import config as vector_config

log = logging.getLogger("hxp.console")
HERE = Path(__file__).parent
STATIC = {p.name: p for p in (HERE / "static").iterdir() if p.is_file()}
CONTENT_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
PAGES = {
    "/console": ("overview", "Overview"),
    "/console/keys": ("keys", "API keys"),
    "/console/usage": ("usage", "Usage"),
    "/console/configuration": ("configuration", "Configuration"),
    "/console/audit": ("audit", "Audit"),
}
RECENT = timedelta(hours=24)  # the keys page's "requests in the last 24 hours"
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cache-control": "no-store",
}


class _ConsoleRoute(APIRoute):
    """Adds the security headers to every answer."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            response = await handler(request)
            response.headers.update(SECURITY_HEADERS)
            return response

        return route


router = APIRouter(prefix="/console", route_class=_ConsoleRoute, include_in_schema=False)


PAGE = Template((HERE / "pages" / "page.html").read_text())


def _body(request: Request) -> dict[str, Any]:
    return context_of(request.scope).body or {}


# --- signing in and out -------------------------------------------------------------------------------------
@router.get("/sign-in")
async def sign_in_page(request: Request) -> Response:
    token = sessions.token_of(request.headers.get("cookie"))
    # bool(): without it mypy takes `token`'s type as the context for to_thread's result
    if token and bool(await asyncio.to_thread(sessions.store().is_live, token)):
        return RedirectResponse("/console", status_code=303)
    return HTMLResponse((HERE / "pages" / "sign-in.html").read_text())


@router.post("/sign-in")
async def sign_in(request: Request) -> JSONResponse:
    secret = _body(request).get("master_key")
    address = request.client.host if request.client else "?"
    retry_after = await throttle.retry_after_s(address)
    if retry_after is not None:
        log.warning("console: refused a sign-in from %s (too many failed sign-ins)", address)
        return errors.GatewayError(
            429,
            f"Too many failed sign-ins from this address: try again in {retry_after} s",
            code="console_sign_in_throttled",
            headers={"retry-after": str(retry_after)},
        ).response()
    if not isinstance(secret, str) or not auth.is_master_key(secret):
        await throttle.count_failure(address)
        log.warning("console: refused a sign-in from %s (wrong master key)", address)
        await audited.action_event("console.sign_in", "console", "denied", reason="wrong master key")
        return errors.unauthorized("Wrong master key").response()
    ttl = runtime().settings.console_session_ttl_s
    token = await asyncio.to_thread(sessions.store().open, ttl)
    log.info("console: signed in from %s", address)
    await audited.action_event("console.sign_in", "console", actor=sessions.session_id(token), ttl_s=ttl)
    response = JSONResponse({"signed_in": True, "expires_in_s": ttl})
    response.set_cookie(
        sessions.COOKIE,
        token,
        max_age=ttl,
        expires=ttl,
        path=sessions.COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/sign-out")
async def sign_out(request: Request) -> JSONResponse:
    token = sessions.token_of(request.headers.get("cookie"))
    if token:
        await asyncio.to_thread(sessions.store().end, token)
        await audited.action_event("console.sign_out", "console")
    response = JSONResponse({"signed_in": False})
    response.delete_cookie(
        sessions.COOKIE,
        path=sessions.COOKIE_PATH,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return response


@router.get("/static/{asset}")
async def static_file(asset: str) -> Response:
    path = STATIC.get(asset)
    if path is None:
        return errors.GatewayError(404, f"Unknown console file: {asset}", code="unknown_route").response()
    return Response(path.read_bytes(), media_type=CONTENT_TYPES.get(path.suffix, "application/octet-stream"))


# --- pages ----------------------------------------------------------------------------------------------------
async def _page(request: Request) -> HTMLResponse:
    page, title = PAGES[request.url.path]
    token = sessions.token_of(request.headers.get("cookie")) or ""
    return HTMLResponse(PAGE.substitute(page=page, title=escape(title), csrf=escape(sessions.csrf_token(token))))


for _path in PAGES:
    router.add_api_route(_path.removeprefix("/console"), _page, methods=["GET"])


@router.get("/")
async def overview_with_slash() -> RedirectResponse:
    return RedirectResponse("/console", status_code=307)


# --- the pages' data ------------------------------------------------------------------------------------------
@router.get("/api/overview")
async def overview_data() -> dict[str, Any]:
    return await overview_module.overview()


@router.get("/api/keys")
async def list_keys() -> dict[str, Any]:
    listed = await admin.list_keys()
    since = datetime.now(UTC) - RECENT
    activity = await asyncio.to_thread(queries.key_activity, auth.key_store().db, since)
    keys = [{**key, **activity.get(key["key_id"], {"last_used": None, "recent_requests": 0})} for key in listed["data"]]
    collections = [c.name for c in vector_config.load(models=deployments.catalogue()).collections]
    return {
        "data": keys,
        "models": deployments.catalogue().names,
        "collections": collections,
        "recent_hours": int(RECENT.total_seconds() // 3600),
    }


@router.post("/api/keys")
async def create_key(request: Request) -> Response:
    try:
        body = admin.NewKey.model_validate(_body(request))
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = ".".join(str(p) for p in problem["loc"]) or "body"
        return errors.bad_request(field, f"{field}: {problem['msg']}").response()
    return await admin.create_key(body)


@router.post("/api/keys/{ref}/revoke")
async def revoke_key(ref: str) -> Response:
    return await admin.revoke_key(ref)


@router.post("/api/keys/{ref}/rotate")
async def rotate_key(ref: str) -> Response:
    return await admin.rotate_key(ref)


async def _usage_report(request: Request) -> dict[str, Any] | Response:
    """The usage report the query asks for (``since``, ``until``: UTC days; ``by``), or a 400 naming the field."""
    query = request.query_params
    store = auth.key_store()
    try:
        span = usage.parse_range(query.get("since"), query.get("until"))
        aliases = {k.key_id: k.alias for k in await asyncio.to_thread(store.list)}
        return await asyncio.to_thread(usage.report, store.db, span, query.get("by") or "model", aliases)
    except usage.UsageRequestError as exc:
        return errors.bad_request(exc.field, str(exc)).response()


@router.get("/api/usage")
async def usage_data(request: Request) -> Response:
    data = await _usage_report(request)
    return data if isinstance(data, Response) else JSONResponse(data)


@router.get("/api/usage.csv")
async def usage_csv(request: Request) -> Response:
    data = await _usage_report(request)
    if isinstance(data, Response):
        return data
    name = f"hxp-usage-by-{data['by']}-{data['since']}-to-{data['until']}.csv"
    return Response(
        usage.csv_text(data),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{name}"'},
    )


def _audit_rows(request: Request) -> Callable[[], list[dict[str, Any]]]:
    """The search the query asks for (raises :class:`~hxp.audit.search.SearchError`), to run off the loop."""
    filters = audit_search.parse(dict(request.query_params))
    return lambda: audit_search.search(audited.trail().db, filters)


@router.get("/api/audit")
async def audit_data(request: Request) -> Response:
    try:
        search = _audit_rows(request)
    except audit_search.SearchError as exc:
        return errors.bad_request(exc.field, str(exc)).response()
    return JSONResponse({"filters": dict(request.query_params), "data": await asyncio.to_thread(search)})


@router.get("/api/audit.csv")
async def audit_csv(request: Request) -> Response:
    try:
        search = _audit_rows(request)
    except audit_search.SearchError as exc:
        return errors.bad_request(exc.field, str(exc)).response()
    text = audit_search.csv_text(await asyncio.to_thread(search))
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": 'attachment; filename="hxp-audit.csv"'},
    )


@router.get("/api/configuration")
async def configuration_data() -> dict[str, Any]:
    return await asyncio.to_thread(configuration_module.configuration)
