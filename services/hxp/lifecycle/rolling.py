"""Rolling engine replacement on the native stack: the new engine beside the old one, then the switch.

For an engine whose deployment changed (or whose weights were updated in place) :func:`replace`

1. starts the new engine on a free port, on the old one's cores, and waits until it is healthy;
2. sends it a canary request (chat: a question with a known answer; embeddings: one vector);
3. moves the gateways' traffic for its models to it (the live backends, which every worker reloads), the old
   engine on standby: a request the new one fails is answered by the old one;
4. waits until the old engine has no request left (bounded: ``drain_s``), keeping it running;
5. watches the new engine for ``watch_s``: it must stay alive and the error rate clients see (server errors in
   the usage log) stay at or under ``max_error_rate``;
6. releases the standby, drains the old engine again and stops it.

A failure before the switch stops the new engine; a failure during the watch moves the traffic back to the
old engine first. Every step is an event of ``hxp config history`` under the subject ``update <model>``.
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

import httpx
import psutil

from hxp.core.catalogue import Catalogue, Model
from hxp.core.paths import state_path
from hxp.gateway.usage.record import iso, status_name
from hxp.lifecycle.plan import Refused, check_memory, check_weights
from hxp.lifecycle.versions import POLL_S, ConfigStore
from hxp.model.command import engine_command, engine_groups
from hxp.model.service import READY_TIMEOUT_S, Engine
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
        say: Callable[[str], None] = print,
    ) -> None:
        self.store, self.cat, self.models, self.options, self.say = store, cat, models, options, say
        self.names = tuple(m.name for m in models)
        self.subject = f"update {self.names[0]}"
        self.old_urls = old_urls
        self.new: Engine | None = None

    def step(self, step: str, detail: str = "") -> None:
        self.store.log(self.subject, step, detail)
        self.say(f"[update {self.names[0]}] {step}{': ' + detail if detail else ''}")

    def _switch(self, urls: list[str], step: str, standby: list[str] | None = None) -> None:
        detail = " ".join(urls) + (f" (standby: {' '.join(standby)})" if standby else "")
        spare = dict.fromkeys(self.names, standby) if standby else None
        self.store.set_backends(dict.fromkeys(self.names, urls), self.subject, step, detail, spare)
        self.say(f"[update {self.names[0]}] {step}: {detail}")

    def _fail(self, reason: str, switched: bool) -> UpdateFailed:
        if switched:
            self._switch(self.old_urls, "traffic-back")
            drain(self.new.base_url if self.new else "", self.options.drain_s)
        if self.new is not None:
            self.new.stop(grace=STOP_GRACE_S)
        self.step("update-rolled-back", reason)
        return UpdateFailed(reason)

    def run(self) -> str:
        """Replace the engine; the new engine's base URL (…/v1) the gateways now use."""
        old = [listener(port_of(url)) for url in self.old_urls]
        self.step("update-started", f"{', '.join(self.names)} on {' '.join(self.old_urls)}")
        cpus = tuple(old[0].cpu_affinity()) if old[0] is not None and self.cat.profile_settings.device == "cpu" else ()
        command = engine_command(
            self.models,
            self.cat.profile_settings,
            port=free_port(),
            enforce_eager=self.options.enforce_eager,
            cpus=cpus,
        )
        self.new = Engine(command, state_path("logs") / f"engine-{command.log_name}-{command.port}.log").start()
        self.step("engine-started", f"{command.base_url} pid {self.new.pid} (log: {self.new.log})")
        try:
            self.new.wait_healthy(self.options.ready_timeout_s)
        except ServiceError as err:
            raise self._fail(f"the new engine did not become healthy: {str(err).splitlines()[0]}", False) from None
        self.step("engine-healthy")
        problem = canary(command.base_url, self.models[0], self.options)
        if problem:
            raise self._fail(problem, False)
        self.step("canary-passed", self.options.canary_expect if self.models[0].task == "chat" else "embedding")
        new_url = f"{command.base_url}/v1"
        switched_at = datetime.now(UTC)
        self._switch([new_url], "traffic-switched", standby=self.old_urls)
        for url in self.old_urls:
            drained = drain(url.removesuffix("/v1"), self.options.drain_s)
            self.step("old-drained" if drained else "old-drain-timeout", url)
        deadline = time.monotonic() + self.options.watch_s
        while time.monotonic() < deadline:
            if not self.new.alive():
                raise self._fail("the new engine died during the watch", True)
            rate, count = error_rate(self.store, self.names, switched_at)
            if rate > self.options.max_error_rate:
                raise self._fail(f"error rate {rate:.1%} of {count} requests over the watch", True)
            time.sleep(POLL_S)
        rate, count = error_rate(self.store, self.names, switched_at)
        self.step("watch-passed", f"{self.options.watch_s:.0f} s, {count} requests, error rate {rate:.1%}")
        self._switch([new_url], "standby-released")
        for url in self.old_urls:
            drain(url.removesuffix("/v1"), self.options.drain_s)
        for process in old:
            if process is not None:
                stop_group(process.pid)
        self.step("old-stopped", " ".join(self.old_urls))
        self.step("update-done", new_url)
        return new_url


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


def check_update(models: tuple[Model, ...], old_urls: list[str]) -> None:
    """Refuse before anything starts: missing weights, no engine to replace, too little memory."""
    for model in models:
        check_weights(model)
    missing = [url for url in old_urls if listener(port_of(url)) is None]
    if missing:
        raise Refused(f"no native engine listens at {' '.join(missing)}; start the stack (`hxp run`) first")
    check_memory(models, side_by_side=True)
