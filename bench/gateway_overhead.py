"""Gateway overhead benchmark (`make bench-gateway`): prints a markdown table.

In one run on this machine, the same chat requests go to the three targets of
:mod:`bench.targets` (direct to the fake upstream, the bare LiteLLM proxy, the full gateway),
side by side in interleaved rounds. For each: requests/s at a fixed concurrency, p50/p95
latency and the latency added over ``direct``, and the server's CPU milliseconds per request.
Run once with one worker (the CPU comparison: target gateway <= 1.15x bare) and once with
workers = cores (the throughput target: >= 90 requests/s).

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

from bench.targets import BARE, CORES, DIRECT, GATEWAY, Server, chat_model, each_worker_count, median_ratio, medians
from tests.support.fake_upstream import FakeUpstream

REQUESTS = int(os.environ.get("BENCH_REQUESTS", "600"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "100"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))
CPU_TARGET = 1.15
RPS_TARGET = 90.0


@dataclass
class Result:
    target: str
    workers: int
    rps: float
    p50_ms: float
    p95_ms: float
    cpu_ms: float


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


def run(servers: list[Server], upstream: FakeUpstream, workers: int) -> tuple[list[Result], float]:
    """The three targets measured in interleaved rounds; their medians and the CPU ratio."""
    model = chat_model()
    for server in servers:
        asyncio.run(_load(server, model, WARMUP))
    rounds = [[measure(server, model, workers) for server in servers] for _ in range(ROUNDS)]
    ratio = median_ratio([(r[2].cpu_ms, r[1].cpu_ms) for r in rounds])
    return [medians([r[i] for r in rounds]) for i in range(len(servers))], ratio


def table(results: list[Result], ratios: dict[int, float]) -> str:
    direct = {r.workers: r for r in results if r.target == DIRECT}
    lines = ["| target | workers | req/s | p50 ms | p95 ms | added p50 ms | added p95 ms | server CPU ms/req "
             "| CPU vs bare |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        d = direct[r.workers]
        ratio = {DIRECT: "", GATEWAY: f"{ratios[r.workers]:.2f}x"}.get(r.target, "1.00x")
        lines.append(f"| {r.target} | {r.workers} | {r.rps:.1f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} "
                     f"| {r.p50_ms - d.p50_ms:.1f} | {r.p95_ms - d.p95_ms:.1f} "
                     f"| {r.cpu_ms:.1f} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    measured = each_worker_count(run)
    results = [row for rows, _ in measured.values() for row in rows]
    ratios = {workers: ratio for workers, (_, ratio) in measured.items()}
    print(f"\nGateway overhead: {ROUNDS} interleaved rounds of {REQUESTS} chat requests per target at concurrency "
          f"{CONCURRENCY} (after {WARMUP} warm-up), fake upstream, {CORES} cores; medians over the rounds\n")
    print(table(results, ratios))
    full = [r for r in results if r.target == GATEWAY and r.workers == CORES][0]
    bare = [r for r in results if r.target == BARE and r.workers == CORES][0]
    print(f"\n- CPU per request, full gateway / bare proxy (1 worker, median of per-round ratios): {ratios[1]:.2f}x "
          f"(target <= {CPU_TARGET}x): {'met' if ratios[1] <= CPU_TARGET else 'MISSED'}")
    print(f"- full gateway throughput with {CORES} workers: {full.rps:.1f} req/s "
          f"(target >= {RPS_TARGET:g}): {'met' if full.rps >= RPS_TARGET else 'MISSED'}; "
          f"the bare LiteLLM proxy alone: {bare.rps:.1f} req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
