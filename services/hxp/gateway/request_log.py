"""One structured JSON line per observed request (written by :mod:`hxp.gateway.observer`).

Fields: time, request_id, model, key (the key's alias, never its secret),
status (HTTP code), latency_ms, ttft_ms (streams), prompt_tokens,
completion_tokens, cache_hit, stream, error (type and message, secrets masked).
Prompt and completion text are only added with HXP_REQUEST_LOG_CONTENT=true.
Where the lines go: HXP_REQUEST_LOG (``stdout``, ``off`` or a file path); see
:mod:`hxp.core.settings`. The audit trail's events (the ``hxp.audit`` logger, :mod:`hxp.audit.trail`) go to the
same stream, one JSON line each with ``"event": "audit"``.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from hxp.core.context import Runtime, runtime
from hxp.core.redaction import redact

log = logging.getLogger("hxp.gateway.requests")
AUDIT_LOG = "hxp.audit.events"


def content_enabled() -> bool:
    return runtime().settings.request_log_content


def _configure(rt: Runtime) -> bool:
    """Attach this process's handler once (gateway workers do not inherit the launcher's logging)."""
    target = rt.settings.request_log.strip() or "stdout"
    if target == "off":
        return False
    handler = logging.StreamHandler(sys.stdout) if target == "stdout" else logging.FileHandler(target)
    handler.setFormatter(logging.Formatter("%(message)s"))
    for stream in (log, logging.getLogger(AUDIT_LOG)):
        stream.addHandler(handler)
        stream.setLevel(logging.INFO)
        stream.propagate = False
    return True


def configure() -> None:
    """Open the stream now (a worker's start): audit events may come before the first request's line."""
    runtime().get(_configure)


def entry(
    *,
    request_id: str | None,
    model: str,
    key_alias: str | None,
    status: int,
    latency_s: float | None,
    ttft_s: float | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    cache_hit: bool = False,
    stream: bool = False,
    error: str | None = None,
    prompt: Any = None,
    completion: str | None = None,
) -> dict[str, Any]:
    """The log record of one request (content only when HXP_REQUEST_LOG_CONTENT is on)."""
    record: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "event": "request",
        "request_id": request_id,
        "model": model,
        "key": key_alias,
        "status": status,
        "latency_ms": None if latency_s is None else round(latency_s * 1000, 1),
        "ttft_ms": None if ttft_s is None else round(ttft_s * 1000, 1),
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cache_hit": cache_hit,
        "stream": stream,
    }
    if error:
        record["error"] = redact(error)[:1000]
    if content_enabled():
        record["prompt"] = json.loads(redact(json.dumps(prompt, default=str))) if prompt is not None else None
        record["completion"] = redact(completion) if completion is not None else None
    return record


def emit(record: dict[str, Any]) -> None:
    """Write one request's line."""
    if runtime().get(_configure):
        log.info(json.dumps(record, separators=(",", ":"), default=str))
