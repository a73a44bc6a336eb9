"""One usage row: what the gateway records about each request it answered."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

COLUMNS: tuple[str, ...] = (
    "request_id",
    "model_name",
    "timestamp",
    "user_id",
    "key_id",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "latency_ms",
    "time_to_first_token_ms",
    "stream",
    "cache_hit",
    "cost",
    "status",
    "error_message",
    "request_count",
)
INSERT_SQL = (
    f"INSERT INTO llm_model_requests ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
    " ON CONFLICT (request_id) DO NOTHING"
)
_WIDTHS = {"model_name": 100, "user_id": 100, "key_id": 36, "status": 20}
# The ``status`` column: "success", or what the client's HTTP status says went wrong.
_STATUS_NAMES = {
    400: "invalid_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    408: "timeout",
    413: "invalid_request",
    422: "invalid_request",
    429: "rate_limited",
    499: "cancelled",
    503: "unavailable",
    504: "timeout",
}
# The statuses of a request refused without an answer from a model (4xx).
REFUSALS = frozenset({"invalid_request", "unauthorized", "forbidden", "not_found", "rate_limited", "client_error"})
_MAX_ERROR_CHARS = 2000
_MAX_INT = 2**31 - 1


def status_name(code: int) -> str:
    """The row's ``status`` for an HTTP status code."""
    if code < 400:
        return "success"
    return _STATUS_NAMES.get(code, "backend_error" if code >= 500 else "client_error")


def utc_now() -> str:
    """The current time as an ISO-8601 UTC string (sorts lexically, parses on PostgreSQL and SQLite)."""
    return iso(datetime.now(UTC))


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def iso_at(epoch: float) -> str:
    """``iso`` of epoch seconds."""
    return iso(datetime.fromtimestamp(epoch, UTC))


def epoch_of(timestamp: str) -> float:
    """Epoch seconds of an ISO-8601 timestamp (UTC when it names no zone)."""
    moment = datetime.fromisoformat(timestamp)
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def request_uuid(candidate: object = None) -> str:
    """``candidate`` when it is a UUID (e.g. LiteLLM's call id), else a fresh one."""
    try:
        return str(uuid.UUID(str(candidate)))
    except ValueError:
        return str(uuid.uuid4())


@dataclass(frozen=True)
class UsageRecord:
    """A row of ``llm_model_requests``; never carries a key secret or prompt text."""

    model_name: str
    status: str  # "success", or the error class: "auth_error", "rate_limited", "unavailable", "backend_error", ...
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    timestamp: str = field(default_factory=utc_now)
    user_id: str | None = None
    key_id: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None
    latency_ms: int | None = None
    time_to_first_token_ms: int | None = None
    stream: bool = False
    cache_hit: bool = False
    cost: float | None = None
    error_message: str | None = None
    request_count: int = 1  # >1: an aggregate of that many refusals (hxp.gateway.usage.refusals)

    def __post_init__(self) -> None:
        # Clamp to the column sizes so that one odd request can never block a batch.
        for name, width in _WIDTHS.items():
            value = getattr(self, name)
            if value is not None and len(str(value)) > width:
                object.__setattr__(self, name, str(value)[:width])
        if self.error_message is not None and len(self.error_message) > _MAX_ERROR_CHARS:
            object.__setattr__(self, "error_message", self.error_message[:_MAX_ERROR_CHARS])
        for name in ("prompt_tokens", "completion_tokens", "total_tokens", "latency_ms", "time_to_first_token_ms"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, max(0, min(int(value), _MAX_INT)))

    def params(self) -> tuple[Any, ...]:
        """The values in ``COLUMNS`` order, for ``INSERT_SQL``."""
        return tuple(getattr(self, name) for name in COLUMNS)

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))  # the fields, all scalars (asdict's deep copy costs twice the JSON encoding)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> UsageRecord:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
