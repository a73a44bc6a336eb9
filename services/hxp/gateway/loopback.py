"""Requests a handler makes to this same gateway with its caller's key.

Work a handler does on a model (the vector API's embeddings, the Responses API's chat
completions) goes through the gateway's own OpenAI routes, so that the caller's model
access, rate limits, usage rows and metrics apply to it exactly as to a direct request.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.types import Scope

KEY_HEADERS = ("authorization", "x-litellm-api-key", "api-key", "x-api-key")


def base_url(scope: Scope) -> str | None:
    """This gateway's OpenAI base URL (…/v1) as the request reached it; None off a TCP socket (in-process)."""
    server = scope.get("server")
    if not server or server[1] is None:
        return None
    host = f"[{server[0]}]" if ":" in server[0] else server[0]
    return f"http://{host}:{server[1]}/v1"


def key_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """The headers that carry the caller's key."""
    return {name: value for name, value in headers.items() if name.lower() in KEY_HEADERS}
