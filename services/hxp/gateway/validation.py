"""Request bodies checked before any handler or backend runs; each failure is a 400 naming the field.

:func:`validate` takes the body's kind from the route table (chat, completion, embedding,
responses, json) and the catalogue model the body names. Types follow OpenAI's API reference: a wrong
type, a value out of range or too many inputs is refused here, never passed on to become a
backend's 500. So are tools sent to a model the catalogue declares without tool support, and
JSON schemas (``response_format``, tool parameters) that the JSON Schema metaschema rejects.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Real
from typing import Any, TypeGuard

import jsonschema

from hxp.core.catalogue import Model
from hxp.core.errors import GatewayError, bad_request
from hxp.gateway import extensions

ROLES = frozenset({"system", "user", "assistant", "tool", "developer", "function"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
ENCODING_FORMATS = frozenset({"float", "base64"})
MAX_STOP_SEQUENCES = 4

# field -> (low, high), both inclusive
RANGES = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
}
TASKS = {"chat": "chat", "completion": "chat", "embedding": "embedding", "responses": "chat"}


def _number(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_one_of(value: Any, choices: frozenset[str]) -> TypeGuard[str]:
    return isinstance(value, str) and value in choices


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _tokens(value: Any) -> bool:
    return isinstance(value, list) and all(is_integer(v) and v >= 0 for v in value)


def check_object(body: Any) -> dict[str, Any]:
    """The body as a JSON object, or a 400 saying what it is instead."""
    if not isinstance(body, dict):
        kind = "null" if body is None else type(body).__name__.replace("str", "string").replace("dict", "object")
        raise GatewayError(
            400, f"The request body must be a JSON object, not {kind}", param="body", code="invalid_json"
        )
    return body


def model_name(body: dict[str, Any]) -> str:
    """The ``model`` the body names (400 when missing or not a string)."""
    name = body.get("model")
    if name is None or name == "":
        raise bad_request("model", "'model' is required")
    if not isinstance(name, str):
        raise bad_request("model", f"'model' must be a string, got {type(name).__name__}")
    return name


def check_task(kind: str, model: Model) -> None:
    """A chat route must name a chat model and the embeddings route an embedding model."""
    task = TASKS.get(kind)
    if task is not None and model.task != task:
        use = "/v1/embeddings" if model.task == "embedding" else "/v1/chat/completions"
        raise bad_request("model", f"model '{model.name}' serves {model.task}, not {task}: use {use}")


def check_ranges(body: dict[str, Any]) -> None:
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
        if not is_integer(value) or value < 1:
            raise bad_request(name, f"'{name}' must be a positive integer, got {value!r}")
        if value > model.max_model_len:
            raise bad_request(
                name,
                f"'{name}' is {value}, above the context window of model '{model.name}' ({model.max_model_len} tokens)",
            )


def _check_generation(body: dict[str, Any], model: Model) -> None:
    """Parameters shared by chat and text completions."""
    if "stream" in body and body["stream"] is not None and not isinstance(body["stream"], bool):
        raise bad_request("stream", "'stream' must be true or false")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise bad_request("stream_options", "'stream_options' must be an object")
    check_ranges(body)
    _check_max_tokens(body, model)
    n = body.get("n")
    if n is not None and (not is_integer(n) or not 1 <= n <= 128):
        raise bad_request("n", f"'n' must be an integer between 1 and 128, got {n!r}")
    stop = body.get("stop")
    if stop is not None and not (isinstance(stop, str) or (_strings(stop) and len(stop) <= MAX_STOP_SEQUENCES)):
        raise bad_request("stop", f"'stop' must be a string or a list of at most {MAX_STOP_SEQUENCES} strings")
    seed = body.get("seed")
    if seed is not None and not is_integer(seed):
        raise bad_request("seed", f"'seed' must be an integer, got {seed!r}")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request("user", "'user' must be a string")


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
        if not is_one_of(role, ROLES):
            raise bad_request(
                f"{where}.role", f"'{where}.role' must be one of {', '.join(sorted(ROLES))}, got {role!r}"
            )
        content = message.get("content")
        if content is None and not (role == "assistant" and message.get("tool_calls")):
            raise bad_request(f"{where}.content", f"'{where}.content' is required")
        if content is not None and not isinstance(content, (str, list)):
            raise bad_request(f"{where}.content", f"'{where}.content' must be a string or a list of parts")
        if isinstance(content, list) and not all(
            isinstance(p, dict) and isinstance(p.get("type"), str) for p in content
        ):
            raise bad_request(f"{where}.content", f"'{where}.content' parts must be objects with a 'type'")


def _check_schema(schema: dict[str, Any], param: str, where: str) -> None:
    """A JSON Schema the metaschema accepts (the draft its ``$schema`` names, else 2020-12)."""
    if not isinstance(schema.get("$schema", ""), str):
        raise bad_request(param, f"'{where}.$schema' must be the URI of a JSON Schema draft")
    try:
        jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator).check_schema(schema)
    except jsonschema.SchemaError as exc:
        at = "/".join(str(p) for p in exc.path)
        raise bad_request(
            param, f"'{where}' is not a valid JSON Schema: {exc.message}" + (f" (at '{at}')" if at else "")
        ) from None
    except RecursionError:
        raise bad_request(param, f"'{where}' is nested too deeply") from None


def check_tool_support(body: dict[str, Any], model: Model) -> None:
    """Tools only for a model the catalogue declares with tool support (in OpenAI's words for a model without)."""
    if model.tools is not None:
        return
    param = "tools" if body.get("tools") else "tool_choice" if body.get("tool_choice") not in (None, "none") else None
    if param is not None:
        raise GatewayError(
            400,
            f"Model '{model.name}' has no tool support: '{param}' cannot be used with it "
            "(GET /v1/models tells which models support tools)",
            param=param,
            code="unsupported_parameter",
        )


def _check_tools(body: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not tools:
            raise bad_request("tools", "'tools' must be a non-empty list of tools (leave it out for none)")
        for i, tool in enumerate(tools):
            where = f"tools[{i}]"
            function = tool.get("function") if isinstance(tool, dict) else None
            if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(function, dict):
                raise bad_request(where, f"'{where}' must be an object with type 'function' and a 'function'")
            if not isinstance(function.get("name"), str) or not function["name"]:
                raise bad_request(f"{where}.function.name", f"'{where}.function.name' must be a non-empty string")
            parameters = function.get("parameters")
            if parameters is not None and not isinstance(parameters, dict):
                raise bad_request(
                    f"{where}.function.parameters", f"'{where}.function.parameters' must be a JSON Schema object"
                )
            if parameters is not None:
                _check_schema(parameters, f"{where}.function.parameters", f"{where}.function.parameters")
    choice = body.get("tool_choice")
    if choice is None:
        return
    if isinstance(choice, str):
        if not is_one_of(choice, TOOL_CHOICES):
            raise bad_request(
                "tool_choice",
                f"'tool_choice' must be one of {', '.join(sorted(TOOL_CHOICES))} or a named function, got {choice!r}",
            )
    elif not (
        isinstance(choice, dict)
        and choice.get("type") == "function"
        and isinstance(choice.get("function"), dict)
        and isinstance(choice["function"].get("name"), str)
    ):
        raise bad_request(
            "tool_choice", '\'tool_choice\' must be a string or {"type": "function", "function": {"name": ...}}'
        )
    if choice not in ("none", "auto") and not tools:
        raise bad_request("tool_choice", "'tool_choice' names a tool but 'tools' is empty")


def _check_response_format(body: dict[str, Any]) -> None:
    value = body.get("response_format")
    if value is None:
        return
    if not isinstance(value, dict) or not is_one_of(value.get("type"), RESPONSE_FORMATS):
        raise bad_request(
            "response_format",
            f"'response_format' must be an object whose 'type' is one of {', '.join(sorted(RESPONSE_FORMATS))}",
        )
    if value["type"] == "json_schema":
        spec = value.get("json_schema")
        if (
            not isinstance(spec, dict)
            or not isinstance(spec.get("name"), str)
            or not isinstance(spec.get("schema", {}), dict)
        ):
            raise bad_request(
                "response_format", "'response_format.json_schema' must be an object with a 'name' and a 'schema' object"
            )
        _check_schema(spec.get("schema", {}), "response_format", "response_format.json_schema.schema")


def _check_inputs(body: dict[str, Any], name: str, max_inputs: int) -> None:
    """``prompt`` or ``input``: a string, a list of strings, a list of token ids or a list of such lists."""
    value = body.get(name)
    if value is None or value == "" or value == []:
        raise bad_request(name, f"'{name}' is required and must not be empty")
    if isinstance(value, str):
        return
    if not isinstance(value, list):
        raise bad_request(
            name, f"'{name}' must be a string, a list of strings or a list of token ids, got {type(value).__name__}"
        )
    if len(value) > max_inputs:
        raise bad_request(name, f"'{name}' has {len(value)} items; at most {max_inputs} are accepted per request")
    if not (_strings(value) or _tokens(value) or all(_tokens(v) and v for v in value)):
        raise bad_request(
            name, f"'{name}' must be a string, a list of strings or a list of token ids, not a list mixing types"
        )
    if any(v == "" or v == [] for v in value):
        raise bad_request(name, f"'{name}' must not contain empty items")


def _chat(body: dict[str, Any], model: Model, max_inputs: int) -> None:
    _check_messages(body)
    _check_generation(body, model)
    _check_tools(body)
    check_tool_support(body, model)
    _check_response_format(body)


def _completion(body: dict[str, Any], model: Model, max_inputs: int) -> None:
    _check_inputs(body, "prompt", max_inputs)
    _check_generation(body, model)


def _embedding(body: dict[str, Any], model: Model, max_inputs: int) -> None:
    if body.get("stream") is not None and body["stream"] is not False:  # 0 == False, but is no boolean
        raise bad_request("stream", "embeddings are not streamed: leave 'stream' out (or false)")
    _check_inputs(body, "input", max_inputs)
    encoding = body.get("encoding_format")
    if encoding is not None and not is_one_of(encoding, ENCODING_FORMATS):
        raise bad_request("encoding_format", f"'encoding_format' must be one of {', '.join(sorted(ENCODING_FORMATS))}")
    dimensions = body.get("dimensions")
    if dimensions is not None and (not is_integer(dimensions) or dimensions < 1):
        raise bad_request("dimensions", f"'dimensions' must be a positive integer, got {dimensions!r}")


Check = Callable[[dict[str, Any], Model, int], None]
CHECKS: dict[str, Check] = {"chat": _chat, "completion": _completion, "embedding": _embedding}


def _check_for(kind: str) -> Check | None:
    """The core's check of a body kind, else a feature's (:data:`hxp.gateway.extensions.BODY_CHECKS`)."""
    if kind in CHECKS:
        return CHECKS[kind]
    path = extensions.BODY_CHECKS.get(kind)
    return extensions.resolve(path) if path else None


def check_destination(body: dict[str, Any], path: str) -> None:
    """No client-chosen endpoint or credentials (``api_base``, ``base_url``, ``model_list``, nested configs...):
    LiteLLM's own rules (its list is long and kept with it), refused here as a 400. Left to LiteLLM, the refusal
    crashes its error handling into a plain-text 500."""
    from litellm.proxy import proxy_server
    from litellm.proxy.auth.auth_utils import is_request_body_safe

    try:
        is_request_body_safe(
            body, proxy_server.general_settings, proxy_server.llm_router, str(body.get("model", "")), route=path
        )
    except ValueError as exc:
        raise GatewayError(400, str(exc), param="body", code="invalid_value") from None


def validate(kind: str, body: dict[str, Any], model: Model, max_inputs: int) -> None:
    """Raise a 400 GatewayError for the first invalid field of a ``kind`` request to ``model``."""
    check_task(kind, model)
    check = _check_for(kind)
    if check is not None:
        check(body, model, max_inputs)
