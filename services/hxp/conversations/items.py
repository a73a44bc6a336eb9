"""Responses API items and chat completions, both ways.

- :func:`stored_items`: a request's ``input`` (a string or items) as the items the gateway stores,
  each with a fresh id and its content as typed parts;
- :func:`chat_messages`: items as the chat messages an engine takes (instructions first, as the
  system message; function calls as the assistant's ``tool_calls``, their outputs as ``tool`` messages);
- :func:`chat_request`: a /v1/responses body as a /v1/chat/completions body;
- :func:`output_items` and :func:`response_object`: a chat answer as a Response.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from hxp.conversations.checks import TEXT_PARTS

ID_PREFIXES = {"message": "msg", "function_call": "fc", "function_call_output": "fco"}
CHAT_ROLES = {"developer": "system"}  # chat templates know system, user, assistant and tool
OPTIONS = {"max_output_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "user": "user"}


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def stores(body: dict[str, Any]) -> bool:
    """Whether a /v1/responses body asks for its response to be stored (the default)."""
    return body.get("store") is not False


def _part(part: dict[str, Any], role: str) -> dict[str, Any]:
    if part["type"] in TEXT_PARTS:
        kind = "output_text" if role == "assistant" else "input_text"
        return {"type": kind, "text": part["text"], **({"annotations": []} if kind == "output_text" else {})}
    return dict(part)


def stored_item(item: dict[str, Any]) -> dict[str, Any]:
    """A checked input item as stored and listed (a new id; the status of a finished item)."""
    kind = item.get("type", "message")
    out: dict[str, Any] = {"id": new_id(ID_PREFIXES[kind]), "type": kind}
    if kind == "message":
        role, content = item["role"], item["content"]
        parts = [{"type": "input_text", "text": content}] if isinstance(content, str) else content
        out.update(role=role, content=[_part(p, role) for p in parts])
    elif kind == "function_call":
        out.update(call_id=item["call_id"], name=item["name"], arguments=item["arguments"])
    else:
        out.update(call_id=item["call_id"], output=item["output"])
    out["status"] = "completed"
    return out


def stored_items(value: str | list[dict[str, Any]] | None) -> list[dict[str, Any]]:
    """A request's ``input`` as stored items (a string is one user message)."""
    if not value:
        return []
    items = [{"type": "message", "role": "user", "content": value}] if isinstance(value, str) else value
    return [stored_item(item) for item in items]


def _text(part: dict[str, Any]) -> str | None:
    return part.get("refusal") if part["type"] == "refusal" else part.get("text")


def _chat_content(parts: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Text parts as one string; with an image, OpenAI chat parts."""
    if isinstance(parts, str):
        return parts
    if all(p["type"] != "input_image" for p in parts):
        return "\n".join(_text(p) or "" for p in parts)
    return [
        {"type": "image_url", "image_url": {"url": p["image_url"]}}
        if p["type"] == "input_image"
        else {"type": "text", "text": _text(p) or ""}
        for p in parts
    ]


def chat_messages(items: list[dict[str, Any]], instructions: str | None = None) -> list[dict[str, Any]]:
    """Stored items (oldest first) as chat messages, after the instructions as a system message."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": instructions}] if instructions else []
    for item in items:
        kind = item["type"]
        if kind == "message":
            messages.append(
                {"role": CHAT_ROLES.get(item["role"], item["role"]), "content": _chat_content(item["content"])}
            )
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            if messages and messages[-1]["role"] == "assistant":  # one assistant turn: its text and its calls
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _chat_content(item["output"])})
    return messages


def chat_tools(body: dict[str, Any]) -> list[dict[str, Any]] | None:
    """Responses function tools as chat tools."""
    tools = body.get("tools")
    if not tools:
        return None
    return [
        {
            "type": "function",
            "function": {k: t[k] for k in ("name", "description", "parameters", "strict") if t.get(k) is not None},
        }
        for t in tools
    ]


def chat_request(body: dict[str, Any], messages: list[dict[str, Any]], stream: bool) -> dict[str, Any]:
    """The /v1/chat/completions body for a /v1/responses body and its messages."""
    request: dict[str, Any] = {"model": body["model"], "messages": messages}
    request.update({chat: body[name] for name, chat in OPTIONS.items() if body.get(name) is not None})
    tools = chat_tools(body)
    if tools:
        request["tools"] = tools
        if body.get("parallel_tool_calls") is not None:
            request["parallel_tool_calls"] = body["parallel_tool_calls"]
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            choice = {"type": "function", "function": {"name": choice["name"]}}
        if choice is not None:
            request["tool_choice"] = choice
    form = (body.get("text") or {}).get("format")
    if form and form["type"] == "json_schema":
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {k: form[k] for k in ("name", "schema", "strict", "description") if form.get(k) is not None},
        }
    elif form and form["type"] == "json_object":
        request["response_format"] = {"type": "json_object"}
    if stream:
        request.update(stream=True, stream_options={"include_usage": True})
    return request


def message_item(item_id: str, text: str, status: str) -> dict[str, Any]:
    """The assistant's answer as an output message."""
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def function_call_item(call: dict[str, Any]) -> dict[str, Any]:
    """A chat tool call as a function_call output item."""
    function = call.get("function") or {}
    return {
        "id": new_id("fc"),
        "type": "function_call",
        "call_id": call.get("id") or new_id("call"),
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
        "status": "completed",
    }


def status_of(finish_reason: str | None) -> str:
    """A Response's status from the chat answer's finish reason (cut at the token limit: incomplete)."""
    return "incomplete" if finish_reason == "length" else "completed"


def output_items(message: dict[str, Any], finish_reason: str | None) -> list[dict[str, Any]]:
    """A chat answer's message as output items: its text (when any, or when it calls nothing), then its calls."""
    calls = message.get("tool_calls") or []
    items = (
        [message_item(new_id("msg"), message.get("content") or "", status_of(finish_reason))]
        if message.get("content") or not calls
        else []
    )
    return items + [function_call_item(call) for call in calls]


def usage(chat: dict[str, Any] | None) -> dict[str, Any] | None:
    """A chat answer's usage in the Responses API's terms."""
    if not chat:
        return None
    prompt, completion = int(chat.get("prompt_tokens") or 0), int(chat.get("completion_tokens") or 0)
    cached = int((chat.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    return {
        "input_tokens": prompt,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": completion,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": prompt + completion,
    }


def response_object(
    response_id: str,
    body: dict[str, Any],
    created_at: int,
    status: str,
    output: list[dict[str, Any]],
    usage_: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    conversation: str | None = None,
) -> dict[str, Any]:
    """A Response as OpenAI's API answers it, with the request's settings."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "completed_at": int(time.time()) if status == "completed" else None,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": body["model"],
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "conversation": {"id": conversation} if conversation else None,
        "store": stores(body),
        "temperature": body.get("temperature"),
        "top_p": body.get("top_p"),
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": body.get("tools") or [],
        "truncation": body.get("truncation") or "disabled",
        "text": body.get("text") or {"format": {"type": "text"}},
        "metadata": body.get("metadata") or {},
        "user": body.get("user"),
        "background": False,
        "usage": usage_,
    }
