"""Errors in OpenAI's JSON shape: ``{"error": {"message", "type", "param", "code"}}``.

:class:`GatewayError` is a LiteLLM ``ProxyException``, so raising it from the
auth hook or a pre-call hook is rendered by LiteLLM's own exception handler
(with the status code and headers), and our own routers render it the same way.
"""

from __future__ import annotations

from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from litellm.proxy._types import ProxyException

# OpenAI's error type for each status the gateway answers itself.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "service_unavailable_error",
}


class GatewayError(ProxyException):
    """An error the gateway answers itself, before or instead of a backend call."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(
            message=message,
            type=ERROR_TYPES.get(status, "api_error"),
            param=param,
            code=status,
            headers=headers,
            openai_code=code,
        )
        self.status_code = status

    def to_dict(self) -> dict[str, Any]:
        # OpenAI's `code` is a machine-readable reason (model_not_found, invalid_api_key...), not the status.
        return {
            "message": self.message,
            "type": self.type,
            "param": self.param,
            "code": self.openai_code if self.openai_code != self.status_code else None,
        }

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.to_dict()}, status_code=self.status_code, headers=self.headers)


def bad_request(param: str, message: str) -> GatewayError:
    return GatewayError(400, message, param=param, code="invalid_value")


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, code="invalid_api_key")


def forbidden(message: str, param: str | None = None) -> GatewayError:
    return GatewayError(403, message, param=param, code="model_not_allowed")


class ReplacementError(GatewayError, HTTPException):
    """A GatewayError that a post-call failure hook returns to replace LiteLLM's error.

    LiteLLM only takes an HTTPException from that hook, then raises it as the
    ProxyException it also is, so the client gets our status, type and code.
    """

    headers: dict[str, str]  # ProxyException's: its __init__ sets it after HTTPException's (MRO) has run

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.detail = self.message


def backend_unavailable(model: str, reason: str, retry_after_s: float = 1) -> ReplacementError:
    return ReplacementError(
        503,
        f"Model '{model}' is unavailable: {reason}",
        code="backend_unavailable",
        headers={"retry-after": str(max(1, round(retry_after_s)))},
    )


def rate_limited(message: str, headers: dict[str, str]) -> ReplacementError:
    """A 429 as OpenAI answers it: type 'requests' or 'tokens', code rate_limit_exceeded, Retry-After."""
    error = ReplacementError(429, message, code="rate_limit_exceeded", headers=headers)
    if headers.get("rate_limit_type") in ("requests", "tokens"):
        error.type = headers["rate_limit_type"]
    return error


def model_not_found(model: str) -> GatewayError:
    return GatewayError(404, f"The model '{model}' does not exist", param="model", code="model_not_found")


def status_of(exc: BaseException) -> int:
    """The HTTP status an exception is answered with (500 when it names none)."""
    for attribute in ("status_code", "code"):
        value = getattr(exc, attribute, None)
        if value is None:
            continue
        try:
            code = int(value)
        except (TypeError, ValueError):
            continue
        if 100 <= code <= 599:
            return code
    return 500
