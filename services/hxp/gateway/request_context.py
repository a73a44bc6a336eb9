"""The request context: what the boundary established about a request, for the handlers and hooks behind it.

The gateway's ground floor: it imports only the core and the identity (:mod:`hxp.gateway.auth`), so that
any handler, hook or feature can read it without importing the boundary. It is also LiteLLM's
``custom_auth`` entry point (:func:`user_api_key_auth`): LiteLLM gets the caller the boundary found.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from litellm.proxy._types import UserAPIKeyAuth
from starlette.types import Scope

from hxp.core import errors
from hxp.core.catalogue import Model
from hxp.gateway.auth import Caller
from hxp.gateway.route_table import Route

SCOPE_KEY = "hxp"


@dataclass
class RequestContext:
    """What the boundary established about a request, for the handlers behind it."""

    request_id: str
    route: Route | None = None
    params: dict[str, str] = field(default_factory=dict)
    caller: Caller | None = None
    model: Model | None = None
    body: dict[str, Any] | None = None
    client: str = ""  # the client's address
    actor: str | None = None  # who acts, for the audit trail, when not the caller's alias (a console session)


CURRENT: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar("hxp_request", default=None)


def context_of(scope: Scope) -> RequestContext:
    """The request's context (an empty one for a request that did not come through the boundary)."""
    ctx: RequestContext | None = scope.get(SCOPE_KEY)
    return ctx or RequestContext(request_id="")


def current() -> RequestContext | None:
    """The context of the request being handled in this task (LiteLLM hooks have no scope)."""
    return CURRENT.get()


async def user_api_key_auth(request: Request, api_key: str) -> UserAPIKeyAuth:
    """LiteLLM's custom_auth entry point: the identity the boundary established for this request."""
    caller = context_of(request.scope).caller
    if caller is None:  # only routes the table marks public carry no caller, and none of them is LiteLLM's
        raise errors.unauthorized("Missing API key: send 'Authorization: Bearer <key>'")
    return caller.litellm_identity()
