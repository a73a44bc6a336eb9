"""Rolling engine replacement: the new engine beside the old one, then the switch (native stack and compose).

For an engine whose deployment changed (or whose weights were updated in place) :class:`Update`

1. starts the new engine beside the old one (a :class:`Runner` does it: the native runner on a free port, on
   the old one's cores; compose as a second container of the service) and waits until it is healthy;
2. sends it a canary request (chat: a question with a known answer; embeddings: one vector) and the models'
   own checks of `hxp validate` (serves each name, answers, vector size, memory);
3. moves the gateways' traffic for its models to it (the live backends, which every worker reloads), the old
   engine on standby: a request the new one fails is answered by the old one;
4. waits until the old engine has no request left (bounded: ``drain_s``), keeping it running;
5. watches the new engine for ``watch_s``: it must stay alive and the error rate clients see (server errors in
   the usage log) stay at or under ``max_error_rate``;
6. releases the standby, drains the old engine again and stops it.

A failure before the switch stops the new engine; a failure during the watch moves the traffic back to the
old engine first. Where the gateways reach a service's engines by a name each of them answers to (compose's
network alias), the traffic is pinned to the old engine's own address for the update's duration and goes back
to the name once one engine is left. Every step is an event of ``hxp config history`` under the subject
``update <model>``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import httpx
import psutil

from hxp.core.catalogue import Catalogue, Model
from hxp.core.versions import POLL_S, ConfigStore
from hxp.gateway.deployments import DNS_TTL_S
from hxp.gateway.usage.record import iso, status_name
from hxp.lifecycle.plan import Refused
from hxp.model.command import engine_groups
from hxp.model.service import READY_TIMEOUT_S
from hxp.ops.findings import FAIL
from hxp.ops.validate import engine_checks
from hxp.process import ServiceError

CANARY_PROMPT = "What is the capital of France? Answer with one word."
CANARY_EXPECT = "paris"
SERVER_ERRORS = sorted({status_name(code) for code in (500, 502, 503, 504)})
STOP_GRACE_S = 30.0


class UpdateFailed(RuntimeError):
    """The new engine failed a check; the traffic is back on the old engine and the new one is stopped."""


@dataclass(frozen=True)
class Options:
    watch_s: float = 60.0
    max_error_rate: float = 0.05
    drain_s: float = 60.0
    ready_timeout_s: float = READY_TIMEOUT_S
    canary_prompt: str = CANARY_PROMPT
    canary_expect: str = CANARY_EXPECT
    enforce_eager: bool = True


class NewEngine(Protocol):
    """An engine an update started, as its runner handles it."""

    @property
    def url(self) -> str:
        """Where the gateways reach it (…/v1)."""
        ...

    @property
    def here(self) -> str:
        """Where this process reaches it (the part before /v1): the canary, the checks, the drain."""
        ...

    def describe(self) -> str: ...

    def wait_healthy(self, timeout: float) -> None:
        """Return once it answers /health; a ServiceError when it exits or ``timeout`` passes first."""
        ...

    def alive(self) -> bool: ...

    def stop(self) -> None: ...


class Runner(Protocol):
    """The part of an update that depends on where the stack's engines run (native processes, compose
    containers): start, address and stop an engine, and refuse what cannot be done before anything starts."""

    template: str  # the gateways' backend URL template ({name}, {port})
    by_name: bool  # the gateways reach a service's engines by a name each of them answers to

    def check(self, models: tuple[Model, ...], old_urls: list[str]) -> None:
        """Refuse (Refused, saying what to fix) an update that cannot be made; touches nothing."""
        ...

    def pin(self, models: tuple[Model, ...], urls: list[str]) -> list[str]:
        """Addresses that reach only the engine of ``models`` behind ``urls`` now."""
        ...

    def here(self, url: str) -> str:
        """Where this process reaches the engine at the gateways' ``url`` (the part before /v1)."""
        ...

    def start(self, cat: Catalogue, models: tuple[Model, ...], old_urls: list[str], options: Options) -> NewEngine:
        """Start the new engine of ``models`` beside the one at ``old_urls`` (not waiting for it)."""
        ...

    def stop(self, urls: list[str]) -> None:
        """Stop the engines at the gateways' ``urls`` (drained already)."""
        ...


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def listener(port: int) -> psutil.Process | None:
    """The native vLLM engine listening on ``port`` on this host, if any (a container's published port, or
    anything else listening there, is not one: an update never stops what it did not start as an engine)."""
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            process = psutil.Process(conn.pid)
            return process if any("vllm" in part for part in process.cmdline()) else None
    return None


