"""The Helm chart deploy/helm/hxp from the catalogue, as compose.yaml is made (``hxp k8s generate``).

The chart's templates are written by hand in deploy/helm/hxp/templates. Generated here:

* values.yaml (gpu profile) and values-cpu.yaml (cpu profile, applied on top): the hand-written values next
  to this module with ``engines:`` appended, one entry per engine of :func:`hxp.deploy.compose.engines` with
  the image, entrypoint, arguments and environment compose gives the same engine (gpu: the vLLM image with
  :mod:`hxp.model.command`'s arguments; cpu: the project's model image running ``hxp model serve``), its
  GPUs (tensor_parallel_size), its drain time (the longest request timeout of its models) and its startup
  time (the compose health check's start period). values-cpu.yaml sets to ``null`` what only the gpu
  profile has, which Helm removes;
* files/: copies of the alert rules (prometheus/rules), the Grafana dashboards (grafana/dashboards) and the
  chat templates the gpu engines mount, which the templates read with ``.Files``.
"""

from __future__ import annotations

import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hxp.core import catalogue
from hxp.core.catalogue import CHAT_TEMPLATES, Catalogue, Model
from hxp.core.paths import PROJECT_ROOT
from hxp.deploy import compose
from hxp.monitoring.dashboards import DASHBOARDS_DIR
from hxp.monitoring.prometheus_config import RULES_DIR

HERE = Path(__file__).parent
CHART_DIR = PROJECT_ROOT / "deploy" / "helm" / "hxp"
ENGINES_KEY = "engines"
# files/<folder> of the chart: the source folder and which of its files are copied
COPIED = {"rules": (RULES_DIR, "*.yml"), "dashboards": (DASHBOARDS_DIR, "*.json")}
CHAT_TEMPLATES_FOLDER = "chat-templates"
DURATION = re.compile(r"^(\d+)([smh])$")


@dataclass(frozen=True)
class ValuesFile:
    """One generated values file: which profile's engines, from which compose stacks (later ones on top)."""

    file: str
    profile: str
    stacks: tuple[str, ...]
    base: str | None = None  # the values file it is applied on top of


VALUES = (
    ValuesFile("values.yaml", "gpu", ("stack.yaml", "stack.gpu.yaml")),
    ValuesFile("values-cpu.yaml", "cpu", ("stack.yaml", "stack.dev.yaml"), base="values.yaml"),
)


def _seconds(duration: str) -> int:
    """A compose duration of one unit (30s, 5m, 1h) in seconds."""
    match = DURATION.match(duration)
    if not match:
        raise ValueError(f"unsupported duration {duration!r}")
    return int(match[1]) * {"s": 1, "m": 60, "h": 3600}[match[2]]


def _image(reference: str) -> dict[str, str]:
    repository, tag = reference.rsplit(":", 1)
    return {"repository": repository, "tag": tag}


def engine_template(stacks: tuple[str, ...]) -> dict[str, Any]:
    """Compose's ``x-model-service`` template of these stacks, each laid over the one before as compose does."""
    merged: dict[str, Any] = {}
    for stack in stacks:
        merged = compose.overlaid(merged, compose.load_yaml((compose.HERE / stack).read_text())[compose.TEMPLATE_KEY])
    return merged


def engine_values(models: list[Model], cat: Catalogue, template: dict[str, Any]) -> dict[str, Any]:
    """One engine's entry under ``engines:``: what compose runs for ``models`` (a group sharing one engine)."""
    first = models[0]
    env = {k: str(v) for k, v in template["environment"].items()}
    entry: dict[str, Any] = {"models": [m.name for m in models], "task": first.task, "image": _image(template["image"])}
    if cat.profile_settings.device == "cuda":
        command, args, _ = compose.engine_invocation(first, cat, "python3")
        entry.update(
            port=first.port,
            command=command,
            args=args,
            env=env,
            gpus=first.deployment.tensor_parallel_size,
            cachePath=env["HF_HOME"],
        )
        if first.tools and first.tools.chat_template:
            entry["chatTemplates"] = str(compose.CONTAINER_CHAT_TEMPLATES)
    else:
        memory = f"{first.targets.memory_gb:g}Gi"
        entry.update(
            port=compose.DEV_ENGINE_PORT,
            command=list(template["entrypoint"]),
            args=compose.dev_engine_args(entry["models"]),
            env=env,
            resources={"requests": {"memory": memory}, "limits": {"memory": memory}},
        )
    entry["startupSeconds"] = _seconds(template["healthcheck"]["start_period"])
    entry["drainSeconds"] = math.ceil(max(m.api.timeout_s for m in models))
    return entry


