"""Session affinity: every turn of a conversation or response chain reaches the same backend while it is healthy;
different conversations spread over the backends; a session moves only when its backend fails."""

from __future__ import annotations

import uuid
from collections import Counter

import openai

from hxp.conversations.routing import rank
from hxp.core import catalogue
from tests.support.fake_upstream import FakeUpstream

MODEL = catalogue.load().chat_models[0].name


def test_rank_is_stable_spreads_sessions_and_moves_only_a_failed_backends_sessions() -> None:
    backends = [f"http://10.0.0.{i}:8000/v1" for i in range(4)]
    sessions = [f"conv_{i}" for i in range(2000)]
    first = {s: rank(s, backends)[0] for s in sessions}
    assert first == {s: rank(s, list(reversed(backends)))[0] for s in sessions}  # order of the list is irrelevant
    shares = Counter(first.values())
    assert set(shares) == set(backends) and min(shares.values()) > 2000 / 4 * 0.8
    survivors = backends[1:]
    moved = [s for s in sessions if first[s] != rank(s, survivors)[0]]
    assert moved and all(first[s] == backends[0] for s in moved)  # only the failed backend's sessions move
    assert all(rank(s, survivors)[0] == rank(s, backends)[1] for s in moved)  # each to its second choice


def holders(backends: list[FakeUpstream], marker: str) -> set[int]:
    """The backends that received a chat request mentioning ``marker``."""
    return {i for i, b in enumerate(backends) for r in b.requests() if marker in str(r.get("messages"))}


def test_every_turn_of_a_conversation_reaches_one_backend_and_conversations_use_both(
    engine_pair_gateway, engine_pair
) -> None:
    sdk = openai.OpenAI(
        base_url=engine_pair_gateway.base_url, api_key=engine_pair_gateway.create_key(), max_retries=0, timeout=60
    )
    markers = [f"m{uuid.uuid4().hex[:10]}" for _ in range(20)]
    for marker in markers:
        conversation = sdk.conversations.create()
        for step in range(3):
            sdk.responses.create(
                model=MODEL, input=f"{marker} turn {step}", conversation=conversation.id, stream=step == 1
            )
    placed = {marker: holders(engine_pair, marker) for marker in markers}
    assert all(len(where) == 1 for where in placed.values()), placed
    assert {next(iter(where)) for where in placed.values()} == {0, 1}
    chain = f"c{uuid.uuid4().hex[:10]}"
    previous = None
    for step in range(3):
        previous = sdk.responses.create(model=MODEL, input=f"{chain} {step}", previous_response_id=previous).id
    assert len(holders(engine_pair, chain)) == 1


def test_a_session_moves_when_its_backend_fails_and_keeps_its_history(engine_pair_gateway, engine_pair) -> None:
    sdk = openai.OpenAI(
        base_url=engine_pair_gateway.base_url, api_key=engine_pair_gateway.create_key(), max_retries=0, timeout=60
    )
    marker = f"f{uuid.uuid4().hex[:10]}"
    conversation = sdk.conversations.create()
    sdk.responses.create(model=MODEL, input=f"{marker} before", conversation=conversation.id)
    (home,) = holders(engine_pair, marker)
    engine_pair[home].stop()
    try:
        answer = sdk.responses.create(model=MODEL, input=f"{marker} after", conversation=conversation.id)
        assert answer.status == "completed"
        other = engine_pair[1 - home]
        sent = [r["messages"] for r in other.requests() if f"{marker} after" in str(r.get("messages"))]
        assert [m["content"] for m in sent[-1]][::2] == [f"{marker} before", f"{marker} after"]
    finally:
        engine_pair[home].start()
