"""The three targets the gateway benchmarks measure side by side, and how their CPU is read.

1. ``direct``  - the fake OpenAI upstream itself (tests/support/fake_upstream.py);
2. ``bare``    - the LiteLLM proxy with the same model list and router settings, no hooks,
                 authenticated with its master key;
3. ``gateway`` - the full gateway (`hxp gateway serve`: trust boundary, custom auth, validation,
                 rate limits, cache opt-in, usage logging, metrics...), with a key that has rpm/tpm limits;
4. ``plain``   - (when asked for) the same gateway on uvicorn's plain stack (h11 + asyncio instead of
                 httptools + uvloop): the effect of the fast stack;
5. ``floor``   - (when asked for) :mod:`bench.floor_relay`, the smallest relay on the gateway's stack: the
                 cost no gateway code can go under.

A server's CPU is the user+system time of its process and all its workers, read with psutil
before and after the measured requests. This machine's speed drifts by ±20 % over minutes
(a shared host), so the benchmarks run the three servers side by side and measure them in
interleaved rounds (direct, bare, gateway, direct, ...), giving each column's median over the
rounds and, for a ratio between two targets, the median of the per-round ratios.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import psutil
import yaml

from hxp.core import catalogue
from hxp.gateway import deployments
from hxp.gateway.launcher import WORKER_HEALTHCHECK_S
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway, all_models
from tests.support.lifetime import die_with_parent
from tests.support.servers import free_port, wait_port

START_TIMEOUT_S = 600  # a busy machine can take minutes to start LiteLLM
DIRECT, BARE, GATEWAY, PLAIN = "direct", "bare LiteLLM proxy", "full gateway", "full gateway, h11 + asyncio"
FLOOR = "smallest relay (floor)"
CORES = os.cpu_count() or 1
WORKER_COUNTS = sorted({1, CORES})  # one worker: the CPU comparison; one per core: the throughput

Row = TypeVar("Row")
Measured = TypeVar("Measured")


@dataclass
class Server:
    """One measured target: its OpenAI base URL, the process whose CPU is counted, its key."""

    target: str
    url: str
    pid: int | None
    key: str | None

    @property
    def headers(self) -> dict[str, str]:
        return {"content-type": "application/json", **({"Authorization": f"Bearer {self.key}"} if self.key else {})}

    def cpu_seconds(self) -> float:
        """User+system CPU of the server process and all its descendants (living ones)."""
        assert self.pid is not None
        root = psutil.Process(self.pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            try:
                times = proc.cpu_times()
                total += times.user + times.system
            except psutil.NoSuchProcess:
                continue
        return total


class UvicornServer:
    """An ASGI app (``module:attribute``) under uvicorn on the fast stack (httptools + uvloop), on a free
    loopback port, with ``workers`` workers; its log in a temporary folder. Stopped with :meth:`stop`."""

    def __init__(self, app: str, workers: int, env: dict[str, str], *options: str) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="hxp-bench-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = open(self.dir / "log", "wb")
        self.proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(self.port)),
                *("--workers", str(workers), "--log-level", "warning", "--no-access-log"),
                *("--loop", "uvloop", "--http", "httptools", *options),
            ],
            env=env,
            cwd=self.dir,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
        try:
            wait_port(self.port, timeout=START_TIMEOUT_S)
            self.ready()
        except BaseException:
            self.stop()
            raise

    def ready(self) -> None:
        """Wait until the app answers (after its port is open)."""

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)
        self.log.close()


class BareProxy(UvicornServer):
    """The LiteLLM proxy alone, on the gateway's model list and router settings."""

    def __init__(self, upstream_url: str, workers: int) -> None:
        self.master_key = "sk-bench-" + os.urandom(12).hex()
        cat = catalogue.load()
        config = {
            "model_list": deployments.model_list(cat, all_models(upstream_url), ""),
            "router_settings": deployments.router_settings(cat),
        }
        config_file = Path(tempfile.mkdtemp(prefix="hxp-bench-bare-")) / "config.yaml"
        config_file.write_text(yaml.safe_dump(config))
        env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
        env.update(
            {
                "CONFIG_FILE_PATH": str(config_file),
                "LITELLM_MASTER_KEY": self.master_key,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "LITELLM_LOG": "WARNING",
            }
        )
        super().__init__(
            "litellm.proxy.proxy_server:app", workers, env, "--timeout-worker-healthcheck", str(WORKER_HEALTHCHECK_S)
        )

    def ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while httpx.get(f"http://127.0.0.1:{self.port}/health/liveliness", timeout=30).status_code != 200:
            if time.monotonic() > deadline:
                raise TimeoutError("the bare LiteLLM proxy did not start")
            time.sleep(0.5)


