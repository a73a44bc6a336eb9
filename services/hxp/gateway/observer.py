"""One observation per request: recorded once, with one clock, from what the client actually got.

The boundary (:mod:`hxp.gateway.boundary`) opens an :class:`Observation` for every route the
table marks ``usage: true``, fills in who called and which model, and passes the response
through :meth:`Observation.send`, which reads the wire: the status line, the headers, the
first streamed chunk (time to first token), the usage the answer reports and the error it
carries. When the response's last message is about to go out (or the client went away, or the boundary
refused the request) :meth:`Observation.finish` feeds the same record to the usage row, the Prometheus
metrics and the JSON request log: the row is journaled (:mod:`hxp.gateway.usage.journal`) before the
client has the whole answer, so that a client that got one has a row even if the process is killed then.

Per streamed message the work is a timestamp on the first one, a bytes search for the usage chunk
and one for text (the chunks a client received, should it leave before the usage comes; the
regex only where that finds none; a message of several events, as the relay passes them on, counted
event by event), and on a chunk without text a prefix check for LiteLLM's
error event (a stream that failed after it started is recorded as failed, with its code); nothing
is parsed until the end, and the boundary's header edit rides on the same ``send`` wrapper
(one per answer). Streams always ask the engine for their usage (``stream_options.include_usage``,
added by the boundary); when the client did not ask for it, the usage chunk is read here and not
passed on.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.types import Message, Send

from hxp.core.redaction import redact
from hxp.gateway import deployments, metrics, request_log
from hxp.gateway.usage import pipeline
from hxp.gateway.usage.record import UsageRecord, iso_at, status_name

UNKNOWN = "unknown"
CACHE_HEADER = b"x-hxp-cache"
_USAGE_MARK = b'"prompt_tokens":'
_TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")
_TOKEN_PATTERN = re.compile(rb'"(prompt_tokens|completion_tokens|total_tokens)":\s*(\d+)')
_DELTA_TEXT = re.compile(rb'"(?:content|text|arguments)":\s*"[^"]')
_CONTENT_MARK = b'"content":"'  # how LiteLLM writes a text chunk: found without the regex
_CONTENT_LEN = len(_CONTENT_MARK)
_STREAM_ERROR = b'data: {"error"'  # LiteLLM's event when a stream fails after it started (e.g. the engine died)
_TAIL_BYTES = 8192  # the end of a non-streamed answer: where its usage is
DISCONNECTED = 499  # nginx's code for "client closed the request", recorded when a client leaves mid-answer
_ERROR_CHARS = 2000  # of an error kept in the usage row and the log line
_ERROR_SCAN_CHARS = 4 * _ERROR_CHARS  # redacted to get them: a refusal may echo a client's megabyte-long field


@dataclass(slots=True)
class Observation:
    """What the gateway learns about one request, from its arrival to the end of its answer."""

    request_id: str
    started: float = field(default_factory=time.time)  # epoch seconds, for the row's timestamp
    t0: float = field(default_factory=time.perf_counter)  # the one clock for every duration
    model: str | None = None  # the catalogue model (a client's alias resolved)
    requested: str | None = None  # the name the client sent, when not a catalogue name
    key_alias: str | None = None
    key_id: str | None = None
    stream: bool = False
    strip_usage: bool = False  # the client did not ask for the usage chunk: read it, do not pass it on
    prompt: Any = None  # only kept when the request log records content
    status: int = 0
    cache_hit: bool = False
    first_chunk: float | None = None
    chunks_with_text: int = 0
    usage: dict[str, int] = field(default_factory=dict)
    error: str | None = None
    complete: bool = False
    finished: bool = False
    active: bool = False
    _streaming: bool = False
    _tail: bytes = b""
    _text: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """The model as a metric label: a catalogue name or ``unknown`` (bounded cardinality)."""
        return self.model or UNKNOWN

    def admitted(self) -> None:
        """The request passed the boundary's checks and goes to its handler (counted as in flight)."""
        self.active = True
        metrics.ACTIVE.labels(self.label).inc()

    def sender(self, send: Send, on_start: Callable[[Message], None] | None = None) -> Send:
        """``send`` wrapped so that the response is observed on its way out. ``on_start`` edits the start
        message before it is observed (the boundary's headers), so that one wrapper does both."""
        keep_text = request_log.content_enabled()

        async def observed(message: Message) -> None:
            if self._streaming:  # the hot path: one streamed chunk
                body = message.get("body", b"")
                if not message.get("more_body", False):
                    self.complete = True
                if body:
                    if self.first_chunk is None:
                        self.first_chunk = time.perf_counter()
                    if _USAGE_MARK in body:
                        if self._usage_chunk(body):  # the usage chunk the client did not ask for
                            if not self.complete:
                                return
                            message = {**message, "body": b""}  # held back, but the body still ends
                    elif _has_text(body):
                        self.chunks_with_text += _text_events(body)
                        if keep_text:
                            self._text.append(_delta_text(body))
                    elif body.startswith(_STREAM_ERROR):
                        self._stream_failed(body)
            elif message["type"] == "http.response.start":
                if on_start is not None:
                    on_start(message)
                self._start(message)
            elif message["type"] == "http.response.body":
                body = message.get("body", b"")
                self._tail = self._tail + body if keep_text else (self._tail + body)[-_TAIL_BYTES:]
                if not message.get("more_body", False):
                    self.complete = True
            if self.complete:
                self.finish()  # the row is journaled before the client has the whole answer
            await send(message)

        return observed

    def _start(self, message: Message) -> None:
        self.status = message["status"]
        for name, value in message.get("headers", ()):
            name = name.lower()
            if name == b"content-type":
                self._streaming = value.startswith(b"text/event-stream")
            elif name == CACHE_HEADER:
                self.cache_hit = value == b"hit"

    def _usage_chunk(self, body: bytes) -> bool:
        """Read the usage a streamed chunk reports; True when it is the usage chunk to hold back from the client."""
        self.usage.update(usage_tokens(body))
        return self.strip_usage and b'"finish_reason"' not in body and not _has_text(body)

    def _stream_failed(self, body: bytes) -> None:
        """A stream that failed after its status line went out: recorded with the error's own code (5xx)."""
        error = _error(body[len(b"data: ") :].strip())
        reported = error.get("code")  # an int, a digit string, or anything else (then 0)
        code = int(reported) if reported is not None and str(reported).isdigit() else 0
        self.status = code if 500 <= code < 600 else 502
        self.error = _error_text(error)

    def refused(self, status: int, message: str) -> None:
        """The boundary answered the request itself (before any handler)."""
        self.status, self.error, self.complete = status, message, True

    def finish(self) -> None:
        """Record the request once: usage row, metrics and request log, from the same values."""
        if self.finished:
            return
        self.finished = True
        latency = time.perf_counter() - self.t0
        if self.active:
            metrics.ACTIVE.labels(self.label).dec()
        status = self.status if self.complete else DISCONNECTED
        if self._tail:  # a non-streamed answer (a stream's chunks are read as they pass)
            self._read_answer(status)
        ttft = None if self.first_chunk is None else self.first_chunk - self.t0
        if self._streaming and "completion_tokens" not in self.usage and self.chunks_with_text:
            self.usage["completion_tokens"] = self.chunks_with_text  # what the client received before leaving
        error = self.error
        if status == DISCONNECTED:
            error = "client disconnected before the end of the answer"
        error = redact(f"{status} {error}"[:_ERROR_SCAN_CHARS])[:_ERROR_CHARS] if error else None
        prompt_tokens = self.usage.get("prompt_tokens")
        completion_tokens = self.usage.get("completion_tokens")
        total = self.usage.get("total_tokens")
        if total is None and prompt_tokens is not None and completion_tokens is not None:
            total = prompt_tokens + completion_tokens
        metrics.observe(
            self.label,
            status,
            self.key_alias or UNKNOWN,
            latency,
            ttft,
            None if self.cache_hit else prompt_tokens,
            None if self.cache_hit else completion_tokens,
            self.cache_hit,
        )
        pipeline.submit(
            UsageRecord(
                request_id=self.request_id,
                model_name=self.model or self.requested or UNKNOWN,
                timestamp=iso_at(self.started),
                user_id=self.key_alias,
                key_id=self.key_id,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=total,
                latency_ms=round(latency * 1000),
                time_to_first_token_ms=None if ttft is None else round(ttft * 1000),
                stream=self.stream,
                cache_hit=self.cache_hit,
                status=status_name(status),
                cost=None
                if self.model is None
                else deployments.cost(deployments.catalogue().get(self.model), prompt_tokens, completion_tokens),
                error_message=error,
            )
        )
        request_log.emit(
            request_log.entry(
                request_id=self.request_id,
                model=self.label,
                key_alias=self.key_alias or UNKNOWN,
                status=status,
                latency_s=latency,
                ttft_s=ttft,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cache_hit=self.cache_hit,
                stream=self.stream,
                error=error,
                prompt=self.prompt,
                completion="".join(self._text) if self._text else None,
            )
        )

    def _read_answer(self, status: int) -> None:
        """Usage (and the text, when logged) from a non-streamed answer; the message of an error."""
        if status >= 400:
            if self.error is None:
                self.error = _error_text(_error(self._tail)) or self._tail[:500].decode(errors="replace")
            return
        usage_at = self._tail.rfind(b'"usage":')
        if usage_at >= 0:
            self.usage.update(usage_tokens(self._tail[usage_at : usage_at + 1024]))
        if request_log.content_enabled():
            try:
                answer = orjson.loads(self._tail)
                choices = answer.get("choices") or []
                self._text = [str((c.get("message") or {}).get("content") or c.get("text") or "") for c in choices]
            except (orjson.JSONDecodeError, AttributeError):
                pass


