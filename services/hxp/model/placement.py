"""Which CPU cores each CPU engine and the gateway get when they share one machine.

Pure: the cores available and the engines' tasks in, one core set per engine and the
gateway's cores out. Nothing here starts or pins anything: the native runner pins each
process to its cores, ``hxp.model.command`` turns an engine's cores into vLLM's
environment, and a compose generator may turn them into ``cpuset``s.

Why: a vLLM CPU engine binds its OpenMP threads itself. By default
(``VLLM_CPU_OMP_THREADS_BIND=auto``) it takes every core it may run on, keeps the last
one back for its own API server and scheduler (``VLLM_CPU_NUM_OF_RESERVED_CPU``, one on
x86) and binds its threads to the others, so two engines on one machine bind the same
cores and starve each other (on 2 cores both bind core 0). So each engine gets cores of
its own, and its threads are bound to them explicitly.

The rules, on the cores available sorted by id:

1. The gateway gets ``gateway_cores`` cores of its own (the lowest) when every engine
   can still have one; otherwise it shares the cores of the lightest engines (the
   embedding engines: short requests), or every core when there is no engine.
2. The other cores are split between the engines, each at least one, the rest by the
   weight of its task (``TASK_WEIGHT``: a chat engine generates tokens back to back, an
   embedding engine answers short requests), in contiguous blocks, lightest engines on
   the lowest cores (next to the gateway).
3. With fewer cores than engines the engines share: the lightest engines the lowest
   core, the others take turns on the other cores (all take turns when all weigh the same).

On 2 cores with the chat and the embedding engine: embeddings and the gateway on core 0,
the chat engine on core 1. On 8 cores: gateway 0, embeddings 1-2, chat 3-7.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

# How much CPU an engine of each task can use, relative to each other (rule 2).
TASK_WEIGHT = {"chat": 4, "embedding": 1}


@dataclass(frozen=True)
class Placement:
    """Cores per engine (in the order the engines were given) and the gateway's cores."""

    engines: tuple[tuple[int, ...], ...]
    gateway: tuple[int, ...]

    @property
    def shared_gateway(self) -> bool:
        """True when the gateway has no core of its own."""
        return any(set(self.gateway) & set(cores) for cores in self.engines)


def place(cores: Iterable[int], tasks: Sequence[str], gateway_cores: int = 1) -> Placement:
    """Place engines of ``tasks`` ("chat" | "embedding") and the gateway on ``cores`` (see the rules above)."""
    available = sorted(set(cores))
    if not available:
        raise ValueError("no cores to place on")
    if gateway_cores < 0:
        raise ValueError("gateway_cores must be 0 or more")
    unknown = set(tasks) - set(TASK_WEIGHT)
    if unknown:
        raise ValueError(f"unknown task(s) {sorted(unknown)}; known: {sorted(TASK_WEIGHT)}")
    if not tasks:
        return Placement((), tuple(available))
    weights = [TASK_WEIGHT[task] for task in tasks]
    own = gateway_cores if len(available) >= len(tasks) + gateway_cores else 0
    gateway, free = available[:own], available[own:]
    if len(free) >= len(tasks):
        engines = _blocks(free, weights)
    else:
        engines = _shared(free, weights)
    if not gateway:
        lightest = min(weights)
        gateway = sorted({c for cores_, w in zip(engines, weights) if w == lightest for c in cores_})
    return Placement(tuple(engines), tuple(gateway))


def _blocks(free: list[int], weights: list[int]) -> list[tuple[int, ...]]:
    """Rule 2: one core each, then each further core to the engine with the most weight per core."""
    counts = [1] * len(weights)
    for _ in range(len(free) - len(weights)):
        best = max(range(len(weights)), key=lambda i: weights[i] / counts[i])  # ties: the first engine
        counts[best] += 1
    order = sorted(range(len(weights)), key=lambda i: weights[i])  # lightest first, stable
    blocks: list[tuple[int, ...]] = [()] * len(weights)
    start = 0
    for i in order:
        blocks[i] = tuple(free[start : start + counts[i]])
        start += counts[i]
    return blocks


def _shared(free: list[int], weights: list[int]) -> list[tuple[int, ...]]:
    """Rule 3: the lightest engines share the lowest core, the others take turns on the rest."""
    lightest = min(weights)
    light = [i for i, w in enumerate(weights) if w == lightest]
    if len(light) == len(weights) or len(free) == 1:
        return [(free[n % len(free)],) for n in range(len(weights))]
    heavy = [i for i in range(len(weights)) if i not in light]
    placed: list[tuple[int, ...]] = [()] * len(weights)
    for i in light:
        placed[i] = (free[0],)
    for n, i in enumerate(heavy):
        placed[i] = (free[1 + n % (len(free) - 1)],)
    return placed


def omp_threads_bind(cores: Sequence[int]) -> str:
    """``VLLM_CPU_OMP_THREADS_BIND`` for an engine running on ``cores``.

    Like vLLM's own ``auto`` rule, an engine with two cores or more keeps its last core
    for its API server and scheduler and binds its OpenMP threads to the others; an
    engine with one core binds its one thread to it.
    """
    if not cores:
        raise ValueError("an engine needs at least one core")
    ordered = sorted(cores)
    threads = ordered[:-1] if len(ordered) > 1 else ordered
    return ",".join(str(c) for c in threads)


def describe(placement: Placement, names: Sequence[str]) -> list[str]:
    """One line per engine and one for the gateway, e.g. ``chat-engine: cores 1``."""
    text = lambda cores: ",".join(str(c) for c in cores)  # noqa: E731
    lines = [f"{name}: cores {text(cores)}" for name, cores in zip(names, placement.engines)]
    shared = " (shared)" if placement.shared_gateway else ""
    return [*lines, f"gateway: cores {text(placement.gateway)}{shared}"]
