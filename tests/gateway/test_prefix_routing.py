"""Prefix-aware routing: chat requests sharing their leading messages reach one engine of a model, prefixes spread
over the engines, an engine with a long queue is passed over, and a named session takes precedence."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from hxp.conversations.routing import SESSION_HEADER, prefix_key, rank
from hxp.core import catalogue
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway, GatewayFactory, all_models

MODEL = catalogue.load().chat_models[0].name
HANG_GUARD_S = 30.0


def chat(system: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def test_the_prefix_is_the_leading_messages() -> None:
    assert prefix_key(chat("be brief", "why?")) == prefix_key(chat("be brief", "how?"))
    assert prefix_key(chat("be brief", "why?")) != prefix_key(chat("be long", "why?"))
    assert prefix_key([{"role": "user", "content": "alone"}]) is None
    assert prefix_key(None) is None


@pytest.fixture(scope="module")
def backends() -> Iterator[list[FakeUpstream]]:
    pair = [FakeUpstream().start() for _ in range(2)]
    yield pair
    for upstream in pair:
        upstream.stop()


@pytest.fixture(scope="module")
def gateway(backends: list[FakeUpstream]) -> Iterator[Gateway]:
    factory = GatewayFactory()
    yield factory({**all_models(backends[0].url), MODEL: [b.url for b in backends]})
    factory.close()


def send(gateway: Gateway, key: str, messages: list[dict[str, str]], headers: dict[str, str] | None = None) -> None:
    response = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": MODEL, "messages": messages},
        headers={**gateway.headers(key), **(headers or {})},
        timeout=60,
    )
    assert response.status_code == 200, response.text


def holders(backends: list[FakeUpstream], marker: str) -> list[int]:
    """Which backend received each chat request mentioning ``marker``, in no particular order."""
    return [i for i, b in enumerate(backends) for r in b.requests() if marker in str(r.get("messages"))]


def test_requests_sharing_a_prefix_reach_one_engine_and_prefixes_spread(gateway, backends) -> None:
    key = gateway.create_key()
    systems = [f"s{uuid.uuid4().hex[:10]} you answer questions" for _ in range(12)]
    for system in systems:
        for question in range(5):
            send(gateway, key, chat(system, f"question {question}"))
    placed = {system: set(holders(backends, system)) for system in systems}
    assert all(len(where) == 1 for where in placed.values()), placed
    assert {next(iter(where)) for where in placed.values()} == {0, 1}
    urls = [b.url for b in backends]
    assert all(placed[s] == {urls.index(rank(prefix_key(chat(s, "")) or "", urls)[0])} for s in systems)


def test_a_session_takes_precedence_over_the_prefix(gateway, backends) -> None:
    key, urls = gateway.create_key(), [b.url for b in backends]
    system = f"p{uuid.uuid4().hex[:10]}"
    preferred = urls.index(rank(prefix_key(chat(system, "")) or "", urls)[0])
    session = next(s for s in (uuid.uuid4().hex for _ in range(100)) if rank(s, urls)[0] != urls[preferred])
    send(gateway, key, chat(system, "with a session"), {SESSION_HEADER: session})
    assert holders(backends, system) == [1 - preferred]


def test_an_engine_with_a_long_queue_is_passed_over_until_it_drains(gateway, backends) -> None:
    key, urls = gateway.create_key(), [b.url for b in backends]
    system = f"q{uuid.uuid4().hex[:10]}"
    preferred = urls.index(rank(prefix_key(chat(system, "")) or "", urls)[0])
    backends[preferred].set_waiting(20)
    try:
        deadline = time.monotonic() + HANG_GUARD_S  # until the gateway's next probe has seen the queue
        while 1 - preferred not in holders(backends, system):
            assert time.monotonic() < deadline, "the queue was never noticed"
            send(gateway, key, chat(system, "while busy"))
            time.sleep(0.1)
        marker = f"after{uuid.uuid4().hex[:8]}"
        for _ in range(5):
            send(gateway, key, chat(system, marker))
        time.sleep(0.1)
        assert holders(backends, marker) == [1 - preferred] * 5
    finally:
        backends[preferred].set_waiting(0)
    deadline = time.monotonic() + HANG_GUARD_S
    marker = f"back{uuid.uuid4().hex[:8]}"
    while preferred not in holders(backends, marker):
        assert time.monotonic() < deadline, "traffic never came back to the drained engine"
        send(gateway, key, chat(system, marker))
