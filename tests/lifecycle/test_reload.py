"""Live reload: `hxp config apply` changes a limit, an alias and a fallback in every worker of two gateway
replicas (two workers each, one shared database) without a restart: the process ids stay the same."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from hxp.core.catalogue import DEFAULT_PATH
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway, GatewayFactory
from tests.support.servers import free_port

RELOAD_BOUND_S = 30.0  # bounds a wait for the reload, not asserted
START_BOUND_S = 600.0  # four workers starting at once on a small shared machine
APPLIED = re.compile(r"configuration v(\d+) \(generation \d+\) applied in worker (\d+)")


def hxp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hxp.cli", *args], env=env, capture_output=True, text=True, timeout=120
    )


def workers_at(gateway: Gateway, version: int) -> set[int]:
    """The worker pids that logged applying ``version``."""
    return {int(pid) for v, pid in APPLIED.findall(gateway.log) if int(v) == version}


def wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + RELOAD_BOUND_S
    while not condition():
        assert time.monotonic() < deadline, "not reloaded"
        time.sleep(0.2)


def chat(gateway: Gateway, model: str) -> int:
    """One chat request on a fresh connection (so the requests spread over the workers); its status."""
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    return httpx.post(
        f"{gateway.base_url}/chat/completions", json=body, headers=gateway.headers(), timeout=60
    ).status_code


def burst(gateway: Gateway, model: str, n: int) -> list[int]:
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: chat(gateway, model), range(n)))


@pytest.fixture
def slow_upstream() -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(delay=1.0).start()
    yield upstream
    upstream.stop()


def test_limit_alias_and_fallback_reload_in_every_worker(
    tmp_path: Path, slow_upstream: FakeUpstream, gateway_factory: GatewayFactory
) -> None:
    file = tmp_path / "models.yaml"
    file.write_bytes(DEFAULT_PATH.read_bytes())
    db = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    env = {
        **os.environ,
        "DATABASE_URL": db,
        "HXP_CATALOGUE": str(file),
        "HXP_STATE_DIR": str(tmp_path),
        "HXP_PROFILE": "cpu",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    first = hxp(env, "config", "apply")
    assert first.returncode == 0, first.stderr
    dead = f"http://127.0.0.1:{free_port()}/v1"
    backends = {name: [slow_upstream.url] for name in ("mixtral-8x7b", "openchat-3.5", "phi-3-mini")}
    backends.update({"hermes-2": [dead], "all-minilm-l6-v2": [slow_upstream.url]})
    gw_env = {"DATABASE_URL": db, "HXP_CATALOGUE": str(file), "HXP_PROFILE": "cpu"}
    replicas = [gateway_factory(backends, gw_env, workers=2, wait=False) for _ in range(2)]
    for gateway in replicas:
        gateway.wait_ready(START_BOUND_S)
        wait_for(lambda g=gateway: len(workers_at(g, 1)) == 2)  # type: ignore[misc]
    pids = {g.pid: workers_at(g, 1) for g in replicas}
    for gateway in replicas:
        assert chat(gateway, "gpt-4o-mini") == 404  # no such alias yet
        assert chat(gateway, "hermes-2") >= 500  # its engine is away, no fallback yet
        assert 429 not in burst(gateway, "phi-3-mini", 6)  # 150 concurrent requests allowed

    text = file.read_text()
    text = text.replace(
        "api: {timeout_s: 300, max_concurrent_requests: 100, retries: 1}",
        "api: {timeout_s: 300, max_concurrent_requests: 100, retries: 1, aliases: [gpt-4o-mini]}",
    )
    text = text.replace(
        "api: {timeout_s: 200, max_concurrent_requests: 80, retries: 1}",
        "api: {timeout_s: 200, max_concurrent_requests: 80, retries: 1, fallbacks: [openchat-3.5]}",
    )
    text = text.replace(
        "api: {timeout_s: 60, max_concurrent_requests: 150, retries: 1}",
        "api: {timeout_s: 60, max_concurrent_requests: 1, retries: 1}",
    )
    file.write_text(text)
    applied = hxp(env, "config", "apply")
    assert applied.returncode == 0, applied.stderr
    for change in (
        "mixtral-8x7b: api.aliases [] -> ['gpt-4o-mini']",
        "hermes-2: api.fallbacks [] -> ['openchat-3.5']",
        "phi-3-mini: api.max_concurrent_requests 150 -> 1",
    ):
        assert change in applied.stdout

    for gateway in replicas:
        wait_for(lambda g=gateway: workers_at(g, 2) == pids[g.pid])  # type: ignore[misc]
    for gateway in replicas:
        assert {chat(gateway, "gpt-4o-mini") for _ in range(6)} == {200}
        assert {chat(gateway, "hermes-2") for _ in range(6)} == {200}  # answered by the fallback
        assert 429 in burst(gateway, "phi-3-mini", 6)  # 6 at once over 2 workers: one has 2 or more
    assert {g.pid: workers_at(g, 2) for g in replicas} == pids  # same gateways, same workers: no restart
    history = hxp(env, "config", "history")
    assert re.search(r"^v2 .* apply$", history.stdout, re.M) and re.search(r"^v1 .* apply$", history.stdout, re.M)
