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

Bounded: REQUESTS requests per target after WARMUP, at CONCURRENCY (environment variables).
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
from hxp.gateway import routes
from hxp.gateway.launcher import WORKER_HEALTHCHECK_S
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway, all_models
from tests.support.lifetime import die_with_parent
from tests.support.servers import free_port, wait_port

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = int(os.environ.get("BENCH_REQUESTS", "1000"))
WARMUP = int(os.environ.get("BENCH_WARMUP", "100"))
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


def measure(target: str, url: str, pid: int | None, key: str | None, model: str, workers: int) -> Result:
    asyncio.run(_load(url, key, model, WARMUP))
    cpu_before = _cpu_seconds(pid) if pid else None
    latencies, wall = asyncio.run(_load(url, key, model, REQUESTS))
    cpu_ms = None if cpu_before is None else (_cpu_seconds(pid) - cpu_before) * 1000 / REQUESTS
    q = statistics.quantiles(latencies, n=100)
    result = Result(target, workers, REQUESTS / wall, q[49] * 1000, q[94] * 1000, cpu_ms)
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
        config = {"model_list": routes.model_list(cat, all_models(upstream_url), ""),
                  "router_settings": routes.router_settings(cat)}
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


def run(workers: int, upstream: FakeUpstream, model: str) -> list[Result]:
    results = [measure("direct", upstream.url, upstream.pid, None, model, workers)]
    bare = BareProxy(upstream.url, workers)
    try:
        results.append(measure("bare LiteLLM proxy", bare.url, bare.proc.pid, bare.master_key, model, workers))
    finally:
        bare.stop()
    gateway = Gateway(all_models(upstream.url), workers=workers)
    try:
        gateway.start(wait=False).wait_ready(START_TIMEOUT_S)
        key = gateway.create_key(rpm=10**6, tpm=10**9)
        results.append(measure("full gateway", gateway.base_url, gateway.pid, key, model, workers))
    finally:
        gateway.close()
    return results


def table(results: list[Result]) -> str:
    direct = {r.workers: r for r in results if r.target == "direct"}
    bare = {r.workers: r for r in results if r.target.startswith("bare")}
    lines = ["| target | workers | req/s | p50 ms | p95 ms | added p50 ms | added p95 ms | server CPU ms/req "
             "| CPU vs bare |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        d = direct[r.workers]
        ratio = (f"{r.cpu_ms / bare[r.workers].cpu_ms:.2f}x"
                 if r.cpu_ms and r.workers in bare and not r.target == "direct" else "")
        lines.append(f"| {r.target} | {r.workers} | {r.rps:.1f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} "
                     f"| {r.p50_ms - d.p50_ms:.1f} | {r.p95_ms - d.p95_ms:.1f} "
                     f"| {r.cpu_ms:.1f} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    cores = os.cpu_count() or 1
    model = catalogue.load().chat_models[0].name
    upstream = FakeUpstream().start()
    results: list[Result] = []
    try:
        for workers in sorted({1, cores}):
            results += run(workers, upstream, model)
    finally:
        upstream.stop()
    print(f"\nGateway overhead: {REQUESTS} chat requests per target at concurrency {CONCURRENCY} "
          f"(after {WARMUP} warm-up), fake upstream, {cores} cores\n")
    print(table(results))
    one = {r.target: r for r in results if r.workers == 1}
    full = [r for r in results if r.target == "full gateway" and r.workers == cores][0]
    cpu_ratio = one["full gateway"].cpu_ms / one["bare LiteLLM proxy"].cpu_ms
    print(f"\n- CPU per request, full gateway / bare proxy (1 worker): {cpu_ratio:.2f}x "
          f"(target <= {CPU_TARGET}x): {'met' if cpu_ratio <= CPU_TARGET else 'MISSED'}")
    print(f"- full gateway throughput with {cores} workers: {full.rps:.1f} req/s "
          f"(target >= {RPS_TARGET:g}): {'met' if full.rps >= RPS_TARGET else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
