"""Child services in their own process group: start, wait until healthy, stop without orphans.

Used by the model engines (hxp.model.service) and the native runner (hxp.runner).
Each child starts a new session, so a signal to its group reaches every process
it forked (vLLM's engine core and workers) and a Ctrl-C in the terminal reaches
only us: we decide how children stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Self

import httpx


def group_pids(pgid: int) -> list[int]:
    """The live processes of process group ``pgid`` (a service and everything it forked)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            pids.append(int(proc.name))
    return pids


class ServiceError(RuntimeError):
    """A child service died or did not become ready."""


class Service:
    """One child process group, optionally logging to a file and pinned to some CPU cores."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        log: Path | None = None,
        cpus: Collection[int] = (),
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.env = dict(env or {})
        self.log = log
        self.cpus = frozenset(cpus)  # empty: wherever the OS schedules it
        self.proc: subprocess.Popen | None = None

    def start(self) -> Self:
        out = None
        if self.log is not None:
            self.log.parent.mkdir(parents=True, exist_ok=True)
            out = self.log.open("ab")
        pin = (lambda: os.sched_setaffinity(0, self.cpus)) if self.cpus else None  # inherited by its children
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT if out else None,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=pin,
            )
        finally:
            if out is not None:
                out.close()
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServiceError(f"{self.name} was not started")
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def send(self, signum: int) -> None:
        """Send ``signum`` to the whole process group."""
        try:
            os.killpg(self.pid, signum)
        except ProcessLookupError:
            pass

    def log_tail(self, lines: int = 30) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def wait_ready(self, url: str, timeout: float, interval: float = 1.0) -> float:
        """Poll ``url`` until it answers 200; fail fast if the process dies. Returns the seconds waited."""
        start = time.monotonic()
        wait_all_ready([(self, url)], timeout, interval=interval)
        return time.monotonic() - start

    def wait(self) -> int:
        """Wait for the process; returns its exit code (128+N when killed by signal N)."""
        code = self.proc.wait() if self.proc else 0
        self.send(signal.SIGKILL)  # whatever it forked and left behind
        return 128 - code if code < 0 else code

    def stop(self, grace: float = 30.0, signum: int = signal.SIGTERM) -> int | None:
        """Send ``signum`` to the group, wait up to ``grace`` seconds, then SIGKILL it. Returns the exit code."""
        if self.proc is None:
            return None
        if self.alive():
            self.send(signum)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.send(signal.SIGKILL)
        return self.wait()


def wait_all_ready(
    checks: Sequence[tuple[Service, str]], timeout: float, stop: StopRequest | None = None, interval: float = 1.0
) -> bool:
    """Wait until every service answers 200 at its URL; fail fast when one dies.

    Returns False if a stop was requested meanwhile, True when all are ready.
    """
    pending = list(checks)
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0) as client:
        while pending:
            if stop:
                return False
            for service, url in list(pending):
                if not service.alive():
                    code = service.proc.returncode if service.proc else None
                    raise ServiceError(
                        f"{service.name} exited with code {code} before it was ready\n{service.log_tail()}"
                    )
                try:
                    if client.get(url).status_code == 200:
                        pending.remove((service, url))
                except httpx.HTTPError:
                    pass
            if pending and time.monotonic() > deadline:
                names = ", ".join(f"{s.name} ({u})" for s, u in pending)
                raise ServiceError(f"not ready after {timeout:.0f}s: {names}\n{pending[0][0].log_tail()}")
            if pending:
                (stop.sleep if stop is not None else time.sleep)(interval)
    return True


def stop_all(services: Sequence[Service], grace: float = 30.0, signum: int = signal.SIGTERM) -> None:
    """Signal every service at once, then wait for each (killing whatever outlives ``grace``)."""
    for service in services:
        if service.alive():
            service.send(signum)
    for service in services:
        service.stop(grace)


class StopRequest:
    """Turns SIGTERM/SIGINT into a flag that a supervising loop polls (and remembers the signal)."""

    def __init__(self) -> None:
        self.signum: int | None = None
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, _frame: object) -> None:
        self.signum = signum

    def __bool__(self) -> bool:
        return self.signum is not None

    def sleep(self, seconds: float) -> None:
        """Sleep in short steps, returning early once a stop is requested."""
        end = time.monotonic() + seconds
        while not self and time.monotonic() < end:
            time.sleep(min(0.2, end - time.monotonic()))
