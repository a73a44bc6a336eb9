"""`hxp run` end to end: a real engine and the gateway come up on the cores placed for them, answer with
the printed key, and Ctrl-C leaves no process behind. Uses a one-model catalogue (the embedding model) to
stay cheap."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml

from hxp.core import catalogue
from hxp.model.placement import place
from tests.support.servers import free_port

pytestmark = pytest.mark.engine
READY_TIMEOUT_S = 900


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid`` (whatever session or group it moved to)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_run_serves_through_the_gateway_and_stops_cleanly(tmp_path: Path) -> None:
    doc = yaml.safe_load(catalogue.DEFAULT_PATH.read_text())
    doc["models"] = [
        {**m, "port": free_port(), "api": {**m["api"], "fallbacks": []}}
        for m in doc["models"]
        if m["task"] == "embedding"
    ]
    file = tmp_path / "models.yaml"
    file.write_text(yaml.safe_dump(doc))
    name = doc["models"][0]["name"]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("HXP_MASTER_KEY", "DATABASE_URL", "REDIS_URL")}
    env.update(HXP_STATE_DIR=str(tmp_path / "state"), HXP_CATALOGUE=str(file), PYTHONUNBUFFERED="1")
    runner = subprocess.Popen(
        [sys.executable, "-m", "hxp.cli", "run", "--profile", "cpu", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in runner.stdout], daemon=True).start()
    output: list[str] = []
    children: set[int] = set()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        key = None
        while key is None:
            assert runner.poll() is None, "".join(output)
            assert time.monotonic() < deadline, "".join(output)
            try:
                output.append(lines.get(timeout=1))
            except queue.Empty:
                continue
            match = re.search(r"\[run\] API key: (\S+)", output[-1])
            key = match.group(1) if match else None
        assert any(f"http://127.0.0.1:{port}/v1" in line for line in output)
        assert (tmp_path / "state" / "master.key").stat().st_mode & 0o777 == 0o600

        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/embeddings",
            timeout=60,
            headers={"Authorization": f"Bearer {key}"},
            json={"model": name, "input": ["cat"]},
        )
        assert response.status_code == 200, response.text
        assert len(response.json()["data"][0]["embedding"]) == 384
        assert (
            httpx.post(
                f"http://127.0.0.1:{port}/v1/embeddings",
                timeout=60,
                json={"model": name, "input": ["x"]},
                headers={"Authorization": "Bearer sk-wrong"},
            ).status_code
            == 401
        )

        children |= descendants(runner.pid)
        assert len(children) >= 3  # engine server, engine core/worker, gateway
        placed = place(os.sched_getaffinity(0), ["embedding"])
        engine_cores, gateway_cores = ",".join(map(str, placed.engines[0])), ",".join(map(str, placed.gateway))
        assert any(re.search(rf"\[run\] engine {name}: cores {engine_cores}$", line) for line in output), output
        assert any(line.rstrip().endswith(f"[run] gateway: cores {gateway_cores}") for line in output), output
        affinity = {pid: set(os.sched_getaffinity(pid)) for pid in children if alive(pid)}
        engine = [pid for pid in affinity if "vllm" in cmdline(pid) or "VLLM" in cmdline(pid)]
        gateway = [pid for pid in affinity if "gateway serve" in cmdline(pid)]
        assert engine and gateway, {pid: cmdline(pid) for pid in affinity}
        assert all(affinity[pid] == set(placed.engines[0]) for pid in engine), affinity
        assert all(affinity[pid] == set(placed.gateway) for pid in gateway), affinity
        runner.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert runner.wait(120) == 0
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in children) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [pid for pid in children if alive(pid)], "orphans left behind"
    finally:
        if runner.poll() is None:
            os.killpg(runner.pid, signal.SIGKILL)
        for pid in children | descendants(runner.pid):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
