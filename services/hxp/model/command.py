"""Turn catalogue models and a profile into a ``vllm serve`` command line and environment.

Pure functions: nothing here starts a process (see hxp.model.service for that).
Several models with the same deployment can share one engine: vLLM serves them
under several ``--served-model-name`` aliases. On CPU an engine may be given its own
cores (hxp.model.placement): its process is pinned to them and its OpenMP threads
bound to them (``VLLM_CPU_OMP_THREADS_BIND``).
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hxp.core.catalogue import CHAT_TEMPLATES, Catalogue, Model, Profile, Tools, cpu_list
from hxp.core.paths import state_path
from hxp.model.placement import Placement, omp_threads_bind
from hxp.model.weights import engine_python, resolve_source

# `vllm serve` is the vllm CLI's main module: run with the engine's python, it needs no console script
# (whose shebang names the venv it was installed into).
ENTRYPOINT = "vllm.entrypoints.cli.main"
# On CPU, vLLM otherwise reserves --gpu-memory-utilization (0.92) of the machine's memory per engine.
# A fixed KV cache lets several engines share one machine; override with VLLM_CPU_KVCACHE_SPACE (a planned
# profile's engines have their own, `kv_cache_gib`).
CPU_KV_CACHE_GIB = 1
# Tool-call arguments always follow the tool's parameter schema: vLLM constrains them as if every tool
# were `strict: true` (its structural tags; without this only the call's envelope is constrained).
TOOL_STRICT_LEVEL = "parameter"


@dataclass(frozen=True)
class EngineCommand:
    """One engine process: what to run, with which extra environment, and what it serves."""

    argv: list[str]
    env: dict[str, str]
    host: str
    port: int
    names: list[str]
    task: str
    model: str = ""  # the weights: a hub id or a local folder
    cpus: tuple[int, ...] = ()  # the cores the engine is pinned to; empty: not pinned
    device: str = "cpu"  # the profile's device: on "cpu" the weights' kernels are checked before start
    dtype: str = "auto"  # vLLM's --dtype

    @property
    def log_name(self) -> str:
        """A short file-name friendly label: the first name, plus how many aliases follow."""
        return self.names[0] + (f"+{len(self.names) - 1}" if len(self.names) > 1 else "")

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    def shell(self) -> str:
        """The command as one copy-pasteable shell line, environment first (``taskset`` when pinned)."""
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(self.env.items()))
        pin = f"taskset -c {','.join(map(str, self.cpus))} " if self.cpus else ""
        return f"{env} {pin}{shlex.join(self.argv)}"


def _shared_key(model: Model) -> tuple:
    dep = model.deployment
    return (model.task, dep.source, dep.quantization, tuple(dep.devices), dep.tensor_parallel_size, dep.vllm, dep.tools)


def engine_groups(models: Sequence[Model], separate: bool = False) -> list[list[Model]]:
    """Group models into engines: those with the same deployment share one, unless ``separate``."""
    if separate:
        return [[m] for m in models]
    groups: dict[tuple, list[Model]] = {}
    for model in models:
        groups.setdefault(_shared_key(model), []).append(model)
    return list(groups.values())


def engine_env(
    profile: Profile,
    devices: Sequence[int],
    local_weights: bool,
    cpus: Sequence[int] = (),
    kv_cache_gib: int | None = None,
) -> dict[str, str]:
    """Caches under the state directory; GPU selection; CPU KV cache (a planned profile's ``kv_cache_gib``,
    else VLLM_CPU_KVCACHE_SPACE or CPU_KV_CACHE_GIB) and thread binding; no hub calls for local weights."""
    env = {
        "VLLM_CACHE_ROOT": str(state_path("cache", "vllm")),
        "TORCHINDUCTOR_CACHE_DIR": str(state_path("cache", "torchinductor")),
        "HF_HOME": str(state_path("cache", "huggingface")),
    }
    if profile.device == "cuda" and devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in devices)
    if profile.device == "cpu":
        kv = kv_cache_gib or os.environ.get("VLLM_CPU_KVCACHE_SPACE") or CPU_KV_CACHE_GIB
        env["VLLM_CPU_KVCACHE_SPACE"] = str(kv)
        if cpus:
            env["VLLM_CPU_OMP_THREADS_BIND"] = omp_threads_bind(cpus)
    if local_weights:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def tool_flags(tools: Tools | None, chat_templates: Path = CHAT_TEMPLATES) -> list[str]:
    """vLLM's tool-calling flags for a deployment declaring ``tools`` (none without): any ``tool_choice``,
    the catalogue's parser, schema-constrained arguments and the tool-aware chat template, if any, as found
    in ``chat_templates`` (another folder where the engine runs elsewhere, e.g. in a container)."""
    if tools is None:
        return []
    flags = ["--enable-auto-tool-choice", "--tool-call-parser", tools.parser, "--tool-strict-level", TOOL_STRICT_LEVEL]
    if tools.chat_template is not None:
        flags += ["--chat-template", str(chat_templates / tools.chat_template)]
    return flags


def engine_command(
    models: Sequence[Model],
    profile: Profile,
    *,
    host: str = "127.0.0.1",
    port: int | None = None,
    enforce_eager: bool = False,
    python: str | None = None,
    chat_templates: Path = CHAT_TEMPLATES,
    cpus: Sequence[int] = (),
) -> EngineCommand:
    """The command for one engine serving ``models`` (all with the same deployment) under ``profile``.

    ``cpus``: on a CPU profile, the cores the engine runs on (see hxp.model.placement); default: the
    catalogue's ``cpus`` on a planned profile.
    """
    if not models:
        raise ValueError("an engine needs at least one model")
    first = models[0]
    for other in models[1:]:
        if _shared_key(other) != _shared_key(first):
            raise ValueError(
                f"models '{first.name}' and '{other.name}' have different deployments; they cannot share an engine"
            )
    dep, settings = first.deployment, first.deployment.vllm
    source = resolve_source(first)
    dtype = first.quantization.dtype if first.quantization else settings.dtype
    port = port or first.port
    names = [m.name for m in models]
    argv = [
        python or engine_python(),
        "-m",
        ENTRYPOINT,
        "serve",
        source,
        "--served-model-name",
        *names,
        "--host",
        host,
        "--port",
        str(port),
        "--max-model-len",
        str(settings.max_model_len),
        "--dtype",
        dtype,
        "--tensor-parallel-size",
        str(dep.tensor_parallel_size),
    ]
    if profile.device == "cuda" and settings.gpu_memory_utilization is not None:
        argv += ["--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    if settings.max_num_batched_tokens is not None:
        argv += ["--max-num-batched-tokens", str(settings.max_num_batched_tokens)]
    if settings.max_num_seqs is not None:
        argv += ["--max-num-seqs", str(settings.max_num_seqs)]
    if first.task == "embedding":
        argv += ["--runner", "pooling"]
    if settings.trust_remote_code:
        argv.append("--trust-remote-code")
    argv += tool_flags(dep.tools, chat_templates)
    if enforce_eager:
        argv.append("--enforce-eager")
    if profile.device != "cpu":
        cpus = ()
    elif not cpus and dep.cpus is not None:
        cpus = cpu_list(dep.cpus)
    cpus = tuple(sorted(cpus))
    env = engine_env(
        profile, dep.devices, local_weights=Path(source).is_absolute(), cpus=cpus, kv_cache_gib=dep.kv_cache_gib
    )
    return EngineCommand(argv, env, host, port, names, first.task, source, cpus, profile.device, dtype)


def catalogue_commands(
    cat: Catalogue,
    *,
    separate: bool = False,
    enforce_eager: bool = False,
    host: str = "127.0.0.1",
    placement: Placement | None = None,
) -> list[EngineCommand]:
    """One command per engine needed to serve every model of the catalogue.

    ``placement``: the cores of each engine, in the order of :func:`engine_groups` (CPU profiles).
    """
    groups = engine_groups(cat.models, separate)
    cores = placement.engines if placement is not None else [()] * len(groups)
    if len(cores) != len(groups):
        raise ValueError(f"the placement is for {len(cores)} engines, the catalogue needs {len(groups)}")
    return [
        engine_command(group, cat.profile_settings, host=host, enforce_eager=enforce_eager, cpus=cpus)
        for group, cpus in zip(groups, cores)
    ]


def planned_placement(cat: Catalogue) -> Placement:
    """The cores a planned CPU profile gives each engine (in :func:`engine_groups` order) and the gateway."""
    groups = engine_groups(cat.models)
    missing = [g[0].name for g in groups if g[0].deployment.cpus is None]
    if missing or cat.profile_settings.gateway_cpus is None:
        raise ValueError(f"profile '{cat.profile}' gives no cores to {', '.join(missing) or 'the gateway'}")
    return Placement(
        tuple(cpu_list(g[0].deployment.cpus or "") for g in groups), cpu_list(cat.profile_settings.gateway_cpus)
    )
