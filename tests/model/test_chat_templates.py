"""The tool-aware chat templates (services/hxp/model/templates), rendered as vLLM renders them (transformers' Jinja).

The ChatML one also runs on the real CPU engine (tests/gateway/test_tools_engine.py); the Mixtral one is
checked here against the Mistral-Instruct v0.1 prompt format, as no GPU engine runs in the tests.
"""

from __future__ import annotations

import json
import re
from typing import Any

from jinja2.sandbox import ImmutableSandboxedEnvironment

from hxp.core import catalogue
from hxp.core.catalogue import CHAT_TEMPLATES

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris and Lyon?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            CALL,
            {**CALL, "id": "call_2", "function": {"name": "get_weather", "arguments": {"city": "Lyon"}}},
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
    {"role": "tool", "tool_call_id": "call_2", "content": "20 C"},
    {"role": "assistant", "content": "18 C and 20 C."},
    {"role": "user", "content": "Thanks"},
]
CALL_BLOCK = re.compile(r"<tool_call>\n(.*?)\n</tool_call>", re.DOTALL)


def render(name: str, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None) -> str:
    """The prompt, from the same Jinja environment transformers gives chat templates (and vLLM uses)."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, **options: json.dumps(value, ensure_ascii=False, **options)
    return env.from_string((CHAT_TEMPLATES / name).read_text()).render(
        messages=messages, tools=tools, add_generation_prompt=True, bos_token="<s>", eos_token="</s>"
    )


def test_every_template_shipped_is_used_by_the_catalogue() -> None:
    used = {
        m.tools.chat_template
        for profile in ("gpu", "cpu")
        for m in catalogue.load(profile=profile).models
        if m.tools and m.tools.chat_template
    }
    assert used == {path.name for path in CHAT_TEMPLATES.glob("*.jinja")}


def test_chatml_without_tools_is_plain_chatml() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "bye"},
    ]
    assert render("chatml_tools.jinja", messages) == (
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n"
        "<|im_start|>user\nbye<|im_end|>\n<|im_start|>assistant\n"
    )


def test_chatml_shows_tools_calls_and_results() -> None:
    prompt = render("chatml_tools.jinja", CONVERSATION, [WEATHER])
    system, user, calls, results, answer, thanks, generation = prompt.split("<|im_start|>")[1:]
    assert system.startswith("system\nBe brief.\n\n") and system.endswith("<|im_end|>\n")
    tools = re.search(r"<tools>\n(.*?)\n</tools>", system, re.DOTALL).group(1)
    assert [json.loads(line) for line in tools.splitlines()] == [WEATHER["function"]]
    assert "<tool_call>" in system and "<tool_response>" in system  # the model is told both formats
    assert user == "user\nWeather in Paris and Lyon?<|im_end|>\n"
    assert calls.startswith("assistant\n<tool_call>")
    assert [json.loads(c) for c in CALL_BLOCK.findall(calls)] == [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_weather", "arguments": {"city": "Lyon"}},
    ]
    assert results == (
        "tool\n<tool_response>\n18 C\n</tool_response>\n<tool_response>\n20 C\n</tool_response><|im_end|>\n"
    )
    assert answer == "assistant\n18 C and 20 C.<|im_end|>\n" and thanks == "user\nThanks<|im_end|>\n"
    assert generation == "assistant\n"


def test_mistral_instruct_without_tools_is_the_mixtral_instruct_format() -> None:
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "bye"},
    ]
    assert render("mistral_instruct_tools.jinja", messages) == "<s>[INST] hi [/INST]Hello</s>[INST] bye [/INST]"


def test_mistral_instruct_shows_tools_calls_and_results_in_inst_turns() -> None:
    prompt = render("mistral_instruct_tools.jinja", CONVERSATION, [WEATHER])
    assert prompt.startswith("<s>[INST] Be brief.\n\n") and prompt.count("<s>") == 1
    turns = re.findall(r"\[INST\] (.*?) \[/INST\]([^\[]*)", prompt, re.DOTALL)
    assert len(turns) == 3  # the question (with the system prompt and the tools), the results, the thanks
    (question, calls), (results, answer), (thanks, generation) = turns
    tools = re.search(r"<tools>\n(.*?)\n</tools>", question, re.DOTALL).group(1)
    assert [json.loads(line) for line in tools.splitlines()] == [WEATHER["function"]]
    assert question.endswith("Weather in Paris and Lyon?")
    assert calls.endswith("</s>")
    assert [json.loads(c)["arguments"] for c in CALL_BLOCK.findall(calls)] == [{"city": "Paris"}, {"city": "Lyon"}]
    assert results == "<tool_response>\n18 C\n</tool_response>\n<tool_response>\n20 C\n</tool_response>"
    assert answer == "18 C and 20 C.</s>" and thanks == "Thanks" and generation == ""
    assert "<tools>" not in prompt[prompt.index("[/INST]") :]  # the tools are described once
