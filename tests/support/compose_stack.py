"""The compose test's stack: compose.yaml + compose.dev.yaml + tests/deploy/compose.test.yaml.

It runs under a project name of its own, with env files of its own (``HXP_ENV_DIR``, made by
`hxp compose env` in a temporary folder), on images built here: the stand-ins
(tests/deploy/standins) and the project's images from their Dockerfiles. Docker's layer cache
makes a second build cheap. Every `docker compose` and `make … STACK=compose` call of the test
selects the stack through Compose's environment (:attr:`Stack.env`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from hxp.core.paths import PROJECT_ROOT
from hxp.deploy import envfiles
from tests.support import docker

TESTS = PROJECT_ROOT / "tests" / "deploy"
STANDINS = TESTS / "standins" / "compose.yaml"
FILES = (PROJECT_ROOT / "compose.yaml", PROJECT_ROOT / "compose.dev.yaml", TESTS / "compose.test.yaml")
PROFILES = "loadtest"
TORCH_WHEELS_IMAGE = "hxp-standin/torch-wheels:local"
EXTRA_CAS = Path("/usr/local/share/ca-certificates")  # what update-ca-certificates adds to the system bundle
SYSTEM_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_TIMEOUT_S = 3600
UP_TIMEOUT_S = 900


def torch_wheels() -> Path | None:
    """The local folder with torch's +cpu wheel (the Makefile's TORCH_WHEELS), if there is one."""
    folder = Path(os.environ.get("HXP_TORCH_WHEELS") or "/opt/wheels")
    return folder if any(folder.glob("torch-*.whl")) else None


def build_ca(folder: Path) -> Path:
    """The CA bundle for pip inside the builds: the host's, when it trusts extra CAs; else an empty file."""
    bundle = folder / "build-ca.pem"
    if any(EXTRA_CAS.rglob("*.crt")) and SYSTEM_BUNDLE.is_file():
        shutil.copy(SYSTEM_BUNDLE, bundle)
    else:
        bundle.write_text("")
    return bundle


@dataclass
class Stack:
    project: str
    env: dict[str, str]
    timings: dict[str, float] = field(default_factory=dict)

    @classmethod
    def create(cls, project: str, workdir: Path) -> Stack:
        env_dir = workdir / "env"
        env_dir.mkdir(parents=True)
        for example in (PROJECT_ROOT / "env").glob("*.env.example"):
            shutil.copy(example, env_dir / example.name)
        envfiles.create(env_dir)
        env = {
            "COMPOSE_FILE": os.pathsep.join(str(f) for f in FILES),
            "COMPOSE_PROJECT_NAME": project,
            "COMPOSE_PROFILES": PROFILES,
            "HXP_ENV_DIR": str(env_dir),
            "HXP_BUILD_CA": str(build_ca(workdir)),
            "HXP_TORCH_WHEELS_IMAGE": TORCH_WHEELS_IMAGE if torch_wheels() else "scratch",
        }
        return cls(project, env)

    def run(self, argv: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run(
            argv, cwd=PROJECT_ROOT, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(["docker", "compose", *args], timeout, check)

    def make(self, *args: str, timeout: float = 300) -> str:
        """Output of ``make -s ARGS`` (the documented targets) against this stack."""
        return self.run(["make", "-s", "--no-print-directory", *args], timeout).stdout

    def timed(self, step: str, *args: str, timeout: float = BUILD_TIMEOUT_S) -> None:
        """``docker compose ARGS``, its duration recorded under ``step``."""
        start = time.monotonic()
        self.compose(*args, timeout=timeout)
        self.timings[step] = time.monotonic() - start

    def build(self) -> None:
        """The Debian base (when missing), the stand-ins, then the project's images on top of them (the locust image
        last, reusing the gateway's layers)."""
        start = time.monotonic()
        docker.base_image()
        self.timings["Debian base image"] = time.monotonic() - start
        wheels = torch_wheels()
        standins = ["-f", str(STANDINS), "-p", f"{self.project}-standins"]
        services = (
            []
            if wheels
            else [
                "python",
                "postgres",
                "redis",
                "prometheus",
                "alertmanager",
                "node-exporter",
                "postgres-exporter",
                "redis-exporter",
            ]
        )
        self.env["HXP_TORCH_WHEELS"] = str(wheels or "")
        self.timed("stand-ins", *standins, "build", *services)
        self.timed("gateway and model images", "build", "gateway", "chat-engine", "all-minilm-l6-v2")
        self.timed("loadtest image", "build", "locust")

    def up(self) -> None:
        """Every service up and healthy; when one is not, the failure shows the last lines of every log."""
        try:
            self.timed(
                "up (until every service is healthy)",
                "up",
                "-d",
                "--wait",
                "--wait-timeout",
                str(UP_TIMEOUT_S),
                timeout=UP_TIMEOUT_S + 120,
            )
        except AssertionError as failed:
            logs = self.compose("logs", "--no-color", "--tail", "40", check=False)
            raise AssertionError(f"{failed}\n--- the services' logs ---\n{logs.stdout[-12000:]}") from None

    def down(self) -> None:
        self.compose("down", "--volumes", "--remove-orphans", "--timeout", "60", check=False)

    def container(self, service: str) -> str:
        return self.compose("ps", "--all", "-q", service).stdout.strip()
