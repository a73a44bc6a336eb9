"""The relay: OpenAI-wire backends answered with their own bytes, LiteLLM still deciding where and whether."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from hxp.core import catalogue, context
from hxp.gateway import deployments, relay
from tests.support.servers import free_port

CAT = catalogue.load()
CHAT = CAT.chat_models[0]
USER = [{"role": "user", "content": "hello"}]


def _events(text: str) -> list[str]:
    return [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]


def test_a_stream_is_the_engines_own_bytes_with_the_usage_chunk_it_was_not_asked_for_held_back(gateway):
    key = gateway.create_key()
    plain = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=gateway.headers(key),
        timeout=30,
        json={"model": CHAT.name, "messages": USER, "stream": True},
    )
    assert plain.status_code == 200 and plain.headers["x-hxp-cache"] == "miss"
    events = _events(plain.text)
    # the fake engine writes JSON with spaces after its separators, LiteLLM compactly: these are the engine's
    assert all(event.startswith('{"id": "fake-') for event in events[:-1]) and events[-1] == "[DONE]", events
    assert not any('"usage"' in event for event in events)  # asked of the engine for the usage row, not passed on
    asked = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=gateway.headers(key),
        timeout=30,
        json={"model": CHAT.name, "messages": USER, "stream": True, "stream_options": {"include_usage": True}},
    )
    usage = [json.loads(e)["usage"] for e in _events(asked.text)[:-1] if '"usage"' in e]
    assert usage == [{"prompt_tokens": 1, "completion_tokens": 6, "total_tokens": 7}]


def test_a_json_answer_is_the_engines_own_bytes(gateway):
    answer = httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=gateway.headers(gateway.create_key()),
        timeout=30,
        json={"model": CHAT.name, "messages": USER},
    )
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    assert answer.text.startswith('{"id": "fake-') and answer.json()["usage"]["total_tokens"] == 7


def test_a_model_whose_backend_is_down_falls_back_before_the_first_byte(gateway_factory, fake_upstream):
    model = next(m for m in CAT.chat_models if m.api.fallbacks)
    fallback = model.api.fallbacks[0]
    backends = {name: [fake_upstream.url] for name in CAT.names}
    backends[model.name] = [f"http://127.0.0.1:{free_port()}/v1"]
    gw = gateway_factory(backends)
    key = gw.create_key()
    fake_upstream.reset()
    for stream in (True, False):
        answer = httpx.post(
            f"{gw.base_url}/chat/completions",
            headers=gw.headers(key),
            timeout=30,
            json={"model": model.name, "messages": USER, "stream": stream},
        )
        assert answer.status_code == 200, answer.text
    assert [r["model"] for r in fake_upstream.requests()] == [fallback, fallback]


def _router(providers: dict[str, str]) -> Any:
    models = {name: [{"litellm_params": {"model": f"{provider}/{name}"}}] for name, provider in providers.items()}
    return SimpleNamespace(llm_router=SimpleNamespace(get_model_list=lambda model_name: models.get(model_name)))


@pytest.mark.parametrize(
    "path, body, relayed",
    [
        ("/v1/chat/completions", {"messages": USER, "stream": True}, True),
        ("/v1/completions", {"prompt": "hi"}, True),
        ("/v1/embeddings", {"input": "hi"}, True),
        ("/v1/chat/completions", {"messages": USER, "temperature": 0}, False),  # the response cache: LiteLLM's path
        ("/v1/chat/completions", {"messages": USER, "rag": {"collection": "kb"}}, False),  # sources added to the answer
        ("/v1/responses", {"input": "hi"}, False),
    ],
)
def test_what_the_relay_answers(monkeypatch, path, body, relayed):
    monkeypatch.setattr(relay, "_proxy", lambda: _router({CHAT.name: "openai"}))
    model = dataclasses.replace(CHAT, api=CHAT.api.model_copy(update={"cache": True}))
    assert relay.handles(path, model, {"model": CHAT.name, **body}) is relayed


def test_a_backend_of_another_provider_keeps_litellms_path_and_so_does_a_model_falling_back_to_one(monkeypatch):
    model = next(m for m in CAT.chat_models if m.api.fallbacks)
    fallback = model.api.fallbacks[0]
    for providers, relayed in (
        ({model.name: "openai", fallback: "hosted_vllm"}, True),
        ({model.name: "anthropic", fallback: "openai"}, False),
        ({model.name: "openai", fallback: "anthropic"}, False),
    ):
        monkeypatch.setattr(relay, "_proxy", lambda providers=providers: _router(providers))
        context.use()  # a fresh runtime: nothing known of the providers yet
        assert relay.handles("/v1/chat/completions", model, {"model": model.name, "messages": USER}) is relayed


def test_a_keys_tpm_stops_it_at_the_same_request_on_the_relay_and_on_litellms_path(gateway):
    """The relay settles LiteLLM's token reservation with the engine's usage, as LiteLLM's own call does (a
    request at temperature 0 takes LiteLLM's path: the response cache)."""
    stopped_at = {}
    for path, params in (("relay", {}), ("litellm", {"temperature": 0})):
        for stream in (True, False):
            key = gateway.create_key(tpm=70)  # each answer costs 7 tokens: 1 prompt, 6 completion
            codes = [
                httpx.post(
                    f"{gateway.base_url}/chat/completions",
                    headers=gateway.headers(key),
                    timeout=30,
                    json={
                        "model": CHAT.name,
                        "stream": stream,
                        **params,
                        "messages": [{"role": "user", "content": f"hello{i}"}],
                    },
                ).status_code
                for i in range(14)
            ]
            assert set(codes) == {200, 429} and codes == sorted(codes), codes
            stopped_at[path, stream] = codes.index(429)
    assert len(set(stopped_at.values())) == 1, stopped_at


