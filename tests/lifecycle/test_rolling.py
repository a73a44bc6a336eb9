"""Rolling engine replacement with real CPU engines under steady traffic through a real gateway.

One chat model (SmolLM2). `hxp model update` replaces its engine (health, canary, switch, drain, watch, stop the
old one); a second update's engine dies during the watch (killed between two requests): the old engine, on
standby, answers and the update rolls back; then `hxp config apply` of weights that fail the canary (the same
tensors under a broken config) rolls back by itself: the catalogue file is restored byte for byte. Throughout, a
bounded client sends chat requests, streamed and not: none fails, and the usage log holds one row per answered
request.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from hxp.core import catalogue
from hxp.core.database import Database
from hxp.lifecycle import rolling
from hxp.model import weights
from hxp.model.command import engine_command
from hxp.model.service import Engine
from tests.support.gateway import Gateway, GatewayFactory
from tests.support.servers import free_port

# three real engines started in turn: 13.5 min on a busy 2-core machine, past the suite's 900 s hang guard
pytestmark = [pytest.mark.engine, pytest.mark.long, pytest.mark.timeout(2400)]
MODEL = "phi-3-mini"
USAGE_BOUND_S = 60.0  # bounds the wait for the usage log's last batch


def one_model_catalogue(port: int) -> dict:
    """The repository's catalogue reduced to one chat model on ``port`` (cpu profile), plus the embedding model
    the vector collections name (on a free port, never started)."""
    raw = yaml.safe_load(catalogue.DEFAULT_PATH.read_text())
    kept = [m for m in raw["models"] if m["name"] in (MODEL, "all-minilm-l6-v2")]
    for entry in kept:
        entry.update(port=port if entry["name"] == MODEL else free_port(), profiles={"cpu": entry["profiles"]["cpu"]})
        entry["api"]["fallbacks"] = []
    return {"profiles": {"cpu": raw["profiles"]["cpu"]}, "packages": raw["packages"], "models": kept}


def broken_weights(folder: Path) -> Path:
    """The prepared SmolLM2 tensors and tokenizer under a config whose norm epsilon ruins every answer."""
    source = weights.package_dir("smollm2")
    folder.mkdir()
    for item in source.iterdir():
        if item.name != "config.json":
            (folder / item.name).symlink_to(item)
    config = json.loads((source / "config.json").read_text())
    config["rms_norm_eps"] = 100.0
    (folder / "config.json").write_text(json.dumps(config))
    return folder


class Traffic(threading.Thread):
    """One client sending chat requests back to back, streamed and not, until stopped; outcomes kept."""

    def __init__(self, gateway: Gateway) -> None:
        super().__init__(daemon=True)
        self.gateway = gateway
        self.stop = threading.Event()
        self.answered: list[str] = []  # x-request-id of each answered request
        self.failures: list[str] = []
        self.between = threading.Lock()  # held during each request: whoever takes it acts between two requests

    def one(self, client: httpx.Client, stream: bool) -> None:
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "Say hello."}],
            "max_tokens": 8,
            "stream": stream,
        }
        url = f"{self.gateway.base_url}/chat/completions"
        with client.stream("POST", url, json=body, headers=self.gateway.headers()) as response:
            text = response.read().decode()
            if response.status_code != 200 or (stream and "data: [DONE]" not in text):
                self.failures.append(f"{response.status_code} stream={stream}: {text[:300]}")
            else:
                self.answered.append(response.headers["x-request-id"])

    def run(self) -> None:
        with httpx.Client(timeout=300) as client:
            n = 0
            while not self.stop.is_set():
                with self.between:
                    try:
                        self.one(client, stream=n % 2 == 1)
                    except httpx.HTTPError as err:
                        self.failures.append(repr(err))
                n += 1


@pytest.fixture
def old_engine(tmp_path: Path) -> Iterator[tuple[Path, Engine]]:
    port = free_port()
    file = tmp_path / "models.yaml"
    file.write_text(yaml.safe_dump(one_model_catalogue(port), sort_keys=False))
    cat = catalogue.load(file, "cpu")
    command = engine_command([cat.get(MODEL)], cat.profile_settings, port=port, enforce_eager=True)
    engine = Engine(command, tmp_path / "engine-old.log").start()
    try:
        engine.wait_healthy()
        yield file, engine
    finally:
        engine.stop(grace=10)


def new_engine_pid(db_url: str, update: subprocess.Popen) -> int:
    """The pid of the engine an update started, once the update has moved the traffic to it."""
    db = Database(db_url)
    try:
        while update.poll() is None:
            rows = db.fetchall("SELECT step, detail FROM config_events ORDER BY id DESC LIMIT 3")
            if rows[0]["step"] == "old-drained":
                started = db.fetchall(
                    "SELECT detail FROM config_events WHERE step = 'engine-started' ORDER BY id DESC LIMIT 1"
                )[0]["detail"]
                return int(started.split(" pid ")[1].split()[0])
            time.sleep(0.5)
    finally:
        db.close()
    raise AssertionError(f"the update ended first: {update.communicate()[0]}")


def hxp(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hxp.cli", *args], env=env, capture_output=True, text=True, timeout=1800
    )


def test_update_and_automatic_rollback_under_traffic(
    tmp_path: Path, old_engine: tuple[Path, Engine], gateway_factory: GatewayFactory
) -> None:
    file, engine = old_engine
    db_url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    env = {
        **os.environ,
        "DATABASE_URL": db_url,
        "HXP_CATALOGUE": str(file),
        "HXP_STATE_DIR": str(tmp_path),
        "HXP_PROFILE": "cpu",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    }
    (tmp_path / "models").symlink_to(weights.models_dir())
    assert hxp(env, "config", "apply").returncode == 0
    gateway = gateway_factory(
        {MODEL: [f"{engine.base_url}/v1"]}, {"DATABASE_URL": db_url, "HXP_CATALOGUE": str(file), "HXP_PROFILE": "cpu"}
    )
    traffic = Traffic(gateway)
    traffic.start()
    started: list[str] = []
    try:
        update = hxp(env, "model", "update", MODEL, "--watch", "10")
        assert update.returncode == 0, update.stdout + update.stderr
        assert not engine.alive()  # the old engine was drained and stopped
        new_url = update.stdout.strip().splitlines()[-1].split("update-done: ")[1]
        started.append(new_url)

        dying = subprocess.Popen(
            [sys.executable, "-m", "hxp.cli", "model", "update", MODEL, "--watch", "600"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        pid = new_engine_pid(db_url, dying)
        with traffic.between:  # the new engine dies (between two requests): the old one, on standby, answers
            os.killpg(pid, signal.SIGKILL)
        output = dying.communicate(timeout=600)[0]
        assert dying.returncode == 1 and "the new engine died during the watch" in output, output

        v1 = file.read_bytes()
        broken = yaml.safe_load(v1)
        broken["models"][0]["profiles"]["cpu"]["source"] = str(broken_weights(tmp_path / "broken"))
        file.write_text(yaml.safe_dump(broken, sort_keys=False))
        apply = hxp(env, "config", "apply", "--watch", "10")
        assert apply.returncode == 1, apply.stdout + apply.stderr
        assert "lacks 'paris'" in apply.stdout and "update-rolled-back" in apply.stdout
        assert file.read_bytes() == v1  # the catalogue is back, byte for byte
        answered_before = len(traffic.answered)
        while len(traffic.answered) < answered_before + 2:  # still served, by the engine of the first update
            assert not traffic.failures
            traffic.stop.wait(0.5)
    finally:
        traffic.stop.set()
        traffic.join()
        for url in started:
            process = rolling.listener(rolling.port_of(url))
            if process is not None:
                rolling.stop_group(process.pid)
    assert traffic.failures == []
    db = Database(db_url)
    try:
        marks = ", ".join("?" for _ in traffic.answered)
        deadline = time.monotonic() + USAGE_BOUND_S
        while True:  # the usage log is written in batches
            rows = db.fetchall(
                f"SELECT request_id FROM llm_model_requests WHERE request_id IN ({marks})", traffic.answered
            )
            if len(rows) >= len(traffic.answered) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        live = json.loads(db.fetchall("SELECT backends FROM config_live")[0]["backends"])
        steps = [r["step"] for r in db.fetchall("SELECT step FROM config_events ORDER BY id")]
    finally:
        db.close()
    assert len(rows) == len(traffic.answered) > 0
    assert live == {MODEL: [f"{started[0]}"]}  # the first update's engine serves
    assert steps.count("update-done") == 1 and steps.count("update-rolled-back") == 2
    assert "auto-rollback to v" in hxp(env, "config", "history").stdout
    assert not psutil.pid_exists(engine.pid) or psutil.Process(engine.pid).status() == psutil.STATUS_ZOMBIE
