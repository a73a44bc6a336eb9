"""The house's rules, read from the package's own import graph (every import statement, those inside functions
too): no module imports another in a circle, the rooms form no circle either, the ground floor
(``hxp.core``) imports no room above it, the audit trail (``hxp.audit``) only the ground floor, and the
gateway's core (``hxp.gateway``) nothing but those two: features plug in through ``hxp.gateway.extensions``
by name. The rules are checked on the real tree and shown to catch a
planted violation."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "services" / "hxp"
GROUND_FLOOR = "core"
GATEWAY = "gateway"
AUDIT = "audit"  # beside the ground floor: the gateway core records its events through it
Graph = dict[str, set[str]]


def import_graph(package: Path) -> Graph:
    """module -> the package's modules it imports (``from a import b`` counts b when b is a module)."""
    modules: dict[str, Path] = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {name: set() for name in modules}
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [
                    f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
                ]
            graph[name].update(t for t in map(known, targets) if t and t != name)
    return graph


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def room(module: str) -> str:
    """A module's room: the package's top-level subpackage or module (``hxp.gateway.usage.spill`` -> gateway)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def rooms(graph: Graph) -> Graph:
    rooms_graph: Graph = {}
    for source, targets in graph.items():
        rooms_graph.setdefault(room(source), set()).update(room(t) for t in targets if room(t) != room(source))
    return rooms_graph


def upward(graph: Graph) -> list[str]:
    """Imports that run back up: the ground floor importing any other room, the audit trail anything but the ground
    floor, the gateway core anything but those two."""
    allowed = {GROUND_FLOOR: {GROUND_FLOOR}, AUDIT: {GROUND_FLOOR, AUDIT}, GATEWAY: {GROUND_FLOOR, AUDIT, GATEWAY}}
    return sorted(
        f"{source} -> {target}"
        for source, targets in graph.items()
        for target in targets
        if room(source) in allowed and room(target) not in allowed[room(source)]
    )


def test_no_module_imports_another_in_a_circle() -> None:
    assert cycles(import_graph(PACKAGE)) == []


def test_the_rooms_form_no_circle() -> None:
    assert cycles(rooms(import_graph(PACKAGE))) == []


def test_the_ground_floor_and_the_gateway_core_import_nothing_above_them() -> None:
    graph = import_graph(PACKAGE)
    assert {GROUND_FLOOR, AUDIT, GATEWAY} <= set(rooms(graph))
    assert upward(graph) == []


@pytest.fixture
def planted(tmp_path: Path) -> Path:
    copy = tmp_path / "hxp"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "*.yaml", "*.sql", "static"))
    return copy


def test_a_circle_through_an_import_inside_a_function_is_caught(planted: Path) -> None:
    auth = planted / "gateway" / "auth.py"
    auth.write_text(auth.read_text() + "\n\ndef _late() -> None:\n    from hxp.gateway import boundary  # noqa\n")
    assert ["hxp.gateway.auth", "hxp.gateway.boundary"] in [
        [m for m in c if m in ("hxp.gateway.auth", "hxp.gateway.boundary")] for c in cycles(import_graph(planted))
    ]


def test_the_gateway_core_reaching_into_a_feature_is_caught(planted: Path) -> None:
    boundary = planted / "gateway" / "boundary.py"
    boundary.write_text("from hxp.console import sessions\n" + boundary.read_text())
    assert "hxp.gateway.boundary -> hxp.console.sessions" in upward(import_graph(planted))


def test_the_ground_floor_reaching_up_is_caught(planted: Path) -> None:
    settings = planted / "core" / "settings.py"
    settings.write_text(settings.read_text() + "\nfrom ..vector import config  # noqa\n")
    assert "hxp.core.settings -> hxp.vector.config" in upward(import_graph(planted))


def test_the_audit_trail_reaching_into_the_gateway_is_caught(planted: Path) -> None:
    trail = planted / "audit" / "trail.py"
    trail.write_text(trail.read_text() + "\nfrom hxp.gateway import auth  # noqa\n")
    assert "hxp.audit.trail -> hxp.gateway.auth" in upward(import_graph(planted))
