"""Redis goes away: the gateway keeps answering (fail-open) or refuses limited keys (fail-closed), and says so."""

from __future__ import annotations

import time

import httpx
import pytest

from hxp.core import catalogue
from tests.support.servers import RedisServer

pytestmark = pytest.mark.services

CHAT = catalogue.load().chat_models[0]


def _wait_for(predicate, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.2)


def test_redis_outage_fail_open_and_fail_closed(gateway_factory, fake_upstream):
    redis = RedisServer()
    redis.start()
    try:
        env = {"REDIS_URL": redis.url}
        open_gw = gateway_factory(fake_upstream.url, env, wait=False)
        closed_gw = gateway_factory(fake_upstream.url, {**env, "HXP_RATE_LIMIT_FAIL_CLOSED": "true"}, wait=False)
        open_gw.wait_ready()
        closed_gw.wait_ready()
        keys = {gw: gw.create_key(rpm=1000, tpm=1_000_000) for gw in (open_gw, closed_gw)}
        assert all(gw.chat(key, CHAT.name).status_code == 200 for gw, key in keys.items())
        redis.stop()

        for gw in (open_gw, closed_gw):
            # the watch's own line (the start-up line also says "fail open when it is unreachable")
            _wait_for(lambda gw=gw: "is unreachable: rate limits" in gw.log)
            ready = httpx.get(f"{gw.url}/health/readiness", timeout=30)
            assert ready.status_code == 503 and ready.json()["components"]["redis"] == "down"
        assert "rate limits fail open" in open_gw.log
        assert "rate limits fail closed" in closed_gw.log

        answers = [open_gw.chat(keys[open_gw], CHAT.name, temperature=0) for _ in range(3)]
        assert [r.status_code for r in answers] == [200, 200, 200], answers[-1].text
        refused = closed_gw.chat(keys[closed_gw], CHAT.name)
        assert refused.status_code == 503, refused.text
        assert "Rate limit enforcement unavailable" in refused.json()["error"]["message"]
        assert refused.json()["error"]["code"] == "rate_limit_unverifiable"

        redis.start()  # same port: the gateway notices, and limited keys are admitted again
        for gw in (open_gw, closed_gw):
            _wait_for(lambda gw=gw: "is reachable again: shared rate limits" in gw.log)
            assert httpx.get(f"{gw.url}/health/readiness", timeout=30).status_code == 200
        # LiteLLM's Redis circuit breaker may hold requests off for up to 60 s after repeated failures
        _wait_for(lambda: closed_gw.chat(keys[closed_gw], CHAT.name).status_code == 200)
    finally:
        redis.stop()
