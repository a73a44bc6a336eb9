"""Streaming through the gateway (`make bench-streaming`): prints two markdown tables.

The targets of :mod:`bench.targets` (direct to the fake upstream, the smallest relay on the
gateway's stack, the bare LiteLLM proxy, the full gateway), side by side in interleaved rounds,
stream chat answers of CHUNKS text chunks from the fake upstream, in two variants: ``fast``
(unpaced: the servers' own cost per chunk decides the rate) and ``paced`` (PACE chunks/s per
stream, like a GPU engine), each at concurrency 1 and 64, with 1 worker and with workers = cores. Per target: streams/s,
aggregate text chunks/s, time to the first text chunk (TTFT) p50/p95 and the inter-chunk gap
p95 as seen by the client, each also as added over ``direct``, and the server's CPU ms per
1,000 chunks (its process tree, psutil) with its ratio to the bare proxy's. The smallest relay
(:mod:`bench.floor_relay`) shows what the HTTP stack costs with no gateway code at all.

The second table sets the measured values beside issue 30's targets: CPU per 1,000 chunks
<= 0.15x bare (every workload, 1 worker and workers = cores), aggregate chunks/s of the unpaced
streams at concurrency 64 with one worker >= 5x bare, added TTFT p50 <= 3 ms over ``direct`` at
concurrency 1 (ratios: the median of the per-round ratios).

Bounded: ROUNDS rounds of each workload's ``streams`` per target (WORKLOADS) after WARMUP
streams per target; environment: BENCH_STREAM_ROUNDS, BENCH_STREAM_CHUNKS, BENCH_STREAM_PACE.
Streams open their connections RAMP_S apart, so that the workers share them. 5.5-6.5 minutes
on this 2-core machine (about 1.5 of them starting the proxies). The measured runs, before and
after the observer's per-chunk work was trimmed, with the machine's load, are in bench/README.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass

import aiohttp

from bench.targets import (
    BARE,
    CORES,
    DIRECT,
    FLOOR,
    GATEWAY,
    Server,
    chat_model,
    each_worker_count,
    median_ratio,
    medians,
)
from tests.support.fake_upstream import FakeUpstream

ROUNDS = int(os.environ.get("BENCH_STREAM_ROUNDS", "3"))
CHUNKS = int(os.environ.get("BENCH_STREAM_CHUNKS", "200"))
PACE = float(os.environ.get("BENCH_STREAM_PACE", "100"))
CPU_TARGET = 0.15  # CPU per 1,000 chunks, full gateway / bare proxy (at most)
TTFT_TARGET_MS = 3.0  # TTFT p50 added over direct at concurrency 1 (at most)
RATE_TARGET = 5.0  # chunks/s of unpaced streams at concurrency 64 with one worker, full gateway / bare (at least)
_TEXT = re.compile(rb'"(?:content|text)":\s*"[^"]')  # an event carrying text (not the role, finish or usage one)


@dataclass(frozen=True)
class Workload:
    variant: str
    pace: float | None  # chunks/s per stream; None: unpaced
    concurrency: int
    streams: int  # per target and round


WORKLOADS = [
    Workload("fast", None, 1, 10),
    Workload("fast", None, 64, 64),
    Workload("paced", PACE, 1, 4),
    Workload("paced", PACE, 64, 64),
]
WARMUP = Workload("fast", None, 16, 32)
# The client's connections open this far apart: a burst of connections would be accepted by whichever
# worker wakes first (asyncio accepts up to 100 at once), one at a time they split about evenly.
RAMP_S = 0.005


@dataclass
class Result:
    workload: Workload
    workers: int
    target: str
    streams_s: float
    chunks_s: float
    ttft_p50_ms: float
    ttft_p95_ms: float
    gap_p95_ms: float
    cpu_ms: float  # per 1,000 chunks


async def _streams(server: Server, model: str, workload: Workload) -> tuple[list[float], list[float], float]:
    """The workload's streams at its concurrency: their TTFTs, inter-chunk gaps (s) and the wall time."""
    url, headers = f"{server.url}/chat/completions", server.headers
    body = json.dumps(
        {"model": model, "messages": [{"role": "user", "content": "benchmark"}], "max_tokens": CHUNKS, "stream": True}
    )
    ttfts: list[float] = []
    gaps: list[float] = []
    queue = iter(range(workload.streams))

    async def worker(session: aiohttp.ClientSession, index: int) -> None:
        await asyncio.sleep(index * RAMP_S)
        for _ in queue:
            start = time.perf_counter()
            times: list[float] = []
            async with session.post(url, data=body, headers=headers) as response:
                if response.status != 200:
                    raise RuntimeError(f"{url}: HTTP {response.status}: {await response.text()}")
                async for line in response.content:
                    if line.startswith(b"data: {") and _TEXT.search(line):
                        times.append(time.perf_counter())
            if len(times) != CHUNKS:
                raise RuntimeError(f"{server.target}: a stream of {len(times)} text chunks, not {CHUNKS}")
            ttfts.append(times[0] - start)
            gaps.extend(b - a for a, b in zip(times, times[1:]))

    connector = aiohttp.TCPConnector(limit=workload.concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=600)) as session:
        start = time.perf_counter()
        await asyncio.gather(*(worker(session, i) for i in range(workload.concurrency)))
        return ttfts, gaps, time.perf_counter() - start


def _percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


def measure(server: Server, model: str, workload: Workload, workers: int) -> Result:
    cpu_before = server.cpu_seconds()
    ttfts, gaps, wall = asyncio.run(_streams(server, model, workload))
    chunks = workload.streams * CHUNKS
    result = Result(
        workload,
        workers,
        server.target,
        workload.streams / wall,
        chunks / wall,
        _percentile(ttfts, 50) * 1000,
        _percentile(ttfts, 95) * 1000,
        _percentile(gaps, 95) * 1000,
        (server.cpu_seconds() - cpu_before) * 1000 * 1000 / chunks,
    )
    print(f"measured {result}", file=sys.stderr, flush=True)
    return result


