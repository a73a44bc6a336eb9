"""compose.yaml (the requirements' CPU server), compose.gpu.yaml (GPU servers) and compose.dev.yaml (CPU
development) from the catalogue.

Each file is a hand-written stack (``stack.yaml``, ``stack.gpu.yaml``, ``stack.dev.yaml`` next to this
module) plus one service per catalogue model, made from the stack's ``x-model-service`` template:

* server (compose.yaml, profile ``server``): the model image (vLLM's CPU build, services/model/Dockerfile)
  running the engine arguments from :mod:`hxp.model.command` (the same builder the native runner uses) with
  the weights the catalogue names, each engine on its own cores (``cpuset``) with its KV cache and thread
  binding (``VLLM_CPU_*``) and a memory limit, the gateway and the stores on the profile's ``gateway_cpus``;
* gpu (compose.gpu.yaml, applied on top of compose.yaml): the official vLLM OpenAI image with the GPUs the
  catalogue assigns, no CPU sets;
* cpu (compose.dev.yaml, applied on top of compose.yaml): the model image running ``hxp model serve NAME…``,
  which builds the same arguments inside the container, with the packaged small models and a memory limit.
  Like ``make run``, models with the same deployment share one engine by default (a ``<task>-engine``
  service answering every name of its group through network aliases); their own services form the
  ``separate-engines`` profile. Every development engine listens on :data:`DEV_ENGINE_PORT` inside its
  container, so the gateway and Prometheus reach any model at ``<name>:8000`` in either layout, and each
  task's engines get their own CPU set (:func:`cpu_sets`).

``generate`` returns the files' text; ``hxp compose generate`` writes them and
``--check`` fails when the checked-in files differ from what the catalogue gives.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from hxp.core import catalogue
from hxp.core.catalogue import Catalogue, Model
from hxp.core.paths import PROJECT_ROOT
from hxp.model.placement import place

HERE = Path(__file__).parent
TEMPLATE_KEY = "x-model-service"
# Key order of a generated service, for reading; other keys follow in the stack's order.
KEY_ORDER = (
    "build",
    "image",
    "profiles",
    "scale",
    "entrypoint",
    "command",
    "ports",
    "networks",
    "env_file",
    "environment",
    "volumes",
    "ipc",
    "shm_size",
    "cpuset",
    "depends_on",
    "deploy",
    "healthcheck",
    "restart",
)
PUBLISH = "${HXP_PUBLISH_ADDRESS:-127.0.0.1}"
CONTAINER_HOST = "0.0.0.0"
CONTAINER_CHAT_TEMPLATES = Path("/opt/hxp/templates")  # services/hxp/model/templates, mounted there by stack.yaml
DEV_ENGINE_PORT = 8000  # vLLM's default port, inside every development engine container
DEV_BACKEND_URL_TEMPLATE = f"http://{{name}}:{DEV_ENGINE_PORT}/v1"
SEPARATE_PROFILE = "separate-engines"
SHARED_SCALE = "${HXP_SHARED_ENGINES:-1}"  # 0 with the separate-engines profile (make dev DEV_ENGINES=separate)
REFERENCE_CPUS = (0, 1)  # the smallest development machine; the CPU sets' defaults in compose.dev.yaml


# --- YAML with Compose's merge tags (!override, !reset) ----------------------------


class Override(dict):
    """A mapping tagged ``!override``: replaces the key of the file below instead of merging."""


class OverrideList(list):
    """A sequence tagged ``!override``."""


class Reset:
    """``!reset null``: removes the key set by the file below."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reset)


class _Loader(yaml.SafeLoader):
    pass


