"""The memory and core plan of a CPU profile, and what its engines can do on a machine: a roofline.

Per engine: the memory it takes (weights, KV cache, runtime), its cores, the longest context its KV cache
holds, and estimates of its decode speed, request latency and throughput from the machine's memory
bandwidth and compute. Decoding one token reads every weight it uses (all of a dense model's; the shared
part and the chosen experts of a mixture of experts) and the sequence's KV cache, and does two floating-point
operations per active parameter; a step takes the longer of the two. An engine gets the share of the
machine's bandwidth and compute its cores are of all cores (every engine busy at once, as under a load
test). Prefill is the same arithmetic for a whole prompt at once.

A roofline is a bound: real engines lose time to the framework (Python, scheduling, sampling, HTTP), most
on small models. ``ROOFLINE_FACTOR`` covers how far measured engines on this project's development machine
fell short of it (tests/model/test_plan_engines.py measures it); the load-test targets a planned profile gets
from :func:`propose` allow that factor.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hxp.core.catalogue import GIB, Catalogue, Machine, Model, Targets
from hxp.model.command import engine_groups, planned_placement
from hxp.model.placement import place

# Measured engines came within ROOFLINE_FACTOR of the roofline (tests/model/test_plan_engines.py on this
# project's 2-core development machine, shared with other work at load average 13-28, its work counted in the
# engine's CPU time; three runs): SmolLM2 float32 decoded 0.29-0.31 of the predicted tokens per CPU second
# (Python, scheduling, sampling and HTTP each step); all-MiniLM-L6-v2 took 1.70-1.88 times the predicted time
# for a request of 4 texts. 4 leaves some margin over the worst (3.4).
ROOFLINE_FACTOR = 4.0
P95_OVER_AVG = 1.5  # the p95 latency target over the average one, as the catalogue's measured targets have it
NEAR_BEST = 0.9  # a load-test load reaches this share of the best throughput within the timeout, at less latency
INSTRUCTION_SETS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8")
COPY_BYTES = 256 * 2**20  # per core, for the bandwidth measurement: well beyond a core's share of the caches


@dataclass(frozen=True)
class Request:
    """The average request an engine serves: prompt tokens in, tokens generated (0: an embedding)."""

    prompt_tokens: float
    output_tokens: float


def flops_per_cycle(instruction_sets: Sequence[str], dtype: str) -> int:
    """Peak floating-point operations per core and cycle: two FMA units of the widest vector unit; bfloat16
    and float16 dot products twice that where AVX512_BF16 exists."""
    width = 16 if "avx512f" in instruction_sets else 8 if "avx2" in instruction_sets else 4
    fp32 = 2 * 2 * width
    return 2 * fp32 if dtype in ("bfloat16", "float16") and "avx512_bf16" in instruction_sets else fp32


@dataclass(frozen=True)
class Load:
    """An engine serving ``concurrency`` requests at once, back to back."""

    concurrency: int
    latency_ms: float
    throughput_rps: float


@dataclass(frozen=True)
class Estimate:
    """One engine of a plan on a machine."""

    names: tuple[str, ...]
    task: str
    cpus: tuple[int, ...]
    weights_gb: float
    kv_cache_gb: float
    runtime_gb: float
    max_model_len: int
    context_fits: int
    request: Request
    decode_tok_s: float  # one sequence alone
    latency_ms: float  # one request alone
    saturated: Load  # max_num_seqs requests at once, or as many as the KV cache holds
    loaded: Load  # the fewest requests at once that reach NEAR_BEST of the throughput any load whose p95
    # latency (ROOFLINE_FACTOR and P95_OVER_AVG times the roofline's) fits the timeout reaches

    @property
    def memory_gb(self) -> float:
        return self.weights_gb + self.kv_cache_gb + self.runtime_gb


class Roofline:
    """Step times of one engine (``model``'s deployment) with its share of ``machine``."""

    def __init__(self, model: Model, machine: Machine, cores: int) -> None:
        dep = model.deployment
        if dep.shape is None or dep.weights_gb is None:
            raise ValueError(f"model '{model.name}' has no shape or weights_gb under profile '{model.profile}'")
        self.shape, self.dtype = dep.shape, dep.vllm.dtype
        self.weight_bytes = dep.weights_gb * 1e9
        self.bandwidth = machine.memory_bandwidth_gbs * 1e9 * cores / machine.cores
        self.flops = cores * machine.frequency_ghz * 1e9 * flops_per_cycle(machine.instruction_sets, self.dtype)

    def weights_read(self, tokens: float) -> float:
        """Bytes of weights a step over ``tokens`` tokens reads: experts no token chose are skipped."""
        s = self.shape
        if s.experts == 1:
            return self.weight_bytes
        expert_b = (s.parameters_b - s.active_b) / (s.experts - s.experts_per_token)
        shared_b = s.active_b - s.experts_per_token * expert_b
        chosen = s.experts * (1 - (1 - s.experts_per_token / s.experts) ** tokens)
        return self.weight_bytes * (shared_b + chosen * expert_b) / s.parameters_b

    def step_s(self, tokens: float, kv_tokens: float = 0) -> float:
        """One forward pass over ``tokens`` tokens reading ``kv_tokens`` tokens of KV cache."""
        memory = self.weights_read(tokens) + kv_tokens * self.shape.kv_bytes_per_token(self.dtype)
        compute = tokens * 2 * self.shape.active_b * 1e9
        return max(memory / self.bandwidth, compute / self.flops)


def _load(roof: Roofline, task: str, request: Request, concurrency: int) -> Load:
    """``concurrency`` requests at once: their prefills one after another, then their decode steps together."""
    p, n = request.prompt_tokens, int(request.output_tokens)
    if task == "chat":
        seconds = concurrency * roof.step_s(p) + sum(roof.step_s(concurrency, concurrency * (p + i)) for i in range(n))
    else:
        seconds = roof.step_s(concurrency * p)
    return Load(concurrency, seconds * 1000, concurrency / seconds)


def estimate(
    group: Sequence[Model], machine: Machine, cpus: Sequence[int], request: Request, runtime_gb: float
) -> Estimate:
    """The plan and roofline of one engine serving ``group`` on ``cpus`` of ``machine``."""
    model, dep = group[0], group[0].deployment
    roof = Roofline(model, machine, len(cpus))
    kv_gib = dep.kv_cache_gib or 1  # vLLM's CPU KV cache (hxp.model.command.CPU_KV_CACHE_GIB when unset)
    fits = dep.context_fits(kv_gib)
    most = max(
        1, min(dep.vllm.max_num_seqs or 256, int(fits // max(1.0, request.prompt_tokens + request.output_tokens)))
    )
    alone = _load(roof, model.task, request, 1)
    within = [alone]  # the loads whose p95 latency, allowing the factor, fits the timeout
    for concurrency in range(2, most + 1):
        load = _load(roof, model.task, request, concurrency)
        if load.latency_ms * ROOFLINE_FACTOR * P95_OVER_AVG > model.api.timeout_s * 1000:
            break
        within.append(load)
    best = max(load.throughput_rps for load in within)
    loaded = next(load for load in within if load.throughput_rps >= NEAR_BEST * best)
    return Estimate(
        names=tuple(m.name for m in group),
        task=model.task,
        cpus=tuple(cpus),
        weights_gb=dep.weights_gb or 0,
        kv_cache_gb=kv_gib * GIB / 1e9,
        runtime_gb=runtime_gb,
        max_model_len=dep.vllm.max_model_len,
        context_fits=fits,
        request=request,
        decode_tok_s=1 / roof.step_s(1, request.prompt_tokens) if request.output_tokens else 0.0,
        latency_ms=alone.latency_ms,
        saturated=_load(roof, model.task, request, most),
        loaded=loaded,
    )


def plan(cat: Catalogue, machine: Machine, requests: dict[str, Request], cpus: Sequence[int] = ()) -> list[Estimate]:
    """Every engine of ``cat`` on ``machine``: a planned profile's own cores, else those the native runner
    gives its engines on ``cpus`` (default: the machine's cores). ``requests``: per model name."""
    groups = engine_groups(cat.models)
    if cat.profile_settings.machine is not None:
        cores = planned_placement(cat).engines
    else:
        cores = place(cpus or range(machine.cores), [g[0].task for g in groups]).engines
    runtime = cat.profile_settings.engine_runtime_gb
    return [estimate(g, machine, c, requests[g[0].name], runtime) for g, c in zip(groups, cores)]


# --- the machine this runs on --------------------------------------------------------------


def _copy_rate(cpu: int, seconds: float, out: multiprocessing.Queue[float]) -> None:
    os.sched_setaffinity(0, {cpu})
    src, dst = bytearray(b"\1") * COPY_BYTES, bytearray(COPY_BYTES)
    dst[:] = src  # touch every page first
    copied, start = 0, time.process_time()
    while time.process_time() - start < seconds:
        dst[:] = src
        copied += 2 * COPY_BYTES  # read and written
    out.put(copied / (time.process_time() - start))


def measure_bandwidth(cpus: Sequence[int], seconds: float = 1.0) -> float:
    """GB/s that copy loops on every CPU at once move (bytes read plus written) per second of CPU time each
    gets: what the memory gives a core that runs, whatever else shares the machine."""
    queue: multiprocessing.Queue[float] = multiprocessing.Queue()
    workers = [multiprocessing.Process(target=_copy_rate, args=(cpu, seconds, queue)) for cpu in cpus]
    for worker in workers:
        worker.start()
    rates = [queue.get(timeout=60 + 10 * seconds) for _ in workers]
    for worker in workers:
        worker.join()
    return sum(rates) / 1e9


def _cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().split("\n\n")[0].splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def measure_machine(bandwidth_gbs: float | None = None) -> Machine:
    """This machine as the CPUs this process may use see it: cores (one hardware thread each counted once),
    memory, NUMA nodes, instruction sets, clock and, unless given, memory bandwidth (measured)."""
    cpus = sorted(os.sched_getaffinity(0))
    info = _cpuinfo()
    per_core = max(1, int(info.get("siblings", "1")) // max(1, int(info.get("cpu cores", "1"))))
    memory_kib = next(
        int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal:")
    )
    nodes = len(list(Path("/sys/devices/system/node").glob("node[0-9]*"))) or 1
    flags = set(info.get("flags", "").split())
    return Machine(
        cores=max(1, len(cpus) // per_core),
        threads=len(cpus),
        numa_nodes=nodes,
        memory_gb=memory_kib * 1024 / 1e9,
        memory_bandwidth_gbs=bandwidth_gbs or measure_bandwidth(cpus),
        frequency_ghz=float(info.get("cpu MHz", "2400")) / 1000,
        instruction_sets=[s for s in INSTRUCTION_SETS if s in flags],
    )


# --- against targets --------------------------------------------------------------------------


def shortfalls(est: Estimate, targets: Targets) -> list[str]:
    """The targets the engine cannot reach even at its roofline, and by how much."""
    problems = []
    if est.latency_ms > targets.avg_latency_ms:
        problems.append(
            f"avg latency {targets.avg_latency_ms:g} ms: one request alone takes {est.latency_ms:.0f} ms "
            f"({est.latency_ms / targets.avg_latency_ms:.1f}x)"
        )
    most = est.saturated.throughput_rps
    if most < targets.throughput_rps:
        problems.append(
            f"throughput {targets.throughput_rps:g} req/s: at most {most:.3g} req/s "
            f"({targets.throughput_rps / most:.1f}x short)"
        )
    return problems


def _two_digits(value: float, up: bool) -> float:
    """Rounded to two significant digits, up or down."""
    step = 10 ** (math.floor(math.log10(value)) - 1)
    rounded = (math.ceil(value / step - 1e-9) if up else math.floor(value / step + 1e-9)) * step
    return float(f"{rounded:.6g}")


def propose(est: Estimate) -> Targets:
    """Load-test targets for an engine: its roofline at ``Estimate.loaded``, allowing ``ROOFLINE_FACTOR``."""
    avg = _two_digits(est.loaded.latency_ms * ROOFLINE_FACTOR, up=True)
    return Targets(
        avg_latency_ms=avg,
        p95_latency_ms=_two_digits(avg * P95_OVER_AVG, up=True),
        throughput_rps=_two_digits(est.loaded.throughput_rps / ROOFLINE_FACTOR, up=False),
        memory_gb=math.ceil(est.memory_gb),
    )