def usage_tokens(data: bytes) -> dict[str, int]:
    """The token counts of the first usage object in ``data``."""
    found: dict[str, int] = {}
    for name, value in _TOKEN_PATTERN.findall(data):
        found.setdefault(name.decode(), int(value))
        if len(found) == len(_TOKEN_FIELDS):
            break
    return found


def _error(body: bytes) -> dict[str, Any]:
    """The ``error`` object of an OpenAI-shaped error body; empty when it is something else."""
    try:
        error = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        return {}
    return error if isinstance(error, dict) else {}


def _error_text(error: dict[str, Any]) -> str:
    """``type: message`` of an error object; empty for an empty one."""
    return f"{error.get('type') or 'error'}: {error.get('message')}" if error else ""


def _has_text(body: bytes) -> bool:
    """Whether a streamed chunk carries text (as _DELTA_TEXT says; the usual compact chunk without the regex)."""
    at = body.find(_CONTENT_MARK)
    if at >= 0 and body[at + _CONTENT_LEN : at + _CONTENT_LEN + 1] not in (b'"', b""):
        return True
    return _DELTA_TEXT.search(body) is not None


def _text_events(body: bytes) -> int:
    """The events with text in a streamed message that has some: one, unless the relay passed on several events
    the engine's bytes brought at once."""
    if body.count(b"data: ") < 2:
        return 1
    return sum(1 for event in body.split(b"\n\n") if _has_text(event))


def _delta_text(body: bytes) -> str:
    """The text a streamed chunk adds (request log with content only)."""
    text = []
    for line in body.split(b"\n"):
        if line.startswith(b"data: {"):
            try:
                event = orjson.loads(line[6:])
            except orjson.JSONDecodeError:
                continue
            for choice in event.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") if "delta" in choice else choice.get("text")
                if isinstance(piece, str):
                    text.append(piece)
    return "".join(text)
