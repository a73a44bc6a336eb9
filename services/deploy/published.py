"""The compose stack as this host reaches it: the ports compose.yaml publishes and the secrets in env/*.env.

The operator commands that act on a running compose stack from the host (``STACK=compose``:
backups, ``hxp status``, ``hxp validate``, ``hxp doctor``) find its parts here, in one place.
Engines, PostgreSQL, Qdrant and the exporters are published on HXP_PUBLISH_ADDRESS (default
127.0.0.1), the gateway on every address; Redis is not published (the gateway reports on it).
Prometheus, Alertmanager and Grafana exist in the development stack (compose.dev.yaml) only.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

from hxp.deploy.envfiles import assignments
from hxp.paths import PROJECT_ROOT

GATEWAY_PORT = 8000
POSTGRES_PORT = 5432
QDRANT_PORT = 6333
DEVELOPMENT_PORTS = {"prometheus": 9090, "alertmanager": 9093, "grafana": 3000}


class PublishedError(RuntimeError):
    """A part of the compose stack cannot be addressed from this host; the message says how to fix it."""


def host() -> str:
    """Where this host reaches the published ports (HXP_PUBLISH_ADDRESS; a wildcard means loopback)."""
    address = os.environ.get("HXP_PUBLISH_ADDRESS") or "127.0.0.1"
    return "127.0.0.1" if address in ("0.0.0.0", "::") else address


def env_file(name: str, project: Path = PROJECT_ROOT) -> dict[str, str]:
    """The assignments of env/<name>.env; a PublishedError when it is missing."""
    path = project / "env" / f"{name}.env"
    if not path.is_file():
        raise PublishedError(f"{path} is missing: the compose stack's secrets live there (make env)")
    return assignments(path.read_text())


def database_url(project: Path = PROJECT_ROOT) -> str:
    """The compose stack's PostgreSQL, with the credentials of env/postgres.env."""
    pg = env_file("postgres", project)
    return (f"postgresql://{quote(pg['POSTGRES_USER'], safe='')}:{quote(pg['POSTGRES_PASSWORD'], safe='')}"
            f"@{host()}:{POSTGRES_PORT}/{quote(pg['POSTGRES_DB'], safe='')}")


def qdrant_url() -> str:
    return f"http://{host()}:{QDRANT_PORT}"


def gateway_url() -> str:
    return f"http://127.0.0.1:{GATEWAY_PORT}"


def engine_url_template() -> str:
    """Each model's engine on its catalogue port (``{port}``), as HXP_BACKEND_URL_TEMPLATE spells it."""
    return f"http://{host()}:{{port}}/v1"


def master_key(project: Path = PROJECT_ROOT) -> str | None:
    try:
        return env_file("gateway", project).get("HXP_MASTER_KEY") or None
    except PublishedError:
        return None


def development_url(component: str) -> str:
    """Prometheus, Alertmanager or Grafana of the development stack (published on loopback)."""
    return f"http://127.0.0.1:{DEVELOPMENT_PORTS[component]}"


def grafana_credentials(project: Path = PROJECT_ROOT) -> tuple[str, str] | None:
    try:
        values = env_file("grafana", project)
    except PublishedError:
        return None
    user, password = values.get("GF_SECURITY_ADMIN_USER"), values.get("GF_SECURITY_ADMIN_PASSWORD")
    return (user, password) if user and password else None
