"""The stack across hosts (network namespaces): stores, two gateways, two engines (fake upstreams), the clients.

Skipped, with the reason, where namespaces cannot be made (not root, no iproute2). Every host is a namespace of
one :class:`~tests.support.netns.Network` (10.77.0.0/24, reachable only from the other hosts): deleted, with
whatever still runs there, at the end of the module.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from hxp.core import catalogue
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway, GatewayFactory
from tests.support.netns import Host, Network, unavailable
from tests.support.servers import PostgresServer, RedisServer

MODEL = catalogue.load().chat_models[0].name
ENGINE_PORT = 8000
# Gateway hosts give up on an unacknowledged connection after ~3 s (kernel default: ~15 minutes), so a request
# sent to an engine whose host vanished fails and is retried elsewhere instead of waiting for the model's timeout.
TCP_RETRIES2 = "3"
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


@dataclass
class Cluster:
    network: Network
    stores: Host
    clients: Host
    engine_hosts: list[Host]
    engines: list[FakeUpstream]
    gateway_hosts: list[Host]
    gateways: list[Gateway]
    postgres: PostgresServer
    redis: RedisServer

    def restart_engine(self, index: int) -> FakeUpstream:
        """A fresh engine process on the same host and port."""
        self.engines[index] = FakeUpstream(delay=0.02, port=ENGINE_PORT, where=self.engine_hosts[index]).start()
        return self.engines[index]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    factory = GatewayFactory()
    with Network() as network:
        stores, clients = network.host("stores"), network.host("clients")
        engine_hosts = [network.host(f"engine{i}") for i in (1, 2)]
        gateway_hosts = [network.host(f"gw{i}") for i in (1, 2)]
        postgres, redis = PostgresServer(where=stores), RedisServer(where=stores)
        engines: list[FakeUpstream] = []
        try:
            postgres.start()
            redis.start()
            engines = [FakeUpstream(delay=0.02, port=ENGINE_PORT, where=h).start() for h in engine_hosts]
            backends = {name: [e.url for e in engines] for name in catalogue.load().names}
            env = {**GATEWAY_ENV, "DATABASE_URL": postgres.url, "REDIS_URL": redis.url}
            for host in gateway_hosts:
                host.sysctl("net.ipv4.tcp_retries2", TCP_RETRIES2)
            gateways = [factory(backends, env=env, wait=False, where=h) for h in gateway_hosts]
            for gateway in gateways:
                gateway.wait_ready()
            yield Cluster(network, stores, clients, engine_hosts, engines, gateway_hosts, gateways, postgres, redis)
        finally:
            factory.close()
            for engine in engines:
                engine.stop()
            redis.close()
            postgres.close()


def record(name: str, results: dict[str, object]) -> None:
    """Print one scenario's measurements as a JSON line (``pytest -s`` shows them; docs/reliability.md has them)."""
    print(f"\nRELIABILITY {name} {json.dumps(results, sort_keys=True)}")
