"""The ASGI app each gateway worker serves: LiteLLM's proxy app plus our routers.

The routers listed in :mod:`hxp.gateway.extensions` are included by composition
and placed ahead of LiteLLM's own routes, so that where both answer a path (the
health probes) ours is the one served. The launcher has already hidden
DATABASE_URL from LiteLLM and written the proxy config (CONFIG_FILE_PATH).
"""
from __future__ import annotations

from litellm.proxy.proxy_server import app

from hxp.gateway import extensions


def _compose() -> None:
    ours = []
    for path in extensions.ROUTERS:
        before = len(app.router.routes)
        app.include_router(extensions.resolve(path))
        ours.extend(app.router.routes[before:])
        del app.router.routes[before:]
    app.router.routes[:0] = ours


_compose()

__all__ = ["app"]