class _Dumper(yaml.SafeDumper):
    """Block style with indented sequences; short lists of scalars on one line."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        super().increase_indent(flow, False)

    def represent_short_list(self, data: list[Any], tag: str = "tag:yaml.org,2002:seq") -> yaml.SequenceNode:
        scalars = all(isinstance(v, (str, int, float, bool)) for v in data)
        flow = scalars and len(data) > 0 and sum(len(str(v)) + 2 for v in data) <= 100
        return self.represent_sequence(tag, data, flow_style=flow)


def _construct_override(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return Override(loader.construct_mapping(node, deep=True))
    if isinstance(node, yaml.SequenceNode):
        return OverrideList(loader.construct_sequence(node, deep=True))
    found = node.id if isinstance(node, yaml.ScalarNode) else type(node).__name__  # (no other kind of node)
    raise yaml.constructor.ConstructorError(None, None, f"expected a sequence node, but found {found}", node.start_mark)


_Loader.add_constructor("!override", _construct_override)
_Loader.add_constructor("!reset", lambda loader, node: Reset())
_Dumper.add_representer(Override, lambda d, v: d.represent_mapping("!override", dict(v)))
_Dumper.add_representer(OverrideList, lambda d, v: d.represent_short_list(list(v), "!override"))
_Dumper.add_representer(Reset, lambda d, v: d.represent_scalar("!reset", "null", style=""))
_Dumper.add_representer(list, _Dumper.represent_short_list)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader with two tags added


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=120)


def merge(base: Any, extra: Any) -> Any:
    """Deep-merge ``extra`` into a copy of ``base``; mappings merge, anything else is replaced.

    A mapping keeps the type of ``base`` (an ``Override`` stays one).
    """
    if isinstance(base, dict) and isinstance(extra, dict):
        out = type(base)(copy.deepcopy(base))
        for key, value in extra.items():
            out[key] = merge(out[key], value) if key in out else copy.deepcopy(value)
        return out
    return copy.deepcopy(extra)


def overlaid(base: Any, overlay: Any) -> Any:
    """What ``docker compose -f base -f overlay`` sees: mappings merge, ``!override`` replaces, ``!reset``
    removes, anything else is replaced."""
    if isinstance(overlay, (Override, OverrideList)):
        return copy.deepcopy(type(overlay).__mro__[1](overlay))
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = copy.deepcopy(base)
        for key, value in overlay.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            else:
                out[key] = overlaid(out[key], value) if key in out else overlaid(None, value)
        return out
    return copy.deepcopy(overlay)


# --- the model services ---------------------------------------------------------------


def engine_invocation(model: Model, cat: Catalogue, python: str) -> tuple[list[str], list[str], dict[str, str]]:
    """(entrypoint, command, environment) of ``model``'s engine in an image whose interpreter is ``python``:
    the native runner's argv (``hxp.model.command``); of its environment only vLLM's CPU settings (KV cache,
    thread binding), as compose maps GPUs itself and the images have their own caches."""
    from hxp.model import command

    built = command.engine_command(
        [model], cat.profile_settings, host=CONTAINER_HOST, python=python, chat_templates=CONTAINER_CHAT_TEMPLATES
    )
    split = built.argv.index(command.ENTRYPOINT) + 1
    env = {k: v for k, v in sorted(built.env.items()) if k.startswith("VLLM_CPU_")}
    return built.argv[:split], built.argv[split:], env


def _health_test(port: int, python: str) -> list[str]:
    """A /health probe with the image's python (the official vLLM image has not our package)."""
    probe = f"import urllib.request; urllib.request.urlopen('http://127.0.0.1:{port}/health', timeout=5)"
    return ["CMD", python, "-c", probe]


def server_service(model: Model, cat: Catalogue) -> dict[str, Any]:
    """The model-specific part of a CPU server engine service: its cores, KV cache and memory limit."""
    entrypoint, args, env = engine_invocation(model, cat, "python")
    return {
        "entrypoint": entrypoint,
        "command": args,
        "ports": [f"{PUBLISH}:{model.port}:{model.port}"],
        "environment": env,
        "cpuset": model.deployment.cpus,
        "healthcheck": {"test": _health_test(model.port, "python")},
        "deploy": {"resources": {"limits": {"memory": f"{model.targets.memory_gb:g}g"}}},
    }


def gpu_service(model: Model, cat: Catalogue) -> dict[str, Any]:
    """The model-specific part of a GPU engine service (on top of the server's)."""
    entrypoint, args, _ = engine_invocation(model, cat, "python3")
    return {
        "entrypoint": OverrideList(entrypoint),
        "command": OverrideList(args),
        "healthcheck": {"test": OverrideList(_health_test(model.port, "python3"))},
        "deploy": Override(
            {
                "resources": {
                    "reservations": {
                        "devices": [
                            {
                                "driver": "nvidia",
                                "device_ids": [str(d) for d in model.deployment.devices],
                                "capabilities": ["gpu"],
                            },
                        ]
                    }
                }
            }
        ),
    }


