"""vLLM engine processes: run one in the foreground, or start and stop them from Python.

`hxp model serve` uses :func:`serve`; the native runner and the test fixtures use
:func:`start_engine`. Ready means GET /health answers 200.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hxp.model import kernels
from hxp.model.command import EngineCommand
from hxp.process import Service, ServiceError, StopRequest

READY_TIMEOUT_S = 900.0  # a CPU engine compiling its graphs on a busy 2-core machine can take minutes


class Engine(Service):
    """A vLLM OpenAI server process serving ``command.names``."""

    def __init__(self, command: EngineCommand, log: Path | None = None) -> None:
        super().__init__(
            f"engine {'/'.join(command.names)} :{command.port}", command.argv, command.env, log, command.cpus
        )
        self.command = command

    def start(self) -> Engine:
        """Start the engine, unless its weights need a kernel this CPU's vLLM lacks (:mod:`hxp.model.kernels`)."""
        problem = kernels.refusal(self.command)
        if problem:
            raise ServiceError(f"{self.name} not started: {self.command.model}: {problem}")
        super().start()
        return self

    @property
    def base_url(self) -> str:
        return self.command.base_url

    @property
    def names(self) -> list[str]:
        return self.command.names

    def wait_healthy(self, timeout: float = READY_TIMEOUT_S) -> float:
        return self.wait_ready(f"{self.base_url}/health", timeout)


def start_engine(command: EngineCommand, log: Path | None = None, timeout: float = READY_TIMEOUT_S) -> Engine:
    """Start an engine and wait until it is healthy; stop it again if it does not get there."""
    engine = Engine(command, log).start()
    try:
        engine.wait_healthy(timeout)
    except BaseException:
        engine.stop(grace=10)
        raise
    return engine


def serve(command: EngineCommand) -> int:
    """Run an engine in the foreground until it exits or we are asked to stop.

    SIGTERM/SIGINT are forwarded to the engine's process group; if it has not exited
    30 s later the group is killed. Returns the engine's exit code.
    """
    stop = StopRequest()
    print(f"[model] {command.shell()}", file=sys.stderr, flush=True)
    engine = Engine(command).start()
    while engine.alive() and not stop:
        stop.sleep(1.0)
    code = engine.stop(grace=30, signum=stop.signum) if stop.signum is not None else engine.wait()
    assert code is not None  # stop() answers None only for an engine that was never started
    print(f"{engine.name} exited with code {code}", file=sys.stderr)
    return code
