"""The overview's data: engine queues from the engines' vLLM gauges, traffic windows from the usage rows, stores."""

from __future__ import annotations

import threading
import time

import pytest

from hxp.core import catalogue
from tests.support.console import ConsoleSession
from tests.support.fake_upstream import FakeUpstream

DELAY_S = 3.0


@pytest.fixture(scope="module")
def slow_upstream():
    upstream = FakeUpstream(delay=DELAY_S).start()
    yield upstream
    upstream.stop()


def _model(overview: dict, name: str) -> dict:
    return next(m for m in overview["models"] if m["name"] == name)


def test_the_overview_shows_running_requests_traffic_and_the_stores(
    gateway_factory, slow_upstream, redis_server
) -> None:
    gateway = gateway_factory(
        slow_upstream.url, env={"REDIS_URL": redis_server.url, "HXP_USAGE_FLUSH_INTERVAL_S": "0.2"}
    )
    model = catalogue.load().chat_models[0].name
    key = gateway.create_key()
    console = ConsoleSession(gateway)
    try:
        idle = _model(console.get("/console/api/overview").json(), model)
        assert idle["healthy"] and idle["served_names"] == ["fake"]
        assert (idle["running"], idle["waiting"]) == (0, 0)
        calls = [threading.Thread(target=gateway.chat, args=(key, model), kwargs={"stream": s}) for s in (True, False)]
        for call in calls:
            call.start()
        deadline, running = time.monotonic() + DELAY_S + 10, 0
        while time.monotonic() < deadline and running < 2:
            running = _model(console.get("/console/api/overview").json(), model)["running"] or 0
            time.sleep(0.3)
        assert running == 2
        for call in calls:
            call.join()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            overview = console.get("/console/api/overview").json()
            recent = _model(overview, model)["windows"]["5m"]
            if recent["requests"] == 2:
                break
            time.sleep(0.5)
        assert recent["requests"] == 2 and recent["errors"] == 0
        assert recent["latency_p50_ms"] >= DELAY_S * 1000 and recent["ttft_p50_ms"] >= DELAY_S * 1000
        assert recent["requests_per_min"] == 0.4 and recent["tokens_per_s"] > 0
        assert _model(overview, model)["windows"]["60m"]["requests"] == 2
        stores = overview["stores"]
        assert stores["database"]["healthy"] and stores["redis"]["healthy"] and stores["qdrant"]["healthy"]
        assert set(stores["qdrant"]["collections"]) >= {"knowledge_base"}
        assert redis_server.url.rsplit("@", 1)[-1] in stores["redis"]["url"]
    finally:
        console.close()
