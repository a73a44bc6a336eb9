"""End to end: the official openai client through the gateway to a real vLLM CPU engine."""
from __future__ import annotations

import openai
import pytest

pytestmark = pytest.mark.engine


def test_gateway_to_real_engine(gateway_factory, chat_engine):
    gateway = gateway_factory({name: [chat_engine.base_url + "/v1"] for name in chat_engine.names})
    model = chat_engine.names[-1]  # not the engine's first alias: the answer must still name it
    client = openai.OpenAI(base_url=gateway.base_url, api_key=gateway.create_key(models=[model]), max_retries=0,
                           timeout=120)
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
