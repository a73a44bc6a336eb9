"""Request checks done before any backend is called; each failure is a 400 naming the field."""
from __future__ import annotations

from numbers import Real
from typing import Any

from hxp.catalogue import Model
from hxp.gateway.errors import bad_request

ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})

# field -> (low, high), both inclusive
RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _check_ranges(body: dict[str, Any]) -> None:
    for name, (low, high) in RANGES.items():
        value = body.get(name)
        if value is None:
            continue
        if not _number(value) or not low <= value <= high:
            raise bad_request(name, f"'{name}' must be a number between {low:g} and {high:g}, got {value!r}")


def _check_max_tokens(body: dict[str, Any], model: Model) -> None:
    for name in ("max_tokens", "max_completion_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise bad_request(name, f"'{name}' must be a positive integer, got {value!r}")
        if value > model.max_model_len:
            raise bad_request(name, f"'{name}' is {value}, above the context window of model "
                                    f"'{model.name}' ({model.max_model_len} tokens)")


def _check_messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if messages is None:
        raise bad_request("messages", "'messages' is required")
    if not isinstance(messages, list) or not messages:
        raise bad_request("messages", "'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise bad_request(where, f"'{where}' must be an object with 'role' and 'content'")
        role = message.get("role")
        if role not in ROLES:
            raise bad_request(f"{where}.role", f"'{where}.role' must be one of {', '.join(sorted(ROLES))}, "
                                               f"got {role!r}")
        content = message.get("content")
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            raise bad_request(f"{where}.content", f"'{where}.content' is required")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(f"{where}.content", f"'{where}.content' must be a string or a list of parts")


def _check_required(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is None or value == "" or value == []:
        raise bad_request(name, f"'{name}' is required and must not be empty")


def validate(body: dict[str, Any], call_type: str, model: Model) -> None:
    """Raise a 400 GatewayError for the first invalid field of an OpenAI request."""
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise bad_request("stream", "'stream' must be true or false")
    if call_type in ("embeddings", "aembedding"):
        _check_required(body, "input")
        return
    if call_type in ("text_completion", "atext_completion"):
        _check_required(body, "prompt")
    else:
        _check_messages(body)
    _check_ranges(body)
    _check_max_tokens(body, model)
    n = body.get("n")
    if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 1):
        raise bad_request("n", f"'n' must be a positive integer, got {n!r}")

