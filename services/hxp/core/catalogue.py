"""The model catalogue (models.yaml): loading, validation and the per-profile view.

Everything that needs to know which models exist reads them from here:
the engine command builder, the gateway routes, compose and systemd
generators, Prometheus targets and load-test targets.
"""

from __future__ import annotations

import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from hxp.core.paths import PROJECT_ROOT

DEFAULT_PATH = PROJECT_ROOT / "models.yaml"
CHAT_TEMPLATES = Path(__file__).parents[1] / "model" / "templates"  # the chat templates `tools.chat_template` names
PACKAGE_PREFIX = "package:"
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9.\-]*$"
GIB = 2**30
# Quantized weights whose matrix kernel vLLM's x86 CPU build has only with AVX-512 (cpu_gemm_wna16): 4-bit
# weights with 16-bit activations, as AWQ and GPTQ checkpoints or llm-compressor's W4A16. Its W8A8 and W4A8
# (INT8 activations) kernels run on AVX2 too.
AVX512_ONLY_FORMATS = ("awq", "gptq", "w4a16")


class CatalogueError(ValueError):
    """The catalogue is invalid; the message names the entry and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def cpu_list(cpuset: str) -> tuple[int, ...]:
    """The CPUs of a cpuset string such as ``0-3,8``, sorted; ValueError when it is malformed or empty."""
    cpus: set[int] = set()
    for part in cpuset.split(","):
        low, _, high = part.strip().partition("-")
        if not low.isdigit() or (high and not high.isdigit()) or int(high or low) < int(low):
            raise ValueError(f"'{cpuset}' is not a CPU set like 0-3,8")
        cpus.update(range(int(low), int(high or low) + 1))
    return tuple(sorted(cpus))


def _valid_cpuset(value: str) -> str:
    cpu_list(value)
    return value


CpuSet = Annotated[str, AfterValidator(_valid_cpuset)]


class Machine(_Strict):
    """The CPU server a profile is planned for. Defaults: the requirements' server (B.1 minimum): 16 cores /
    32 threads, AVX2 and AVX-512, 128 GB; memory bandwidth: 8 channels of DDR4-3200 (the document's slower
    option, 204.8 GB/s peak) at the ~80 % a copy loop sustains. CPUs 0..cores-1 are the physical cores, split
    evenly between the NUMA nodes in order (Linux numbers the second hardware thread of each core after them)."""

    cores: PositiveInt = 16
    threads: PositiveInt = 32
    numa_nodes: PositiveInt = 1
    memory_gb: PositiveFloat = 128
    memory_bandwidth_gbs: PositiveFloat = 160
    frequency_ghz: PositiveFloat = 2.4
    instruction_sets: list[str] = ["avx2", "avx512f"]

    def numa_node(self, cpu: int) -> int:
        """The NUMA node of a physical core."""
        return cpu * self.numa_nodes // self.cores


class Allocation(_Strict):
    """How the machine's memory is divided (the requirements' B.1 allocation for 128 GB by default): the loaded
    engines (weights and runtimes) within ``models_gb``; their KV caches within ``inference_gb``, the rest of it
    left to activations; the operating system, gateway and stores within ``system_gb``; ``cache_gb`` left to
    the page cache and Redis."""

    system_gb: PositiveFloat = 16
    models_gb: PositiveFloat = 80
    inference_gb: PositiveFloat = 24
    cache_gb: PositiveFloat = 8

    @property
    def total_gb(self) -> float:
        return self.system_gb + self.models_gb + self.inference_gb + self.cache_gb


class Profile(_Strict):
    description: str = ""
    device: Literal["cuda", "cpu"]
    gpu_memory_gb: PositiveFloat | None = None
    # A CPU profile planned for a server: the machine, its memory allocation, the gateway's cores and what each
    # engine's runtime (Python, torch, vLLM's processes) takes besides weights and KV cache. Catalogue
    # validation checks every engine of the profile against them (`hxp plan` prints the plan).
    machine: Machine | None = None
    allocation: Allocation = Allocation()
    gateway_cpus: CpuSet | None = None
    # measured: the SmolLM2 engine's processes hold 2.4 GB besides weights and KV cache (test_plan_engines.py)
    engine_runtime_gb: PositiveFloat = 3.0


class Package(_Strict):
    distribution: str
    kind: Literal["gguf", "sentence-transformers"]
    file: str
    tokenizer_source: str | None = None


class Quantization(_Strict):
    """How `hxp quantize` (llm-compressor) makes weights from a deployment's source: the compressed-tensors
    ``scheme``, optional SmoothQuant first (``smoothing_strength``; W8A8 needs it to stay accurate), then GPTQ
    or round-to-nearest (``rtn``), and the weights' group size for group-wise schemes (W4A16). The engine
    serves them with ``dtype`` whatever the deployment's: vLLM's CPU kernels for 4-bit weights, and its AMX
    kernel for INT8 ones, take 16-bit activations only."""

    scheme: Literal["W8A8", "W4A16"]
    method: Literal["gptq", "rtn"] = "gptq"
    smoothing_strength: float | None = Field(default=None, gt=0, lt=1)
    group_size: PositiveInt | None = None
    dtype: Literal["bfloat16", "float16"] = "bfloat16"  # vLLM's --dtype for these weights (hxp.model.kernels)

    @model_validator(mode="after")
    def _group_size_is_for_w4a16(self) -> Quantization:
        if self.group_size is not None and self.scheme != "W4A16":
            raise ValueError(f"group_size applies to the group-wise W4A16 scheme, not {self.scheme}")
        return self


class VllmSettings(_Strict):
    max_model_len: PositiveInt
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    gpu_memory_utilization: float | None = Field(default=None, gt=0, le=1)
    max_num_batched_tokens: PositiveInt | None = None
    max_num_seqs: PositiveInt | None = None
    trust_remote_code: bool = False


class Tools(_Strict):
    """How vLLM reads a model's tool calls: its ``--tool-call-parser`` and, where the model's own chat
    template cannot show tools, calls and their results, a tool-aware template from CHAT_TEMPLATES."""

    parser: str = Field(min_length=1)
    chat_template: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]+\.jinja$")


class Shape(_Strict):
    """What sizes a model's memory and its work per token: parameters (billions; ``active`` per token for a
    mixture of experts, of which ``experts_per_token`` of ``experts`` run) and the attention's KV cache."""

    parameters_b: PositiveFloat
    active_parameters_b: PositiveFloat | None = None
    experts: PositiveInt = 1
    experts_per_token: PositiveInt = 1
    layers: PositiveInt
    kv_heads: PositiveInt
    head_dim: PositiveInt

    @property
    def active_b(self) -> float:
        return self.active_parameters_b or self.parameters_b

    def kv_bytes_per_token(self, dtype: str) -> int:
        """Keys and values of every layer for one token, in the engine's dtype."""
        return 2 * self.layers * self.kv_heads * self.head_dim * (4 if dtype == "float32" else 2)