@dataclass
class Comparison:
    """One workload and worker count: each target's medians, and the gateway's per-round ratios to bare."""

    rows: dict[str, Result]
    cpu_ratio: float
    rate_ratio: float
    floor_cpu_ratio: float  # the smallest relay's CPU per 1,000 chunks / bare's: what no gateway code goes under

    def added(self, target: str, column: str) -> float:
        return getattr(self.rows[target], column) - getattr(self.rows[DIRECT], column)


def run(servers: list[Server], upstream: FakeUpstream, workers: int) -> list[Comparison]:
    """Every workload on the targets, in interleaved rounds."""
    model = chat_model()
    rounds: dict[Workload, list[dict[str, Result]]] = defaultdict(list)
    upstream.set_reply(CHUNKS)
    for server in servers:
        asyncio.run(_streams(server, model, WARMUP))
    for _ in range(ROUNDS):
        for workload in WORKLOADS:
            upstream.set_reply(CHUNKS, workload.pace)
            rounds[workload].append({server.target: measure(server, model, workload, workers) for server in servers})
    upstream.set_reply()
    return [
        Comparison(
            {t: medians([r[t] for r in rs]) for t in (DIRECT, FLOOR, BARE, GATEWAY)},
            median_ratio([(r[GATEWAY].cpu_ms, r[BARE].cpu_ms) for r in rs]),
            median_ratio([(r[GATEWAY].chunks_s, r[BARE].chunks_s) for r in rs]),
            median_ratio([(r[FLOOR].cpu_ms, r[BARE].cpu_ms) for r in rs]),
        )
        for rs in rounds.values()
    ]


def _label(workload: Workload) -> str:
    return f"{workload.variant}" + (f" {workload.pace:g}/s" if workload.pace else "")


def table(comparisons: list[Comparison]) -> str:
    lines = [
        "| stream | conc. | workers | target | streams/s | chunks/s | TTFT p50 ms | added TTFT p50 ms "
        "| added TTFT p95 ms | gap p95 ms | added gap p95 ms | CPU ms/1k chunks | CPU vs bare |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in comparisons:
        for target, r in c.rows.items():
            added = (
                ["", "", ""]
                if target == DIRECT
                else [
                    f"{c.added(target, column):.{digits}f}"
                    for column, digits in (("ttft_p50_ms", 1), ("ttft_p95_ms", 1), ("gap_p95_ms", 2))
                ]
            )
            ratio = {DIRECT: "", GATEWAY: f"{c.cpu_ratio:.2f}x", FLOOR: f"{c.floor_cpu_ratio:.2f}x"}.get(
                target, "1.00x"
            )
            cells = [
                _label(r.workload),
                r.workload.concurrency,
                r.workers,
                target,
                f"{r.streams_s:.2f}",
                f"{r.chunks_s:.0f}",
                f"{r.ttft_p50_ms:.1f}",
                *added[:2],
                f"{r.gap_p95_ms:.2f}",
                added[2],
                f"{r.cpu_ms:.1f}",
                ratio,
            ]
            lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def targets(comparisons: list[Comparison]) -> str:
    """Each target of issue 30 beside the value measured, its margin and the verdict."""
    lines = [
        "| target | stream | conc. | workers | measured | margin | verdict | smallest relay (floor) |",
        "|---|---|---:|---:|---:|---:|---|---:|",
    ]

    def line(name: str, c: Comparison, measured: str, margin: float, floor: str = "") -> None:
        w = c.rows[GATEWAY].workload
        lines.append(
            f"| {name} | {_label(w)} | {w.concurrency} | {c.rows[GATEWAY].workers} | {measured} "
            f"| {margin:+.2f} | {'met' if margin >= 0 else 'MISSED'} | {floor} |"
        )

    for c in comparisons:
        floor = f"{c.floor_cpu_ratio:.2f}x"
        line(f"CPU/1k chunks <= {CPU_TARGET}x bare", c, f"{c.cpu_ratio:.2f}x", CPU_TARGET - c.cpu_ratio, floor)
    for c in comparisons:
        if c.rows[GATEWAY].workload.concurrency == 1:
            added, floor = c.added(GATEWAY, "ttft_p50_ms"), f"{c.added(FLOOR, 'ttft_p50_ms'):.1f} ms"
            line(f"added TTFT p50 <= {TTFT_TARGET_MS:g} ms", c, f"{added:.1f} ms", TTFT_TARGET_MS - added, floor)
    for c in comparisons:
        w = c.rows[GATEWAY].workload
        if c.rows[GATEWAY].workers == 1 and w.pace is None and w.concurrency == 64:
            line(f"chunks/s >= {RATE_TARGET:g}x bare", c, f"{c.rate_ratio:.2f}x", c.rate_ratio - RATE_TARGET)
    return "\n".join(lines)


def main() -> int:
    comparisons = [c for measured in each_worker_count(run, floor=True).values() for c in measured]
    print(
        f"\nStreaming through the gateway: {ROUNDS} interleaved rounds per workload and target, streams of "
        f"{CHUNKS} text chunks from the fake upstream (after {WARMUP.streams} warm-up streams), {CORES} cores; "
        f"medians over the rounds; added = over direct\n"
    )
    print(table(comparisons))
    print("\nTargets (issue 30; ratios: median of the per-round ratios full gateway / bare proxy)\n")
    print(targets(comparisons))
    return 0


if __name__ == "__main__":
    sys.exit(main())
