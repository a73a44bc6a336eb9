"""Two gateway replicas sharing a real PostgreSQL: a chain or a conversation started on one continues on the other,
and on a restarted gateway; the engine always gets the whole history."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import openai
import pytest

from hxp.core import catalogue
from tests.fixtures.stores import drop_postgres_database, fresh_postgres_database
from tests.support.fake_upstream import REPLY_WORDS, FakeUpstream
from tests.support.gateway import Gateway

pytestmark = pytest.mark.services

MODEL = catalogue.load().chat_models[0].name
ANSWER = " ".join(REPLY_WORDS)


@pytest.fixture
def database(postgres) -> Iterator[str]:
    url = fresh_postgres_database(postgres)
    yield url
    drop_postgres_database(postgres, url)


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def contents(upstream: FakeUpstream) -> list[str]:
    """The message contents of the latest chat completion the backend received."""
    return [m["content"] for m in [r for r in upstream.requests() if "messages" in r][-1]["messages"]]


def sdk(gateway: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=60)


def test_replicas_share_chains_and_conversations_and_a_restart_loses_nothing(
    gateway_factory, upstream, database
) -> None:
    one, two = (gateway_factory(upstream.url, {"DATABASE_URL": database}, wait=False) for _ in range(2))
    for gateway in (one, two):
        gateway.wait_ready()
    key = one.create_key(owner=f"team-{uuid.uuid4().hex[:6]}")
    first, second = sdk(one, key), sdk(two, key)

    a1 = first.responses.create(model=MODEL, input="a1")
    a2 = second.responses.create(model=MODEL, input="a2", previous_response_id=a1.id)
    assert contents(upstream) == ["a1", ANSWER, "a2"]
    assert first.responses.retrieve(a2.id).previous_response_id == a1.id
    conversation = second.conversations.create(items=[{"role": "user", "content": "c0"}])
    first.responses.create(model=MODEL, input="c1", conversation=conversation.id)
    streamed = list(second.responses.create(model=MODEL, input="c2", conversation=conversation.id, stream=True))
    assert streamed[-1].type == "response.completed"
    assert contents(upstream) == ["c0", "c1", ANSWER, "c2"]
    stranger = sdk(two, two.create_key(owner="someone-else"))
    with pytest.raises(openai.NotFoundError):
        stranger.responses.retrieve(a2.id)

    one.stop()
    one.start()
    a3 = first.responses.create(model=MODEL, input="a3", previous_response_id=a2.id)
    assert contents(upstream) == ["a1", ANSWER, "a2", ANSWER, "a3"]
    first.responses.create(model=MODEL, input="c3", conversation=conversation.id)
    assert contents(upstream) == ["c0", "c1", ANSWER, "c2", ANSWER, "c3"]
    assert [i.id for i in second.responses.input_items.list(a3.id).data] == [
        i.id for i in first.responses.input_items.list(a3.id).data
    ]
    second.responses.delete(a3.id)
    with pytest.raises(openai.NotFoundError):
        first.responses.retrieve(a3.id)
