"""The stack across hosts (network namespaces): stores, two gateways, two engines, the clients.

``cluster``: the engines are fake upstreams (fast); ``engine_cluster``: real vLLM CPU engines serving the chat
model (SmolLM2), one pinned to each core.

Skipped, with the reason, where namespaces cannot be made (not root, no iproute2). Every host is a namespace of
one :class:`~tests.support.netns.Network` (10.77.0.0/24, reachable only from the other hosts): deleted, with
whatever still runs there, at the end of the module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Generic, Protocol, Self, TypeVar

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from hxp.core import catalogue
from hxp.core.paths import state_path
from hxp.model.command import engine_command, engine_groups
from hxp.model.service import Engine
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway, GatewayFactory
from tests.support.load import SteadyLoad
from tests.support.netns import Host, Network, unavailable
from tests.support.servers import PostgresServer, RedisServer

MODEL = catalogue.load().chat_models[0].name
ENGINE_PORT = 8000
# Gateway hosts give up on an unacknowledged connection after ~3 s (kernel default: ~15 minutes), as
# docs/reliability.md advises for LiteLLM's own path (the relay sets a user timeout on its connections itself:
# tests/multihost/test_vanished_engine.py runs without this setting).
TCP_RETRIES2 = "3"
TIMEOUT_S = catalogue.load().get(MODEL).api.timeout_s  # the model's request timeout: nothing may wait longer
HANG_GUARD_S = 120.0
GATEWAY_ENV = {
    "HXP_KEY_CACHE_TTL_S": "600",  # keys are known while the database is away
    "HXP_USAGE_MAX_BUFFER": "5",  # rows spill to disk early during an outage
    "HXP_USAGE_RETRY_MAX_S": "1",
    "HXP_REQUEST_LOG": "off",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = unavailable()
    if reason:
        for item in items:
            if "tests/multihost/" in str(item.fspath):
                item.add_marker(pytest.mark.skip(reason=f"multihost tests need network namespaces: {reason}"))


class EngineProcess(Protocol):
    """What the cluster needs of an engine: its OpenAI base URL (…/v1), a wait until it is ready, a way to stop it."""

    url: str

    def wait_ready(self) -> Self: ...

    def stop(self) -> object: ...


E = TypeVar("E", bound=EngineProcess)


class HostEngine:
    """A real vLLM CPU engine serving the chat model on a host (all its addresses, ENGINE_PORT), pinned to one
    core; started at once, ready when healthy."""

    def __init__(self, host: Host, core: int) -> None:
        cat = catalogue.load(profile="cpu")
        command = engine_command(
            engine_groups(cat.chat_models)[0],
            cat.profile_settings,
            host="0.0.0.0",
            port=ENGINE_PORT,
            enforce_eager=True,
            cpus=[core],
        )
        self.host = host
        self.url = f"http://{host.address}:{ENGINE_PORT}/v1"
        log = state_path("logs", "tests") / f"multihost-{host.name}.log"
        self.engine = Engine(dataclasses.replace(command, argv=host.wrap(command.argv)), log=log).start()

    def wait_ready(self) -> HostEngine:
        """Wait until it is healthy, asked from its host (it answers there even while the host is unplugged)."""
        self.host.call(self.engine.wait_healthy)
        return self

    def served(self, where: Host) -> float:
        """The requests it has answered (vLLM's ``vllm:request_success_total``), asked from ``where``."""
        text = where.call(httpx.get, self.url.removesuffix("/v1") + "/metrics", timeout=10).text
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "vllm:request_success_total"
        )

    def kill(self) -> None:
        """End it as a crash would: SIGKILL to its whole process group."""
        self.engine.stop(grace=0, signum=signal.SIGKILL)

    def stop(self) -> None:
        self.engine.stop(grace=10)


