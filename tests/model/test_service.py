"""Engine processes: foreground serving forwards signals to the whole group; readiness fails fast."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from hxp.process import Service, ServiceError
from tests.support.servers import free_port

# Stands in for vLLM: forks a worker (like the engine core), records both PIDs, exits 0 on SIGTERM/SIGINT.
FAKE_ENGINE = textwrap.dedent("""
    import os, signal, sys, time
    worker = os.fork()
    if worker == 0:
        for s in (signal.SIGTERM, signal.SIGINT):  # a stubborn worker: only the group kill ends it
            signal.signal(s, signal.SIG_IGN)
        while True: time.sleep(1)
    open(sys.argv[1], "w").write(f"{os.getpid()} {worker}")
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *a: sys.exit(0))
    while True: time.sleep(1)
""")

SERVE = textwrap.dedent("""
    import sys
    from hxp.model.command import EngineCommand
    from hxp.model.service import serve
    sys.exit(serve(EngineCommand([sys.executable, "-c", sys.argv[1], sys.argv[2]], {}, "127.0.0.1", 1, ["x"], "chat")))
""")


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper is gone too
        return f.read().split(") ")[1].startswith("Z")


def wait_for(predicate, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_serve_forwards_the_signal_and_leaves_no_process(tmp_path: Path, signum: int) -> None:
    pids = tmp_path / "pids"
    serve = subprocess.Popen([sys.executable, "-c", SERVE, FAKE_ENGINE, str(pids)])
    try:
        wait_for(lambda: pids.exists() and pids.read_text())
        engine, worker = map(int, pids.read_text().split())
        assert os.getpgid(engine) == engine != os.getpgid(serve.pid)  # its own group
        serve.send_signal(signum)
        assert serve.wait(60) == 0  # the engine's exit code
        wait_for(lambda: gone(engine) and gone(worker))
    finally:
        serve.kill()


def test_wait_ready_fails_fast_when_the_process_dies(tmp_path: Path) -> None:
    service = Service("dies", [sys.executable, "-c", "print('boom'); raise SystemExit(3)"], log=tmp_path / "log")
    service.start()
    started = time.monotonic()
    with pytest.raises(ServiceError, match=r"exited with code 3[\s\S]*boom"):
        service.wait_ready(f"http://127.0.0.1:{free_port()}/health", timeout=600)
    assert time.monotonic() - started < 60


def test_wait_ready_then_stop(tmp_path: Path) -> None:
    (tmp_path / "health").write_text("ok")
    port = free_port()
    service = Service("http", [sys.executable, "-m", "http.server", "-b", "127.0.0.1", "-d", str(tmp_path), str(port)])
    service.start()
    try:
        service.wait_ready(f"http://127.0.0.1:{port}/health", timeout=60, interval=0.1)
        assert service.alive()
    finally:
        code = service.stop(grace=10)
    assert not service.alive() and code == 128 + signal.SIGTERM


def test_wait_ready_times_out(tmp_path: Path) -> None:
    service = Service("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"]).start()
    try:
        with pytest.raises(ServiceError, match="not ready"):
            service.wait_ready(f"http://127.0.0.1:{free_port()}/health", timeout=1, interval=0.2)
    finally:
        service.stop(grace=5)
