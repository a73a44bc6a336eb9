"""Our API description at ``/openapi.json``: only what the route table serves (off unless HXP_OPENAPI=true).

LiteLLM's own description lists its whole surface; this one is built from the same handlers,
keeping only the paths and methods the table lists, each with who may call it.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, iter_route_contexts

from hxp.core import errors
from hxp.core.context import runtime
from hxp.gateway.route_table import table

router = APIRouter()
TITLE = "HXP-Enterprise LLM Server"
ACCESS = {
    "public": "anyone",
    "client": "an API key",
    "master": "the master key",
    "metrics": "anyone, or the HXP_METRICS_TOKEN bearer token when set",
}


def describe(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI document of the routes the table serves, from ``app``'s handlers."""
    served = table()
    routes = []
    for context in iter_route_contexts(app.router.routes):
        route = context.original_route
        if not isinstance(route, APIRoute) or route.methods is None:  # an APIRoute always has its methods
            continue
        methods = {m for m in route.methods if served.match(m, route.path).route is not None}
        if methods:
            routes.append(route if methods == route.methods else _with_methods(route, methods))
    document = get_openapi(
        title=TITLE, version="1", routes=routes, description="OpenAI-compatible API, vector search and administration."
    )
    document.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            entry = served.match(method.upper(), path).route
            if entry is not None:
                operation["summary"] = entry.summary
                operation["description"] = f"Who may call it: {ACCESS[entry.access]}."
                if entry.access != "public":
                    operation["security"] = [{"bearer": []}]
    return document


def _with_methods(route: APIRoute, methods: set[str]) -> APIRoute:
    return APIRoute(
        route.path,
        route.endpoint,
        methods=sorted(methods),
        response_model=route.response_model,
        summary=route.summary,
        name=route.name,
        include_in_schema=route.include_in_schema,
    )


@router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> JSONResponse:
    if not runtime().settings.openapi:
        return errors.GatewayError(
            404, "The API description is off (HXP_OPENAPI=true serves it)", code="unknown_route"
        ).response()
    state = request.app.state
    if getattr(state, "hxp_openapi", None) is None:  # built once per app: its routes are fixed at start
        state.hxp_openapi = describe(request.app)
    return JSONResponse(state.hxp_openapi)
