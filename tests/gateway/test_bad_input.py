"""Malformed requests get a 4xx naming the problem before any backend call, and a usage row like other refusals.

The property-based part sends random and malformed bodies (hypothesis, seeded and bounded) to the
OpenAI routes and the vector API of a real gateway on the fake upstream (which is always up): no answer
is a 5xx, none hangs, and every 4xx is in OpenAI's error shape.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from hxp.core import catalogue
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway, GatewayFactory

CAT = catalogue.load()
CHAT = CAT.chat_models[0].name
EMBED = CAT.embedding_models[0].name
USER = [{"role": "user", "content": "hello"}]
MAX_BODY = 64 * 1024
MAX_INPUTS = 16


@pytest.fixture(scope="module")
def strict() -> Iterator[tuple[Gateway, FakeUpstream, str]]:
    """A gateway with small body and input limits; its usage rows in its own SQLite file."""
    upstream = FakeUpstream().start()
    factory = GatewayFactory()
    try:
        gateway = factory(
            upstream.url,
            env={
                "HXP_MAX_BODY_BYTES": str(MAX_BODY),
                "HXP_MAX_INPUTS": str(MAX_INPUTS),
                "HXP_USAGE_FLUSH_INTERVAL_S": "0.2",
            },
        )
        yield gateway, upstream, gateway.create_key(alias="bad-input")
    finally:
        factory.close()
        upstream.stop()


def post(gateway: Gateway, key: str, path: str, body: Any, raw: bytes | None = None) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    return httpx.post(
        gateway.base_url + path,
        content=content,
        timeout=30,
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
    )


def openai_error(response: httpx.Response) -> dict[str, Any]:
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["message"], error
    return error


CASES = [
    # (path, body or raw bytes, status, param)
    ("/chat/completions", b"not json", 400, "body"),
    ("/chat/completions", b"", 400, "body"),
    ("/chat/completions", b"[]", 400, "body"),
    ("/chat/completions", b"null", 400, "body"),
    ("/chat/completions", b'"string"', 400, "body"),
    ("/chat/completions", {"model": 7, "messages": USER}, 400, "model"),
    ("/chat/completions", {"model": ["x"], "messages": USER}, 400, "model"),
    ("/chat/completions", {"model": CHAT, "messages": "hi"}, 400, "messages"),
    ("/chat/completions", {"model": CHAT, "messages": [3]}, 400, "messages[0]"),
    ("/chat/completions", {"model": CHAT, "messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ("/chat/completions", {"model": CHAT, "messages": USER, "max_tokens": "9"}, 400, "max_tokens"),
    ("/chat/completions", {"model": CHAT, "messages": USER, "max_tokens": 1.5}, 400, "max_tokens"),
    ("/chat/completions", {"model": CHAT, "messages": USER, "n": 0}, 400, "n"),
    ("/chat/completions", {"model": CHAT, "messages": USER, "n": True}, 400, "n"),
    ("/chat/completions", {"model": CHAT, "messages": USER, "stop": 3}, 400, "stop"),
    ("/chat/completions", {"model": CHAT, "messages": USER, "stop": ["a"] * 5}, 400, "stop"),
    ("/chat/completions", {"model": CHAT, "messages": USER, "tools": {"type": "function"}}, 400, "tools"),
    ("/chat/completions", {"model": CHAT, "messages": USER, "tools": [{"type": "function"}]}, 400, "tools[0]"),
    ("/chat/completions", {"model": CHAT, "messages": USER, "tool_choice": "always"}, 400, "tool_choice"),
    ("/chat/completions", {"model": CHAT, "messages": USER, "response_format": "json"}, 400, "response_format"),
    (
        "/chat/completions",
        {"model": CHAT, "messages": USER, "response_format": {"type": "xml"}},
        400,
        "response_format",
    ),
    ("/chat/completions", {"model": CHAT, "messages": USER, "stream": "yes"}, 400, "stream"),
    ("/chat/completions", {"model": EMBED, "messages": USER}, 400, "model"),
    ("/completions", {"model": CHAT, "prompt": {"text": "hi"}}, 400, "prompt"),
    ("/completions", {"model": CHAT, "prompt": 42}, 400, "prompt"),
    ("/completions", {"model": CHAT, "prompt": ["a", 1]}, 400, "prompt"),
    ("/completions", {"model": CHAT, "prompt": ["a"] * (MAX_INPUTS + 1)}, 400, "prompt"),
    ("/embeddings", {"model": EMBED, "input": {"a": 1}}, 400, "input"),
    ("/embeddings", {"model": EMBED, "input": [[1, 2], "x"]}, 400, "input"),
    ("/embeddings", {"model": EMBED, "input": ["x"] * (MAX_INPUTS + 1)}, 400, "input"),
    ("/embeddings", {"model": EMBED, "input": "x", "encoding_format": "hex"}, 400, "encoding_format"),
    ("/embeddings", {"model": CHAT, "input": "x"}, 400, "model"),
    ("/embeddings", {"model": EMBED, "input": "x", "stream": True, "stream_options": "x"}, 400, "stream"),
    ("/embeddings", {"model": EMBED, "input": "x", "stream": True}, 400, "stream"),
    ("/chat/completions", {"model": CHAT, "messages": [{"role": "user", "content": "x" * MAX_BODY}]}, 413, "body"),
]


@pytest.mark.parametrize("path, body, status, param", CASES, ids=[f"{c[0]}-{c[3]}-{i}" for i, c in enumerate(CASES)])
def test_malformed_requests_name_the_problem_and_reach_no_backend(strict, path, body, status, param) -> None:
    gateway, upstream, key = strict
    before = upstream.requests_served()
    raw = body if isinstance(body, bytes) else None
    response = post(gateway, key, path, body, raw)
    assert response.status_code == status, response.text
    error = openai_error(response)
    assert error["param"] == param and error["type"] == "invalid_request_error"
    assert upstream.requests_served() == before


def test_refused_bodies_are_usage_rows(strict) -> None:
    gateway, _, key = strict
    answers = [
        post(gateway, key, "/chat/completions", None, b"[]"),
        post(gateway, key, "/completions", {"model": CHAT, "prompt": 42}),
        post(
            gateway,
            key,
            "/chat/completions",
            {"model": CHAT, "messages": [{"role": "user", "content": "x" * MAX_BODY}]},
        ),
    ]
    ids = {r.headers["x-request-id"]: r.status_code for r in answers}
    rows = gateway.usage_rows(list(ids))
    assert set(ids) <= set(rows)
    for request_id, code in ids.items():
        row = rows[request_id]
        assert row["status"] == "invalid_request" and row["user_id"] == "bad-input"
        assert row["error_message"].startswith(str(code))
    assert rows[answers[1].headers["x-request-id"]]["model_name"] == CHAT


def test_an_announced_oversized_body_is_refused_before_it_is_read(strict) -> None:
    gateway, _, key = strict
    response = httpx.post(
        gateway.base_url + "/embeddings",
        content=b"{" + b" " * (MAX_BODY * 4) + b"}",
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413 and openai_error(response)["code"] == "request_too_large"


# --- property-based: random and malformed bodies -------------------------------------------------------------
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12,
)
FIELDS = {
    "/chat/completions": [
        "model",
        "messages",
        "max_tokens",
        "temperature",
        "n",
        "stop",
        "stream",
        "tools",
        "tool_choice",
        "response_format",
        "top_p",
        "stream_options",
        "rag",
        "seed",
    ],
    "/completions": ["model", "prompt", "max_tokens", "n", "stop", "stream", "temperature", "echo", "logprobs"],
    "/embeddings": ["model", "input", "encoding_format", "dimensions", "user", "stream", "stream_options"],
    "/vector/collections/documents/search": ["query", "vector", "limit", "score_threshold", "filter", "with_text"],
    "/vector/collections/documents/documents": ["documents"],
    "/vector/collections/documents/documents/delete": ["ids", "filter"],
}
VALID = {
    "/chat/completions": {"model": CHAT, "messages": USER, "max_tokens": 4},
    "/completions": {"model": CHAT, "prompt": "hi", "max_tokens": 4},
    "/embeddings": {"model": EMBED, "input": "hi"},
    "/vector/collections/documents/search": {"vector": [0.1] * 384, "limit": 2},
    "/vector/collections/documents/documents": {"documents": [{"id": "d1", "text": "x", "vector": [0.1] * 384}]},
    "/vector/collections/documents/documents/delete": {"ids": ["d1"]},
}


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    """A path and a body: a valid one with fields replaced by random values, a random JSON value, or random bytes."""
    path = draw(st.sampled_from(sorted(FIELDS)))
    shape = draw(st.sampled_from(["mutated", "value", "bytes"]))
    if shape == "bytes":
        return path, draw(st.binary(max_size=64))
    if shape == "value":
        return path, json.dumps(draw(json_values)).encode()
    body = dict(VALID[path])
    for name in draw(st.lists(st.sampled_from(FIELDS[path]), min_size=1, max_size=3, unique=True)):
        if draw(st.booleans()):
            body[name] = draw(json_values)
        else:
            body.pop(name, None)
    return path, json.dumps(body).encode()


@pytest.fixture(scope="module")
def client(strict) -> Iterator[httpx.Client]:
    gateway, _, _ = strict
    key = gateway.create_key(alias="fuzz", write_collections=["documents"])
    with httpx.Client(
        base_url=gateway.base_url,
        timeout=20,
        headers={"Authorization": f"Bearer {key}", "content-type": "application/json"},
    ) as http:
        yield http


def test_the_bodies_the_fuzzer_starts_from_are_answered(client: httpx.Client) -> None:
    """The random bodies below are variations of these: each reaches its real handler and succeeds."""
    for path, body in VALID.items():
        response = client.post(path, json=body)
        assert response.status_code == 200, (path, response.text)


def test_a_filter_on_no_field_is_a_400_also_on_a_filled_collection(strict) -> None:
    gateway, _, _ = strict
    doc = {"documents": [{"id": "f1", "text": "x", "vector": [0.2] * 384, "metadata": {"lang": "en"}}]}
    path = gateway.base_url + "/vector/collections/documents/documents"
    assert httpx.post(path, json=doc, headers=gateway.headers(), timeout=30).status_code == 200
    for where in ({"": False}, {"lang.": "en"}, {".x": 1}):
        response = httpx.post(path + "/delete", json={"filter": where}, headers=gateway.headers(), timeout=30)
        assert response.status_code == 400 and openai_error(response)["param"] == "filter", response.text


@seed(20261130)
@settings(
    max_examples=600,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=bodies())
def test_random_bodies_never_get_a_server_error(client: httpx.Client, case: tuple[str, bytes]) -> None:
    path, content = case
    response = client.post(path, content=content)  # a hang fails with httpx's timeout
    assert response.status_code < 500, (path, content[:300], response.text[:300])
    if 400 <= response.status_code < 500:
        openai_error(response)
