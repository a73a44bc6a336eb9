"""Gateway overhead benchmark (`make bench-gateway`): prints a markdown table.

In one run on this machine, the same chat requests go to:

1. ``direct``  - the fake OpenAI upstream itself (tests/support/fake_upstream.py);
2. ``bare``    - the LiteLLM proxy with the same model list and router settings, no hooks,
                 authenticated with its master key;
3. ``gateway`` - the full gateway (`hxp gateway serve`: custom auth, validation, rate limits,
                 cache opt-in, usage logging, metrics...), with a key that has rpm/tpm limits.

For each: requests/s at a fixed concurrency, p50/p95 latency and the latency added over
``direct``, and the server's CPU milliseconds per request (user+system time of the server
process and its workers, read with psutil before and after the measured requests).
Run once with one worker (the CPU comparison: target gateway <= 1.15x bare) and once with
workers = cores (the throughput target: >= 90 requests/s).

This machine's speed drifts by ±20 % over minutes (a shared host), so the three servers run
side by side and are measured in ROUNDS interleaved rounds (direct, bare, gateway, direct, ...);
the table gives each target's median over the rounds and the CPU ratio is the median of the
per-round ratios.

Bounded: ROUNDS x REQUESTS requests per target after WARMUP, at CONCURRENCY (environment variables).
"""
from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import httpx
import psutil
import yaml

from hxp import catalogue
from hxp.gateway import deployments
from hxp.gateway.launcher import WORKER_HEALTHCHECK_S
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway, all_models
from tests.support.lifetime import die_with_parent
from tests.support.servers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "600"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "100"))
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "16"))
START_TIMEOUT_S = 600  # a busy machine can take minutes to start LiteLLM
CPU_TARGET = 1.15
RPS_TARGET = 90.0


@dataclass
class Result:
    target: str
    workers: int
    rps: float
    p50_ms: float
    p95_ms: float
    cpu_ms: float | None


def _cpu_seconds(pid: int) -> float:
    """User+system CPU of a process and all its descendants (living ones)."""
    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


