"""A request to an engine whose host vanished (unplugged: no reset ever comes) fails within seconds with the
gateway's error, instead of waiting for the model's timeout; a steady load through two gateways shows it only
now and then (tests/multihost/test_failover_engines.py), so here one request is caught in each state. One gateway
worker (it serves in the launching process) and the hosts' kernel settings left at their defaults."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.multihost.conftest import MODEL, TIMEOUT_S, wait_for
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway
from tests.support.netns import Host, Network

pytestmark = pytest.mark.timeout(300)
HOLD_S = 3600.0  # the engine holds each request this long: only the gateway giving up on the host ends it
GAVE_UP = (408, 500, 502, 503, 504)  # the connection timed out (LiteLLM's 408), or failed: never a hang
CLIENT_TIMEOUT_S = 60.0  # Gateway.chat's: well under the model's timeout, so a request left waiting fails the test


@pytest.fixture
def hosts() -> Iterator[tuple[FakeUpstream, Gateway, Host, Host]]:
    assert TIMEOUT_S > 2 * CLIENT_TIMEOUT_S
    with Network(subnet="10.78.0") as network:
        engine_host, gateway_host, clients = (network.host(name) for name in ("engine", "gw", "clients"))
        upstream = FakeUpstream(where=engine_host).start()
        gateway = Gateway({MODEL: [upstream.url]}, env={"HXP_REQUEST_LOG": "off"}, where=gateway_host)
        try:
            gateway.start(wait=False)
            gateway.wait_ready()
            yield upstream, gateway, clients, engine_host
        finally:
            gateway.close()  # the engine, still holding a request, is killed with its host's namespace


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_request_the_engine_holds_when_its_host_vanishes_fails_within_seconds(
    hosts: tuple[FakeUpstream, Gateway, Host, Host], stream: bool
) -> None:
    upstream, gateway, clients, engine_host = hosts
    upstream.set_delay(HOLD_S)
    with clients.executor(1) as pool:
        answer = pool.submit(gateway.chat, gateway.master_key, MODEL, stream=stream)
        wait_for(lambda: upstream.requests_served() == 1, "the request held by the engine")
        engine_host.cut()  # the request was delivered: only keep-alive probes can tell the host is gone
        response = answer.result()
    assert response.status_code in GAVE_UP and "error" in response.json(), response.text


def test_a_request_sent_on_a_pooled_connection_to_a_vanished_host_fails_within_seconds(
    hosts: tuple[FakeUpstream, Gateway, Host, Host],
) -> None:
    upstream, gateway, clients, engine_host = hosts
    assert clients.call(gateway.chat, gateway.master_key, MODEL).status_code == 200  # a connection in the pool

    def cut_then_ask() -> object:
        engine_host.cut()  # at once: the pooled connection is reused, and the request's bytes are never acknowledged
        return gateway.chat(gateway.master_key, MODEL)

    response = clients.call(cut_then_ask)
    assert response.status_code in GAVE_UP and "error" in response.json(), response.text
