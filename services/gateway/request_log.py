"""One structured JSON line per request answered by the gateway.

Fields: time, request_id, model, key (the key's alias, never its secret),
status (HTTP code), latency_ms, ttft_ms (streams), prompt_tokens,
completion_tokens, cache_hit, stream, error (type and message, secrets masked).
Prompt and completion text are only added with HXP_REQUEST_LOG_CONTENT=true.

| variable                | meaning                                                      | default |
|-------------------------|--------------------------------------------------------------|---------|
| HXP_REQUEST_LOG         | ``stdout``, ``off``, or a file path (JSON lines, appended)   | stdout  |
| HXP_REQUEST_LOG_CONTENT | include the prompt and the completion text                   | false   |
"""
from __future__ import annotations

import json
import logging
import os
import re
import sys
from datetime import datetime, timezone
from functools import lru_cache
from typing import Any

log = logging.getLogger("hxp.gateway.requests")
# sk-… keys, bearer tokens and URL credentials (scheme://user:password@host)
_SECRETS = [
    (re.compile(r"\b(sk-[A-Za-z0-9]{0,4})[A-Za-z0-9_\-]{8,}"), r"\1***"),
    (re.compile(r"(?i)\b(bearer\s+)\S+"), r"\1***"),
    (re.compile(r"(\w+://[^:/@\s]+:)[^@\s]+@"), r"\1***@"),
]


def mask(text: str) -> str:
    """``text`` with anything that looks like a key, token or password replaced by ***."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def content_enabled() -> bool:
    return os.environ.get("HXP_REQUEST_LOG_CONTENT", "").strip().lower() in ("1", "true", "yes", "on")


@lru_cache(maxsize=1)
def _configure() -> bool:
    """Attach this process's handler once (gateway workers do not inherit the launcher's logging)."""
    target = os.environ.get("HXP_REQUEST_LOG", "stdout").strip() or "stdout"
    if target == "off":
        return False
    handler = logging.StreamHandler(sys.stdout) if target == "stdout" else logging.FileHandler(target)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return True


def entry(*, request_id: str | None, model: str, key_alias: str | None, status: int, latency_s: float | None,
          ttft_s: float | None = None, prompt_tokens: int | None = None, completion_tokens: int | None = None,
          cache_hit: bool = False, stream: bool = False, error: str | None = None,
          prompt: Any = None, completion: str | None = None) -> dict[str, Any]:
    """The log record of one request (content only when HXP_REQUEST_LOG_CONTENT is on)."""
    record: dict[str, Any] = {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
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
        record["error"] = mask(error)[:1000]
    if content_enabled():
        record["prompt"] = json.loads(mask(json.dumps(prompt, default=str))) if prompt is not None else None
        record["completion"] = mask(completion) if completion is not None else None
    return record


def emit(record: dict[str, Any]) -> None:
    """Write one request's line."""
    if _configure():
        log.info(json.dumps(record, separators=(",", ":"), default=str))
