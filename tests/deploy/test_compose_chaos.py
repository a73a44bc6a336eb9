"""Components of the Compose stack killed under load: `make compose-test` (also part of `make test`).

The stack of test_compose_stack.py (the images, built once, are shared) with two gateway replicas and a
Prometheus that scrapes and evaluates every 2 s (tests/deploy/compose.chaos.yaml). A bounded load runs
through both replicas the whole time: chat and embedding clients, each request sent to the replicas in
turn. A client does what the API documents: a 503 with ``Retry-After`` is retried after that delay, a
connection the gateway dropped is retried on the other replica; anything else is an undocumented answer.

In turn the chat engine, PostgreSQL, Redis and one gateway replica get SIGKILL on their main process,
as the kernel's OOM killer or a crash would do it: ``docker compose kill`` is not used because Docker
then counts the container as stopped by its operator and never restarts it, whatever its restart
policy (checked on Docker 20.10, for ``always`` and ``unless-stopped``). For each fault the test
checks that clients saw only documented answers and that every request was answered in the end, that
Docker brought the container back (its restart count), that the stack served every request again
within the fault's stated bound, and that the alert of the fault (prometheus/rules/restart_alerts.yml)
reached Alertmanager (its API) and resolved. At the end every answered request has its usage row, also
those a killed gateway replica answered just before the kill: their rows were in its journal (the
replicas share the state volume, so the other replica replays it). No Qdrant server exists on these
machines (docs/reliability.md): the gateway keeps its vectors in Qdrant's local mode, inside the
gateway, so a Qdrant kill is not part of this test.

Timings and outcomes go to .state/logs/tests/compose-chaos.json (docs/reliability.md has the last run).
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from hxp.core.paths import PROJECT_ROOT, state_path
from hxp.deploy import backup
from tests.support import docker
from tests.support.compose_stack import TESTS, Stack

pytestmark = pytest.mark.timeout(3600)  # the images may have to be built first (cold: minutes)

CHAOS_FILE = TESTS / "compose.chaos.yaml"
RULES = PROJECT_ROOT / "prometheus" / "rules"
RESTART_RULES = "restart_alerts.yml"
RESTART_WINDOW = ("[10m]", "[1m]")  # the restart rules' look-back, shortened for the test's Prometheus
FAST_INTERVAL = "2s"  # scrape and rule evaluation in the test's Prometheus
REPLICAS = 2
CHAT_MODEL = "phi-3-mini"
EMBEDDING_MODEL = "all-minilm-l6-v2"
QUESTION = [{"role": "user", "content": "Name a French city."}]
ATTEMPT_TIMEOUT_S = 120.0
REQUEST_DEADLINE_S = 600.0  # a client gives a request up after this long (an engine restart is minutes on CPU)
RETRY_AFTER_CAP_S = 5.0
ALERT_TIMEOUT_S = 120.0  # from the component's return to its alert in Alertmanager
RESOLVE_TIMEOUT_S = 180.0  # from the alert to its resolution (the shortened window, 1 minute, and then some)
QUIET_TIMEOUT_S = 300.0
SETTLE_S = 10.0  # load kept running after a component is back, before its outcomes are judged


@dataclass(frozen=True)
class Fault:
    service: str
    alert: str  # the restart alert that must reach Alertmanager
    job: str  # its job label
    recovery_s: float  # the stated bound: from the kill to the last request that was not answered at once
    replica: int = 1


FAULTS = [
    Fault("chat-engine", "LLMServiceRestarted", "llm-server-models", 420.0),
    Fault("postgres", "PostgreSQLRestarted", "postgres", 60.0),
    Fault("redis", "RedisRestarted", "redis", 60.0),
    Fault("gateway", "LLMServiceRestarted", "llm-gateway", 120.0, replica=1),
]


@dataclass
class Attempt:
    request: int
    kind: str
    replica: int
    started: float
    ended: float = 0.0
    status: int | None = None  # None: no HTTP answer (connection refused or dropped)
    retry_after: str | None = None
    call_id: str | None = None
    error: str = ""
    code: str = ""  # the error's code (OpenAI's shape), when it has one

    @property
    def documented(self) -> bool:
        """200, or 503 with Retry-After; a dropped connection is judged by the fault (gateway kills only)."""
        return self.status == 200 or (self.status == 503 and self.retry_after is not None)


@dataclass
class Outcome:
    fault: str
    killed_at: float
    restarts: int = 0
    back_healthy_s: float | None = None
    recovered_s: float = 0.0
    attempts: int = 0
    answered: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    retried_requests: int = 0
    attempts_while_down: int = 0  # of the fault's kind (chat for the engine), started before it was back
    alert_fired_s: float | None = None
    alert_resolved_s: float | None = None


# --- the stack -------------------------------------------------------------------------------------


def prometheus_folder(folder: Path, project: str) -> Path:
    """prometheus/prometheus.yml scraping and evaluating every FAST_INTERVAL, one target per gateway replica;
    the rules, the restart rules' window shortened."""
    config = yaml.safe_load((PROJECT_ROOT / "prometheus" / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=FAST_INTERVAL, evaluation_interval=FAST_INTERVAL)
    for job in config["scrape_configs"]:
        job.pop("scrape_interval", None)
        if job["job_name"] == "llm-gateway":  # the service name would reach one replica or the other
            job["static_configs"] = [
                {"targets": [f"{project}-gateway-{i}:8000" for i in range(1, REPLICAS + 1)]},
            ]
    (folder / "rules").mkdir(parents=True)
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    for rules in RULES.glob("*.yml"):
        text = rules.read_text()
        if rules.name == RESTART_RULES:
            assert RESTART_WINDOW[0] in text
            text = text.replace(*RESTART_WINDOW)
        (folder / "rules" / rules.name).write_text(text)
    for path in [folder, *folder.rglob("*")]:  # Prometheus runs as nobody
        path.chmod(0o755 if path.is_dir() else 0o644)
    return folder


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    engine = docker.engine()
    try:
        project = f"hxp-compose-chaos-{time.strftime('%H%M%S')}"
        workdir = tmp_path_factory.mktemp("compose-chaos")
        stack = Stack.create(project, workdir)
        stack.env["COMPOSE_FILE"] += os.pathsep + str(CHAOS_FILE)
        stack.env["HXP_CHAOS_PROMETHEUS_DIR"] = str(prometheus_folder(workdir / "prometheus", project))
        with pytest.MonkeyPatch.context() as patch:
            for name, value in stack.env.items():
                patch.setenv(name, value)
            try:
                stack.build()
                stack.up()
                yield stack
            finally:
                stack.down()
    finally:
        engine.close()


def published(stack: Stack, service: str, port: int, index: int = 1) -> str:
    out = stack.compose("port", "--index", str(index), service, str(port)).stdout.strip().splitlines()[0]
    return f"http://127.0.0.1:{out.rpartition(':')[2]}"


def container(stack: Stack, service: str, index: int = 1) -> dict:
    name = f"{stack.project}-{service}-{index}"
    return json.loads(docker.docker("inspect", name).stdout)[0]


def crash(stack: Stack, service: str, index: int = 1) -> int:
    """SIGKILL to the container's main process (from the host, as a crash); its restart count before."""
    state = container(stack, service, index)
    os.kill(state["State"]["Pid"], signal.SIGKILL)
    return state["RestartCount"]


def wait_back(stack: Stack, service: str, index: int, restarts: int, since: float, timeout: float) -> float:
    """Seconds from ``since`` until Docker restarted the container and it is healthy."""
    deadline = since + timeout
    while True:
        state = container(stack, service, index)
        if state["RestartCount"] > restarts and state["State"].get("Health", {}).get("Status") == "healthy":
            return time.monotonic() - since
        assert time.monotonic() < deadline, f"{service}-{index} not back within {timeout} s: {state['State']}"
        time.sleep(1)


def create_key(stack: Stack, alias: str) -> str:
    out = stack.make("keys-create", "STACK=compose", f"ALIAS={alias}")
    return json.loads(out[out.index("{") :])["key"]


# --- the load --------------------------------------------------------------------------------------


class Load:
    """Client threads sending chat and embedding requests to the gateway replicas in turn, every attempt kept."""

    def __init__(self, urls: list[str], key: str, clients: tuple[str, ...] = ("chat", "chat", "embedding")) -> None:
        self.urls, self.key, self.clients = urls, key, clients
        self.attempts: list[Attempt] = []
        self.unanswered: list[int] = []  # requests given up at REQUEST_DEADLINE_S
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._next = 0
        self._threads = [threading.Thread(target=self._client, args=(kind,), daemon=True) for kind in clients]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=REQUEST_DEADLINE_S + ATTEMPT_TIMEOUT_S)

    def _number(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _send(self, client: httpx.Client, kind: str, attempt: Attempt) -> None:
        url = self.urls[attempt.replica]
        if kind == "chat":
            # temperature above 0: not answered from the response cache (it would hide the engine's absence)
            body = {"model": CHAT_MODEL, "messages": QUESTION, "max_tokens": 8, "temperature": 0.7}
            path = "/v1/chat/completions"
        else:
            body = {"model": EMBEDDING_MODEL, "input": ["Paris is in France."]}
            path = "/v1/embeddings"
        try:
            answer = client.post(f"{url}{path}", json=body, headers={"Authorization": f"Bearer {self.key}"})
            attempt.status, attempt.call_id = answer.status_code, answer.headers.get("x-request-id")
            attempt.retry_after = answer.headers.get("retry-after")
            if answer.status_code != 200:
                attempt.error = answer.text[:300]
                code = re.search(r'"code":\s*"([^"]+)"', answer.text)
                attempt.code = code.group(1) if code else ""
        except httpx.TransportError as exc:
            attempt.error = f"{type(exc).__name__}: {exc}"[:300]
        attempt.ended = time.monotonic()

    def _client(self, kind: str) -> None:
        replica = len(self.attempts) % len(self.urls)
        with httpx.Client(timeout=ATTEMPT_TIMEOUT_S) as client:
            while not self._stop.is_set():
                number, started = self._number(), time.monotonic()
                while True:
                    attempt = Attempt(number, kind, replica, time.monotonic())
                    self.attempts.append(attempt)
                    self._send(client, kind, attempt)
                    replica = (replica + 1) % len(self.urls)
                    if attempt.status == 200:
                        break
                    if time.monotonic() - started > REQUEST_DEADLINE_S:
                        self.unanswered.append(number)
                        break
                    if attempt.status == 503 and attempt.retry_after:
                        time.sleep(min(float(attempt.retry_after), RETRY_AFTER_CAP_S))
                    elif attempt.status is None:
                        time.sleep(0.2)
                    else:
                        time.sleep(1.0)  # undocumented: kept, judged later
                time.sleep(0.2 if kind == "embedding" else 0.0)

    def wait_answered(self, count: int, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while sum(a.status == 200 for a in self.attempts) < count:
            assert time.monotonic() < deadline, f"fewer than {count} answers in {timeout} s: {self.attempts[-5:]}"
            time.sleep(0.5)


# --- the alerts ------------------------------------------------------------------------------------


class AlertWatch:
    """Polls Alertmanager's API every second: when each (alertname, job) was active."""

    def __init__(self, alertmanager: str) -> None:
        self.url = f"{alertmanager}/api/v2/alerts"
        self.samples: list[tuple[float, set[tuple[str, str]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> AlertWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _poll(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                try:
                    alerts = client.get(self.url, params={"active": "true", "silenced": "false"}).json()
                    active = {
                        (a["labels"]["alertname"], a["labels"].get("job", ""))
                        for a in alerts
                        if a["status"]["state"] == "active"
                    }
                    self.samples.append((time.monotonic(), active))
                except (httpx.HTTPError, ValueError):
                    pass
                time.sleep(1)

    def fired_after(self, alert: tuple[str, str], since: float) -> float | None:
        return next((t for t, active in self.samples if t >= since and alert in active), None)

    def resolved_after(self, alert: tuple[str, str], since: float) -> float | None:
        return next((t for t, active in self.samples if t > since and alert not in active), None)

    def wait(self, what: str, timeout: float, found: Callable[[], float | None]) -> float:
        deadline = time.monotonic() + timeout
        while (value := found()) is None:
            assert time.monotonic() < deadline, f"{what} within {timeout} s; Alertmanager saw {self.samples[-3:]}"
            time.sleep(1)
        return value


# --- the checks ------------------------------------------------------------------------------------


def judge(fault: Fault, load: Load, killed_at: float, back_at: float, until: float) -> tuple[Outcome, list[str]]:
    """The fault's outcome from the attempts started between the kill and ``until``; what was wrong."""
    window = [a for a in load.attempts if killed_at <= a.started < until and a.ended]
    in_flight = [a for a in load.attempts if a.started < killed_at < a.ended]
    problems = []
    for a in window + in_flight:
        dropped_here = fault.service == "gateway" and a.replica == fault.replica - 1
        if a.status is None and not dropped_here:
            problems.append(f"no answer from a gateway that was not killed: {a}")
        elif a.status is not None and not a.documented:
            problems.append(f"undocumented answer: {a}")
    failed = [a for a in window + in_flight if a.status != 200]
    requests = {a.request for a in window + in_flight}
    outcome = Outcome(
        fault.service,
        killed_at,
        recovered_s=max((a.ended for a in failed), default=killed_at) - killed_at,
        attempts=len(window),
        answered=sum(a.status == 200 for a in window),
        retried_requests=len({a.request for a in failed}),
    )
    outcome.attempts_while_down = sum(
        a.started < back_at and (fault.service != "chat-engine" or a.kind == "chat") for a in window
    )
    if not outcome.attempts_while_down:
        problems.append("no request was sent while it was down: the fault was not exercised")
    for a in window:
        key = " ".join(filter(None, [str(a.status), a.code])) if a.status is not None else "dropped"
        outcome.statuses[key] = outcome.statuses.get(key, 0) + 1
    if set(load.unanswered) & requests:
        problems.append(f"requests given up after {REQUEST_DEADLINE_S} s: {sorted(set(load.unanswered) & requests)}")
    if outcome.recovered_s > fault.recovery_s:
        problems.append(f"served again after {outcome.recovered_s:.0f} s, over the stated {fault.recovery_s:.0f} s")
    return outcome, problems


def usage_rows(call_ids: list[str], timeout: float = 90.0) -> set[str]:
    """The request ids among ``call_ids`` that have their usage row (waiting for the spill to be replayed)."""
    database_url = backup.Stores.from_compose().database_url
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(database_url, autocommit=True) as conn:
            found = {
                row[0]
                for row in conn.execute(
                    "SELECT request_id::text FROM llm_model_requests WHERE request_id = ANY(%s::uuid[])", (call_ids,)
                )
            }
        if len(found) == len(set(call_ids)) or time.monotonic() > deadline:
            return found
        time.sleep(2)


def wait_quiet(watch: AlertWatch, alerts: set[tuple[str, str]]) -> None:
    """Until none of the restart alerts is active (the stack's own start can fire them)."""
    watch.wait(
        f"no restart alert active ({sorted(alerts)})",
        QUIET_TIMEOUT_S,
        lambda: watch.samples[-1][0] if watch.samples and not watch.samples[-1][1] & alerts else None,
    )


def test_components_killed_under_load_come_back_lose_nothing_and_alert(stack: Stack) -> None:
    urls = [published(stack, "gateway", 8000, i) for i in range(1, REPLICAS + 1)]
    alertmanager = published(stack, "alertmanager", 9093)
    key = create_key(stack, "compose-chaos")
    restart_alerts = {(f.alert, f.job) for f in FAULTS}
    outcomes: list[Outcome] = []
    problems: dict[str, list[str]] = {}
    with AlertWatch(alertmanager) as watch, Load(urls, key) as load:
        load.wait_answered(6)
        wait_quiet(watch, restart_alerts)
        for fault in FAULTS:
            killed_at = time.monotonic()
            restarts = crash(stack, fault.service, fault.replica)
            back_s = wait_back(stack, fault.service, fault.replica, restarts, killed_at, fault.recovery_s + 300)
            time.sleep(SETTLE_S)
            outcome, found = judge(fault, load, killed_at, killed_at + back_s, time.monotonic())
            outcome.restarts = container(stack, fault.service, fault.replica)["RestartCount"] - restarts
            outcome.back_healthy_s = back_s
            alert = (fault.alert, fault.job)
            fired = watch.wait(
                f"{fault.alert}{{job={fault.job}}} in Alertmanager after {fault.service} was killed",
                ALERT_TIMEOUT_S,
                lambda: watch.fired_after(alert, killed_at),  # noqa: B023 - called before the loop moves on
            )
            outcome.alert_fired_s = fired - killed_at
            outcomes.append(outcome)
            problems[fault.service] = found
            resolved = watch.wait(
                f"{fault.alert}{{job={fault.job}}} resolved",
                RESOLVE_TIMEOUT_S,
                lambda: watch.resolved_after(alert, fired),  # noqa: B023 - called before the loop moves on
            )
            outcome.alert_resolved_s = resolved - killed_at
            wait_quiet(watch, restart_alerts)  # every restart alert resolved before the next fault: each fires anew
    answered = [a for a in load.attempts if a.status == 200]
    rows = usage_rows([a.call_id for a in answered if a.call_id])
    lost = [a for a in answered if a.call_id not in rows]
    report = {
        "faults": [asdict(o) | {"problems": problems[o.fault]} for o in outcomes],
        "answered": len(answered),
        "usage_rows_missing": len(lost),
        "unanswered": load.unanswered,
        "stack_timings_s": {step: round(seconds) for step, seconds in stack.timings.items()},
    }
    (state_path("logs", "tests") / "compose-chaos.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    assert all(a.call_id for a in answered)
    assert {f: p for f, p in problems.items() if p} == {}
    assert all(o.restarts >= 1 for o in outcomes), "a component did not come back by its restart policy"
    assert lost == [], f"{len(lost)} answered requests have no usage row"
