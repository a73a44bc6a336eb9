"""Bounded steady load through a gateway, from client threads on a host, each request's outcome kept.

Every request is one chat message carrying a unique marker (so the engine that served it can be told), sent by
one of ``threads`` clients that each wait for their answer, then pause ``gap_s``; with ``streamed`` every other
request is streamed (answered: 200 and the stream's ``[DONE]``). The load stops when told, or at
``max_requests`` or ``max_s``, whichever comes first.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import httpx

from tests.support.servers import Where


@dataclass(frozen=True)
class Outcome:
    """One request: when it left (monotonic), how long it took, its status (None: no answer) and its marker."""

    sent_at: float
    latency_s: float
    status: int | None
    marker: str
    request_id: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None


class SteadyLoad:
    """Client threads on ``where`` sending chat requests to ``base_url`` (…/v1) with ``key``."""

    def __init__(
        self,
        where: Where,
        base_url: str,
        key: str,
        model: str,
        *,
        threads: int = 2,
        gap_s: float = 0.05,
        timeout_s: float = 120.0,
        max_requests: int = 5000,
        max_s: float = 300.0,
        streamed: bool = False,
    ) -> None:
        self.where, self.base_url, self.key, self.model = where, base_url, key, model
        self.streamed = streamed
        self.gap_s, self.timeout_s, self.max_requests, self.max_s = gap_s, timeout_s, max_requests, max_s
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=where.call, args=(self._client,), daemon=True) for _ in range(threads)]

    def start(self) -> SteadyLoad:
        self._until = time.monotonic() + self.max_s
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        """Stop sending, wait for the requests in flight; every outcome, oldest first."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s + 30)
        return sorted(self.outcomes, key=lambda o: o.sent_at)

    def answered(self) -> int:
        with self._lock:
            return sum(o.ok for o in self.outcomes)

    def _client(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=self.timeout_s) as client:
            while not self._stop.is_set() and time.monotonic() < self._until:
                with self._lock:
                    if len(self.outcomes) >= self.max_requests:
                        return
                marker = f"m{uuid.uuid4().hex[:12]}"
                stream = self.streamed and len(self.outcomes) % 2 == 1
                body = {"model": self.model, "messages": [{"role": "user", "content": marker}], "max_tokens": 4}
                start = time.monotonic()
                try:
                    with client.stream(
                        "POST", f"{self.base_url}/chat/completions", json={**body, "stream": stream}, headers=headers
                    ) as response:
                        text = response.read().decode()
                    complete = response.status_code == 200 and (not stream or "data: [DONE]" in text)
                    outcome = Outcome(
                        start,
                        time.monotonic() - start,
                        response.status_code,
                        marker,
                        response.headers.get("x-request-id"),
                        None if complete else f"stream={stream}: {text[:200]}",
                    )
                except httpx.HTTPError as exc:
                    outcome = Outcome(start, time.monotonic() - start, None, marker, None, type(exc).__name__)
                with self._lock:
                    self.outcomes.append(outcome)
                self._stop.wait(self.gap_s)


def recovery(outcomes: list[Outcome], since: float, slow_s: float) -> float:
    """Seconds from ``since`` to the last request sent after it that failed or took longer than ``slow_s``
    (0 when none did): from then on every request was answered in time."""
    bad = [o.sent_at - since for o in outcomes if o.sent_at >= since and (not o.ok or o.latency_s > slow_s)]
    return max(bad, default=0.0)
