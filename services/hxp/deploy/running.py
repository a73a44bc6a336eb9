"""The running compose stack, asked through `docker compose`: its services and published addresses.

Compose's own environment selects the stack (COMPOSE_FILE, COMPOSE_PROJECT_NAME, COMPOSE_PROFILES,
HXP_ENV_DIR), as for every `make … STACK=compose` target; the commands run in the project folder.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from hxp.core.paths import PROJECT_ROOT

COMPOSE = ("docker", "compose")
WILDCARD = {"0.0.0.0", "::", "[::]"}


class ComposeError(RuntimeError):
    """`docker compose` failed; the message has its error output."""


def compose(*args: str, project: Path = PROJECT_ROOT, timeout: float = 120) -> str:
    """Run ``docker compose ARGS`` in the project folder; returns its output."""
    try:
        done = subprocess.run([*COMPOSE, *args], cwd=project, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        raise ComposeError("docker is not installed (Docker Engine with Compose v2)") from None
    if done.returncode != 0:
        raise ComposeError(f"docker compose {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def services(project: Path = PROJECT_ROOT) -> list[str]:
    """The services the stack defines under the active profiles."""
    return compose("config", "--services", project=project).split()


def address(service: str, port: int, project: Path = PROJECT_ROOT) -> str:
    """host:port where ``service``'s container ``port`` is published (a wildcard host reads as 127.0.0.1)."""
    published = compose("port", service, str(port), project=project).strip().splitlines()
    if not published or not published[0]:
        raise ComposeError(f"{service}: port {port} is not published (is the stack running?)")
    host, _, number = published[0].rpartition(":")
    return f"{'127.0.0.1' if host in WILDCARD else host}:{number}"
