"""Tool calling and structured outputs at the gateway's boundary (fake upstream; the real engine: test_tools_engine).

A tool request to a model the catalogue declares without tools, and a JSON schema the metaschema rejects,
are answered 400 in OpenAI's shape before any backend call; /v1/models tells each model's capabilities.
The GPU catalogue is used where it matters: there openchat-3.5 and phi-3-mini have no tool support.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import openai
import pytest

from hxp.core import catalogue
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway, GatewayFactory

GPU = catalogue.load(profile="gpu")
WITH_TOOLS = [m.name for m in GPU.chat_models if m.tools is not None]
WITHOUT_TOOLS = [m.name for m in GPU.chat_models if m.tools is None]
EMBEDDING = GPU.embedding_models[0]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
USER = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def gpu_gateway(fake_upstream: FakeUpstream) -> Iterator[Gateway]:
    """A gateway serving the GPU catalogue, every model on the fake upstream."""
    factory = GatewayFactory()
    try:
        yield factory(fake_upstream.url, env={"HXP_PROFILE": "gpu"})
    finally:
        factory.close()


def chat(gateway: Gateway, key: str, **body: object) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/chat/completions",
        headers=gateway.headers(key),
        timeout=30,
        json={"messages": USER, "max_tokens": 4, **body},
    )


def test_the_catalogue_declares_models_with_and_without_tools() -> None:
    assert WITH_TOOLS and WITHOUT_TOOLS  # both cases below are real catalogue entries
    assert all(m.tools is not None for m in catalogue.load(profile="cpu").chat_models)


@pytest.mark.parametrize("model", WITHOUT_TOOLS)
@pytest.mark.parametrize(
    "request_fields, param",
    [
        ({"tools": [WEATHER]}, "tools"),
        ({"tools": [WEATHER], "tool_choice": "required"}, "tools"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tools"),
        ({"tool_choice": "auto"}, "tool_choice"),
    ],
    ids=["tools", "required", "named", "tool_choice-only"],
)
def test_a_tool_request_to_a_model_without_tools_is_refused_before_the_backend(
    gpu_gateway, fake_upstream, model, request_fields, param
) -> None:
    key = gpu_gateway.create_key(models=[model])
    before = fake_upstream.requests_served()
    response = chat(gpu_gateway, key, model=model, **request_fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "unsupported_parameter"
    assert error["param"] == param
    assert f"Model '{model}' has no tool support" in error["message"]
    assert "--tool-call-parser" not in error["message"] and "--enable-auto-tool-choice" not in error["message"]
    assert fake_upstream.requests_served() == before
    assert chat(gpu_gateway, key, model=model, tools=[WEATHER], tool_choice="none").status_code == 400
    assert chat(gpu_gateway, key, model=model).status_code == 200  # the same model without tools answers


def test_the_responses_api_refuses_tools_for_a_model_without_them(gpu_gateway, fake_upstream) -> None:
    model = WITHOUT_TOOLS[0]
    key = gpu_gateway.create_key(models=[model])
    tool = {"type": "function", "name": "get_weather", "parameters": WEATHER["function"]["parameters"]}
    before = fake_upstream.requests_served()
    response = httpx.post(
        f"{gpu_gateway.base_url}/responses",
        headers=gpu_gateway.headers(key),
        timeout=30,
        json={"model": model, "input": "Weather in Paris?", "tools": [tool]},
    )
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "tools" and "has no tool support" in response.json()["error"]["message"]
    assert fake_upstream.requests_served() == before


def test_the_openai_sdk_sees_the_refusal_as_a_bad_request(gpu_gateway, fake_upstream) -> None:
    model = WITHOUT_TOOLS[0]
    client = openai.OpenAI(
        base_url=gpu_gateway.base_url, api_key=gpu_gateway.create_key(models=[model]), max_retries=0, timeout=30
    )
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model=model, messages=USER, tools=[WEATHER], tool_choice="auto")
    assert refused.value.body["param"] == "tools" and model in refused.value.body["message"]


def test_tools_pass_the_boundary_to_a_model_with_tools(gpu_gateway, fake_upstream) -> None:
    model = WITH_TOOLS[0]
    key = gpu_gateway.create_key(models=[model])
    before = fake_upstream.stats()["fields"].get("tools", 0)
    assert chat(gpu_gateway, key, model=model, tools=[WEATHER], tool_choice="required").status_code == 200
    assert fake_upstream.stats()["fields"].get("tools", 0) == before + 1


def test_models_list_tells_the_capabilities_of_the_keys_models(gpu_gateway) -> None:
    key = gpu_gateway.create_key(models=[WITH_TOOLS[0], WITHOUT_TOOLS[0], EMBEDDING.name])
    listed = httpx.get(f"{gpu_gateway.base_url}/models", headers=gpu_gateway.headers(key), timeout=30).json()
    assert listed["object"] == "list"
    models = {m["id"]: m for m in listed["data"]}
    assert set(models) == {WITH_TOOLS[0], WITHOUT_TOOLS[0], EMBEDDING.name}
    for entry in models.values():
        assert entry["object"] == "model" and entry["owned_by"] == "hxp" and isinstance(entry["created"], int)
        assert entry["max_model_len"] == GPU.get(entry["id"]).max_model_len
    assert models[WITH_TOOLS[0]]["capabilities"] == {
        "chat_completions": True,
        "embeddings": False,
        "tools": True,
        "json_mode": True,
        "json_schema": True,
    }
    assert models[WITHOUT_TOOLS[0]]["capabilities"] == {
        "chat_completions": True,
        "embeddings": False,
        "tools": False,
        "json_mode": True,
        "json_schema": True,
    }
    assert models[EMBEDDING.name]["capabilities"] == {
        "chat_completions": False,
        "embeddings": True,
        "tools": False,
        "json_mode": False,
        "json_schema": False,
    }
    everything = httpx.get(f"{gpu_gateway.base_url}/models", headers=gpu_gateway.headers(), timeout=30).json()
    assert [m["id"] for m in everything["data"]] == GPU.names  # the master key sees the whole catalogue


def test_one_model_by_name_or_alias_with_its_capabilities(gpu_gateway) -> None:
    alias = EMBEDDING.api.aliases[0]
    key = gpu_gateway.create_key(models=[WITH_TOOLS[0], EMBEDDING.name])
    client = openai.OpenAI(base_url=gpu_gateway.base_url, api_key=key, max_retries=0, timeout=30)
    model = client.models.retrieve(WITH_TOOLS[0])
    assert model.id == WITH_TOOLS[0] and model.owned_by == "hxp" and model.capabilities["tools"] is True
    assert client.models.retrieve(alias).id == alias
    assert [m.id for m in client.models.list()] == [WITH_TOOLS[0], EMBEDDING.name]
    with pytest.raises(openai.PermissionDeniedError):
        client.models.retrieve(WITHOUT_TOOLS[0])
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}},
    "required": ["name"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    "request_fields, param, says",
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "p", "strict": True, "schema": {"type": "nonsense"}},
                }
            },
            "response_format",
            "'response_format.json_schema.schema' is not a valid JSON Schema",
        ),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {
                        "name": "p",
                        "schema": {"type": "object", "properties": {"name": {"type": "string", "minLength": -1}}},
                    },
                }
            },
            "response_format",
            "at 'properties/name/minLength'",
        ),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"$schema": 7}}}},
            "response_format",
            "$schema",
        ),
        (
            {
                "tools": [
                    {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "required": "x"}}}
                ]
            },
            "tools[0].function.parameters",
            "is not a valid JSON Schema",
        ),
        ({"tools": []}, "tools", "non-empty"),
    ],
    ids=["unknown-type", "negative-length", "schema-uri", "tool-parameters", "no-tools"],
)
def test_invalid_schemas_are_refused_naming_the_field(gateway, fake_upstream, request_fields, param, says) -> None:
    model = catalogue.load().chat_models[0].name
    key = gateway.create_key(models=[model])
    before = fake_upstream.requests_served()
    response = chat(gateway, key, model=model, **request_fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and says in error["message"]
    assert fake_upstream.requests_served() == before


def test_valid_structured_output_requests_reach_the_backend(gateway, fake_upstream) -> None:
    model = catalogue.load().chat_models[0].name
    key = gateway.create_key(models=[model])
    for response_format in (
        {"type": "json_object"},
        {"type": "json_schema", "json_schema": {"name": "p", "strict": True, "schema": SCHEMA}},
    ):
        before = fake_upstream.stats()["fields"].get("response_format", 0)
        assert chat(gateway, key, model=model, response_format=response_format).status_code == 200
        assert fake_upstream.stats()["fields"].get("response_format", 0) == before + 1
