"""Tool calls and structured outputs through the gateway on the real vLLM CPU engine (SmolLM2, tools from the
catalogue: `hermes` parser, chatml_tools.jinja), with the openai SDK and LangChain.

Tool-call arguments are constrained by the engine to the tool's parameter schema, so a 135M model gives
valid calls; the tests check the shape and the schema, never what the model chose to say.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from langchain_openai import ChatOpenAI
from prometheus_client.parser import text_string_to_metric_families
from pydantic import BaseModel

from hxp.core import catalogue
from tests.fixtures.engines import RunningEngine
from tests.support.gateway import Gateway, GatewayFactory

pytestmark = pytest.mark.engine

CHAT = [m.name for m in catalogue.load().chat_models]
PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The current weather in a city", "parameters": PARAMETERS},
}
NAMED = {"type": "function", "function": {"name": "get_weather"}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]
MAX_TOKENS = 80  # a call with its arguments takes about 45 tokens with this template; bounded strings keep it short


class Weather(BaseModel):
    """The current weather in a city."""

    city: str
    unit: Literal["celsius", "fahrenheit"]


class Person(BaseModel):
    name: str
    age: int


@pytest.fixture(scope="module")
def tools_gateway(chat_engine: RunningEngine) -> Iterator[Gateway]:
    factory = GatewayFactory()
    try:
        yield factory(
            {name: [chat_engine.base_url + "/v1"] for name in chat_engine.names},
            env={"HXP_USAGE_FLUSH_INTERVAL_S": "0.2"},
        )
    finally:
        factory.close()


@pytest.fixture(scope="module")
def client(tools_gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=tools_gateway.base_url, api_key=tools_gateway.create_key(), max_retries=0, timeout=300
    )


def call_of(message: Any) -> tuple[str, dict[str, Any]]:
    """The one tool call of an answer: its function name and its arguments, checked against the tool's schema."""
    assert message.tool_calls and len(message.tool_calls) == 1, message
    call = message.tool_calls[0]
    assert call.type == "function" and call.id
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, PARAMETERS)
    return call.function.name, arguments


@pytest.mark.parametrize("tool_choice", [NAMED, "required"], ids=["named", "required"])
def test_a_forced_tool_call_returns_arguments_matching_the_tools_schema(client, tool_choice) -> None:
    answer = client.chat.completions.create(
        model=CHAT[0], messages=QUESTION, tools=[WEATHER], tool_choice=tool_choice, max_tokens=MAX_TOKENS, temperature=0
    )
    assert call_of(answer.choices[0].message)[0] == "get_weather"
    assert answer.choices[0].finish_reason in ("tool_calls", "stop")
    assert answer.usage.completion_tokens > 0 and answer.model == CHAT[0]


def test_a_full_round_trip_call_result_answer(client) -> None:
    asked = client.chat.completions.create(
        model=CHAT[1], messages=QUESTION, tools=[WEATHER], tool_choice="required", max_tokens=MAX_TOKENS, temperature=0
    )
    message = asked.choices[0].message
    name, arguments = call_of(message)
    result = {"city": arguments["city"], "temperature": 18, "unit": arguments["unit"], "sky": "sunny"}
    conversation = [
        *QUESTION,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": message.tool_calls[0].id, "content": json.dumps(result)},
    ]
    final = client.chat.completions.create(
        model=CHAT[1], messages=conversation, tools=[WEATHER], tool_choice="none", max_tokens=24, temperature=0
    )
    assert final.choices[0].message.content.strip() and not final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason in ("stop", "length")


def test_a_streamed_tool_call_reassembles_to_the_same_call(client) -> None:
    request = {
        "model": CHAT[2],
        "messages": QUESTION,
        "tools": [WEATHER],
        "tool_choice": "required",
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    whole = call_of(client.chat.completions.create(**request).choices[0].message)
    chunks = list(client.chat.completions.create(**request, stream=True))
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or []]
    assert len(deltas) > 2  # the name, then the arguments piece by piece, as OpenAI streams them
    assert {d.index for d in deltas} == {0} and deltas[0].id and deltas[0].function.name == "get_weather"
    arguments = "".join(d.function.arguments or "" for d in deltas)
    assert (deltas[0].function.name, json.loads(arguments)) == whole
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def completion_tokens_counted(gateway: Gateway, model: str) -> float:
    text = httpx.get(f"{gateway.url}/metrics", timeout=30).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "llm_tokens_processed_total"
        and s.labels.get("model") == model
        and s.labels.get("type") == "completion"
    )