async def _load(url: str, key: str | None, model: str, count: int) -> tuple[list[float], float]:
    """``count`` chat requests at CONCURRENCY; their latencies (s) and the wall time."""
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "benchmark"}], "max_tokens": 8})
    headers = {"content-type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
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


@dataclass
class Server:
    """One measured target: its OpenAI base URL, the process whose CPU is counted, its key."""
    target: str
    url: str
    pid: int | None
    key: str | None


def measure(server: Server, model: str, workers: int) -> Result:
    url, pid, key = server.url, server.pid, server.key
    cpu_before = _cpu_seconds(pid) if pid else None
    latencies, wall = asyncio.run(_load(url, key, model, REQUESTS))
    cpu_ms = None if cpu_before is None else (_cpu_seconds(pid) - cpu_before) * 1000 / REQUESTS
    q = statistics.quantiles(latencies, n=100)
    result = Result(server.target, workers, REQUESTS / wall, q[49] * 1000, q[94] * 1000, cpu_ms)
    print(f"measured {result}", file=sys.stderr, flush=True)
    return result


class BareProxy:
    """The LiteLLM proxy alone, on the gateway's model list and router settings."""

    def __init__(self, upstream_url: str, workers: int) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hxp-bench-bare-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.master_key = "sk-bench-" + os.urandom(12).hex()
        cat = catalogue.load()
        config = {"model_list": deployments.model_list(cat, all_models(upstream_url), ""),
                  "router_settings": deployments.router_settings(cat)}
        (self.dir / "config.yaml").write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.update({"CONFIG_FILE_PATH": str(self.dir / "config.yaml"), "LITELLM_MASTER_KEY": self.master_key,
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "WARNING"})
        self.log = open(self.dir / "log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "litellm.proxy.proxy_server:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", str(workers), "--log-level", "warning", "--no-access-log",
             "--loop", "uvloop", "--timeout-worker-healthcheck", str(WORKER_HEALTHCHECK_S)],
            env=env, cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        try:
            wait_port(self.port, timeout=START_TIMEOUT_S)
            deadline = time.monotonic() + START_TIMEOUT_S
            while httpx.get(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=30).status_code != 200:
                if time.monotonic() > deadline:
                    raise TimeoutError("the bare LiteLLM proxy did not start")
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


def median_result(results: list[Result]) -> Result:
    """One target's rounds as one row: the median of each column."""
    first = results[0]
    cpu = [r.cpu_ms for r in results if r.cpu_ms is not None]
    return Result(first.target, first.workers, statistics.median(r.rps for r in results),
                  statistics.median(r.p50_ms for r in results), statistics.median(r.p95_ms for r in results),
                  statistics.median(cpu) if cpu else None)


def run(workers: int, upstream: FakeUpstream, model: str) -> tuple[list[Result], float]:
    """The three targets side by side, measured in interleaved rounds; their medians and the CPU ratio."""
    bare = gateway = None
    try:
        bare = BareProxy(upstream.url, workers)
        gateway = Gateway(all_models(upstream.url), workers=workers)
        gateway.start(wait=False).wait_ready(START_TIMEOUT_S)
        servers = [Server("direct", upstream.url, upstream.pid, None),
                   Server("bare LiteLLM proxy", bare.url, bare.proc.pid, bare.master_key),
                   Server("full gateway", gateway.base_url, gateway.pid, gateway.create_key(rpm=10**6, tpm=10**9))]
        for server in servers:
            asyncio.run(_load(server.url, server.key, model, WARMUP))
        rounds = [[measure(server, model, workers) for server in servers] for _ in range(ROUNDS)]
    finally:
        if gateway:
            gateway.close()
        if bare:
            bare.stop()
    ratio = statistics.median(r[2].cpu_ms / r[1].cpu_ms for r in rounds)
    return [median_result([r[i] for r in rounds]) for i in range(len(servers))], ratio


def table(results: list[Result], ratios: dict[int, float]) -> str:
    direct = {r.workers: r for r in results if r.target == "direct"}
    lines = ["| target | workers | req/s | p50 ms | p95 ms | added p50 ms | added p95 ms | server CPU ms/req "
             "| CPU vs bare |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        d = direct[r.workers]
        ratio = {"direct": "", "full gateway": f"{ratios[r.workers]:.2f}x"}.get(r.target, "1.00x")
        lines.append(f"| {r.target} | {r.workers} | {r.rps:.1f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} "
                     f"| {r.p50_ms - d.p50_ms:.1f} | {r.p95_ms - d.p95_ms:.1f} "
                     f"| {r.cpu_ms:.1f} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    cores = os.cpu_count() or 1
    model = catalogue.load().chat_models[0].name
    upstream = FakeUpstream().start()
    results: list[Result] = []
    ratios: dict[int, float] = {}
    try:
        for workers in sorted({1, cores}):
            rows, ratios[workers] = run(workers, upstream, model)
            results += rows
    finally:
        upstream.stop()
    print(f"\nGateway overhead: {ROUNDS} interleaved rounds of {REQUESTS} chat requests per target at concurrency "
          f"{CONCURRENCY} (after {WARMUP} warm-up), fake upstream, {cores} cores; medians over the rounds\n")
    print(table(results, ratios))
    full = [r for r in results if r.target == "full gateway" and r.workers == cores][0]
    bare = [r for r in results if r.target.startswith("bare") and r.workers == cores][0]
    print(f"\n- CPU per request, full gateway / bare proxy (1 worker, median of per-round ratios): {ratios[1]:.2f}x "
          f"(target <= {CPU_TARGET}x): {'met' if ratios[1] <= CPU_TARGET else 'MISSED'}")
    print(f"- full gateway throughput with {cores} workers: {full.rps:.1f} req/s "
          f"(target >= {RPS_TARGET:g}): {'met' if full.rps >= RPS_TARGET else 'MISSED'}; "
          f"the bare LiteLLM proxy alone: {bare.rps:.1f} req/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
