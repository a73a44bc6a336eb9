"""A real Prometheus (Debian package) on 127.0.0.1 for the tests, with a small HTTP API client."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import free_port, wait_port


def stop_process(proc: subprocess.Popen | None, timeout: float = 15) -> None:
    """Terminate ``proc`` and wait for it; kill it when it does not exit in ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class PrometheusServer:
    """Prometheus with its own data directory; ``config`` is the prometheus.yml it loads."""

    def __init__(self, config: Path, lifecycle: bool = True) -> None:
        self.config = config
        self.lifecycle = lifecycle
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.dir = Path(tempfile.mkdtemp(prefix="hxp-prom-"))
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        self._log = open(self.dir / "log", "wb")
        self._proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                *(["--web.enable-lifecycle"] if self.lifecycle else []),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_port(self.port)
        self.wait(lambda: httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200, 30, "ready")

    def log(self) -> str:
        return (self.dir / "log").read_text(errors="replace")[-4000:]

    def api(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = response.json()
        if body.get("status") != "success":
            raise AssertionError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar as one sample) of ``expr``; raises on a parse error."""
        data = self.api("query", query=expr)
        return data["result"] if data["resultType"] in ("vector", "matrix") else [{"value": data["result"]}]

    def targets(self) -> list[dict[str, Any]]:
        return self.api("targets", state="active")["activeTargets"]

    def wait(self, condition, timeout: float, what: str, interval: float = 0.5) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                if condition():
                    return
            except (httpx.HTTPError, AssertionError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"Prometheus: {what} not reached in {timeout}s\n{self.log()}")
            time.sleep(interval)

    def stop(self) -> None:
        stop_process(self._proc)
        shutil.rmtree(self.dir, ignore_errors=True)