def _ranges(cpus: Sequence[int]) -> str:
    """A cpuset string: 0-5,8."""
    parts, run = [], [cpus[0]]
    for cpu in cpus[1:]:
        if cpu == run[-1] + 1:
            run.append(cpu)
        else:
            parts.append(run)
            run = [cpu]
    parts.append(run)
    return ",".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in parts)


def cpu_sets(cpus: Sequence[int]) -> dict[str, str]:
    """Each task's CPU set on a machine with these CPUs, as the native runner places its engines
    (:func:`hxp.model.placement.place`): disjoint from two CPUs on."""
    placed = place(cpus, ["chat", "embedding"])
    return {"chat": _ranges(list(placed.engines[0])), "embedding": _ranges(list(placed.engines[1]))}


def cpus_variable(task: str) -> str:
    """The variable holding a task's CPU set (`hxp compose cpus` prints them for this machine)."""
    return f"HXP_{task.upper()}_CPUS"


def dev_engine_args(names: list[str]) -> list[str]:
    """The arguments of ``hxp model serve`` (the development image's entrypoint) for an engine serving ``names``."""
    return [*names, "--host", CONTAINER_HOST, "--port", str(DEV_ENGINE_PORT), "--enforce-eager"]


def _dev_engine(names: list[str], model: Model) -> dict[str, Any]:
    """What every development engine service has: its models, its port, its CPUs, its memory."""
    default_cpus = cpu_sets(REFERENCE_CPUS)[model.task]
    return {
        "command": dev_engine_args(names),
        "ports": OverrideList([f"127.0.0.1:{model.port}:{DEV_ENGINE_PORT}"]),
        "cpuset": f"${{{cpus_variable(model.task)}:-{default_cpus}}}",
        "healthcheck": {
            "test": ["CMD", "python", "-m", "hxp.deploy.probe", f"http://127.0.0.1:{DEV_ENGINE_PORT}/health"]
        },
        "deploy": {"resources": {"limits": {"memory": f"{model.targets.memory_gb:g}g"}}},
    }


def cpu_service(model: Model, cat: Catalogue) -> dict[str, Any]:
    """The model-specific part of a CPU development engine service (a profile when its group shares one)."""
    service = _dev_engine([model.name], model)
    if len(_group_of(model, cat)) > 1:
        service["profiles"] = [SEPARATE_PROFILE]
    return service


def _group_of(model: Model, cat: Catalogue) -> list[Model]:
    from hxp.model.command import engine_groups

    return next(g for g in engine_groups(cat.models) if model in g)


def engines(cat: Catalogue) -> dict[str, list[Model]]:
    """{engine name: its models}, one engine per group of models with the same deployment (as ``make run``):
    a group of one is named after its model, a shared one ``<task>-engine`` (numbered when a task has several)."""
    from hxp.model.command import engine_groups

    groups = engine_groups(cat.models)
    shared = [g for g in groups if len(g) > 1]
    named = {}
    for group in groups:
        if len(group) == 1:
            named[group[0].name] = group
            continue
        same_task = [g for g in shared if g[0].task == group[0].task]
        named[f"{group[0].task}-engine" + (f"-{same_task.index(group) + 1}" if len(same_task) > 1 else "")] = group
    return named


def shared_services(cat: Catalogue) -> dict[str, dict[str, Any]]:
    """The development stack's shared engines: one per group of models with the same deployment."""
    services = {}
    for name, group in engines(cat).items():
        if len(group) > 1:
            names = [m.name for m in group]
            services[name] = {
                **_dev_engine(names, group[0]),
                "scale": SHARED_SCALE,
                "networks": {"default": {"aliases": names}},
            }
    return services


def _ordered(service: dict[str, Any]) -> dict[str, Any]:
    first = {k: service[k] for k in KEY_ORDER if k in service}
    return {**first, **{k: v for k, v in service.items() if k not in first}}


def _server_cpus(cat: Catalogue) -> str | Reset:
    """The CPU set of the server stack's own services: the profile's gateway cores."""
    if cat.profile_settings.gateway_cpus is None:
        raise ValueError(f"profile '{cat.profile}' has no gateway_cpus for the stack's services")
    return cat.profile_settings.gateway_cpus


