"""Which engine serves a request, when a model has several: healthy ones first, a session's one, else a prefix's.

vLLM keeps the prompt prefixes it has computed (prefix caching); requests reaching the engine that
already holds their prefix skip computing it again. :class:`EngineRouting` is a LiteLLM callback whose
``async_filter_deployments`` narrows the router's healthy deployments (those not cooling down after a
failure), in this order:

1. **Health.** Engines whose last probe failed are left out (unless every one did). Each gateway worker
   probes its engines' ``/metrics`` at most every ``PROBE_INTERVAL_S`` while requests come, in the
   background (a request never waits for a probe); a probe that fails or takes longer than
   ``PROBE_TIMEOUT_S`` marks the engine down until one succeeds.
2. **Session.** A request naming its session (``x-hxp-session-id``: /v1/responses sets it on the chat
   completion it makes, any chat client may send it) goes to the session's engine: as the vLLM
   production-stack router does, the session id is hashed consistently over the engines (rendezvous
   hashing: each engine scores ``sha256(key, engine)`` and the highest wins), so a session stays where
   it is while its engine is healthy, moves only when that one fails (and comes back when it recovers),
   and different sessions spread evenly. Replicas of the gateway agree without sharing any state.
3. **Prefix** (HXP_PREFIX_ROUTING, on by default). Otherwise a chat request's leading messages (all but
   the last: the system prompt and the conversation so far, their first ``PREFIX_CHARS`` characters)
   are the key of the same hashing, so requests sharing them meet their cached prefix on one engine,
   balanced against load as in consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam,
   2018): the first engine in the key's order whose load is below ``LOAD_FACTOR`` times the mean load
   (counting the request, rounded up) serves it, so a prefix leaves its engine only while that one carries
   more than its share. An engine's load is the requests this gateway worker has in flight on it (exact, as
   the router picks it and until the request's task ends) plus those of others: the queue its last probe saw
   (vLLM's ``vllm:num_requests_running`` + ``vllm:num_requests_waiting``) less this worker's own in flight
   then. A request with a single message has no prefix to share and goes to the least loaded engine.

With HXP_PREFIX_ROUTING off, requests without a session keep LiteLLM's own choice (a random healthy engine).
Replicas agree on every prefix's and session's engine without sharing state; they differ only in which
requests overflow, each by its own view of the load.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from litellm.integrations.custom_logger import CustomLogger

from hxp.core.context import Runtime, runtime
from hxp.gateway import clients
from hxp.gateway.deployments import backend_urls, engine_root
from hxp.gateway.engines import queue_lengths

SESSION_HEADER = "x-hxp-session-id"
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 1.0
PREFIX_CHARS = 8192
LOAD_FACTOR = 1.25  # an engine takes a prefix's requests until its load reaches 1.25x the mean


def _score(key: str, backend: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{key}\x00{backend}".encode()).digest()[:8], "big")


def rank(key: str, backends: Sequence[str]) -> list[str]:
    """The backends in the order a session (or prefix) key prefers them (the first healthy one serves it)."""
    return sorted(backends, key=lambda backend: _score(key, backend), reverse=True)


def prefix_key(messages: Any) -> str | None:
    """The key of a chat request's shared prefix: its leading messages (all but the last), their first
    PREFIX_CHARS characters; None for a request with one message or none."""
    if not isinstance(messages, list) or len(messages) < 2:
        return None
    leading = json.dumps(
        [[m.get("role"), m.get("content")] if isinstance(m, dict) else m for m in messages[:-1]],
        sort_keys=True,
        default=str,
    )
    return "prefix\x00" + leading[:PREFIX_CHARS]


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


@dataclass
class EngineState:
    """What the last probe of an engine found: whether it answered, and the requests it had from elsewhere (its
    queue less this worker's own in flight; None: it exports no queue)."""

    up: bool
    others: float | None


class EngineStates:
    """The engines serving a model with several (by root URL): each one's state, refreshed in the background at
    most every PROBE_INTERVAL_S while requests come, and the requests this worker has in flight on it."""

    def __init__(self, roots: Sequence[str]) -> None:
        self.roots = sorted(set(roots))
        self._states: dict[str, EngineState] = {}
        self._probed_at = float("-inf")
        self._refresh: asyncio.Task | None = None
        self._in_flight: dict[str, int] = dict.fromkeys(self.roots, 0)
        self._held: dict[asyncio.Task, str] = {}  # request task -> the engine it holds

    def current(self) -> dict[str, EngineState]:
        """The latest known states (engines not probed yet are absent); starts a refresh when one is due."""
        now = time.monotonic()
        due = now - self._probed_at >= PROBE_INTERVAL_S and (self._refresh is None or self._refresh.done())
        if self.roots and due:
            self._probed_at = now
            self._refresh = asyncio.get_running_loop().create_task(self._probe_all())
        return self._states

    def load(self, root: str) -> float:
        """The engine's requests: this worker's in flight now plus the others' its last probe saw."""
        others = state.others if (state := self._states.get(root)) is not None else None
        return self._in_flight.get(root, 0) + (others or 0.0)

    def hold(self, root: str) -> None:
        """Count the current request in flight on ``root`` until its task ends (a retry of the same request,
        routed again, moves it)."""
        task = asyncio.current_task()
        if task is None:
            return
        previous = self._held.get(task)
        if previous is None:
            task.add_done_callback(self._release)
        else:
            self._in_flight[previous] -= 1
        self._held[task] = root
        self._in_flight[root] = self._in_flight.get(root, 0) + 1

    def _release(self, task: asyncio.Task) -> None:
        self._in_flight[self._held.pop(task)] -= 1

    async def _probe_all(self) -> None:
        client = clients.shared()
        queues = await asyncio.gather(*(self._probe(client, root) for root in self.roots))
        self._states = {
            root: EngineState(up, None if queue is None else max(0.0, queue - self._in_flight.get(root, 0)))
            for root, (up, queue) in zip(self.roots, queues, strict=True)
        }

    @staticmethod
    async def _probe(client: httpx.AsyncClient, root: str) -> tuple[bool, float | None]:
        """Whether the engine answered, and its queue (running plus waiting; None where it exports none)."""
        try:
            queues = await queue_lengths(client, root, PROBE_TIMEOUT_S)
        except httpx.HTTPError:
            return False, None
        except ValueError:  # it answered, but with no Prometheus text
            return True, None
        known = [v for v in queues.values() if v is not None]
        return True, sum(known) if known else None


def _engine_states(rt: Runtime) -> EngineStates:
    cfg = rt.settings
    replicas = [backend_urls(m, cfg.backends, cfg.backend_url_template) for m in rt.catalogue.models]
    return EngineStates([engine_root(url) for urls in replicas if len(urls) > 1 for url in urls])


class EngineRouting(CustomLogger):
    """Narrows a model's deployments to the healthy engines, then to the session's, the prefix's or the least
    loaded one."""

    async def async_filter_deployments(
        self,
        model: str,
        healthy_deployments: list,
        messages: Any,
        request_kwargs: dict | None = None,
        parent_otel_span: Any = None,
    ) -> list:
        engines = runtime().get(_engine_states)
        states = engines.current()
        if len(healthy_deployments) < 2:
            return healthy_deployments
        candidates = [
            d for d in healthy_deployments if states.get(engine_root(_backend(d)), EngineState(True, None)).up
        ] or healthy_deployments
        session = _session(request_kwargs)
        if session is not None:
            chosen = max(candidates, key=lambda d: _score(session, _backend(d)))
        elif not runtime().settings.prefix_routing:
            return candidates
        else:
            chosen = _bounded_load(prefix_key(messages), candidates, engines)
        engines.hold(engine_root(_backend(chosen)))
        return [chosen]


def _bounded_load(key: str | None, candidates: list, engines: EngineStates) -> dict:
    """The first engine in the key's order whose load is below LOAD_FACTOR times the mean load, this request
    counted (rounded up; one always is: the least loaded); without a key, the least loaded (ties at random)."""
    loads = {id(d): engines.load(engine_root(_backend(d))) for d in candidates}
    if key is None:
        least = min(loads.values())
        return random.choice([d for d in candidates if loads[id(d)] == least])
    capacity = math.ceil(LOAD_FACTOR * (sum(loads.values()) + 1) / len(candidates))
    ranked = sorted(candidates, key=lambda d: _score(key, _backend(d)), reverse=True)
    return next(d for d in ranked if loads[id(d)] < capacity)


engine_routing = EngineRouting()
