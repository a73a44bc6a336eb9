"""The model calls a response makes: a token count from the session's engine, then the chat completion.

The chat completion goes through this gateway's own /v1/chat/completions with the caller's key
(:mod:`hxp.gateway.loopback`): the key's model access, rate and token limits, usage row and
metrics apply to the whole prompt the engine gets, history included. It carries the session
header, so that :mod:`~hxp.conversations.routing` sends every turn of a session to the
same backend. A refusal or failure of that call (400, 403, 429, 503...) is answered as it is.

Token counts come from the engine's own tokenizer (vLLM's ``POST /tokenize``, with the chat
template applied), asked of the backends in the session's order; None when no backend can count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import Request

from hxp.conversations.routing import SESSION_HEADER, rank
from hxp.core.catalogue import Model
from hxp.core.errors import GatewayError
from hxp.gateway import clients, deployments, loopback

log = logging.getLogger("hxp.gateway")
TOKENIZE_TIMEOUT_S = 60.0
PASSED_HEADERS = ("retry-after", "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens")


class Refused(Exception):
    """The chat completion was not answered: its status and body are the client's answer."""

    def __init__(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers


async def count_tokens(
    model: Model, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, session: str
) -> int | None:
    """The prompt's length in the model's tokens, chat template included; None when no backend could count."""
    payload: dict[str, Any] = {"model": model.name, "messages": messages, "add_generation_prompt": True}
    if tools:
        payload["tools"] = tools
    for url in rank(session, deployments.served()[model.name]):
        try:
            response = await clients.shared().post(
                deployments.engine_root(url) + "/tokenize", json=payload, timeout=TOKENIZE_TIMEOUT_S
            )
        except httpx.HTTPError:
            continue  # the next backend of the session's order
        if response.status_code == 200:
            return int(response.json()["count"])
        log.warning(
            "cannot count the tokens of a %s prompt: its engine answered %d to /tokenize",
            model.name,
            response.status_code,
        )
        return None
    return None


@dataclass(frozen=True)
class Gateway:
    """This gateway's /v1/chat/completions with the caller's key."""

    url: str
    headers: dict[str, str]

    @classmethod
    def of(cls, request: Request) -> Gateway:
        url = loopback.base_url(request.scope)
        if url is None:
            raise GatewayError(503, "/v1/responses is served on a TCP socket only", code="backend_unavailable")
        return cls(url + "/chat/completions", loopback.key_headers(request.headers))

    def _request(self, chat: dict[str, Any], session: str) -> httpx.Request:
        return clients.shared().build_request(
            "POST", self.url, json=chat, headers={**self.headers, SESSION_HEADER: session}
        )

    async def complete(self, chat: dict[str, Any], session: str) -> dict[str, Any]:
        """The chat answer (:class:`Refused` when there is none)."""
        response = await clients.shared().send(self._request(chat, session))
        if response.status_code != 200:
            raise _refused(response, response.content)
        return response.json()

    async def stream(self, chat: dict[str, Any], session: str) -> httpx.Response:
        """The streamed chat answer, its status 200 (:class:`Refused` otherwise); close it when done."""
        response = await clients.shared().send(self._request(chat, session), stream=True)
        if response.status_code != 200:
            body = await response.aread()
            await response.aclose()
            raise _refused(response, body)
        return response


def _refused(response: httpx.Response, body: bytes) -> Refused:
    return Refused(response.status_code, body, {k: v for k, v in response.headers.items() if k in PASSED_HEADERS})