class Targets(_Strict):
    avg_latency_ms: PositiveFloat
    p95_latency_ms: PositiveFloat
    throughput_rps: PositiveFloat
    memory_gb: PositiveFloat
    measured: str = ""


class Deployment(_Strict):
    """How one model runs under one profile."""

    source: str = Field(min_length=1)
    quantization: str | None = None  # a catalogue `quantizations` entry: serve weights made from `source` by it
    timeout_s: PositiveFloat | None = None  # overrides api.timeout_s under this profile (slow CPU engines)
    devices: list[int] = []
    tensor_parallel_size: PositiveInt = 1
    vllm: VllmSettings
    tools: Tools | None = None  # tool calling; None: the model has no tool support (the gateway refuses tools)
    targets: Targets
    # Planned CPU profiles (a profile with a `machine`): the engine's cores, its KV cache (vLLM's
    # VLLM_CPU_KVCACHE_SPACE, GiB), the checkpoint's size and format, and the model's shape.
    cpus: CpuSet | None = None
    kv_cache_gib: PositiveInt | None = None
    weights_gb: PositiveFloat | None = None
    weights_format: Literal["awq", "gptq", "w4a16", "w8a8", "w4a8"] | None = None  # a published quantized checkpoint's
    shape: Shape | None = None

    def memory_gb(self, runtime_gb: float) -> float:
        """Weights, KV cache and runtime of the engine (GB; weights and KV cache count 0 where unset)."""
        return (self.weights_gb or 0) + (self.kv_cache_gib or 0) * GIB / 1e9 + runtime_gb

    def context_fits(self, kv_cache_gib: int) -> int:
        """The longest context (tokens) one sequence can have in a KV cache of ``kv_cache_gib`` (0 without a
        shape)."""
        return kv_cache_gib * GIB // self.shape.kv_bytes_per_token(self.vllm.dtype) if self.shape else 0