@dataclass(frozen=True)
class Target:
    """One generated compose file: which profile's models, from which stack, built how. ``system_cpus``: the
    ``cpuset`` of compose.yaml's own services (gateway, stores, exporters) in this file."""

    file: str
    profile: str
    stack: str
    service: Callable[[Model, Catalogue], dict[str, Any]]
    header: str
    system_cpus: Callable[[Catalogue], str | Reset] = lambda cat: Reset()
    shared: Callable[[Catalogue], dict[str, dict[str, Any]]] = lambda cat: {}
    gateway_env: tuple[tuple[str, str], ...] = ()


TARGETS = (
    Target(
        "compose.yaml",
        "server",
        "stack.yaml",
        server_service,
        "The requirements' CPU server stack: `make up` (docker compose up -d; README: Deploying on the\n"
        "# requirements' server).",
        _server_cpus,
    ),
    Target(
        "compose.gpu.yaml",
        "gpu",
        "stack.gpu.yaml",
        gpu_service,
        "The GPU server stack, on top of compose.yaml: `make up-gpu`\n"
        "# (docker compose -f compose.yaml -f compose.gpu.yaml up -d; README: Deploying on a GPU server).",
    ),
    Target(
        "compose.dev.yaml",
        "cpu",
        "stack.dev.yaml",
        cpu_service,
        "The CPU development stack, on top of compose.yaml: `make dev`\n"
        "# (docker compose -f compose.yaml -f compose.dev.yaml up -d).",
        shared=shared_services,
        gateway_env=(("HXP_BACKEND_URL_TEMPLATE", DEV_BACKEND_URL_TEMPLATE),),
    ),
)
BASE_STACK = "stack.yaml"  # compose.yaml's stack; the other files are applied on top of it


def render(target: Target, cat: Catalogue, stack_text: str) -> str:
    """One compose file's text: the stack with a service per catalogue model."""
    stack = load_yaml(stack_text)
    template = stack.pop(TEMPLATE_KEY)
    models = {m.name: _ordered(merge(template, target.service(m, cat))) for m in cat.models}
    models.update({name: _ordered(merge(template, s)) for name, s in target.shared(cat).items()})
    services = stack.get("services") or {}
    clash = sorted(set(models) & set(services))
    if clash:
        raise ValueError(
            f"{target.stack}: services {', '.join(clash)} are generated (catalogue models, shared engines); remove them"
        )
    if target.gateway_env:  # the gateway, and the load test's direct users, reach the engines alike
        for name in ("gateway", *(["locust"] if "locust" in services else [])):
            services[name] = merge(services.get(name) or {}, {"environment": dict(target.gateway_env)})
    cpus = target.system_cpus(cat)
    for name in load_yaml((HERE / BASE_STACK).read_text())["services"]:
        services[name] = _ordered(merge(services.get(name) or {}, {"cpuset": cpus}))
    document = {"services": {**models, **services}}
    document.update({k: v for k, v in stack.items() if k != "services"})
    header = (
        f"# GENERATED by `hxp compose generate` from models.yaml (profile {target.profile}) and\n"
        f"# services/hxp/deploy/{target.stack}: edit those, then regenerate. Do not edit this file.\n"
        f"# {target.header}\n"
    )
    return header + dump_yaml(document)


def generate(catalogue_path: str | Path | None = None) -> dict[str, str]:
    """{file name: text} for every generated compose file."""
    return {t.file: render(t, catalogue.load(catalogue_path, t.profile), (HERE / t.stack).read_text()) for t in TARGETS}


def write(out_dir: Path = PROJECT_ROOT, catalogue_path: str | Path | None = None) -> list[Path]:
    """Write the compose files into ``out_dir``; returns the files that changed."""
    changed = []
    for name, text in generate(catalogue_path).items():
        path = out_dir / name
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
            changed.append(path)
    return changed


def stale(out_dir: Path = PROJECT_ROOT, catalogue_path: str | Path | None = None) -> list[str]:
    """Names of the compose files in ``out_dir`` that differ from what the catalogue gives."""
    return [
        name
        for name, text in generate(catalogue_path).items()
        if not (out_dir / name).exists() or (out_dir / name).read_text() != text
    ]
