"""The Responses and Conversations APIs through the official openai SDK: chains by previous_response_id and by
conversation, streamed and not; the engine gets the whole history in order; owners, deletion, store:false,
truncation, usage rows and limits on the whole prompt."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
import yaml

from hxp.core import catalogue
from hxp.core.database import Database
from tests.support.fake_upstream import REPLY_WORDS, FakeUpstream
from tests.support.gateway import Gateway, GatewayFactory, all_models

CAT = catalogue.load()
MODEL = CAT.chat_models[0].name
SMALL = CAT.chat_models[-1].name  # the test catalogue gives it a 40-token context window
SMALL_CONTEXT = 40
ANSWER = " ".join(REPLY_WORDS)


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway whose catalogue gives SMALL a small context window (yaml anchors copied, not shared)."""
    raw = yaml.safe_load(CAT.path.read_text())
    for entry in raw["models"]:
        if entry["name"] == SMALL:
            cpu = entry["profiles"]["cpu"]
            entry["profiles"]["cpu"] = {**cpu, "vllm": {**cpu["vllm"], "max_model_len": SMALL_CONTEXT}}
    path = tmp_path_factory.mktemp("catalogue") / "models.yaml"
    path.write_text(yaml.safe_dump(raw))
    factory = GatewayFactory()
    yield factory(all_models(upstream.url), {"HXP_CATALOGUE": str(path)})
    factory.close()


def client(gateway: Gateway, key: str | None = None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key or gateway.create_key(), max_retries=0, timeout=60)


def last_messages(upstream: FakeUpstream) -> list[dict[str, Any]]:
    """The messages of the latest chat completion the backend received."""
    return [m for m in upstream.requests() if "messages" in m][-1]["messages"]


def turn(role: str, content: str) -> dict[str, str]:
    return {"role": role, "content": content}


