"""The CPU development stack under a real Docker Engine: `make compose-test` (also part of `make test`).

compose.yaml + compose.dev.yaml (the default layout: one shared chat engine, one embedding engine)
+ tests/deploy/compose.test.yaml, with the project's own images built from their Dockerfiles and
local stand-ins for the official images (no registry is reachable here). No Qdrant or Grafana
server exists on these machines: the override leaves both out and the gateway keeps its vectors
in Qdrant's local mode; everything else runs as a user runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg
import pytest
import yaml

from hxp.cli import main
from hxp.core.paths import PROJECT_ROOT, state_path
from hxp.deploy import backup, running
from hxp.lifecycle import plan as planning
from tests.support import docker
from tests.support.compose_stack import Stack
from tests.support.load import SteadyLoad
from tests.support.servers import Where

pytestmark = pytest.mark.timeout(3600)  # the first test also waits for the images to build (cold: minutes)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CHAT_MODEL = "phi-3-mini"
EMBEDDING_MODEL = "all-minilm-l6-v2"
HEALTHY_TIMEOUT_S = 300
SCRAPE_TIMEOUT_S = 180
UPDATE_STEPS = [  # a successful compose update, in order (hxp.lifecycle.rolling)
    "update-started",
    "traffic-pinned",
    "engine-started",
    "engine-healthy",
    "canary-passed",
    "checks-passed",
    "traffic-switched",
    "old-drained",
    "watch-passed",
    "standby-released",
    "old-stopped",
    "traffic-settled",
    "update-done",
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    engine = docker.engine()
    try:
        assert docker.compose_version() >= docker.MIN_COMPOSE
        project = f"hxp-compose-test-{time.strftime('%H%M%S')}"
        stack = Stack.create(project, tmp_path_factory.mktemp("compose-stack"))
        with pytest.MonkeyPatch.context() as patch:
            for name, value in stack.env.items():  # hxp.deploy.running and make inherit the stack's selection
                patch.setenv(name, value)
            try:
                stack.build()
                stack.up()
                report(stack)
                yield stack
            finally:
                stack.down()
    finally:
        engine.close()


def report(stack: Stack) -> None:
    """Build and start times, image sizes and the services' memory, in the test log (README: the compose test)."""
    images = docker.docker("images", "--format", "{{.Repository}}:{{.Tag}} {{.Size}}").stdout.splitlines()
    containers = stack.compose("ps", "-q").stdout.split()
    memory = docker.docker("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *containers).stdout
    lines = [f"{step}: {seconds:.0f} s" for step, seconds in stack.timings.items()]
    lines += [line for line in images if line.startswith(("hxp-test/", "hxp-standin/"))]
    lines += memory.splitlines()
    (state_path("logs", "tests") / "compose-stack.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def gateway(stack: Stack) -> str:
    return f"http://{running.address('gateway', 8000)}"


def create_key(stack: Stack, alias: str, *options: str) -> str:
    """A key made the documented way: `make keys-create STACK=compose` (hxp keys inside the gateway container)."""
    out = stack.make("keys-create", "STACK=compose", f"ALIAS={alias}", f"KEY_ARGS={' '.join(options)}")
    return json.loads(out[out.index("{") :])["key"]


def database() -> psycopg.Connection:
    """The compose PostgreSQL, reached as `make backup STACK=compose` reaches it."""
    return psycopg.connect(backup.Stores.from_compose().database_url, autocommit=True)


def wait_healthy(stack: Stack, service: str, timeout: float = HEALTHY_TIMEOUT_S) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        state = json.loads(docker.docker("inspect", stack.container(service)).stdout)[0]
        if state["State"].get("Health", {}).get("Status") == "healthy":
            return state
        assert time.monotonic() < deadline, f"{service} not healthy after {timeout} s: {state['State']}"
        time.sleep(2)


def chat(url: str, key: str, **extra) -> httpx.Response:
    body = {"model": CHAT_MODEL, "messages": QUESTION, "max_tokens": 24, "temperature": 0, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=300)


def embed(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/v1/embeddings",
        json={"model": EMBEDDING_MODEL, "input": ["Paris is in France."]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )


def vllm_successes(service: str) -> float:
    """vLLM's own count of finished requests, from the engine container's /metrics."""
    text = httpx.get(f"http://{running.address(service, 8000)}/metrics", timeout=10).text
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith("vllm:request_success_total{")
    )


def usage_rows(ids: list[str], timeout: float = 60) -> dict[str, tuple]:
    """The llm_model_requests rows of these request ids, waiting for the gateway's batched writer."""
    deadline = time.monotonic() + timeout
    with database() as conn:
        while True:
            rows = conn.execute(
                "SELECT request_id::text, model_name, user_id, status, prompt_tokens, stream "
                "FROM llm_model_requests WHERE request_id = ANY(%s::uuid[])",
                (ids,),
            ).fetchall()
            found = {row[0]: row[1:] for row in rows}
            if len(found) == len(set(ids)) or time.monotonic() > deadline:
                return found
            time.sleep(1)


# --- the tests, in the order a user meets the stack ------------------------------------------------


def test_every_service_is_healthy_and_the_engines_have_their_own_cpus(stack: Stack) -> None:
    expected = set(running.services())
    assert {
        "chat-engine",
        EMBEDDING_MODEL,
        "gateway",
        "postgres",
        "redis",
        "prometheus",
        "alertmanager",
        "node-exporter",
        "postgres-exporter",
        "redis-exporter",
        "locust",
    } == expected
    states = [json.loads(line) for line in stack.compose("ps", "--format", "json").stdout.splitlines()]
    assert {s["Service"]: s["Health"] for s in states} == dict.fromkeys(expected, "healthy")
    inspect = {
        name: json.loads(docker.docker("inspect", stack.container(name)).stdout)[0]
        for name in ("chat-engine", EMBEDDING_MODEL)
    }
    chat_cpus, embedding_cpus = (set(inspect[n]["HostConfig"]["CpusetCpus"].split(",")) for n in inspect)
    assert chat_cpus and embedding_cpus and not chat_cpus & embedding_cpus
    assert {i["Config"]["Image"] for i in inspect.values()} == {"hxp-test/model:0.1.0"}


def test_a_key_made_with_make_gets_paris_from_vllm_in_the_model_container(stack: Stack) -> None:
    url, key = gateway(stack), create_key(stack, "compose-user")
    before = vllm_successes("chat-engine")
    answer = chat(url, key)
    assert answer.status_code == 200, answer.text
    assert "Paris" in answer.json()["choices"][0]["message"]["content"]
    assert answer.json()["system_fingerprint"].startswith("vllm-")
    with httpx.stream(
        "POST",
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": CHAT_MODEL, "messages": QUESTION, "max_tokens": 24, "temperature": 0, "stream": True},
        timeout=300,
    ) as streamed:
        assert streamed.status_code == 200
        events = [line[6:] for line in streamed.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and len(events) > 3
    text = "".join(
        json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1] if json.loads(e)["choices"]
    )
    assert "Paris" in text
    assert vllm_successes("chat-engine") >= before + 2, "the chat-engine container's vLLM did not answer them"
    vectors = embed(url, key)
    assert vectors.status_code == 200, vectors.text
    assert len(vectors.json()["data"][0]["embedding"]) == 384


def test_the_usage_row_is_in_the_compose_postgres(stack: Stack) -> None:
    url, key = gateway(stack), create_key(stack, "compose-usage")
    answer = chat(url, key)
    assert answer.status_code == 200
    call_id = answer.headers["x-request-id"]
    rows = usage_rows([call_id])
    assert rows.get(call_id) is not None, "no usage row for the answered request"
    model, user, status, prompt_tokens, stream = rows[call_id]
    assert (model, user, status, stream) == (CHAT_MODEL, "compose-usage", "success", False)
    assert prompt_tokens == answer.json()["usage"]["prompt_tokens"]


def test_a_key_with_rpm_2_gets_429_on_its_third_request(stack: Stack) -> None:
    url, key = gateway(stack), create_key(stack, "compose-rpm", "--rpm", "2")
    statuses = [embed(url, key).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_the_dev_prometheus_scrapes_every_target_and_loads_the_rules(stack: Stack) -> None:
    prometheus = f"http://{running.address('prometheus', 9090)}"
    configured = yaml.safe_load((PROJECT_ROOT / "prometheus" / "prometheus.yml").read_text())
    expected = {
        (job["job_name"], target)
        for job in configured["scrape_configs"]
        for group in job["static_configs"]
        for target in group["targets"]
    }
    deadline = time.monotonic() + SCRAPE_TIMEOUT_S
    while True:
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        health = {(t["labels"]["job"], t["labels"]["instance"]): (t["health"], t["lastError"]) for t in targets}
        if set(health) == expected and all(h == "up" for h, _ in health.values()):
            break
        assert time.monotonic() < deadline, f"targets not all up: {health}"
        time.sleep(5)
    files = sorted((PROJECT_ROOT / "prometheus" / "rules").glob("*.yml"))
    wanted = {g["name"]: len(g["rules"]) for f in files for g in yaml.safe_load(f.read_text())["groups"]}
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    assert {g["name"]: len(g["rules"]) for g in groups} == wanted


@dataclass
class Call:
    kind: str
    started: float
    ended: float | None = None
    status: int | None = None
    call_id: str | None = None


def test_sigterm_to_the_gateway_loses_no_answered_request_and_it_comes_back(stack: Stack) -> None:
    url, key = gateway(stack), create_key(stack, "compose-sigterm")
    calls: list[Call] = []
    stop = threading.Event()

    def client(kind: str) -> None:
        while not stop.is_set():
            call = Call(kind, time.monotonic())
            calls.append(call)
            try:
                answer = chat(url, key, max_tokens=48) if kind == "chat" else embed(url, key)
                call.status, call.call_id = answer.status_code, answer.headers.get("x-request-id")
            except httpx.TransportError:
                time.sleep(0.2)  # the gateway is down: not answered
            call.ended = time.monotonic()

    threads = [threading.Thread(target=client, args=(kind,)) for kind in ("chat", "chat", "embedding", "embedding")]
    for thread in threads:
        thread.start()
    try:
        while sum(c.status is not None for c in calls) < 4:
            time.sleep(0.2)
        killed_at = time.monotonic()
        stack.compose("kill", "-s", "SIGTERM", "gateway")
        time.sleep(5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=330)
    answered = [c for c in calls if c.status is not None]
    drained = [c for c in answered if c.started < killed_at < c.ended]  # type: ignore[operator]
    assert drained, "no request was in flight when the gateway got SIGTERM"
    assert all(c.call_id for c in answered)
    rows = usage_rows([c.call_id for c in answered])  # type: ignore[misc]
    lost = [c for c in answered if c.call_id not in rows]
    assert not lost, f"{len(lost)} of {len(answered)} answered requests have no usage row: {lost}"
    state = wait_healthy(stack, "gateway")
    assert state["RestartCount"] >= 1, "the gateway did not come back by its restart policy"
    assert embed(gateway(stack), key).status_code == 200


def test_backup_delete_a_key_restore_brings_it_back(stack: Stack) -> None:
    url, key = gateway(stack), create_key(stack, "compose-restored")
    assert embed(url, key).status_code == 200
    folder = Path(stack.make("backup", "STACK=compose").strip().splitlines()[-1])
    try:
        assert json.loads((folder / "manifest.json").read_text())["database"]["dialect"] == "postgresql"
        with database() as conn:
            assert conn.execute("DELETE FROM api_keys WHERE alias = 'compose-restored'").rowcount == 1
        assert "compose-restored" not in stack.make("keys-list", "STACK=compose")
        stack.compose("stop", "gateway")
        stack.make("restore", "STACK=compose", f"BACKUP={folder}")
        stack.compose("start", "gateway")
        wait_healthy(stack, "gateway")
        assert "compose-restored" in stack.make("keys-list", "STACK=compose")
        assert embed(gateway(stack), key).status_code == 200
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def update_steps() -> list[list[str]]:
    """Each engine update's steps, oldest first (config_events of the compose database)."""
    with database() as conn:
        rows = conn.execute("SELECT step FROM config_events WHERE subject LIKE 'update %' ORDER BY id").fetchall()
    updates: list[list[str]] = []
    for (step,) in rows:
        if step == "update-started":
            updates.append([])
        updates[-1].append(step)
    return updates


def rolling_report(stack: Stack, failed: list) -> str:
    """The failed requests (wall-clock time sent, status, error) beside the updates' steps and the gateway's log
    tail, written to the test log folder; its path."""
    offset = time.time() - time.monotonic()
    with database() as conn:
        steps = conn.execute("SELECT at, step, detail FROM config_events ORDER BY id").fetchall()
    lines = [
        f"{time.strftime('%H:%M:%S', time.gmtime(o.sent_at + offset))} +{o.latency_s:.1f}s {o.status} {o.error}"
        for o in failed
    ]
    lines += [f"{at:%H:%M:%S} {step} {detail}" for at, step, detail in steps]
    lines += stack.compose("logs", "--no-color", "--tail", "200", "gateway").stdout.splitlines()
    path = state_path("logs", "tests") / "compose-rolling-failures.txt"
    path.write_text("\n".join(lines) + "\n")
    return f"{len(failed)} failed requests: {path}"


def compose_override(tmp_path: Path, name: str, chat_engine: str) -> str:
    """COMPOSE_FILE with one more override file giving the chat-engine service ``chat_engine`` (YAML)."""
    extra = tmp_path / f"{name}.yaml"
    extra.write_text(f"services:\n  chat-engine:\n{chat_engine}")
    return os.pathsep.join([os.environ["COMPOSE_FILE"], str(extra)])


def test_compose_refuses_an_update_it_cannot_make_before_touching_anything(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    container = stack.container("chat-engine")
    refusals = {
        "unknown model 'no-such-model'": (["no-such-model"], None, None),
        "hxp-test/missing:0 of service chat-engine is missing": (
            [CHAT_MODEL],
            compose_override(tmp_path, "image", "    image: hxp-test/missing:0\n"),
            None,
        ),
        "publishes host port 11999": (
            [CHAT_MODEL],
            compose_override(tmp_path, "port", '    ports: !override ["127.0.0.1:11999:8000"]\n'),
            None,
        ),
        "needs about 6.0 GiB beside the engine it replaces, 1.0 GiB is available": ([CHAT_MODEL], None, 1.0),
    }
    for says, (args, files, memory) in refusals.items():
        with monkeypatch.context() as patch:
            if files:
                patch.setenv("COMPOSE_FILE", files)
            if memory:
                patch.setattr(planning, "available_memory_gib", lambda memory=memory: memory)
            assert main(["model", "update", *args, "--compose"]) == 2
        assert says in capsys.readouterr().err
    assert update_steps() == []
    assert running.containers("chat-engine") == [container]


def test_a_rolling_update_of_an_engine_container_under_traffic_and_one_that_rolls_back(
    stack: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    """hxp model update --compose: a second chat-engine container, checked, given the traffic, the first one
    stopped; then an update whose canary expects what the model cannot say rolls back. A client sends chat
    requests throughout (every other one streamed): none fails, each answered one has its usage row."""
    url, key = gateway(stack), create_key(stack, "compose-rolling")
    old = stack.container("chat-engine")
    load = SteadyLoad(Where(), f"{url}/v1", key, CHAT_MODEL, threads=1, gap_s=0.2, max_s=1800, streamed=True)
    load.start()
    try:
        while load.answered() < 2:
            time.sleep(0.5)
        assert main(["model", "update", CHAT_MODEL, "--compose", "--watch", "20"]) == 0
        new = stack.container("chat-engine")
        assert new and new != old and running.containers("chat-engine") == [new]
        stack.compose("up", "--detach")  # compose.yaml's own state: neither undone nor redone
        assert stack.container("chat-engine") == new
        assert "update-done" in capsys.readouterr().out
        assert main(["model", "update", CHAT_MODEL, "--compose", "--canary-expect", "no model says this"]) == 1
        assert "lacks 'no model says this'" in capsys.readouterr().err
        assert running.containers("chat-engine") == [new]  # the second container is gone, the first serves
        answered = load.answered()
        while load.answered() < answered + 2:
            time.sleep(0.5)
    finally:
        outcomes = load.stop()
    failed = [o for o in outcomes if not o.ok]
    assert failed == [], rolling_report(stack, failed)
    rows = usage_rows([o.request_id for o in outcomes if o.request_id])
    assert len(rows) == len(outcomes) > 0
    assert sum(row[4] for row in rows.values()) >= len(outcomes) // 2  # the streamed half
    done, rolled_back = update_steps()
    assert done == UPDATE_STEPS
    assert rolled_back == [
        "update-started",
        "traffic-pinned",
        "engine-started",
        "engine-healthy",
        "traffic-settled",
        "update-rolled-back",
    ]
    with database() as conn:
        live = json.loads(conn.execute("SELECT backends FROM config_live").fetchone()[0])
    assert live[CHAT_MODEL] == [f"http://{CHAT_MODEL}:8000/v1"]  # the service's name again, as compose.yaml has it
    assert main(["config", "history", "--steps", "--compose"]) == 0
    assert "update-rolled-back" in capsys.readouterr().out


def test_config_apply_on_compose_plans_a_replacement_and_refuses_a_removed_engine_service(
    stack: Stack, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`hxp config apply --compose` of the stack's own catalogue records it and changes nothing; then dry runs: new
    vLLM settings for the shared chat engine pass the compose checks, an engine service removed is refused."""
    compose_files = {f: f.read_bytes() for f in PROJECT_ROOT.glob("compose*.yaml")}
    assert main(["config", "apply", "--compose", "--catalogue", str(PROJECT_ROOT / "models.yaml")]) == 0
    assert "compose files regenerated: none changed" in capsys.readouterr().out
    raw = yaml.safe_load((PROJECT_ROOT / "models.yaml").read_text())
    for model in raw["models"]:
        if model["task"] == "chat":
            model["profiles"]["cpu"]["vllm"]["max_num_seqs"] = 8
    file = tmp_path / "models.yaml"
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["config", "apply", "--compose", "--catalogue", str(file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "replace  hermes-2, mixtral-8x7b, openchat-3.5, phi-3-mini" in out and "dry run: nothing changed" in out
    raw["models"] = [m for m in raw["models"] if m["task"] == "chat"]
    file.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["config", "apply", "--compose", "--catalogue", str(file), "--dry-run"]) == 2
    assert "stop all-minilm-l6-v2: under compose an engine service is added or removed" in capsys.readouterr().err
    assert {f: f.read_bytes() for f in compose_files} == compose_files


def test_down_with_volumes_leaves_nothing_of_the_project(stack: Stack) -> None:
    stack.compose("down", "--volumes", "--remove-orphans")
    label = f"label=com.docker.compose.project={stack.project}"
    for kind in ("container", "volume", "network"):
        left = docker.docker(
            kind, "ls", *(["--all"] if kind == "container" else []), "--quiet", "--filter", label
        ).stdout.split()
        assert left == [], f"{kind}s left behind: {left}"
