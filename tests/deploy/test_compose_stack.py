"""The CPU development stack under a real Docker Engine: `make compose-test` (also part of `make test`).

compose.yaml + compose.dev.yaml (the default layout: one shared chat engine, one embedding engine)
+ tests/deploy/compose.test.yaml, with the project's own images built from their Dockerfiles and
local stand-ins for the official images (no registry is reachable here). No Qdrant or Grafana
server exists on these machines: the override leaves both out and the gateway keeps its vectors
in Qdrant's local mode; everything else runs as a user runs it.
"""

from __future__ import annotations

import json
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

from hxp.core.paths import PROJECT_ROOT, state_path
from hxp.deploy import backup, running
from tests.support import docker
from tests.support.compose_stack import Stack

pytestmark = pytest.mark.timeout(3600)  # the first test also waits for the images to build (cold: minutes)

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
CHAT_MODEL = "phi-3-mini"
EMBEDDING_MODEL = "all-minilm-l6-v2"
HEALTHY_TIMEOUT_S = 300
SCRAPE_TIMEOUT_S = 180


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


def test_down_with_volumes_leaves_nothing_of_the_project(stack: Stack) -> None:
    stack.compose("down", "--volumes", "--remove-orphans")
    label = f"label=com.docker.compose.project={stack.project}"
    for kind in ("container", "volume", "network"):
        left = docker.docker(
            kind, "ls", *(["--all"] if kind == "container" else []), "--quiet", "--filter", label
        ).stdout.split()
        assert left == [], f"{kind}s left behind: {left}"
