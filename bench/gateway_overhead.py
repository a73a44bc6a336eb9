"""Gateway overhead benchmark (`make bench-gateway`): prints two markdown tables.

In one run on this machine, the same non-streamed chat requests go to the targets of
:mod:`bench.targets` (direct to the fake upstream, the bare LiteLLM proxy, the full gateway and the
full gateway on uvicorn's plain stack, h11 + asyncio), side by side in interleaved rounds. For each:
requests/s at a fixed concurrency, p50/p95 latency and the latency added over ``direct``, and the
server's CPU milliseconds per request, with one worker and with workers = cores.

The second table sets them beside issue 30's targets (ratios: the median of the per-round ratios
full gateway / bare proxy): CPU per request <= 0.5x bare, req/s with workers = cores >= 2x bare,
and the requirements document's 90 requests/s; and shows the fast stack's effect (full gateway /
the same on the plain stack).

Bounded: ROUNDS x REQUESTS requests per target after WARMUP, at CONCURRENCY (environment variables).
The streamed counterpart is :mod:`bench.gateway_streaming`.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass

import aiohttp

from bench.targets import (
    BARE,
    CORES,
    DIRECT,
    GATEWAY,
    PLAIN,
    WORKER_COUNTS,
    Server,
    chat_model,
    each_worker_count,
    median_ratio,
    medians,
)
from tests.support.fake_upstream import FakeUpstream

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "600"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "100"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))
CPU_TARGET = 0.5  # CPU per request, full gateway / bare proxy (at most)
RATE_TARGET = 2.0  # req/s with workers = cores, full gateway / bare proxy (at least)
RPS_TARGET = 90.0  # the requirements document's requests/s across the models, workers = cores


@dataclass
class Result:
    target: str
    workers: int
    rps: float
    p50_ms: float
    p95_ms: float
    cpu_ms: float


@dataclass
class Comparison:
    """One worker count: each target's medians, and per-round ratios of a target to another."""

    workers: int
    rows: dict[str, Result]
    rounds: list[dict[str, Result]]

    def ratio(self, column: str, target: str, base: str) -> float:
        return median_ratio([(getattr(r[target], column), getattr(r[base], column)) for r in self.rounds])


async def _load(server: Server, model: str, count: int) -> tuple[list[float], float]:
    """``count`` chat requests at CONCURRENCY; their latencies (s) and the wall time."""
    url, headers = server.url, server.headers
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "benchmark"}], "max_tokens": 8})
    latencies: list[float] = []
    queue = iter(range(count))

    async def worker(session: aiohttp.ClientSession) -> None:
        for _ in queue:
            start = time.perf_counter()
            async with session.post(f"{url}/chat/completions", data=body, headers=headers) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status}: {await response.text()}")
            latencies.append(time.perf_counter() - start)

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))
        return latencies, time.perf_counter() - start


def measure(server: Server, model: str, workers: int) -> Result:
    cpu_before = server.cpu_seconds()
    latencies, wall = asyncio.run(_load(server, model, REQUESTS))
    cpu_ms = (server.cpu_seconds() - cpu_before) * 1000 / REQUESTS
    q = statistics.quantiles(latencies, n=100)
    result = Result(server.target, workers, REQUESTS / wall, q[49] * 1000, q[94] * 1000, cpu_ms)
    print(f"measured {result}", file=sys.stderr, flush=True)
    return result


def run(servers: list[Server], upstream: FakeUpstream, workers: int) -> Comparison:
    """The targets measured in interleaved rounds."""
    model = chat_model()
    for server in servers:
        asyncio.run(_load(server, model, WARMUP))
    rounds = [{server.target: measure(server, model, workers) for server in servers} for _ in range(ROUNDS)]
    return Comparison(workers, {t: medians([r[t] for r in rounds]) for t in rounds[0]}, rounds)


def table(comparisons: list[Comparison]) -> str:
    lines = [
        (
            "| target | workers | req/s | p50 ms | p95 ms | added p50 ms | added p95 ms | server CPU ms/req "
            "| CPU vs bare |"
        ),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in comparisons:
        d = c.rows[DIRECT]
        for r in c.rows.values():
            ratio = "" if r.target == DIRECT else f"{c.ratio('cpu_ms', r.target, BARE):.2f}x"
            lines.append(
                f"| {r.target} | {r.workers} | {r.rps:.1f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} "
                f"| {r.p50_ms - d.p50_ms:.1f} | {r.p95_ms - d.p95_ms:.1f} | {r.cpu_ms:.2f} | {ratio} |"
            )
    return "\n".join(lines)


def targets(comparisons: list[Comparison]) -> str:
    """Each target beside the value measured, its margin and the verdict; then the fast stack's effect."""
    lines = ["| target | workers | measured | margin | verdict |", "|---|---:|---:|---:|---|"]

    def line(name: str, workers: int, measured: str, margin: float) -> None:
        lines.append(f"| {name} | {workers} | {measured} | {margin:+.2f} | {'met' if margin >= 0 else 'MISSED'} |")

    for c in comparisons:
        cpu = c.ratio("cpu_ms", GATEWAY, BARE)
        line(f"CPU/request <= {CPU_TARGET}x bare", c.workers, f"{cpu:.2f}x", CPU_TARGET - cpu)
    widest = next(c for c in comparisons if c.workers == max(WORKER_COUNTS))
    rate = widest.ratio("rps", GATEWAY, BARE)
    line(f"req/s >= {RATE_TARGET:g}x bare", widest.workers, f"{rate:.2f}x", rate - RATE_TARGET)
    rps = widest.rows[GATEWAY].rps
    line(f"req/s >= {RPS_TARGET:g}", widest.workers, f"{rps:.1f}", rps - RPS_TARGET)
    for c in comparisons:
        if PLAIN in c.rows:
            lines.append(
                f"| fast stack: CPU/request vs h11 + asyncio (no target) | {c.workers} "
                f"| {c.ratio('cpu_ms', GATEWAY, PLAIN):.2f}x | | |"
            )
            lines.append(
                f"| fast stack: req/s vs h11 + asyncio (no target) | {c.workers} "
                f"| {c.ratio('rps', GATEWAY, PLAIN):.2f}x | | |"
            )
    return "\n".join(lines)


def main() -> int:
    comparisons = list(each_worker_count(run, plain=True).values())
    print(
        f"\nGateway overhead: {ROUNDS} interleaved rounds of {REQUESTS} chat requests per target at concurrency "
        f"{CONCURRENCY} (after {WARMUP} warm-up), fake upstream, {CORES} cores; medians over the rounds; "
        f"CPU vs bare: median of the per-round ratios\n"
    )
    print(table(comparisons))
    print("\nTargets (issue 30; ratios: median of the per-round ratios full gateway / bare proxy)\n")
    print(targets(comparisons))
    return 0


if __name__ == "__main__":
    sys.exit(main())
