"""Bodies of the Responses and Conversations APIs, checked before anything runs: a 400 naming the field.

:func:`check_create` is the boundary's check for a ``responses`` body (POST /v1/responses,
plugged into :mod:`hxp.gateway.validation` through :data:`hxp.gateway.extensions.BODY_CHECKS`);
:func:`check_items` and :func:`check_metadata`
also check the conversation routes' bodies. What is accepted follows OpenAI's API reference,
limited to what a chat engine can do: message, function call and function call output items,
text and image content, function tools.
"""

from __future__ import annotations

from typing import Any

from hxp.core.catalogue import Model
from hxp.core.errors import bad_request
from hxp.gateway.validation import check_ranges, check_tool_support, is_integer, is_one_of

ROLES = frozenset({"user", "assistant", "system", "developer"})
ITEM_TYPES = frozenset({"message", "function_call", "function_call_output"})
TEXT_PARTS = frozenset({"input_text", "output_text", "text"})
PART_TYPES = TEXT_PARTS | {"input_image", "refusal"}
TRUNCATION = frozenset({"auto", "disabled"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})
TEXT_FORMATS = frozenset({"text", "json_object", "json_schema"})
FLAGS = ("stream", "store", "parallel_tool_calls", "background")
MAX_METADATA_KEYS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 16, 64, 512
MAX_NEW_ITEMS = 20  # items added to a conversation in one request (OpenAI's limit)


def _string(body: dict[str, Any], name: str, where: str) -> None:
    if not isinstance(body.get(name), str):
        raise bad_request(f"{where}.{name}", f"'{where}.{name}' must be a string")


def _check_content(content: Any, where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list) or not content:
        raise bad_request(where, f"'{where}' must be a string or a non-empty list of content parts")
    for i, part in enumerate(content):
        at = f"{where}[{i}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not is_one_of(kind, PART_TYPES):
            raise bad_request(f"{at}.type", f"'{at}.type' must be one of {', '.join(sorted(PART_TYPES))}, got {kind!r}")
        field = {"input_image": "image_url", "refusal": "refusal"}.get(kind, "text")
        _string(part, field, at)


def check_item(item: Any, where: str) -> None:
    """One input item: a message (``role`` and ``content``), a function call or a function call's output."""
    if not isinstance(item, dict):
        raise bad_request(where, f"'{where}' must be an object (a message or an item with a 'type')")
    kind = item.get("type", "message")
    if not is_one_of(kind, ITEM_TYPES):
        raise bad_request(
            f"{where}.type", f"'{where}.type' must be one of {', '.join(sorted(ITEM_TYPES))}, got {kind!r}"
        )
    if kind == "message":
        if not is_one_of(item.get("role"), ROLES):
            raise bad_request(
                f"{where}.role", f"'{where}.role' must be one of {', '.join(sorted(ROLES))}, got {item.get('role')!r}"
            )
        _check_content(item.get("content"), f"{where}.content")
    elif kind == "function_call":
        for name in ("call_id", "name", "arguments"):
            _string(item, name, where)
    else:
        _string(item, "call_id", where)
        output = item.get("output")
        if not isinstance(output, str):
            _check_content(output, f"{where}.output")


def check_items(value: Any, param: str, most: int) -> None:
    """A list of at most ``most`` input items."""
    if not isinstance(value, list):
        raise bad_request(param, f"'{param}' must be a list of items")
    if len(value) > most:
        raise bad_request(param, f"'{param}' has {len(value)} items; at most {most} are accepted per request")
    for i, item in enumerate(value):
        check_item(item, f"{param}[{i}]")


def check_metadata(value: Any, param: str = "metadata") -> None:
    """Up to 16 string pairs: keys up to 64 characters, values up to 512."""
    if value is None:
        return
    if (
        not isinstance(value, dict)
        or len(value) > MAX_METADATA_KEYS
        or not all(
            isinstance(k, str) and len(k) <= MAX_METADATA_KEY and isinstance(v, str) and len(v) <= MAX_METADATA_VALUE
            for k, v in value.items()
        )
    ):
        raise bad_request(
            param,
            f"'{param}' must be an object of at most {MAX_METADATA_KEYS} string values "
            f"(keys up to {MAX_METADATA_KEY} characters, values up to {MAX_METADATA_VALUE})",
        )


