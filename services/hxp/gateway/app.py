"""The ASGI app each gateway worker serves: the trust boundary around LiteLLM's proxy app plus our routers.

The routers listed in :mod:`hxp.gateway.extensions` are included by composition and
placed ahead of LiteLLM's own routes, so that where both answer a path (the health
probes, /openapi.json) ours is the one served. :data:`app` is :class:`~hxp.gateway.boundary.Boundary`
around that proxy app: only what the route table lists reaches it. Everything the worker
writes to stdout and stderr is redacted. The launcher has already hidden DATABASE_URL from
LiteLLM and written the proxy config (CONFIG_FILE_PATH).
"""

from __future__ import annotations

from hxp.core import redaction, settings
from hxp.core.context import runtime
from hxp.gateway import extensions, route_table

redaction.install_output_redaction()

from litellm.proxy.proxy_server import app as proxy_app  # noqa: E402 - after the redaction of its output

from hxp.gateway.boundary import Boundary  # noqa: E402


def _compose() -> None:
    """Our routers ahead of LiteLLM's; each of their routes must be one the table declares (its access, body
    and summary are declared there, once), or the worker stops at start naming it."""
    ours = []
    for path in extensions.ROUTERS:
        before = len(proxy_app.router.routes)
        proxy_app.include_router(extensions.resolve(path))
        ours.extend(proxy_app.router.routes[before:])
        del proxy_app.router.routes[before:]
    undeclared = route_table.undeclared(ours)
    if undeclared:
        raise SystemExit(f"routes served but not in route_table.yaml: {', '.join(undeclared)}")
    proxy_app.router.routes[:0] = ours


settings.register_secrets(runtime().settings)
_compose()
app = Boundary(proxy_app)

__all__ = ["app", "proxy_app"]
