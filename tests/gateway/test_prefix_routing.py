"""Prefix-aware routing: chat requests sharing their leading messages reach one engine of a model, prefixes spread
over the engines, a prefix's burst overflows to the other engine beyond 1.25x the mean load (the gateway's own
requests in flight, no probe needed), an engine with a long queue is passed over, and a named session takes
precedence."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx

from hxp.conversations.routing import SESSION_HEADER, prefix_key, rank
from hxp.core import catalogue
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway

MODEL = catalogue.load().chat_models[0].name
HANG_GUARD_S = 30.0


def chat(system: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def test_the_prefix_is_the_leading_messages() -> None:
    assert prefix_key(chat("be brief", "why?")) == prefix_key(chat("be brief", "how?"))
    assert prefix_key(chat("be brief", "why?")) != prefix_key(chat("be long", "why?"))
    assert prefix_key([{"role": "user", "content": "alone"}]) is None
    assert prefix_key(None) is None


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


def test_requests_sharing_a_prefix_reach_one_engine_and_prefixes_spread(engine_pair_gateway, engine_pair) -> None:
    key = engine_pair_gateway.create_key()
    systems = [f"s{uuid.uuid4().hex[:10]} you answer questions" for _ in range(12)]
    for system in systems:
        for question in range(5):
            send(engine_pair_gateway, key, chat(system, f"question {question}"))
    placed = {system: set(holders(engine_pair, system)) for system in systems}
    assert all(len(where) == 1 for where in placed.values()), placed
    assert {next(iter(where)) for where in placed.values()} == {0, 1}
    urls = [b.url for b in engine_pair]
    assert all(placed[s] == {urls.index(rank(prefix_key(chat(s, "")) or "", urls)[0])} for s in systems)


def test_a_session_takes_precedence_over_the_prefix(engine_pair_gateway, engine_pair) -> None:
    key, urls = engine_pair_gateway.create_key(), [b.url for b in engine_pair]
    system = f"p{uuid.uuid4().hex[:10]}"
    preferred = urls.index(rank(prefix_key(chat(system, "")) or "", urls)[0])
    session = next(s for s in (uuid.uuid4().hex for _ in range(100)) if rank(s, urls)[0] != urls[preferred])
    send(engine_pair_gateway, key, chat(system, "with a session"), {SESSION_HEADER: session})
    assert holders(engine_pair, system) == [1 - preferred]


def test_an_engine_with_a_long_queue_is_passed_over_until_it_drains(engine_pair_gateway, engine_pair) -> None:
    key, urls = engine_pair_gateway.create_key(), [b.url for b in engine_pair]
    system = f"q{uuid.uuid4().hex[:10]}"
    preferred = urls.index(rank(prefix_key(chat(system, "")) or "", urls)[0])
    engine_pair[preferred].set_waiting(20)
    try:
        deadline = time.monotonic() + HANG_GUARD_S  # until the gateway's next probe has seen the queue
        while 1 - preferred not in holders(engine_pair, system):
            assert time.monotonic() < deadline, "the queue was never noticed"
            send(engine_pair_gateway, key, chat(system, "while busy"))
            time.sleep(0.1)
        marker = f"after{uuid.uuid4().hex[:8]}"
        for _ in range(5):
            send(engine_pair_gateway, key, chat(system, marker))
        time.sleep(0.1)
        assert holders(engine_pair, marker) == [1 - preferred] * 5
    finally:
        engine_pair[preferred].set_waiting(0)
    deadline = time.monotonic() + HANG_GUARD_S
    marker = f"back{uuid.uuid4().hex[:8]}"
    while preferred not in holders(engine_pair, marker):
        assert time.monotonic() < deadline, "traffic never came back to the drained engine"
        send(engine_pair_gateway, key, chat(system, marker))


def test_a_burst_of_one_prefix_overflows_beyond_its_share_and_comes_back(engine_pair_gateway, engine_pair) -> None:
    key, urls = engine_pair_gateway.create_key(), [b.url for b in engine_pair]
    system = f"b{uuid.uuid4().hex[:10]}"
    preferred = urls.index(rank(prefix_key(chat(system, "")) or "", urls)[0])
    for engine in engine_pair:
        engine.set_reply(words=40, rate=10)  # each answer streams for 4 s: the burst is in flight at once
    try:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda i: stream(engine_pair_gateway, key, chat(system, f"burst {i}")), range(6)))
    finally:
        for engine in engine_pair:
            engine.set_reply()
    burst = holders(engine_pair, system)
    # at most 1.25x the mean load, each request counted as it is routed: of 6 at once, 4 on the prefix's engine
    assert 4 >= burst.count(preferred) > burst.count(1 - preferred) > 0, burst
    marker = f"calm{uuid.uuid4().hex[:8]}"
    for _ in range(3):
        send(engine_pair_gateway, key, chat(system, marker))
    assert holders(engine_pair, marker) == [preferred] * 3


def stream(gateway: Gateway, key: str, messages: list[dict[str, str]]) -> None:
    body = {"model": MODEL, "messages": messages, "stream": True}
    with httpx.stream(
        "POST", f"{gateway.base_url}/chat/completions", json=body, headers=gateway.headers(key), timeout=60
    ) as response:
        assert response.status_code == 200
        response.read()
