"""One redaction for every URL and text that leaves a process: logs, health answers, usage rows, CLI output.

Patterns cover credentials in URLs (``scheme://:pw@``, ``scheme://user:pw@``, password-like
query parameters), API keys (``sk-…``) and bearer tokens. Secrets the process knows by value
(the master key, the passwords inside DATABASE_URL, REDIS_URL, QDRANT_API_KEY) are replaced
wherever they appear, whatever the text around them: register them with :func:`register_secret`.
"""

from __future__ import annotations

import io
import logging
import re
import sys
import threading
from typing import TextIO
from urllib.parse import unquote, urlsplit

MASK = "***"
_MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words

# a password-like parameter name: password, sslpassword, db_password, client_secret, api-key, token...
_SECRET_NAME = r"(?:[a-z0-9_]*?(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|access[_-]?key)|pass)"
_PATTERNS = [
    # userinfo of any URL: scheme://user:password@host or scheme://:password@host; up to the authority's last '@',
    # as URL parsers read it (a raw '@' inside the password included)
    (re.compile(r"(?i)((?<![a-z0-9+.\-])[a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^\s/?#]*@"), rf"\1{MASK}@"),
    # password-like query or form parameters
    (re.compile(rf"(?i)\b({_SECRET_NAME}=)[^&\s'\"]+"), rf"\1{MASK}"),
    # OpenAI-style keys (ours: sk-hxp-…): the first characters stay for recognition
    (re.compile(r"\b(sk-[A-Za-z0-9]{0,4})[A-Za-z0-9_\-]{8,}"), rf"\1{MASK}"),
    (re.compile(r"(?i)\b(bearer\s+)[^\s'\",}]+"), rf"\1{MASK}"),
]
_known: set[str] = set()


def register_secret(value: str | None) -> None:
    """Mask this exact value wherever it appears from now on (too short values are ignored)."""
    if value and len(value) >= _MIN_SECRET_CHARS:
        _known.add(value)


def register_url_secrets(url: str | None) -> None:
    """Register the password (and the decoded password) inside a URL's userinfo or query string."""
    if not url:
        return
    try:
        parts = urlsplit(url)
    except ValueError:
        return
    if parts.password:
        register_secret(parts.password)
        register_secret(unquote(parts.password))
    for pair in parts.query.split("&"):
        name, _, value = pair.partition("=")
        if value and re.fullmatch(f"(?i){_SECRET_NAME}", name):
            register_secret(value)
            register_secret(unquote(value))


def redact(text: str) -> str:
    """``text`` with every credential and known secret replaced by ***."""
    for secret in sorted(_known, key=len, reverse=True):
        if secret in text:
            text = text.replace(secret, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_url(url: str | None) -> str | None:
    """A URL fit for a log line or an answer (None stays None)."""
    return None if url is None else redact(url)


class RedactingStream(io.TextIOBase):
    """A text stream that redacts each complete line before passing it on (partial lines wait for the rest)."""

    def __init__(self, target: TextIO) -> None:
        self._target = target
        self._pending = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._pending += text
            if "\n" in self._pending:
                complete, _, self._pending = self._pending.rpartition("\n")
                self._target.write(redact(complete + "\n"))
        return len(text)

    def flush(self) -> None:
        with self._lock:
            if self._pending:
                self._target.write(redact(self._pending))
                self._pending = ""
        self._target.flush()

    def fileno(self) -> int:
        return self._target.fileno()

    def isatty(self) -> bool:
        return self._target.isatty()

    # typeshed declares TextIOBase.encoding a plain attribute; at runtime it is a read-only property, as here
    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._target, "encoding", "utf-8")


def install_output_redaction() -> None:
    """Redact everything this process writes to stdout and stderr through Python: print, tracebacks and every
    logging handler already writing there (uvicorn's, LiteLLM's) or created later. Idempotent."""
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if isinstance(stream, RedactingStream):
            continue
        wrapper = RedactingStream(stream)
        setattr(sys, name, wrapper)
        for handler in _stream_handlers():
            if handler.stream is stream:
                handler.setStream(wrapper)


def _stream_handlers() -> list[logging.StreamHandler]:
    loggers = [
        logging.getLogger(),
        *(lg for lg in list(logging.Logger.manager.loggerDict.values()) if isinstance(lg, logging.Logger)),
    ]
    return [h for lg in loggers for h in getattr(lg, "handlers", []) if isinstance(h, logging.StreamHandler)]