def test_tool_calls_are_counted_in_usage_rows_metrics_and_limits(tools_gateway, client) -> None:
    model = CHAT[3]
    before = completion_tokens_counted(tools_gateway, model)
    request = {
        "model": model,
        "messages": QUESTION,
        "tools": [WEATHER],
        "tool_choice": NAMED,
        "max_tokens": MAX_TOKENS,
        "temperature": 0,
    }
    plain = client.chat.completions.with_raw_response.create(**request, seed=1)
    answer = plain.parse()
    call_of(answer.choices[0].message)
    streamed = client.chat.completions.with_raw_response.create(
        **request, seed=2, stream=True, stream_options={"include_usage": True}
    )
    usage = [c.usage for c in streamed.parse() if c.usage][-1]
    rows = tools_gateway.usage_rows([plain.headers["x-request-id"], streamed.headers["x-request-id"]])
    got = [(r["status"], r["prompt_tokens"], r["completion_tokens"], bool(r["stream"])) for r in rows.values()]
    assert got == [
        ("success", answer.usage.prompt_tokens, answer.usage.completion_tokens, False),
        ("success", usage.prompt_tokens, usage.completion_tokens, True),
    ]
    assert completion_tokens_counted(tools_gateway, model) - before == (
        answer.usage.completion_tokens + usage.completion_tokens
    )
    # tokens per minute: between the prompt alone and the prompt with the call's completion, so the next
    # request is refused only if the streamed call's completion tokens were counted
    assert answer.usage.completion_tokens >= 2
    tpm = answer.usage.prompt_tokens + answer.usage.completion_tokens // 2
    limited = openai.OpenAI(
        base_url=tools_gateway.base_url, api_key=tools_gateway.create_key(tpm=tpm), max_retries=0, timeout=300
    )
    assert [c for c in limited.chat.completions.create(**request, seed=3, stream=True) if c.choices]
    with pytest.raises(openai.RateLimitError) as refused:
        limited.chat.completions.create(**request, seed=4)
    assert refused.value.body["type"] == "tokens"


def langchain(gateway: Gateway, model: str) -> ChatOpenAI:
    return ChatOpenAI(
        model=model,
        base_url=gateway.base_url,
        api_key=gateway.create_key(models=[model]),
        temperature=0,
        max_tokens=MAX_TOKENS,
        max_retries=0,
        timeout=300,
    )


@pytest.mark.parametrize("tool_choice", ["Weather", "any"])
def test_langchain_bind_tools_returns_parsed_tool_calls(tools_gateway, tool_choice) -> None:
    message = (
        langchain(tools_gateway, CHAT[0])
        .bind_tools([Weather], tool_choice=tool_choice)
        .invoke("What is the weather in Paris?")
    )
    assert len(message.tool_calls) == 1 and message.tool_calls[0]["name"] == "Weather"
    assert isinstance(Weather(**message.tool_calls[0]["args"]), Weather)


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_langchain_structured_output_returns_the_pydantic_object(tools_gateway, method) -> None:
    person = (
        langchain(tools_gateway, CHAT[1])
        .with_structured_output(Person, method=method)
        .invoke("Invent a person: give a name and an age.")
    )
    assert isinstance(person, Person)


SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer"},
        "languages": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 20}},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}


@pytest.mark.parametrize("model", CHAT)
def test_json_schema_and_json_mode_on_every_chat_model(client, model) -> None:
    strict = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Invent a person who speaks two languages."}],
        response_format={"type": "json_schema", "json_schema": {"name": "person", "strict": True, "schema": SCHEMA}},
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    assert strict.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(strict.choices[0].message.content), SCHEMA)
    loose = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Give a JSON object with a name and an age."}],
        response_format={"type": "json_object"},
        max_tokens=MAX_TOKENS,
        temperature=0,
    )
    assert loose.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(loose.choices[0].message.content), dict)
