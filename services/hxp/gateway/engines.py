"""The engines serving a model's backends: their queues (vLLM's /metrics) and, for the local processes, their
memory and CPU, for the usage rollup and the metrics.

A backend on this machine (loopback URL) is found as the process listening on its
port, with its children (vLLM's engine core and workers); a remote one is unknown.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from urllib.parse import urlsplit

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

_LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}
QUEUE_METRICS = {"vllm:num_requests_running": "running", "vllm:num_requests_waiting": "waiting"}


async def queue_lengths(client: httpx.AsyncClient, root: str, timeout: float) -> dict[str, float | None]:
    """An engine's running and waiting requests from its Prometheus metrics (summed over their label sets; None
    where it exports none, or answers /metrics with an error). A failed connection or ``timeout`` raises
    httpx.HTTPError."""
    found: dict[str, float | None] = dict.fromkeys(QUEUE_METRICS.values())
    response = await client.get(f"{root}/metrics", timeout=timeout)
    if response.status_code != 200:
        return found
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            name = QUEUE_METRICS.get(sample.name)
            if name is not None:
                found[name] = (found[name] or 0.0) + sample.value
    return found


class EngineProcesses:
    """Memory and CPU of the local processes serving a model (the listener on its port and their children)."""

    def __init__(self) -> None:
        self._last_cpu: dict[str, tuple[float, float]] = {}  # model -> (cpu seconds, monotonic time)

    def sample(self, model: str, base_urls: Iterable[str]) -> tuple[float | None, float | None]:
        """(resident memory in GB, CPU % of one core since the last sample) or None where unknown."""
        ports = [local_port(url) for url in base_urls]
        procs = _listeners({p for p in ports if p is not None})
        if not procs:
            self._last_cpu.pop(model, None)
            return None, None
        rss = cpu = 0.0
        for proc in procs:
            for member in _tree(proc):
                try:
                    rss += member.memory_info().rss
                    times = member.cpu_times()
                    cpu += times.user + times.system
                except psutil.Error:
                    continue
        now = time.monotonic()
        previous = self._last_cpu.get(model)
        self._last_cpu[model] = (cpu, now)
        utilization = None
        if previous is not None and now > previous[1] and cpu >= previous[0]:
            utilization = 100.0 * (cpu - previous[0]) / (now - previous[1])
        return rss / 2**30, utilization


def local_port(url: str) -> int | None:
    """The port of a backend URL on this machine, or None for a remote one."""
    parts = urlsplit(url)
    if parts.hostname not in _LOCAL_HOSTS:
        return None
    return parts.port or (443 if parts.scheme == "https" else 80)


def _listeners(ports: set[int]) -> list[psutil.Process]:
    if not ports:
        return []
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return []
    pids = {c.pid for c in conns if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port in ports and c.pid}
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return procs


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return [proc]
