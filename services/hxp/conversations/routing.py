"""Session affinity: every turn of a conversation goes to the same backend while it is healthy.

vLLM keeps the prompt prefixes it has computed (prefix caching); a conversation whose turns all
reach one engine reuses its history's cache instead of computing it again. As the vLLM
production-stack router does, the session id is hashed consistently over the healthy backends
(rendezvous hashing: each backend scores ``sha256(session, backend)`` and the highest wins), so
a session stays where it is while its backend is healthy, moves only when that one fails (and
comes back when it recovers), and different sessions spread evenly. Replicas of the gateway
agree without sharing any state.

A request carries its session in the ``x-hxp-session-id`` header: /v1/responses sets it on the
chat completion it makes (the conversation's id, or the first response of a chain), and any
chat client may send it too. :class:`SessionAffinity` is a LiteLLM callback whose
``async_filter_deployments`` narrows the router's healthy deployments (those not cooling down
after a failure) to the session's one.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

from litellm.integrations.custom_logger import CustomLogger

SESSION_HEADER = "x-hxp-session-id"


def _score(session: str, backend: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{session}\x00{backend}".encode()).digest()[:8], "big")


def rank(session: str, backends: Sequence[str]) -> list[str]:
    """The backends in the order a session prefers them (the first healthy one serves it)."""
    return sorted(backends, key=lambda backend: _score(session, backend), reverse=True)


def _session(request_kwargs: dict[str, Any] | None) -> str | None:
    """The session header of the proxied request (LiteLLM keeps the request's headers in its metadata)."""
    for holder in ((request_kwargs or {}).get("proxy_server_request"), (request_kwargs or {}).get("metadata")):
        headers = holder.get("headers") if isinstance(holder, dict) else None
        if isinstance(headers, dict):
            for name, value in headers.items():
                if name.lower() == SESSION_HEADER and isinstance(value, str) and value:
                    return value
    return None


def _backend(deployment: dict[str, Any]) -> str:
    return str((deployment.get("litellm_params") or {}).get("api_base") or deployment.get("model_info", {}).get("id"))


class SessionAffinity(CustomLogger):
    """Routes a request with a session to the session's backend among the healthy ones."""

    async def async_filter_deployments(self, model: str, healthy_deployments: list, messages: Any,
                                       request_kwargs: dict | None = None, parent_otel_span: Any = None) -> list:
        session = _session(request_kwargs)
        if session is None or len(healthy_deployments) < 2:
            return healthy_deployments
        return [max(healthy_deployments, key=lambda d: _score(session, _backend(d)))]


session_affinity = SessionAffinity()
