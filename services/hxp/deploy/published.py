"""The running compose stack as this host reaches it: the addresses Docker publishes (hxp.deploy.running)
and the secrets in the stack's env files (hxp.deploy.envfiles.env_dir).

The operator commands that act on a running compose stack from the host (``STACK=compose``:
backups, ``hxp status``, ``hxp validate``, ``hxp doctor``) find its parts here, in one place.
Redis is not published (the gateway reports on it); Prometheus, Alertmanager and Grafana exist
in the development stack only, Qdrant when the stack has it.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

from hxp.core.paths import PROJECT_ROOT
from hxp.deploy import running
from hxp.deploy.envfiles import assignments, env_dir

GATEWAY_PORT = 8000
POSTGRES_PORT = 5432
QDRANT_PORT = 6333
DEVELOPMENT_PORTS = {"prometheus": 9090, "alertmanager": 9093, "grafana": 3000}


class PublishedError(RuntimeError):
    """A part of the compose stack cannot be addressed from this host; the message says how to fix it."""


def env_file(name: str, project: Path = PROJECT_ROOT) -> dict[str, str]:
    """The assignments of the stack's <name>.env; a PublishedError when it is missing."""
    path = env_dir(project) / f"{name}.env"
    if not path.is_file():
        raise PublishedError(f"{path} is missing: the compose stack's credentials live there (make env)")
    return assignments(path.read_text())


def address(service: str, port: int, project: Path = PROJECT_ROOT) -> str:
    """host:port where Docker publishes ``service``'s ``port``; a PublishedError when it does not."""
    try:
        return running.address(service, port, project)
    except running.ComposeError as err:
        raise PublishedError(str(err)) from None


def has(service: str, project: Path = PROJECT_ROOT) -> bool:
    """Whether the stack (under its active profiles) defines ``service``."""
    try:
        return service in running.services(project)
    except running.ComposeError as err:
        raise PublishedError(str(err)) from None


def database_url(project: Path = PROJECT_ROOT) -> str:
    """The compose stack's PostgreSQL, with the credentials of its postgres.env."""
    pg = env_file("postgres", project)
    return (
        f"postgresql://{quote(pg['POSTGRES_USER'], safe='')}:{quote(pg['POSTGRES_PASSWORD'], safe='')}"
        f"@{address('postgres', POSTGRES_PORT, project)}/{quote(pg['POSTGRES_DB'], safe='')}"
    )


def qdrant_url(project: Path = PROJECT_ROOT) -> str | None:
    """The stack's Qdrant server, or None when the stack has none."""
    return f"http://{address('qdrant', QDRANT_PORT, project)}" if has("qdrant", project) else None


def gateway_url(project: Path = PROJECT_ROOT) -> str:
    return f"http://{address('gateway', GATEWAY_PORT, project)}"


def published_addresses(project: Path = PROJECT_ROOT) -> dict[str, list[str]]:
    """host:port of every TCP port each running service publishes (``docker compose ps``)."""
    try:
        publishers = running.publishers(project)
    except running.ComposeError as err:
        raise PublishedError(str(err)) from None
    found: dict[str, list[str]] = {}
    for service, _, address in publishers:
        if address not in found.setdefault(service, []):
            found[service].append(address)
    return found


def development_url(component: str, project: Path = PROJECT_ROOT) -> str | None:
    """Prometheus, Alertmanager or Grafana of the development stack, or None when the stack has none."""
    if not has(component, project):
        return None
    return f"http://{address(component, DEVELOPMENT_PORTS[component], project)}"


def master_key(project: Path = PROJECT_ROOT) -> str | None:
    try:
        return env_file("gateway", project).get("HXP_MASTER_KEY") or None
    except PublishedError:
        return None


def grafana_credentials(project: Path = PROJECT_ROOT) -> tuple[str, str] | None:
    try:
        values = env_file("grafana", project)
    except PublishedError:
        return None
    user, password = values.get("GF_SECURITY_ADMIN_USER"), values.get("GF_SECURITY_ADMIN_PASSWORD")
    return (user, password) if user and password else None
