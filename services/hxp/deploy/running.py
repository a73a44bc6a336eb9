"""The running compose stack, asked through `docker compose`: its services and published addresses.

Compose's own environment selects the stack (COMPOSE_FILE, COMPOSE_PROJECT_NAME, COMPOSE_PROFILES,
HXP_ENV_DIR), as for every `make … STACK=compose` target; the commands run in the project folder.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from hxp.core.paths import PROJECT_ROOT

COMPOSE = ("docker", "compose")
WILDCARD = {"0.0.0.0", "::", "[::]"}


class ComposeError(RuntimeError):
    """`docker compose` failed; the message has its error output."""


def _run(argv: list[str], project: Path, timeout: float) -> str:
    try:
        done = subprocess.run(argv, cwd=project, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ComposeError("docker is not installed (Docker Engine with Compose v2)") from None
    if done.returncode != 0:
        raise ComposeError(f"{' '.join(argv[:3])}: {done.stderr.strip()}")
    return done.stdout


def compose(*args: str, project: Path = PROJECT_ROOT, timeout: float = 120) -> str:
    """Run ``docker compose ARGS`` in the project folder; returns its output."""
    return _run([*COMPOSE, *args], project, timeout)


def docker(*args: str, timeout: float = 120) -> str:
    """Run ``docker ARGS`` (containers and images by id or name); returns its output."""
    return _run(["docker", *args], PROJECT_ROOT, timeout)


def services(project: Path = PROJECT_ROOT) -> list[str]:
    """The services the stack defines under the active profiles."""
    return compose("config", "--services", project=project).split()


def containers(service: str, project: Path = PROJECT_ROOT) -> list[str]:
    """The ids of ``service``'s running containers."""
    return compose("ps", "-q", service, project=project).split()


def publishers(project: Path = PROJECT_ROOT, service: str | None = None) -> list[tuple[str, int, str]]:
    """(service, container port, host:port) of each TCP port the running services (or ``service``'s containers,
    whatever their numbers) publish; a wildcard host reads as 127.0.0.1."""
    text = compose("ps", "--format", "json", *([service] if service else []), project=project).strip()
    rows = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line]
    found = []
    for row in rows:
        for publisher in row.get("Publishers") or []:
            if not publisher.get("PublishedPort") or publisher.get("Protocol", "tcp") != "tcp":
                continue
            host = publisher.get("URL") or "127.0.0.1"
            address = f"{'127.0.0.1' if host in WILDCARD else host}:{publisher['PublishedPort']}"
            found.append((row["Service"], int(publisher["TargetPort"]), address))
    return found


def address(service: str, port: int, project: Path = PROJECT_ROOT) -> str:
    """host:port where ``service``'s container ``port`` is published (the first running container's: a rolling
    update leaves the service's second one)."""
    for name, target, published in publishers(project, service):
        if name == service and target == port:
            return published
    raise ComposeError(f"{service}: port {port} is not published (is the stack running?)")