class Prices(_Strict):
    """What 1000 tokens cost (in the operator's currency), for usage reports."""

    prompt: NonNegativeFloat
    completion: NonNegativeFloat


class Api(_Strict):
    timeout_s: PositiveFloat
    max_concurrent_requests: PositiveInt
    retries: int = Field(default=1, ge=0)
    fallbacks: list[str] = []
    cache: bool = True
    # other names clients may use for this model (e.g. OpenAI's), answered as the model itself
    aliases: list[Annotated[str, Field(pattern=MODEL_NAME_PATTERN)]] = []
    price_per_1k_tokens: Prices | None = None  # `hxp usage report` shows cost only for models with a price


class ModelEntry(_Strict):
    name: str = Field(min_length=1, pattern=MODEL_NAME_PATTERN)
    description: str = ""
    port: int = Field(ge=1024, le=65535)
    task: Literal["chat", "embedding"] = "chat"
    api: Api
    profiles: dict[str, Deployment]

    @field_validator("profiles")
    @classmethod
    def _has_profiles(cls, value: dict[str, Deployment]) -> dict[str, Deployment]:
        if not value:
            raise ValueError("at least one profile is required")
        return value


class _CatalogueFile(_Strict):
    profiles: dict[str, Profile]
    packages: dict[str, Package] = {}
    quantizations: dict[str, Quantization] = {}
    models: list[ModelEntry]


@dataclass(frozen=True)
class Model:
    """One model as seen under the active profile."""

    name: str
    description: str
    port: int
    task: str
    api: Api
    deployment: Deployment
    profile: str
    quantization: Quantization | None = None  # the recipe `deployment.quantization` names

    @property
    def source(self) -> str:
        return self.deployment.source

    @property
    def package(self) -> str | None:
        """Name of the packaged weights this model is served from, if any."""
        src = self.deployment.source
        return src[len(PACKAGE_PREFIX) :] if src.startswith(PACKAGE_PREFIX) else None

    @property
    def targets(self) -> Targets:
        return self.deployment.targets

    @property
    def max_model_len(self) -> int:
        return self.deployment.vllm.max_model_len

    @property
    def tools(self) -> Tools | None:
        """How the model's tool calls are parsed; None when it has no tool support."""
        return self.deployment.tools


@dataclass(frozen=True)
class Catalogue:
    """The validated catalogue under one profile."""

    profile: str
    profile_settings: Profile
    packages: dict[str, Package]
    models: list[Model]
    path: Path = field(default=DEFAULT_PATH)
    quantizations: dict[str, Quantization] = field(default_factory=dict)

    def get(self, name: str) -> Model:
        """The model with this name or alias."""
        for model in self.models:
            if name == model.name or name in model.api.aliases:
                return model
        raise KeyError(name)

    def canonical(self, name: str) -> str | None:
        """The catalogue name a client's model name (a name or an alias) stands for; None if unknown."""
        try:
            return self.get(name).name
        except KeyError:
            return None

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def chat_models(self) -> list[Model]:
        return [m for m in self.models if m.task == "chat"]

    @property
    def embedding_models(self) -> list[Model]:
        return [m for m in self.models if m.task == "embedding"]