def stop_group(pid: int, grace: float = STOP_GRACE_S) -> None:
    """Stop the process group led by ``pid``'s group (an engine and what it forked): SIGTERM, then SIGKILL."""
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


def port_of(url: str) -> int:
    return int(httpx.URL(url).port or 80)


def canary(base_url: str, model: Model, options: Options) -> str:
    """Ask the engine at ``base_url`` the canary; the problem found, or "" when it answers as expected."""
    try:
        if model.task == "embedding":
            r = httpx.post(f"{base_url}/v1/embeddings", json={"model": model.name, "input": "canary"}, timeout=60)
            r.raise_for_status()
            return "" if r.json()["data"][0]["embedding"] else "an empty embedding"
        body = {
            "model": model.name,
            "messages": [{"role": "user", "content": options.canary_prompt}],
            "temperature": 0,
            "max_tokens": 16,
        }
        r = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=120)
        r.raise_for_status()
        answer = r.json()["choices"][0]["message"]["content"] or ""
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as err:
        return f"the canary request failed: {err}"
    if options.canary_expect.lower() not in answer.lower():
        return f"the canary answer {answer!r} lacks {options.canary_expect!r}"
    return ""


def in_flight(root: str) -> float:
    """Requests running or waiting in the vLLM engine at ``root`` (its /metrics); 0 when it does not answer."""
    try:
        text = httpx.get(f"{root}/metrics", timeout=5).text
    except httpx.HTTPError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting"))
    )


def drain(root: str, bound_s: float) -> bool:
    """Wait until the engine at ``root`` has had no request for two reload periods (the gateways have all
    switched); False when ``bound_s`` passed first."""
    deadline = time.monotonic() + bound_s
    idle_since: float | None = None
    while time.monotonic() < deadline:
        now = time.monotonic()
        if in_flight(root) > 0:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= 2 * POLL_S:
            return True
        time.sleep(POLL_S / 4)
    return False


def error_rate(store: ConfigStore, names: tuple[str, ...], since: datetime) -> tuple[float, int]:
    """The share of server errors among the usage rows of ``names`` since ``since``, and their number."""
    marks = ", ".join("?" for _ in names)
    rows = store.db.fetchall(
        f"SELECT status FROM llm_model_requests WHERE model_name IN ({marks}) AND timestamp >= ?", (*names, iso(since))
    )
    failed = sum(1 for r in rows if r["status"] in SERVER_ERRORS)
    return (failed / len(rows) if rows else 0.0), len(rows)


