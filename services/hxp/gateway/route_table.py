"""The gateway's route table (route_table.yaml): every path served, with who may call it.

:func:`table` loads and validates it once; :meth:`RouteTable.match` finds the route for a
method and path (or tells a known path with another method apart from an unknown path).
:func:`outside` lists LiteLLM's routes that are classified and never served
(litellm_routes_outside.txt); the route inventory test checks that together they cover
every route the composed app has.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from hxp.core.context import Runtime, runtime

TABLE_FILE = Path(__file__).with_name("route_table.yaml")
OUTSIDE_FILE = Path(__file__).with_name("litellm_routes_outside.txt")
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

Access = Literal["public", "client", "master", "metrics", "console"]


class Route(BaseModel):
    """One served path."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    path: str
    methods: tuple[str, ...]
    access: Access
    body: Literal["chat", "completion", "embedding", "responses", "json"] | None = None
    model: Literal["body", "path"] | None = None
    collection: Literal["read", "write"] | None = None
    usage: bool = False
    summary: str = Field(min_length=1)  # the one description of the route (OpenAPI takes it from here)

    def takes_body(self, method: str) -> bool:
        return self.body is not None and method in BODY_METHODS


@dataclass(frozen=True)
class Match:
    """A request's route (None: unknown path) and its path parameters; ``allowed`` lists the methods of a known
    path requested with another method."""

    route: Route | None
    params: dict[str, str] = field(default_factory=dict)
    allowed: tuple[str, ...] = ()


def _pattern(path: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-z_]+\})", path)
    regex = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}$")


class RouteTable:
    """Routes by exact path first, then by pattern."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._static: dict[str, list[Route]] = {}
        self._patterns: list[tuple[re.Pattern[str], Route]] = []
        for route in routes:
            if "{" in route.path:
                self._patterns.append((_pattern(route.path), route))
            else:
                self._static.setdefault(route.path, []).append(route)

    def match(self, method: str, path: str) -> Match:
        candidates: list[tuple[Route, dict[str, str]]] = [(r, {}) for r in self._static.get(path, [])]
        if not candidates:
            candidates = [(r, m.groupdict()) for p, r in self._patterns if (m := p.match(path))]
        lookup = "GET" if method == "HEAD" else method
        for route, params in candidates:
            if lookup in route.methods:
                return Match(route, params)
        return Match(None, allowed=tuple(sorted({m for r, _ in candidates for m in r.methods})))


def _table(rt: Runtime) -> RouteTable:
    raw = yaml.safe_load(TABLE_FILE.read_text())
    return RouteTable([Route.model_validate(entry) for entry in raw["routes"]])


def table() -> RouteTable:
    """The route table from route_table.yaml (validated), read once per runtime."""
    return runtime().get(_table)


def inventory(app: Any) -> set[tuple[str, str]]:
    """Every route a FastAPI app has, as (kind, path): kind is the sorted methods joined by ``,``, ``WS`` for a
    WebSocket route or ``MOUNT`` for a mounted app."""
    from fastapi.routing import iter_route_contexts
    from starlette.routing import Mount, WebSocketRoute

    found: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.router.routes):
        route = context.original_route
        assert context.path is not None  # only a starlette Host route has no path, and these apps have none
        if isinstance(route, Mount):
            kind = "MOUNT"
        elif isinstance(route, WebSocketRoute) or context.methods is None:
            kind = "WS"
        else:
            kind = ",".join(sorted(context.methods))
        found.add((kind, context.path))
    return found


def unclassified(app: Any) -> set[tuple[str, str]]:
    """The app's routes that neither the table serves nor litellm_routes_outside.txt lists."""
    served, outside_routes = table(), outside()
    return {
        (kind, path)
        for kind, path in inventory(app)
        if (kind, path) not in outside_routes
        and not (
            kind not in ("MOUNT", "WS")
            and all(served.match(m, path).route is not None for m in kind.split(",") if m != "HEAD")
        )
    }


def undeclared(routes: list[Any]) -> list[str]:
    """``METHOD path`` of each of these routes (our routers') that the table does not declare."""
    return [
        f"{method} {route.path}"
        for route in routes
        for method in sorted(getattr(route, "methods", None) or ())
        if method != "HEAD" and table().match(method, route.path).route is None
    ]


def outside() -> set[tuple[str, str]]:
    """LiteLLM's routes classified as outside the gateway: (kind or method list, path) pairs."""
    pairs = set()
    for line in OUTSIDE_FILE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            kind, _, path = line.partition(" ")
            pairs.add((kind, path.strip()))
    return pairs