def test_a_chain_by_previous_response_id_gives_the_engine_the_whole_history(gateway, upstream) -> None:
    sdk = client(gateway)
    first = sdk.responses.create(model=MODEL, input="first question", instructions="Be brief.")
    assert first.status == "completed" and first.output_text == ANSWER and first.id.startswith("resp_")
    assert last_messages(upstream) == [turn("system", "Be brief."), turn("user", "first question")]
    second = sdk.responses.create(model=MODEL, input="second question", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert last_messages(upstream) == [
        turn("user", "first question"),
        turn("assistant", ANSWER),
        turn("user", "second question"),
    ]  # instructions are not carried over
    third = sdk.responses.create(
        model=MODEL,
        previous_response_id=second.id,
        instructions="Answer in French.",
        input=[{"role": "user", "content": [{"type": "input_text", "text": "third"}]}],
    )
    history = [
        turn("user", "first question"),
        turn("assistant", ANSWER),
        turn("user", "second question"),
        turn("assistant", ANSWER),
        turn("user", "third"),
    ]
    assert last_messages(upstream) == [turn("system", "Answer in French."), *history]
    assert third.usage.input_tokens == sum(len(m["content"].split()) for m in last_messages(upstream))

    stored = sdk.responses.retrieve(third.id)
    assert stored.output_text == ANSWER and stored.previous_response_id == second.id
    assert stored.instructions == "Answer in French." and stored.usage.input_tokens == third.usage.input_tokens
    listed = sdk.responses.input_items.list(third.id, order="asc")
    assert [(i.role, i.content[0].text) for i in listed.data] == [(m["role"], m["content"]) for m in history]
    newest_first = sdk.responses.input_items.list(third.id, limit=2)
    assert [i.id for i in newest_first.data] == [i.id for i in listed.data][::-1][:2] and newest_first.has_more
    rest = sdk.responses.input_items.list(third.id, limit=10, after=newest_first.data[-1].id)
    assert [i.id for i in rest.data] == [i.id for i in listed.data][::-1][2:] and not rest.has_more


def test_a_streamed_chain_ends_in_response_completed_with_the_stored_id(gateway, upstream) -> None:
    sdk = client(gateway)
    events = list(sdk.responses.create(model=MODEL, input="stream one", stream=True))
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"] and types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    done = events[-1].response
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == ANSWER == done.output_text
    assert events[0].response.id == done.id and sdk.responses.retrieve(done.id).output_text == ANSWER
    follow = list(sdk.responses.create(model=MODEL, input="stream two", previous_response_id=done.id, stream=True))
    assert follow[-1].type == "response.completed" and follow[-1].response.previous_response_id == done.id
    assert last_messages(upstream) == [
        turn("user", "stream one"),
        turn("assistant", ANSWER),
        turn("user", "stream two"),
    ]
    with sdk.responses.stream(model=MODEL, input="helper three", previous_response_id=follow[-1].response.id) as run:
        deltas = [e.delta for e in run if e.type == "response.output_text.delta"]  # the SDK's strict accumulator
        final = run.get_final_response()
    assert "".join(deltas) == final.output_text == ANSWER and sdk.responses.retrieve(final.id).status == "completed"
    assert len(last_messages(upstream)) == 5


def test_a_conversation_collects_every_turn_and_its_items_can_be_managed(gateway, upstream) -> None:
    sdk = client(gateway)
    conversation = sdk.conversations.create(items=[turn("system", "You are terse.")], metadata={"topic": "demo"})
    assert conversation.id.startswith("conv_") and conversation.metadata == {"topic": "demo"}
    first = sdk.responses.create(model=MODEL, input="hello there", conversation=conversation.id)
    assert first.conversation.id == conversation.id
    streamed = list(
        sdk.responses.create(model=MODEL, input="and again", conversation={"id": conversation.id}, stream=True)
    )
    assert streamed[-1].type == "response.completed"
    expected = [
        turn("system", "You are terse."),
        turn("user", "hello there"),
        turn("assistant", ANSWER),
        turn("user", "and again"),
    ]
    assert last_messages(upstream) == expected
    items = sdk.conversations.items.list(conversation.id, order="asc").data
    assert [(i.role, i.content[0].text) for i in items] == [
        (m["role"], m["content"]) for m in [*expected, turn("assistant", ANSWER)]
    ]
    assert sdk.conversations.items.list(conversation.id).data[0].id == items[-1].id  # newest first by default

    added = sdk.conversations.items.create(conversation.id, items=[turn("user", "a note"), turn("assistant", "ok")])
    assert [i.content[0].text for i in added.data] == ["a note", "ok"]
    assert (
        sdk.conversations.items.retrieve(added.data[0].id, conversation_id=conversation.id).content[0].text == "a note"
    )
    sdk.conversations.items.delete(items[1].id, conversation_id=conversation.id)  # "hello there" is forgotten
    sdk.responses.create(model=MODEL, input="last", conversation=conversation.id)
    assert [m["content"] for m in last_messages(upstream)] == [
        "You are terse.",
        ANSWER,
        "and again",
        ANSWER,
        "a note",
        "ok",
        "last",
    ]

    updated = sdk.conversations.update(conversation.id, metadata={"topic": "changed"})
    assert updated.metadata == {"topic": "changed"} == sdk.conversations.retrieve(conversation.id).metadata
    assert sdk.conversations.delete(conversation.id).deleted
    for call in (
        lambda: sdk.conversations.retrieve(conversation.id),
        lambda: sdk.conversations.items.list(conversation.id),
        lambda: sdk.responses.create(model=MODEL, input="x", conversation=conversation.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert sdk.responses.retrieve(first.id).output_text == ANSWER  # a response outlives its conversation


def test_another_owners_key_gets_404_and_the_master_key_reaches_everything(gateway) -> None:
    alice, colleague, bob = (client(gateway, gateway.create_key(owner=o)) for o in ("team-a", "team-a", "team-b"))
    anonymous = client(gateway)  # no owner: its objects are its own
    response = alice.responses.create(model=MODEL, input="secret plan")
    conversation = alice.conversations.create(items=[turn("user", "secret")], metadata={"topic": "plans"})
    item_id = alice.conversations.items.list(conversation.id).data[0].id
    assert colleague.responses.retrieve(response.id).id == response.id  # same owner, another key
    colleague.responses.create(model=MODEL, input="go on", previous_response_id=response.id)
    calls = (  # each as another owner's client `c`, with a conversation `own` of its own
        lambda c, own: c.responses.retrieve(response.id),
        lambda c, own: c.responses.input_items.list(response.id),
        lambda c, own: c.responses.delete(response.id),
        lambda c, own: c.responses.create(model=MODEL, input="x", previous_response_id=response.id),
        lambda c, own: c.conversations.retrieve(conversation.id),
        lambda c, own: c.conversations.items.list(conversation.id),
        lambda c, own: c.conversations.items.create(conversation.id, items=[turn("user", "x")]),
        lambda c, own: c.conversations.update(conversation.id, metadata={"topic": "theirs"}),
        lambda c, own: c.conversations.items.retrieve(item_id, conversation_id=conversation.id),
        lambda c, own: c.conversations.items.retrieve(item_id, conversation_id=own.id),
        lambda c, own: c.conversations.items.delete(item_id, conversation_id=conversation.id),
        lambda c, own: c.conversations.items.delete(item_id, conversation_id=own.id),
        lambda c, own: c.conversations.delete(conversation.id),
        lambda c, own: c.responses.create(model=MODEL, input="x", conversation=conversation.id),
    )
    for other in (bob, anonymous):
        own = other.conversations.create()  # naming one's own conversation reaches no other's item
        for call in calls:
            with pytest.raises(openai.NotFoundError) as refused:
                call(other, own)
            assert "not found" in refused.value.message
    assert alice.responses.retrieve(response.id).id == response.id  # nothing was changed or deleted by them
    assert alice.conversations.retrieve(conversation.id).metadata == {"topic": "plans"}
    assert [i.id for i in alice.conversations.items.list(conversation.id).data] == [item_id]
    master = client(gateway, gateway.master_key)
    assert master.responses.retrieve(response.id).id == response.id
    master.responses.delete(response.id)
    assert master.conversations.delete(conversation.id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.responses.retrieve(response.id)


def test_deleted_and_unstored_responses_are_not_found(gateway, upstream) -> None:
    sdk = client(gateway)
    kept = sdk.responses.create(model=MODEL, input="keep me")
    unstored = sdk.responses.create(model=MODEL, input="forget me", store=False, previous_response_id=kept.id)
    assert unstored.output_text == ANSWER and unstored.store is False
    assert last_messages(upstream)[0] == turn("user", "keep me")  # an unstored turn still gets the history
    streamed = list(sdk.responses.create(model=MODEL, input="forget me too", store=False, stream=True))
    for response_id in (unstored.id, streamed[-1].response.id):
        with pytest.raises(openai.NotFoundError):
            sdk.responses.retrieve(response_id)
        with pytest.raises(openai.NotFoundError):
            sdk.responses.create(model=MODEL, input="x", previous_response_id=response_id)
    conversation = sdk.conversations.create()
    sdk.responses.create(model=MODEL, input="off the record", conversation=conversation.id, store=False)
    assert sdk.conversations.items.list(conversation.id).data == []
    in_conversation = sdk.responses.create(model=MODEL, input="on the record", conversation=conversation.id)
    sdk.responses.delete(kept.id)
    sdk.responses.delete(in_conversation.id)
    for call in (
        lambda: sdk.responses.retrieve(kept.id),
        lambda: sdk.responses.delete(kept.id),
        lambda: sdk.responses.input_items.list(kept.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    assert len(sdk.conversations.items.list(conversation.id).data) == 2  # the conversation keeps its items


def test_truncation_disabled_refuses_naming_the_limit_and_auto_drops_the_oldest_items(gateway, upstream) -> None:
    sdk = client(gateway)
    ten = " ".join(["word"] * 10)
    first = sdk.responses.create(model=SMALL, input=ten, instructions="Be brief.", max_output_tokens=6)
    twenty = " ".join(["more"] * 20)
    before = upstream.stats()["by_path"].get("/v1/chat/completions", 0)
    with pytest.raises(openai.BadRequestError) as refused:  # 2 + 10 + 6 + 20 words, 6 tokens of room: over 40
        sdk.responses.create(
            model=SMALL, input=twenty, instructions="Be brief.", max_output_tokens=6, previous_response_id=first.id
        )
    error = refused.value.body
    assert error["code"] == "context_length_exceeded" and error["param"] == "input"
    assert f"({SMALL_CONTEXT} tokens)" in error["message"] and f"'{SMALL}'" in error["message"]
    assert upstream.stats()["by_path"].get("/v1/chat/completions", 0) == before  # refused before the model call
    fitted = sdk.responses.create(
        model=SMALL,
        input=twenty,
        instructions="Be brief.",
        max_output_tokens=6,
        previous_response_id=first.id,
        truncation="auto",
    )
    assert fitted.truncation == "auto" and fitted.status == "completed"
    assert last_messages(upstream) == [turn("system", "Be brief."), turn("assistant", ANSWER), turn("user", twenty)]
    assert [i.content[0].text for i in sdk.responses.input_items.list(fitted.id, order="asc").data] == [
        ten,
        ANSWER,
        twenty,
    ]  # the stored context stays whole
    with pytest.raises(openai.BadRequestError) as alone:
        sdk.responses.create(model=SMALL, input=" ".join(["x"] * 39), max_output_tokens=6, truncation="auto")
    assert "Even the newest input alone" in alone.value.body["message"]


def test_usage_rows_count_the_whole_prompt_and_token_limits_apply(gateway) -> None:
    alias = "conv-tpm-" + uuid.uuid4().hex[:6]
    sdk = client(gateway, gateway.create_key(alias=alias, tpm=120))
    previous, answered, status = None, [], 200
    for i in range(12):
        try:
            response = sdk.responses.create(
                model=MODEL, input=" ".join(["ten words each"] * 3 + [str(i)]), previous_response_id=previous
            )
        except openai.RateLimitError as limited:
            status = limited.status_code
            break
        previous = response.id
        answered.append(response.usage.input_tokens)
    assert status == 429 and len(answered) >= 2, answered
    assert answered == sorted(answered) and answered[1] == answered[0] * 2 + len(REPLY_WORDS)  # history included
    db = Database(f"sqlite:///{gateway.state_dir / 'gateway.sqlite3'}")
    try:
        deadline, rows = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            rows = db.fetchall(
                "SELECT prompt_tokens, status FROM llm_model_requests WHERE user_id = ? ORDER BY timestamp", (alias,)
            )
            if len(rows) > len(answered):
                break
            time.sleep(0.3)
    finally:
        db.close()
    assert [r["prompt_tokens"] for r in rows if r["status"] == "success"] == answered  # one row per turn
    assert rows[-1]["status"] == "rate_limited"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"input": "x", "previous_response_id": "resp_1", "conversation": "conv_1"}, "conversation"),
        ({"input": "x", "truncation": "sometimes"}, "truncation"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "web_search_call"}]}, "input[0].type"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0]"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "background": True}, "background"),
        ({"input": "x", "metadata": {"k": 1}}, "metadata"),
        ({}, "input"),
    ],
)
def test_bad_requests_are_400_naming_the_field(gateway, body, param) -> None:
    response = httpx.post(
        f"{gateway.base_url}/responses",
        json={"model": MODEL, **body},
        headers=gateway.headers(gateway.create_key()),
        timeout=30,
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_function_calls_round_trip_as_items(gateway, upstream) -> None:
    sdk = client(gateway)
    tools = [{"type": "function", "name": "get_weather", "parameters": {"type": "object", "properties": {}}}]
    first = sdk.responses.create(model=MODEL, input="weather?", tools=tools, tool_choice="auto")
    sent = [m for m in upstream.requests() if "messages" in m][-1]
    assert sent["tools"] == [
        {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}
    ]
    call = {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"}
    sdk.responses.create(
        model=MODEL,
        previous_response_id=first.id,
        tools=tools,
        input=[call, {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}],
    )
    assert last_messages(upstream)[-2:] == [  # the answer and the call that follows it: one assistant turn
        {
            "role": "assistant",
            "content": ANSWER,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]


def test_the_gateway_purges_what_is_past_the_retention(gateway_factory, upstream) -> None:
    short = gateway_factory(all_models(upstream.url), {"HXP_CONVERSATION_RETENTION_DAYS": str(2 / 86400)})
    sdk = client(short)
    response, conversation = sdk.responses.create(model=MODEL, input="short-lived"), sdk.conversations.create()
    time.sleep(3)
    short.stop()
    short.start()  # the purge runs when a worker starts, then every hour
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            sdk.responses.retrieve(response.id)
        except openai.NotFoundError:
            break
        time.sleep(0.5)
    for call in (lambda: sdk.responses.retrieve(response.id), lambda: sdk.conversations.retrieve(conversation.id)):
        with pytest.raises(openai.NotFoundError):
            call()
