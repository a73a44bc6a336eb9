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
from pydantic import (BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, ValidationError,
                      field_validator, model_validator)

from hxp.core.paths import PROJECT_ROOT

DEFAULT_PATH = PROJECT_ROOT / "models.yaml"
CHAT_TEMPLATES = Path(__file__).parents[1] / "model" / "templates"  # the chat templates `tools.chat_template` names
PACKAGE_PREFIX = "package:"
MODEL_NAME_PATTERN = r"^[a-z0-9][a-z0-9.\-]*$"


class CatalogueError(ValueError):
    """The catalogue is invalid; the message names the entry and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Profile(_Strict):
    description: str = ""
    device: Literal["cuda", "cpu"]
    gpu_memory_gb: PositiveFloat | None = None


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
        return src[len(PACKAGE_PREFIX):] if src.startswith(PACKAGE_PREFIX) else None

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
            pkg = dep.source[len(PACKAGE_PREFIX):] if dep.source.startswith(PACKAGE_PREFIX) else None
            if pkg is not None and pkg not in data.packages:
                raise CatalogueError(f"model '{m.name}' field profiles.{prof}.source: unknown package '{pkg}'")
            if dep.quantization is not None and dep.quantization not in data.quantizations:
                raise CatalogueError(f"model '{m.name}' field profiles.{prof}.quantization: "
                                     f"unknown quantization '{dep.quantization}'")
            if dep.tools is not None:
                _check_tools(m, prof, dep.tools)
            if data.profiles[prof].device == "cuda":
                _check_gpu_deployment(m.name, prof, dep)
    for prof_name, prof in data.profiles.items():
        if prof.device == "cuda":
            _check_gpu_memory(prof_name, prof, data.models)


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
        Model(m.name, m.description, m.port, m.task, _api_under(m, profile), m.profiles[profile], profile,
              data.quantizations.get(m.profiles[profile].quantization or ""))
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
