"""Real gateway processes for tests (`hxp gateway serve` on a free 127.0.0.1 port)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from hxp.core import catalogue
from tests.support.lifetime import die_with_parent
from tests.support.servers import LOOPBACK, Where, free_port

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120.0
# Variables of the developer's shell that must not leak into a test gateway unless a test sets them.
_ISOLATED = (
    "DATABASE_URL",
    "HXP_DATABASE_URL",
    "REDIS_URL",
    "HXP_BACKENDS",
    "HXP_BACKEND_URL_TEMPLATE",
    "HXP_PREFIX_ROUTING",
    "HXP_MASTER_KEY",
    "HXP_STATE_DIR",
    "HXP_RATE_LIMIT_FAIL_CLOSED",
    "HXP_CACHE_TTL_S",
    "HXP_KEY_CACHE_TTL_S",
    "LITELLM_MASTER_KEY",
    "CONFIG_FILE_PATH",
)


def all_models(url: str | list[str]) -> dict[str, list[str]]:
    """HXP_BACKENDS sending every catalogue model to the same backend URL(s)."""
    urls = [url] if isinstance(url, str) else list(url)
    return dict.fromkeys(catalogue.load().names, urls)


class Gateway:
    """One running gateway: ``.url`` (no /v1), ``.base_url`` (…/v1), ``.master_key``, ``.log``; on this machine
    or ``where`` says (another host: its HTTP helpers must then be called from a host that reaches it)."""

    def __init__(
        self,
        backends: dict[str, list[str]],
        env: dict[str, str] | None = None,
        workers: int = 1,
        port: int | None = None,
        state_dir: Path | None = None,
        http_stack: str = "fast",
        where: Where = LOOPBACK,
    ) -> None:
        self.where = where
        self.port = port or free_port()
        self.url = f"http://{where.address}:{self.port}"
        self.base_url = f"{self.url}/v1"
        self.master_key = "sk-master-" + secrets.token_hex(16)
        self._own_state = state_dir is None
        self.state_dir = state_dir or Path(tempfile.mkdtemp(prefix="hxp-gw-"))
        self.log_path = self.state_dir / "gateway.log"
        self.env = {k: v for k, v in os.environ.items() if k not in _ISOLATED}
        self.env.update(
            {
                "HXP_STATE_DIR": str(self.state_dir),
                "HXP_MASTER_KEY": self.master_key,
                "HXP_BACKENDS": json.dumps(backends),
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "PYTHONUNBUFFERED": "1",
                **(env or {}),
            }
        )
        self.workers = workers
        self.http_stack = http_stack
        self._proc: subprocess.Popen | None = None

    def start(self, wait: bool = True) -> Gateway:
        with open(self.log_path, "ab") as log:
            self._proc = subprocess.Popen(
                self.where.wrap(
                    [
                        sys.executable,
                        "-m",
                        "hxp.cli",
                        "gateway",
                        "serve",
                        "--host",
                        self.where.address,
                        "--port",
                        str(self.port),
                        "--workers",
                        str(self.workers),
                        "--http-stack",
                        self.http_stack,
                    ]
                ),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        self.where.call(self._wait_ready, timeout)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {self._proc.returncode}:\n{self.log[-4000:]}")
            try:
                if httpx.get(f"{self.url}/health/readiness", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"gateway not ready after {timeout}s:\n{self.log[-4000:]}")

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.master_key}"}

    def create_key(self, alias: str | None = None, **fields: Any) -> str:
        """A new API key through the admin API (fields: owner, models, rpm, tpm, expires, days); its secret."""
        body = {"alias": alias or "test-" + secrets.token_hex(4), **fields}
        response = httpx.post(f"{self.url}/admin/keys", json=body, headers=self.headers(), timeout=30)
        response.raise_for_status()
        return response.json()["key"]

    def usage_rows(self, request_ids: Sequence[str], timeout: float = 60.0) -> dict[str, Any]:
        """The usage rows of these requests (their x-request-id), in that order, from the gateway's own SQLite
        database (no DATABASE_URL given), waiting up to ``timeout`` for them to be written."""
        from hxp.core.database import Database

        db = Database(f"sqlite:///{self.state_dir / 'gateway.sqlite3'}")
        try:
            deadline = time.monotonic() + timeout
            while True:
                rows = {str(r["request_id"]): r for r in db.fetchall("SELECT * FROM llm_model_requests")}
                if set(request_ids) <= set(rows) or time.monotonic() > deadline:
                    return {i: rows[i] for i in request_ids if i in rows}
                time.sleep(0.2)
        finally:
            db.close()

    def chat(self, key: str, model: str, content: str = "hello", **params: Any) -> httpx.Response:
        """POST /v1/chat/completions with one user message."""
        body = {"model": model, "messages": [{"role": "user", "content": content}], **params}
        return httpx.post(f"{self.base_url}/chat/completions", json=body, headers=self.headers(key), timeout=60)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int | None:
        """Send ``sig`` to the gateway and wait for it to exit (killed after ``timeout``); its exit code."""
        if self._proc is None or self._proc.poll() is not None:
            return self._proc.returncode if self._proc else None
        if sig == signal.SIGKILL:  # the whole process group: workers cannot clean up after a kill
            os.killpg(self._proc.pid, sig)
        else:
            self._proc.send_signal(sig)
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self._proc.pid, signal.SIGKILL)
            return self._proc.wait(10)

    def close(self) -> None:
        self.stop()
        if self._proc is not None and self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGKILL)
        if self._own_state:
            shutil.rmtree(self.state_dir, ignore_errors=True)


class GatewayFactory:
    """Starts gateways and stops every one of them on :meth:`close`."""

    def __init__(self) -> None:
        self.started: list[Gateway] = []

    def __call__(
        self,
        backends: dict[str, list[str]] | str | list[str],
        env: dict[str, str] | None = None,
        workers: int = 1,
        wait: bool = True,
        **kwargs: Any,
    ) -> Gateway:
        """A started gateway; with ``wait=False`` call its ``wait_ready()`` (to start several at once)."""
        if not isinstance(backends, dict):
            backends = all_models(backends)
        gateway = Gateway(backends, env, workers, **kwargs)
        self.started.append(gateway)
        return gateway.start(wait)

    def close(self) -> None:
        for gateway in self.started:
            gateway.close()