def conversation_id(body: dict[str, Any]) -> str | None:
    """The conversation a create request names (a string or ``{"id": ...}``), or None."""
    value = body.get("conversation")
    return value.get("id") if isinstance(value, dict) else value


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise bad_request("tools", "'tools' must be a list of tools")
    for i, tool in enumerate(tools or []):
        if not (
            isinstance(tool, dict)
            and tool.get("type") == "function"
            and isinstance(tool.get("name"), str)
            and tool["name"]
            and isinstance(tool.get("parameters") or {}, dict)
        ):
            raise bad_request(
                f"tools[{i}]",
                f'\'tools[{i}]\' must be a function tool: {{"type": "function", '
                '"name": ..., "parameters": {JSON Schema}} (only function tools '
                "run on this gateway)",
            )
    choice = body.get("tool_choice")
    if choice is None or is_one_of(choice, TOOL_CHOICES):
        return
    if not (isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("name"), str)):
        raise bad_request(
            "tool_choice", '\'tool_choice\' must be none, auto, required or {"type": "function", "name": ...}'
        )


def _check_text(body: dict[str, Any]) -> None:
    text = body.get("text")
    if text is None:
        return
    form = text.get("format") if isinstance(text, dict) else None
    if not isinstance(text, dict) or (
        form is not None and not (isinstance(form, dict) and is_one_of(form.get("type"), TEXT_FORMATS))
    ):
        raise bad_request(
            "text.format", f"'text.format' must be an object whose 'type' is one of {', '.join(sorted(TEXT_FORMATS))}"
        )
    if (
        form
        and form["type"] == "json_schema"
        and not (isinstance(form.get("name"), str) and isinstance(form.get("schema"), dict))
    ):
        raise bad_request("text.format", "'text.format' of type json_schema needs a 'name' and a 'schema' object")


def check_create(body: dict[str, Any], model: Model, max_inputs: int) -> None:
    """A POST /v1/responses body (the model is already known to exist and be granted)."""
    for name in FLAGS:
        if body.get(name) is not None and not isinstance(body[name], bool):
            raise bad_request(name, f"'{name}' must be true or false")
    if body.get("background"):
        raise bad_request("background", "background responses are not supported: leave 'background' unset")
    previous, conversation = body.get("previous_response_id"), body.get("conversation")
    if previous is not None and (not isinstance(previous, str) or not previous):
        raise bad_request("previous_response_id", "'previous_response_id' must be a response id")
    if conversation is not None and not isinstance(conversation_id(body), str):
        raise bad_request("conversation", "'conversation' must be a conversation id or {\"id\": ...}")
    if previous is not None and conversation is not None:
        raise bad_request("conversation", "'conversation' and 'previous_response_id' cannot be used together")
    value = body.get("input")
    if value is None or value == "" or value == []:
        if conversation is None:
            raise bad_request("input", "'input' is required and must not be empty")
    elif not isinstance(value, str):
        check_items(value, "input", max_inputs)
    if body.get("instructions") is not None and not isinstance(body["instructions"], str):
        raise bad_request("instructions", "'instructions' must be a string")
    limit = body.get("max_output_tokens")
    if limit is not None and (not is_integer(limit) or not 1 <= limit <= model.max_model_len):
        raise bad_request(
            "max_output_tokens",
            f"'max_output_tokens' must be an integer between 1 and the context "
            f"window of model '{model.name}' ({model.max_model_len}), got {limit!r}",
        )
    if body.get("truncation") is not None and not is_one_of(body["truncation"], TRUNCATION):
        raise bad_request("truncation", f"'truncation' must be auto or disabled, got {body['truncation']!r}")
    if body.get("user") is not None and not isinstance(body["user"], str):
        raise bad_request("user", "'user' must be a string")
    check_ranges(body)
    check_metadata(body.get("metadata"))
    _check_tools(body)
    _check_text(body)
    check_tool_support(body, model)