def test_the_answer_names_the_model_asked_for_not_the_engines_first_name() -> None:
    """vLLM answers with the first of its served names; the relay names the one the client asked for, in every
    event, and leaves an answer already naming it (or naming none) as it is."""
    answer = relay._Answer(None, None, None, "phi-3-mini")  # type: ignore[arg-type]
    first = b'data: {"id":"c1","model":"mixtral-8x7b","choices":[{"delta":{"content":"\\"model\\":\\"x\\""}}]}\n\n'
    assert answer._named(first) == first.replace(b'"model":"mixtral-8x7b"', b'"model":"phi-3-mini"')
    assert answer._named(first) == answer._named(answer._named(first))  # every later event too
    spaced = relay._Answer(None, None, None, "phi-3-mini")  # type: ignore[arg-type]
    assert spaced._named(b'data: {"model": "mixtral-8x7b"}\n\n') == b'data: {"model":"phi-3-mini"}\n\n'
    same = relay._Answer(None, None, None, "mixtral-8x7b")  # type: ignore[arg-type]
    assert same._named(b"data: [DONE]\n\n") == b"data: [DONE]\n\n"
    assert same._named(first) == first


def test_a_connection_idle_longer_than_the_backends_keep_alive_is_never_reused() -> None:
    """An engine (uvicorn) closes a connection idle for 5 s; one reused just as it closes fails the request. The
    relay's pool drops idle connections after IDLE_CONNECTION_S: here a backend that answers one request per
    connection and drops any later one (the race, made certain) answers every request spaced wider than that."""
    connections = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)  # the body, {}
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}")
        await writer.drain()
        await reader.read(1)  # a second request on this connection: closed unanswered
        writer.close()

    async def scenario() -> list[int]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        statuses = []
        try:
            for _ in range(2):
                async with relay._session().post(f"http://127.0.0.1:{port}/v1/x", data=b"{}") as response:
                    await response.read()
                    statuses.append(response.status)
                await asyncio.sleep(deployments.IDLE_CONNECTION_S + 0.5)
        finally:
            await relay._session().close()
            server.close()
        return statuses

    assert deployments.IDLE_CONNECTION_S < 5  # below uvicorn's keep-alive timeout, the engines' and the gateway's
    assert asyncio.run(scenario()) == [200, 200]
    assert connections == 2