def engines(cat: Catalogue, stacks: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """``engines:`` of a values file: one entry per engine compose's shared layout has."""
    template = engine_template(stacks)
    return {name: engine_values(group, cat, template) for name, group in compose.engines(cat).items()}


def removals(base: Any, new: Any) -> Any:
    """``new`` as a Helm values file applied on top of ``base``: keys only ``base`` has become ``None``."""
    if not (isinstance(base, dict) and isinstance(new, dict)):
        return new
    out = {key: None for key in base if key not in new}
    out.update({key: removals(base.get(key), value) for key, value in new.items()})
    return out


def _values_text(values: ValuesFile, generated: dict[str, Any], cat: Catalogue) -> str:
    base = (HERE / values.file).read_text()
    if re.search(rf"^{ENGINES_KEY}:", base, re.MULTILINE):
        raise ValueError(f"{HERE / values.file}: `{ENGINES_KEY}:` is generated; remove it")
    header = (
        f"# GENERATED by `hxp k8s generate` from {cat.path.name} (profile {values.profile}) and\n"
        f"# services/hxp/k8s/{values.file}: edit those, then regenerate. Do not edit this file.\n"
    )
    return header + base + "\n" + compose.dump_yaml({ENGINES_KEY: generated})


def generate(catalogue_path: str | Path | None = None) -> dict[str, str]:
    """{path inside the chart: text} for every generated file."""
    files: dict[str, str] = {}
    generated: dict[str, dict[str, Any]] = {}
    templates: set[str] = set()
    for values in VALUES:
        cat = catalogue.load(catalogue_path, values.profile)
        generated[values.file] = engines(cat, values.stacks)
        own = generated[values.file]
        if values.base is not None:
            own = removals(generated[values.base], own)
        files[values.file] = _values_text(values, own, cat)
        templates |= {
            m.tools.chat_template
            for m in cat.models
            if m.tools and m.tools.chat_template and cat.profile_settings.device == "cuda"
        }
    for folder, (source, pattern) in COPIED.items():
        files.update({f"files/{folder}/{p.name}": p.read_text() for p in sorted(source.glob(pattern))})
    files.update({f"files/{CHAT_TEMPLATES_FOLDER}/{t}": (CHAT_TEMPLATES / t).read_text() for t in sorted(templates)})
    return files


def _generated_folders(out: Path) -> list[Path]:
    return [out / "files" / folder for folder in (*COPIED, CHAT_TEMPLATES_FOLDER)]


def _leftovers(out: Path, expected: dict[str, str]) -> list[Path]:
    """Files in the generated folders that the catalogue no longer gives (a removed rule file, say)."""
    return [
        p
        for folder in _generated_folders(out)
        if folder.is_dir()
        for p in sorted(folder.iterdir())
        if str(p.relative_to(out)) not in expected
    ]


def write(out: Path = CHART_DIR, catalogue_path: str | Path | None = None) -> list[Path]:
    """Write the generated files into the chart at ``out``; returns those changed or removed."""
    files = generate(catalogue_path)
    changed = []
    for path in _leftovers(out, files):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
        changed.append(path)
    for name, text in files.items():
        path = out / name
        if not path.exists() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            changed.append(path)
    return changed


def stale(out: Path = CHART_DIR, catalogue_path: str | Path | None = None) -> list[str]:
    """The chart's files (relative to ``out``) that differ from what the catalogue gives, or should not be there."""
    files = generate(catalogue_path)
    differ = [name for name, text in files.items() if not (out / name).exists() or (out / name).read_text() != text]
    return differ + [str(p.relative_to(out)) for p in _leftovers(out, files)]