class FloorRelay(UvicornServer):
    """:mod:`bench.floor_relay`, the smallest relay on the gateway's stack."""

    def __init__(self, upstream_url: str, workers: int) -> None:
        root = str(Path(__file__).resolve().parents[1])
        env = {**os.environ, "HXP_FLOOR_UPSTREAM": upstream_url}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        super().__init__("bench.floor_relay:app", workers, env)


@contextmanager
def side_by_side(
    upstream: FakeUpstream, workers: int, plain: bool = False, floor: bool = False
) -> Iterator[list[Server]]:
    """The targets on ``upstream`` (``plain`` and ``floor`` too when asked), the proxies with ``workers``
    workers; stopped on exit."""
    bare = floor_relay = None
    gateways: list[tuple[str, Gateway]] = []
    try:
        floor_relay = FloorRelay(upstream.url, workers) if floor else None
        bare = BareProxy(upstream.url, workers)
        for target, stack in [(GATEWAY, "fast"), *([(PLAIN, "plain")] if plain else [])]:
            gateways.append((target, Gateway(all_models(upstream.url), workers=workers, http_stack=stack)))
            gateways[-1][1].start(wait=False).wait_ready(START_TIMEOUT_S)
        yield [
            Server(DIRECT, upstream.url, upstream.pid, None),
            *([Server(FLOOR, floor_relay.url, floor_relay.proc.pid, None)] if floor_relay else []),
            Server(BARE, bare.url, bare.proc.pid, bare.master_key),
            *(
                Server(target, gateway.base_url, gateway.pid, gateway.create_key(rpm=10**6, tpm=10**9))
                for target, gateway in gateways
            ),
        ]
    finally:
        for _, gateway in gateways:
            gateway.close()
        if bare:
            bare.stop()
        if floor_relay:
            floor_relay.stop()


def each_worker_count(
    run: Callable[[list[Server], FakeUpstream, int], Measured], plain: bool = False, floor: bool = False
) -> dict[int, Measured]:
    """``run(servers, upstream, workers)`` on the targets side by side, with each of WORKER_COUNTS."""
    upstream = FakeUpstream().start()
    measured = {}
    try:
        for workers in WORKER_COUNTS:
            with side_by_side(upstream, workers, plain, floor) as servers:
                measured[workers] = run(servers, upstream, workers)
    finally:
        upstream.stop()
    return measured


def chat_model() -> str:
    """The model the benchmarks ask for (any chat model: the fake upstream answers them all alike)."""
    return catalogue.load().chat_models[0].name


def medians(rounds: list[Row]) -> Row:
    """One target's rounds as one row: the median of each numeric column (the others from the first round)."""
    first = rounds[0]
    columns = {}
    for column in dataclasses.fields(first):  # type: ignore[arg-type]
        values = [getattr(r, column.name) for r in rounds]
        if all(isinstance(v, float) for v in values):
            columns[column.name] = statistics.median(values)
    return dataclasses.replace(first, **columns)  # type: ignore[type-var]


def median_ratio(pairs: list[tuple[float, float]]) -> float:
    """The median of the per-round ratios ``a / b``."""
    return statistics.median(a / b for a, b in pairs)
