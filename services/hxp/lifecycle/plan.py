"""What applying a catalogue changes, and whether it can: the plan and the checks made before anything is touched.

The plan compares two catalogues under one profile: which engines start, stop, are replaced (their deployment
changed: weights, vLLM settings, tools) or stay, and which gateway settings change (model list, aliases,
limits, fallbacks, timeouts). The checks refuse, with what to fix, an invalid catalogue, an unknown model,
missing weights, a port in use and too little memory to run a new engine beside the old one.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from hxp.core.catalogue import Catalogue, CatalogueError, Model, parse
from hxp.model.command import _shared_key, engine_groups
from hxp.model.weights import package_dir

Action = Literal["start", "stop", "replace", "stay"]


class Refused(ValueError):
    """The change cannot be made; the message says what to fix. Nothing was touched."""


@dataclass(frozen=True)
class EngineChange:
    action: Action
    names: tuple[str, ...]
    port: int
    models: tuple[Model, ...]  # the new catalogue's models (the old ones for a stop)


@dataclass(frozen=True)
class Plan:
    engines: list[EngineChange]
    gateway: list[str]  # one line per gateway setting that changes

    @property
    def changed(self) -> bool:
        return bool(self.gateway) or any(e.action != "stay" for e in self.engines)

    def of(self, *actions: Action) -> list[EngineChange]:
        return [e for e in self.engines if e.action in actions]

    def render(self) -> str:
        lines = ["engines:"]
        lines += [f"  {e.action:<8} {', '.join(e.names)} (:{e.port})" for e in self.engines]
        lines.append("gateway:" + ("" if self.gateway else " no change"))
        lines += [f"  {line}" for line in self.gateway]
        return "\n".join(lines)


def load_text(text: str, profile: str, path: Path) -> Catalogue:
    """Parse a catalogue's text; a YAML error is a CatalogueError too."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise CatalogueError(f"invalid catalogue {path}: {err}") from None
    return parse(raw, profile, path)


def _api(model: Model) -> dict[str, Any]:
    return model.api.model_dump()


def gateway_changes(old: Catalogue, new: Catalogue) -> list[str]:
    """Models added or removed, and each API setting that changes (``model: field old -> new``)."""
    before, after = {m.name: m for m in old.models}, {m.name: m for m in new.models}
    lines = [f"{name}: added" for name in after if name not in before]
    lines += [f"{name}: removed" for name in before if name not in after]
    for name in after.keys() & before.keys():
        a, b = _api(before[name]), _api(after[name])
        lines += [f"{name}: api.{field} {a[field]} -> {b[field]}" for field in a if a[field] != b[field]]
        if before[name].port != after[name].port:
            lines.append(f"{name}: port {before[name].port} -> {after[name].port}")
    return sorted(lines)


def plan(old: Catalogue, new: Catalogue) -> Plan:
    """The engines (shared as the native runner shares them) and gateway settings ``new`` changes."""
    old_groups = engine_groups(old.models)
    changes: list[EngineChange] = []
    matched: set[int] = set()
    for group in engine_groups(new.models):
        names = {m.name for m in group}
        overlapping = [i for i, g in enumerate(old_groups) if names & {m.name for m in g}]
        matched.update(overlapping)
        same = (
            len(overlapping) == 1
            and {m.name for m in old_groups[overlapping[0]]} == names
            and _shared_key(old_groups[overlapping[0]][0]) == _shared_key(group[0])
            and old_groups[overlapping[0]][0].port == group[0].port
        )
        action: Action = "stay" if same else "replace" if overlapping else "start"
        changes.append(EngineChange(action, tuple(sorted(names)), group[0].port, tuple(group)))
    for i, group in enumerate(old_groups):
        if i not in matched:
            changes.append(EngineChange("stop", tuple(sorted(m.name for m in group)), group[0].port, tuple(group)))
    return Plan(changes, gateway_changes(old, new))


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        return s.connect_ex((host, port)) != 0


def available_memory_gib() -> float:
    """MemAvailable from /proc/meminfo, in GiB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    raise OSError("no MemAvailable in /proc/meminfo")


def check_weights(model: Model) -> None:
    """Refuse an engine whose weights are not where they are read from (a hub id is pulled at start)."""
    if model.package and not package_dir(model.package).is_dir():
        raise Refused(
            f"model '{model.name}': the weights of package '{model.package}' are not prepared "
            f"({package_dir(model.package)}); run `hxp prepare` first"
        )
    local = model.source.startswith(("/", "./", "~"))
    if local and not Path(model.source).expanduser().is_dir():
        raise Refused(f"model '{model.name}': no weights folder {model.source}; fix `source` in the catalogue")


def check_memory(models: tuple[Model, ...], side_by_side: bool, need_gib: float | None = None) -> None:
    """Refuse an engine that would not fit in the memory left (beside the one it replaces); it needs ``need_gib``
    (a container's memory limit), else the catalogue's ``targets.memory_gb``."""
    need = need_gib if need_gib is not None else max(m.targets.memory_gb for m in models)
    free = available_memory_gib()
    if need > free:
        beside = " beside the engine it replaces" if side_by_side else ""
        what = "its memory limit" if need_gib is not None else "targets.memory_gb"
        raise Refused(
            f"engine {', '.join(m.name for m in models)} needs about {need:.1f} GiB{beside}, "
            f"{free:.1f} GiB is available; free memory or lower {what} if it is wrong"
        )


def check(p: Plan) -> None:
    """Every check of a plan's engines, before anything is touched."""
    for change in p.of("start", "replace"):
        for model in change.models:
            check_weights(model)
        if change.action == "start" and not port_free(change.port):
            raise Refused(
                f"port {change.port} of {', '.join(change.names)} is in use; "
                "stop what listens there or choose another port in the catalogue"
            )
        check_memory(change.models, side_by_side=change.action == "replace")
