"""`hxp validate` and `hxp status` against a native stack on the real vLLM CPU engines: a real gateway
(PostgreSQL usage log, its own Redis, Qdrant local mode) in front of the session's chat and embedding
engines. One chat name is routed through a relay to the same chat engine, so that the test can take
that model's engine address down and bring it back without stopping a shared engine.

Run it under the heavy lock: ``flock /work/locks/heavy.lock .venv/bin/pytest tests/ops/test_live_stack.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from hxp.cli import main
from tests.fixtures.engines import RunningEngine
from tests.fixtures.stores import drop_postgres_database, fresh_postgres_database
from tests.support.gateway import Gateway, GatewayFactory
from tests.support.relay import TcpRelay
from tests.support.servers import RedisServer

pytestmark = pytest.mark.engine
GATEWAY_START_TIMEOUT_S = 300


@dataclass
class LiveStack:
    gateway: Gateway
    relay: TcpRelay
    redis: RedisServer
    relayed: str  # the chat model whose engine address is the relay
    env: dict[str, str]


@pytest.fixture(scope="module")
def live(chat_engine: RunningEngine, embedding_engine: RunningEngine, postgres) -> Iterator[LiveStack]:  # noqa: ANN001
    redis = RedisServer()
    redis.start()
    database = fresh_postgres_database(postgres)
    relay = TcpRelay(urlsplit(chat_engine.base_url).port).start()
    relayed = chat_engine.names[-1]
    backends = {name: [chat_engine.url("/v1")] for name in chat_engine.names}
    backends[relayed] = [f"http://127.0.0.1:{relay.port}/v1"]
    backends.update({name: [embedding_engine.url("/v1")] for name in embedding_engine.names})
    factory = GatewayFactory()
    try:
        gateway = factory(backends, env={"DATABASE_URL": database, "REDIS_URL": redis.url}, wait=False)
        gateway.wait_ready(GATEWAY_START_TIMEOUT_S)
        env = {
            "HXP_GATEWAY_URL": gateway.url,
            "HXP_MASTER_KEY": gateway.master_key,
            "DATABASE_URL": database,
            "REDIS_URL": redis.url,
            "HXP_STATE_DIR": str(gateway.state_dir),
        }
        yield LiveStack(gateway, relay, redis, relayed, env)
    finally:
        factory.close()
        relay.stop()
        redis.stop()
        drop_postgres_database(postgres, database)


def _run(
    live: LiveStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str
) -> tuple[int, str]:
    """Run an hxp command against the live stack: (exit status, what it printed; printed again for the report)."""
    for name, value in live.env.items():
        monkeypatch.setenv(name, value)
    for name in (
        "HXP_BACKENDS",
        "HXP_BACKEND_URL_TEMPLATE",
        "HXP_DATABASE_URL",
        "HXP_PROMETHEUS_URL",
        "HXP_ALERTMANAGER_URL",
        "HXP_GRAFANA_URL",
        "QDRANT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr().out
    print(f"$ hxp {' '.join(args)}  (exit {code})\n{out}")
    return code, out


def _hxp(
    live: LiveStack, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str
) -> tuple[int, dict[str, Any]]:
    """Run an hxp command with --json against the live stack: (exit status, its answer)."""
    code, out = _run(live, monkeypatch, capsys, *args, "--json")
    return code, json.loads(out)


def _failures(answer: dict[str, Any]) -> list[str]:
    return [f"{c['check']}: {c['detail']}" for c in answer["checks"] if c["status"] == "FAIL"]


def _wait_until(predicate, timeout: float = 60.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.5)


def test_validate_passes_on_the_real_engines(live: LiveStack, monkeypatch, capsys) -> None:  # noqa: ANN001
    code, answer = _hxp(live, monkeypatch, capsys, "validate")
    assert _failures(answer) == [] and code == 0 and answer["ok"]
    passed = {c["check"] for c in answer["checks"] if c["status"] == "PASS"}
    from hxp.core import catalogue

    for name in catalogue.load().names:
        assert {f"model {name} engine health", f"model {name} answers"} <= passed
    assert {
        "gateway refuses requests without a valid key",
        "usage rows reach the database",
        "redis round trip",
        "rate limit (rpm=1) enforced",
        "qdrant collections present",
        "qdrant search in knowledge_base",
        "embedding size fits knowledge_base",
    } <= passed


def test_status_shows_every_engine_up(live: LiveStack, monkeypatch, capsys) -> None:  # noqa: ANN001
    assert live.gateway.chat(live.gateway.master_key, live.relayed, max_tokens=1).status_code == 200

    def traffic_seen() -> bool:
        code, status = _hxp(live, monkeypatch, capsys, "status")
        return bool(next(m for m in status["models"] if m["model"] == live.relayed)["traffic"])

    _wait_until(traffic_seen, 30)  # the usage writer flushes every second
    code, status = _hxp(live, monkeypatch, capsys, "status")
    assert code == 0 and status["healthy"], status["problems"]
    assert status["engines_from"] == "the gateway's /health/models"
    for model in status["models"]:
        assert model["state"] == "up"
        replica = model["replicas"][0]
        assert model["model"] in replica["served"] and replica["version"]
        assert replica["running"] is not None and replica["kv_cache_used"] is not None
    assert {s["name"]: s["state"] for s in status["services"]}["redis"] == "up"
    code, text = _run(live, monkeypatch, capsys, "status")
    assert code == 0 and text.rstrip().endswith("HEALTHY")


def test_a_stopped_engine_is_named(live: LiveStack, monkeypatch, capsys) -> None:  # noqa: ANN001
    live.relay.stop()
    try:
        code, status = _hxp(live, monkeypatch, capsys, "status")
        assert code == 1 and not status["healthy"]
        states = {m["model"]: m["state"] for m in status["models"]}
        assert states.pop(live.relayed) == "down"
        assert set(states.values()) == {"up"}
        assert any(live.relayed in p for p in status["problems"])

        code, answer = _hxp(live, monkeypatch, capsys, "validate")
        failures = _failures(answer)
        assert code == 1 and failures
        assert all(live.relayed in f for f in failures), failures
        assert f"model {live.relayed} engine health" in {c["check"] for c in answer["checks"] if c["status"] == "FAIL"}
        code, text = _run(live, monkeypatch, capsys, "validate")
        lines = text.splitlines()
        health = next(i for i, line in enumerate(lines) if line.startswith(f"FAIL  model {live.relayed} engine health"))
        assert code == 1 and "fix: start it" in lines[health + 1] and lines[-1].startswith("validate: FAILED")
    finally:
        live.relay.start()
    _wait_until(lambda: live.gateway.chat(live.gateway.master_key, live.relayed, max_tokens=1).status_code == 200)


def test_a_stopped_redis_is_named(live: LiveStack, monkeypatch, capsys) -> None:  # noqa: ANN001
    live.redis.stop()
    try:
        code, answer = _hxp(live, monkeypatch, capsys, "validate")
        failures = _failures(answer)
        assert code == 1
        round_trip = next(c for c in answer["checks"] if c["check"] == "redis round trip")
        assert round_trip["status"] == "FAIL" and "Redis at" in round_trip["detail"] and round_trip["fix"]
        assert all("redis" in f.lower() for f in failures), failures
    finally:
        live.redis.start()
    _wait_until(lambda: httpx.get(f"{live.gateway.url}/health/readiness", timeout=10).status_code == 200, 120)