class Update:
    """One engine replacement (see the module's steps); ``run`` raises UpdateFailed after rolling back."""

    def __init__(
        self,
        store: ConfigStore,
        cat: Catalogue,
        models: tuple[Model, ...],
        old_urls: list[str],
        options: Options,
        runner: Runner,
        say: Callable[[str], None] = print,
    ) -> None:
        self.store, self.cat, self.models, self.options, self.say = store, cat, models, options, say
        self.runner = runner
        self.names = tuple(m.name for m in models)
        self.subject = f"update {self.names[0]}"
        self.default = old_urls  # what the gateways use when the update starts
        self.old_urls = old_urls  # the old engine's own addresses (pinned during the update)
        self.pinned_at: float | None = None
        self.new: NewEngine | None = None

    def step(self, step: str, detail: str = "") -> None:
        self.store.log(self.subject, step, detail)
        self.say(f"[update {self.names[0]}] {step}{': ' + detail if detail else ''}")

    def _switch(self, urls: list[str], step: str, standby: list[str] | None = None) -> None:
        detail = " ".join(urls) + (f" (standby: {' '.join(standby)})" if standby else "")
        spare = dict.fromkeys(self.names, standby) if standby else None
        self.store.set_backends(dict.fromkeys(self.names, urls), self.subject, step, detail, spare)
        self.say(f"[update {self.names[0]}] {step}: {detail}")

    def _settle(self, serving: list[str]) -> list[str]:
        """Once one engine is left: the gateways go back to each model's name (compose's network alias, the
        backends compose.yaml gives them), else stay on ``serving``; the URLs of the first model."""
        if not self.runner.by_name:
            return serving
        if self.pinned_at is not None:  # the gateways' cached address of the name: one looked up since the pin
            time.sleep(max(0.0, self.pinned_at + POLL_S + DNS_TTL_S - time.monotonic()))
        own = {m.name: [self.runner.template.format(name=m.name, port=m.port)] for m in self.models}
        detail = " ".join(urls[0] for urls in own.values())
        self.store.set_backends(own, self.subject, "traffic-settled", detail)
        self.say(f"[update {self.names[0]}] traffic-settled: {detail}")
        return own[self.names[0]]

    def _fail(self, reason: str, switched: bool) -> UpdateFailed:
        if switched:
            self._switch(self.old_urls, "traffic-back")
            drain(self.new.here if self.new else "", self.options.drain_s)
        if self.new is not None:
            self.new.stop()
        self._settle(self.old_urls)
        self.step("update-rolled-back", reason)
        return UpdateFailed(reason)

    def _checks(self, new: NewEngine) -> str:
        """The canary, then the models' own checks of `hxp validate`; the problem found, or ""."""
        problem = canary(new.here, self.models[0], self.options)
        if problem:
            return problem
        self.step("canary-passed", self.options.canary_expect if self.models[0].task == "chat" else "embedding")
        with httpx.Client() as client:
            findings = engine_checks(client, new.here, self.models, self.cat)
        failed = [f"{f.check}: {f.detail}" for f in findings if f.status == FAIL]
        if failed:
            return "hxp validate: " + "; ".join(failed)
        self.step("checks-passed", "; ".join(f"{f.check}: {f.detail}" for f in findings))
        return ""

    def run(self) -> str:
        """Replace the engine; the URLs (…/v1) the gateways use for it afterwards, space-separated."""
        self.step("update-started", f"{', '.join(self.names)} on {' '.join(self.default)}")
        self.old_urls = self.runner.pin(self.models, self.default)
        if self.old_urls != self.default:
            self._switch(self.old_urls, "traffic-pinned")
            self.pinned_at = time.monotonic()
        try:
            self.new = new = self.runner.start(self.cat, self.models, self.old_urls, self.options)
        except ServiceError as err:
            raise self._fail(f"the new engine did not start: {err}", False) from None
        self.step("engine-started", new.describe())
        try:
            new.wait_healthy(self.options.ready_timeout_s)
        except ServiceError as err:
            raise self._fail(f"the new engine did not become healthy: {str(err).splitlines()[0]}", False) from None
        self.step("engine-healthy")
        problem = self._checks(new)
        if problem:
            raise self._fail(problem, False)
        switched_at = datetime.now(UTC)
        self._switch([new.url], "traffic-switched", standby=self.old_urls)
        for url in self.old_urls:
            drained = drain(self.runner.here(url), self.options.drain_s)
            self.step("old-drained" if drained else "old-drain-timeout", url)
        deadline = time.monotonic() + self.options.watch_s
        while time.monotonic() < deadline:
            if not new.alive():
                raise self._fail("the new engine died during the watch", True)
            rate, count = error_rate(self.store, self.names, switched_at)
            if rate > self.options.max_error_rate:
                raise self._fail(f"error rate {rate:.1%} of {count} requests over the watch", True)
            time.sleep(POLL_S)
        rate, count = error_rate(self.store, self.names, switched_at)
        self.step("watch-passed", f"{self.options.watch_s:.0f} s, {count} requests, error rate {rate:.1%}")
        self._switch([new.url], "standby-released")
        for url in self.old_urls:
            drain(self.runner.here(url), self.options.drain_s)
        self.runner.stop(self.old_urls)
        self.step("old-stopped", " ".join(self.old_urls))
        serving = " ".join(self._settle([new.url]))
        self.step("update-done", serving)
        return serving


def engine_of(cat: Catalogue, name: str) -> tuple[Model, ...]:
    """The models sharing the engine that serves ``name`` (as the native runner shares them)."""
    try:
        canonical = cat.get(name).name
    except KeyError:
        raise Refused(f"unknown model '{name}' (known: {', '.join(cat.names)})") from None
    return next(tuple(g) for g in engine_groups(cat.models) if canonical in {m.name for m in g})


def current_urls(store: ConfigStore, model: Model, template: str) -> list[str]:
    """The backends the gateways use for ``model`` now: the live override, else the catalogue port."""
    live = store.live()
    if live is not None and model.name in live.backends:
        return live.backends[model.name]
    return [template.format(name=model.name, port=model.port)]
