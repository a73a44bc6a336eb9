"""End to end: real vLLM CPU engines on the packaged SmolLM2 and all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import math

import httpx
import pytest
from openai import OpenAI

from tests.fixtures.engines import RunningEngine

pytestmark = pytest.mark.engine

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def client(engine: RunningEngine) -> OpenAI:
    return OpenAI(base_url=engine.url("/v1"), api_key="unused", timeout=120, max_retries=0)


def test_health(chat_engine: RunningEngine) -> None:
    assert httpx.get(chat_engine.url("/health"), timeout=10).status_code == 200


def test_models_lists_every_alias(chat_engine: RunningEngine) -> None:
    served = {m.id for m in client(chat_engine).models.list()}
    assert len(chat_engine.names) == 4
    assert set(chat_engine.names) <= served


def test_chat_completion_answers_paris_under_every_name(chat_engine: RunningEngine) -> None:
    for name in chat_engine.names:
        reply = client(chat_engine).chat.completions.create(model=name, messages=QUESTION, temperature=0, max_tokens=32)
        assert "Paris" in reply.choices[0].message.content, name
        assert reply.usage.completion_tokens > 0


def test_chat_completion_streams(chat_engine: RunningEngine) -> None:
    stream = client(chat_engine).chat.completions.create(
        model=chat_engine.names[-1], messages=QUESTION, temperature=0, max_tokens=32, stream=True
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    assert len([p for p in pieces if p]) > 1  # several chunks, not one blob
    assert "Paris" in "".join(pieces)


def test_completion(chat_engine: RunningEngine) -> None:
    reply = client(chat_engine).completions.create(
        model=chat_engine.names[0], prompt="The capital of France is", temperature=0, max_tokens=8
    )
    assert reply.choices[0].text.strip()
    assert reply.usage.completion_tokens > 0


def test_unknown_model_is_a_404(chat_engine: RunningEngine) -> None:
    response = httpx.post(
        chat_engine.url("/v1/chat/completions"), timeout=30, json={"model": "no-such-model", "messages": QUESTION}
    )
    assert response.status_code == 404


def test_metrics_expose_vllm_series(chat_engine: RunningEngine) -> None:
    text = httpx.get(chat_engine.url("/metrics"), timeout=10).text
    series = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("vllm:")}
    assert "vllm:num_requests_running" in series
    assert any(s.startswith("vllm:generation_tokens") for s in series)


def _embed(engine: RunningEngine, words: list[str]) -> list[list[float]]:
    data = client(engine).embeddings.create(model=engine.names[0], input=words).data
    return [d.embedding for d in sorted(data, key=lambda d: d.index)]


def test_embeddings_are_384_dim_unit_vectors(embedding_engine: RunningEngine) -> None:
    vectors = _embed(embedding_engine, ["cat", "feline", "stocks"])
    assert [len(v) for v in vectors] == [384, 384, 384]
    for v in vectors:
        assert math.sqrt(sum(x * x for x in v)) == pytest.approx(1.0, abs=1e-3)


def test_embeddings_put_related_words_closer(embedding_engine: RunningEngine) -> None:
    cat, feline, stocks = _embed(embedding_engine, ["cat", "feline", "stocks"])
    cosine = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731 - unit vectors
    assert cosine(cat, feline) > cosine(cat, stocks) + 0.2