@dataclass
class Cluster(Generic[E]):
    network: Network
    stores: Host
    clients: Host
    engine_hosts: list[Host]
    engines: list[E]
    gateway_hosts: list[Host]
    gateways: list[Gateway]
    postgres: PostgresServer
    redis: RedisServer
    start_engine: Callable[[Host, int], E]

    def restart_engine(self, index: int) -> E:
        """A fresh engine process on the same host and port, ready."""
        self.engines[index] = self.start_engine(self.engine_hosts[index], index).wait_ready()
        return self.engines[index]


@contextmanager
def running_cluster(start_engine: Callable[[Host, int], E], models: list[str]) -> Iterator[Cluster[E]]:
    """The hosts; PostgreSQL and Redis on ``stores``; ``start_engine(host, i)`` on each engine host (both started,
    then waited for); a gateway on each gateway host sending ``models`` to both engines. All stopped, the hosts
    deleted, on exit."""
    factory = GatewayFactory()
    with Network() as network:
        stores, clients = network.host("stores"), network.host("clients")
        engine_hosts = [network.host(f"engine{i}") for i in (1, 2)]
        gateway_hosts = [network.host(f"gw{i}") for i in (1, 2)]
        postgres, redis = PostgresServer(where=stores), RedisServer(where=stores)
        engines: list[E] = []
        try:
            postgres.start()
            redis.start()
            engines = [start_engine(host, index) for index, host in enumerate(engine_hosts)]
            for engine in engines:
                engine.wait_ready()
            backends = {name: [e.url for e in engines] for name in models}
            env = {**GATEWAY_ENV, "DATABASE_URL": postgres.url, "REDIS_URL": redis.url}
            for host in gateway_hosts:
                host.sysctl("net.ipv4.tcp_retries2", TCP_RETRIES2)
            gateways = [factory(backends, env=env, wait=False, where=h) for h in gateway_hosts]
            for gateway in gateways:
                gateway.wait_ready()
            yield Cluster(
                network, stores, clients, engine_hosts, engines, gateway_hosts, gateways, postgres, redis, start_engine
            )
        finally:
            factory.close()
            for engine in engines:
                engine.stop()
            redis.close()
            postgres.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster[FakeUpstream]]:
    """Fake engines (20 ms an answer) for every catalogue model."""

    def fake(host: Host, index: int) -> FakeUpstream:
        return FakeUpstream(delay=0.02, port=ENGINE_PORT, where=host).start()

    with running_cluster(fake, catalogue.load().names) as running:
        yield running


@pytest.fixture(scope="module")
def engine_cluster() -> Iterator[Cluster[HostEngine]]:
    """Real CPU engines for the chat model (the names SmolLM2 serves), one on each core."""
    cat, cores = catalogue.load(profile="cpu"), sorted(os.sched_getaffinity(0))

    def real(host: Host, index: int) -> HostEngine:
        return HostEngine(host, cores[index % len(cores)])

    with running_cluster(real, [m.name for m in engine_groups(cat.chat_models)[0]]) as running:
        yield running


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = HANG_GUARD_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not reached within {timeout}s"
        time.sleep(0.2)


def loads(
    cluster: Cluster, keys: list[str], timeout_s: float = TIMEOUT_S + 30, max_s: float = 300.0
) -> list[SteadyLoad]:
    """One steady load per gateway, from the clients host, its clients giving up after ``timeout_s``, the load
    after ``max_s``."""
    return [
        SteadyLoad(cluster.clients, gw.base_url, key, MODEL, timeout_s=timeout_s, max_s=max_s).start()
        for gw, key in zip(cluster.gateways, keys, strict=True)
    ]


def keys(cluster: Cluster, **fields: object) -> list[str]:
    """A key per gateway (created through the first; the database is shared)."""
    return [cluster.clients.call(cluster.gateways[0].create_key, **fields) for _ in cluster.gateways]


def record(name: str, results: dict[str, object]) -> None:
    """Print one scenario's measurements as a JSON line (``pytest -s`` shows them; docs/reliability.md has them)."""
    print(f"\nRELIABILITY {name} {json.dumps(results, sort_keys=True)}")