def _format_error(raw: dict[str, Any], err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = list(e["loc"])
        where = ".".join(str(p) for p in loc)
        if len(loc) >= 2 and loc[0] == "models" and isinstance(loc[1], int):
            models = raw.get("models") or []
            entry = models[loc[1]] if loc[1] < len(models) else {}
            name = entry.get("name") if isinstance(entry, dict) else None
            where = f"model '{name or '#' + str(loc[1])}' field " + ".".join(str(p) for p in loc[2:])
        lines.append(f"{where}: {e['msg']}")
    return "invalid catalogue: " + "; ".join(lines)


def _check_consistency(data: _CatalogueFile) -> None:
    names: dict[str, int] = {}
    ports: dict[int, str] = {}
    for m in data.models:
        if m.name in names:
            raise CatalogueError(f"model '{m.name}' field name: duplicate name")
        names[m.name] = m.port
        if m.port in ports:
            raise CatalogueError(f"model '{m.name}' field port: port {m.port} already used by '{ports[m.port]}'")
        ports[m.port] = m.name
    taken = {m.name: m.name for m in data.models}  # model names and aliases: the model each one names
    for m in data.models:
        for alias in m.api.aliases:
            if taken.get(alias, m.name) != m.name:
                raise CatalogueError(f"model '{m.name}' field api.aliases: '{alias}' already names '{taken[alias]}'")
            taken[alias] = m.name
    for m in data.models:
        for fallback in m.api.fallbacks:
            if fallback not in names or fallback == m.name:
                raise CatalogueError(f"model '{m.name}' field api.fallbacks: unknown model '{fallback}'")
        for prof, dep in m.profiles.items():
            if prof not in data.profiles:
                raise CatalogueError(f"model '{m.name}' field profiles.{prof}: unknown profile '{prof}'")
            pkg = dep.source[len(PACKAGE_PREFIX) :] if dep.source.startswith(PACKAGE_PREFIX) else None
            if pkg is not None and pkg not in data.packages:
                raise CatalogueError(f"model '{m.name}' field profiles.{prof}.source: unknown package '{pkg}'")
            if dep.quantization is not None and dep.quantization not in data.quantizations:
                raise CatalogueError(
                    f"model '{m.name}' field profiles.{prof}.quantization: unknown quantization '{dep.quantization}'"
                )
            if dep.tools is not None:
                _check_tools(m, prof, dep.tools)
            if data.profiles[prof].device == "cuda":
                _check_gpu_deployment(m.name, prof, dep)
    for prof_name, profile in data.profiles.items():
        if profile.device == "cuda":
            _check_gpu_memory(prof_name, profile, data.models)
        if profile.machine is not None:
            _check_plan(prof_name, profile, profile.machine, data.models, data.quantizations)


def _check_tools(model: ModelEntry, prof: str, tools: Tools) -> None:
    where = f"model '{model.name}' field profiles.{prof}.tools"
    if model.task != "chat":
        raise CatalogueError(f"{where}: only chat models call tools")
    if tools.chat_template is not None and not (CHAT_TEMPLATES / tools.chat_template).is_file():
        raise CatalogueError(f"{where}.chat_template: no template '{tools.chat_template}' in {CHAT_TEMPLATES}")


def _check_gpu_deployment(name: str, prof: str, dep: Deployment) -> None:
    where = f"model '{name}' field profiles.{prof}"
    if not dep.devices:
        raise CatalogueError(f"{where}.devices: a GPU profile needs at least one device")
    if len(dep.devices) != dep.tensor_parallel_size:
        raise CatalogueError(
            f"{where}.tensor_parallel_size: {dep.tensor_parallel_size} does not match {len(dep.devices)} devices"
        )
    if dep.vllm.gpu_memory_utilization is None:
        raise CatalogueError(f"{where}.vllm.gpu_memory_utilization: required on a GPU profile")


def _check_gpu_memory(prof_name: str, prof: Profile, models: list[ModelEntry]) -> None:
    share: dict[int, float] = defaultdict(float)
    users: dict[int, list[str]] = defaultdict(list)
    for m in models:
        dep = m.profiles.get(prof_name)
        if dep is None:
            continue
        for device in dep.devices:
            share[device] += dep.vllm.gpu_memory_utilization or 0.0
            users[device].append(m.name)
    for device, total in sorted(share.items()):
        if total > 1.0 + 1e-9:
            gb = f" ({total * prof.gpu_memory_gb:.0f} of {prof.gpu_memory_gb:.0f} GB)" if prof.gpu_memory_gb else ""
            raise CatalogueError(
                f"model '{users[device][-1]}' field profiles.{prof_name}.vllm.gpu_memory_utilization: "
                f"engines {', '.join(users[device])} on GPU {device} ask for {total:.2f} of its memory{gb}"
            )


def _check_plan(
    prof_name: str, prof: Profile, machine: Machine, models: list[ModelEntry], quantizations: dict[str, Quantization]
) -> None:
    """A planned CPU profile: every engine has its own cores within one NUMA node and a KV cache that holds one
    sequence of its context; weights, KV caches and runtimes fit the allocation, the allocation the machine."""
    engines = [(m, m.profiles[prof_name]) for m in models if prof_name in m.profiles]
    owner: dict[int, str] = {}
    if prof.gateway_cpus is not None:
        owner = dict.fromkeys(cpu_list(prof.gateway_cpus), "the gateway")
        if max(owner) >= machine.cores:
            raise CatalogueError(
                f"profiles.{prof_name}.gateway_cpus: {prof.gateway_cpus} is beyond the machine's {machine.cores} cores"
            )
    node_gb: dict[int, float] = defaultdict(float)
    for m, dep in engines:
        where = f"model '{m.name}' field profiles.{prof_name}"
        if dep.cpus is None or dep.kv_cache_gib is None or dep.weights_gb is None or dep.shape is None:
            missing = next(f for f in ("cpus", "kv_cache_gib", "weights_gb", "shape") if getattr(dep, f) is None)
            raise CatalogueError(f"{where}.{missing}: required on a profile planned for a machine")
        cpus = cpu_list(dep.cpus)
        if cpus[-1] >= machine.cores:
            raise CatalogueError(f"{where}.cpus: {dep.cpus} is beyond the machine's {machine.cores} cores")
        nodes = {machine.numa_node(c) for c in cpus}
        if len(nodes) > 1:
            raise CatalogueError(f"{where}.cpus: {dep.cpus} spans NUMA nodes {sorted(nodes)}; keep an engine on one")
        shared = sorted({owner[c] for c in cpus if c in owner})
        if shared:
            raise CatalogueError(f"{where}.cpus: {dep.cpus} shares cores with {', '.join(shared)}")
        owner.update(dict.fromkeys(cpus, f"'{m.name}'"))
        recipe = quantizations.get(dep.quantization or "")
        needs_avx512 = dep.weights_format in AVX512_ONLY_FORMATS or (recipe is not None and recipe.scheme == "W4A16")
        if needs_avx512 and "avx512f" not in machine.instruction_sets:
            field_name = "weights_format" if dep.weights_format else "quantization"
            raise CatalogueError(
                f"{where}.{field_name}: {dep.weights_format or dep.quantization} weights need AVX-512 "
                "(vLLM's CPU kernel cpu_gemm_wna16), which the machine lacks"
            )
        kv_gib = dep.vllm.max_model_len * dep.shape.kv_bytes_per_token(dep.vllm.dtype) / GIB
        if m.task == "chat" and kv_gib > dep.kv_cache_gib:
            raise CatalogueError(
                f"{where}.vllm.max_model_len: {dep.vllm.max_model_len} tokens need {kv_gib:.1f} GiB of KV cache, "
                f"kv_cache_gib is {dep.kv_cache_gib} (it holds {dep.context_fits(dep.kv_cache_gib)} tokens)"
            )
        memory = dep.memory_gb(prof.engine_runtime_gb)
        if dep.targets.memory_gb < memory:
            raise CatalogueError(
                f"{where}.targets.memory_gb: {dep.targets.memory_gb:g} GB (the engine's memory "
                f"limit) is below its planned {memory:.1f} GB"
            )
        node_gb[nodes.pop()] += memory
    _check_memory(prof_name, prof, machine, engines, node_gb)


def _check_memory(
    prof_name: str,
    prof: Profile,
    machine: Machine,
    engines: list[tuple[ModelEntry, Deployment]],
    node_gb: dict[int, float],
) -> None:
    where = f"profiles.{prof_name}"
    alloc = prof.allocation
    if alloc.total_gb > machine.memory_gb:
        raise CatalogueError(
            f"{where}.allocation: {alloc.total_gb:g} GB is more than the machine's {machine.memory_gb:g} GB"
        )
    loaded = sum((dep.weights_gb or 0) + prof.engine_runtime_gb for _, dep in engines)
    if loaded > alloc.models_gb:
        raise CatalogueError(
            f"{where}: the engines' weights and runtimes take {loaded:.1f} GB, allocation.models_gb "
            f"is {alloc.models_gb:g} GB"
        )
    kv = sum((dep.kv_cache_gib or 0) * GIB / 1e9 for _, dep in engines)
    if kv > alloc.inference_gb:
        raise CatalogueError(
            f"{where}: the engines' KV caches take {kv:.1f} GB, allocation.inference_gb is {alloc.inference_gb:g} GB"
        )
    per_node = machine.memory_gb / machine.numa_nodes
    for node, gb in sorted(node_gb.items()):
        if gb > per_node:
            raise CatalogueError(
                f"{where}: the engines on NUMA node {node} take {gb:.1f} GB, the node has {per_node:g} GB"
            )


def _api_under(entry: ModelEntry, profile: str) -> Api:
    """The entry's API settings with the profile's overrides applied."""
    timeout = entry.profiles[profile].timeout_s
    return entry.api if timeout is None else entry.api.model_copy(update={"timeout_s": timeout})


def parse(raw: Any, profile: str, path: Path = DEFAULT_PATH) -> Catalogue:
    """Validate a catalogue document and return its view under ``profile``."""
    if not isinstance(raw, dict):
        raise CatalogueError("invalid catalogue: the document must be a mapping")
    try:
        data = _CatalogueFile.model_validate(raw)
    except ValidationError as err:
        raise CatalogueError(_format_error(raw, err)) from None
    _check_consistency(data)
    if profile not in data.profiles:
        raise CatalogueError(f"unknown profile '{profile}' (known: {', '.join(sorted(data.profiles))})")
    models = [
        Model(
            m.name,
            m.description,
            m.port,
            m.task,
            _api_under(m, profile),
            m.profiles[profile],
            profile,
            data.quantizations.get(m.profiles[profile].quantization or ""),
        )
        for m in data.models
        if profile in m.profiles
    ]
    return Catalogue(profile, data.profiles[profile], dict(data.packages), models, path, dict(data.quantizations))


def active_profile() -> str:
    return os.environ.get("HXP_PROFILE", "cpu")


def load(path: str | Path | None = None, profile: str | None = None) -> Catalogue:
    """Load the catalogue (HXP_CATALOGUE or models.yaml) under a profile (HXP_PROFILE or cpu)."""
    file = Path(path or os.environ.get("HXP_CATALOGUE") or DEFAULT_PATH)
    try:
        raw = yaml.safe_load(file.read_text())
    except yaml.YAMLError as err:
        raise CatalogueError(f"invalid catalogue {file}: {err}") from None
    return parse(raw, profile or active_profile(), file)
