"""systemd units for hosts without Docker: one per catalogue model, one for the gateway, and hxp.target.

Every unit runs our own command (``hxp model serve NAME``, ``hxp gateway serve``)
with the shared policy of ``systemd.yaml`` (the requirements' template B.4).
On a GPU profile each engine sees only the GPUs the catalogue assigns it; on a
CPU profile its memory is capped at the model's target, and on a planned CPU profile
(``server``) each engine runs on its own cores with its memory on their NUMA node, the
gateway on the profile's gateway cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from hxp.core.catalogue import Catalogue, Model, cpu_list

POLICY = yaml.safe_load(Path(__file__).with_name("systemd.yaml").read_text())
TARGET = "hxp.target"


@dataclass(frozen=True)
class Install:
    """Where and as whom the stack is installed on the host."""

    prefix: Path  # the project checkout (models.yaml, env/, .venv)
    hxp: Path  # the `hxp` console script
    state_dir: Path  # weights, caches, SQLite, Qdrant local storage
    user: str = "hxp"
    group: str = "hxp"

    @classmethod
    def at(
        cls,
        prefix: Path,
        user: str = "hxp",
        group: str | None = None,
        hxp: Path | None = None,
        state_dir: Path | None = None,
    ) -> Install:
        prefix = prefix.resolve()
        return cls(prefix, hxp or prefix / ".venv" / "bin" / "hxp", state_dir or prefix / ".state", user, group or user)


def _value(value: object) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def _render(sections: dict[str, list[tuple[str, object]]]) -> str:
    blocks = []
    for name, entries in sections.items():
        blocks.append(f"[{name}]\n" + "".join(f"{key}={_value(value)}\n" for key, value in entries))
    return "\n".join(blocks)


def _service(
    install: Install, profile: str, command: str, env_file: str, environment: dict[str, str], extra: dict[str, object]
) -> list[tuple[str, object]]:
    env = {
        "HXP_HOME": str(install.prefix),
        "HXP_PROFILE": profile,
        "HXP_STATE_DIR": str(install.state_dir),
        "HF_HOME": str(install.state_dir / "huggingface"),
        **environment,
    }
    return [
        ("User", install.user),
        ("Group", install.group),
        ("WorkingDirectory", install.prefix),
        *[("Environment", f"{k}={v}") for k, v in env.items()],
        ("EnvironmentFile", f"-{install.prefix / 'env' / env_file}"),
        ("ExecStart", f"{install.hxp} {command}"),
        *POLICY["service"].items(),
        *extra.items(),
        ("ReadWritePaths", install.state_dir),
    ]


def unit_name(model: Model) -> str:
    return f"hxp-model-{model.name}.service"


def model_unit(model: Model, cat: Catalogue, install: Install) -> str:
    environment = {"VLLM_WORKER_MULTIPROC_METHOD": "spawn"}
    extra: dict[str, object] = {}
    if cat.profile_settings.device == "cuda":
        environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in model.deployment.devices)
    else:
        extra["MemoryMax"] = f"{model.targets.memory_gb:g}G"
        machine, cpus = cat.profile_settings.machine, model.deployment.cpus
        if machine is not None and cpus is not None:
            extra["CPUAffinity"] = cpus
            extra["NUMAPolicy"] = "bind"
            extra["NUMAMask"] = machine.numa_node(cpu_list(cpus)[0])
    return _render(
        {
            "Unit": [
                ("Description", f"HXP model service {model.name} (port {model.port}): {model.description}"),
                ("After", "network-online.target"),
                ("Wants", "network-online.target"),
                ("PartOf", TARGET),
            ],
            "Service": _service(install, cat.profile, f"model serve {model.name}", "models.env", environment, extra),
            "Install": [("WantedBy", TARGET)],
        }
    )


def gateway_unit(cat: Catalogue, install: Install) -> str:
    engines = " ".join(unit_name(m) for m in cat.models)
    gateway = dict(POLICY["gateway"])
    if cat.profile_settings.gateway_cpus is not None:
        gateway["CPUAffinity"] = cat.profile_settings.gateway_cpus
    return _render(
        {
            "Unit": [
                ("Description", "HXP gateway: OpenAI-compatible API on :8000 in front of the model services"),
                ("After", f"network-online.target postgresql.service redis-server.service {engines}"),
                ("Wants", "network-online.target"),
                ("PartOf", TARGET),
            ],
            "Service": _service(install, cat.profile, "gateway serve", "gateway.env", {}, gateway),
            "Install": [("WantedBy", TARGET)],
        }
    )


def target_unit(cat: Catalogue) -> str:
    units = " ".join([*(unit_name(m) for m in cat.models), "hxp-gateway.service"])
    return _render(
        {
            "Unit": [
                ("Description", "HXP-Enterprise LLM Server: all model services and the gateway"),
                ("Wants", units),
                ("After", units),
            ],
            "Install": [("WantedBy", "multi-user.target")],
        }
    )


def generate(cat: Catalogue, install: Install) -> dict[str, str]:
    """{unit file name: text} for the catalogue's models, the gateway and hxp.target."""
    units = {unit_name(m): model_unit(m, cat, install) for m in cat.models}
    units["hxp-gateway.service"] = gateway_unit(cat, install)
    units[TARGET] = target_unit(cat)
    return units


def write(out: Path, cat: Catalogue, install: Install) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, text in generate(cat, install).items():
        path = out / name
        path.write_text(text)
        paths.append(path)
    return paths
