"""The node, PostgreSQL and Redis exporters (Debian packages) on free 127.0.0.1 ports."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.prometheus import stop_process
from tests.support.servers import free_port, wait_port


class Exporter:
    """One exporter process; ``.address`` is host:port, ``.metric`` a series it exports once its target is up."""

    def __init__(self, command: list[str], metric: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.metric = metric
        self._command = [part.format(listen=self.address) for part in command]
        self._env = {**os.environ, **(env or {})}
        self._proc: subprocess.Popen | None = None

    @classmethod
    def node(cls) -> Exporter:
        return cls(["prometheus-node-exporter", "--web.listen-address={listen}"], "node_memory_MemAvailable_bytes")

    @classmethod
    def postgres(cls, url: str) -> Exporter:
        return cls(
            ["prometheus-postgres-exporter", "--web.listen-address={listen}"],
            "pg_up 1",
            {"DATA_SOURCE_NAME": f"{url}?sslmode=disable"},
        )

    @classmethod
    def redis(cls, url: str) -> Exporter:
        return cls(["prometheus-redis-exporter", f"-redis.addr={url}", "-web.listen-address={listen}"], "redis_up 1")

    def start(self, log: Path) -> Exporter:
        with open(log, "ab") as out:
            self._proc = subprocess.Popen(self._command, env=self._env, stdout=out, stderr=subprocess.STDOUT)
        wait_port(self.port)
        deadline = time.monotonic() + 30
        while self.metric not in httpx.get(f"http://{self.address}/metrics", timeout=10).text:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._command[0]} does not export {self.metric!r}: see {log}")
            time.sleep(0.5)
        return self

    def stop(self) -> None:
        stop_process(self._proc)
