"""End to end: the official openai client through the gateway to a real vLLM CPU engine."""

from __future__ import annotations

import openai
import pytest

from tests.support.fake_upstream import FakeUpstream

pytestmark = pytest.mark.engine


def test_gateway_to_real_engine(gateway_factory, chat_engine):
    gateway = gateway_factory({name: [chat_engine.base_url + "/v1"] for name in chat_engine.names})
    model = chat_engine.names[-1]  # not the engine's first alias: the answer must still name it
    client = openai.OpenAI(
        base_url=gateway.base_url, api_key=gateway.create_key(models=[model]), max_retries=0, timeout=120
    )
    messages = [{"role": "user", "content": "Say hello."}]
    answer = client.chat.completions.create(model=model, messages=messages, max_tokens=8, temperature=0)
    assert answer.choices[0].message.content.strip()
    assert 0 < answer.usage.completion_tokens <= 8
    assert answer.model == model
    chunks = list(client.chat.completions.create(model=model, messages=messages, max_tokens=8, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices).strip()
    assert {c.model for c in chunks} == {model}
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model=model, messages=messages, max_tokens=10**6)
    assert too_long.value.body["param"] == "max_tokens"


def test_a_conversation_reaches_the_real_engine_whole(gateway_factory, chat_engine):
    """Two turns of a conversation through the gateway: each answers, and the engine's second request holds the
    first turn (a relay in front of the engine records what it receives; token counts come from its /tokenize)."""
    relay = FakeUpstream(forward=chat_engine.base_url).start()
    try:
        gateway = gateway_factory({name: [relay.url] for name in chat_engine.names})
        model = chat_engine.names[0]
        client = openai.OpenAI(
            base_url=gateway.base_url, api_key=gateway.create_key(models=[model]), max_retries=0, timeout=300
        )
        conversation = client.conversations.create()
        first = client.responses.create(
            model=model,
            conversation=conversation.id,
            max_output_tokens=12,
            input="My name is Ada. Greet me.",
            temperature=0,
        )
        assert first.status in ("completed", "incomplete") and first.output_text.strip()
        events = list(
            client.responses.create(
                model=model,
                conversation=conversation.id,
                max_output_tokens=12,
                input="What is my name?",
                temperature=0,
                stream=True,
            )
        )
        second = events[-1].response
        assert events[-1].type in ("response.completed", "response.incomplete") and second.output_text.strip()
        sent = [r["messages"] for r in relay.requests() if "messages" in r]
        assert sent[-1] == [
            {"role": "user", "content": "My name is Ada. Greet me."},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "What is my name?"},
        ]
        assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
        assert client.responses.retrieve(second.id).output_text == second.output_text
    finally:
        relay.stop()
