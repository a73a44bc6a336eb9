"""The stack an operator command looks at: the native one (this host's environment) or the compose one
(its published ports, ``--compose``), and where each of its parts answers.

| variable              | meaning                                                        | default                   |
|-----------------------|----------------------------------------------------------------|---------------------------|
| HXP_GATEWAY_URL       | the gateway; comma-separated for several replicas              | http://127.0.0.1:8000     |
| HXP_MASTER_KEY        | the master key (native: else .state/master.key)                | compose: env/gateway.env  |
| HXP_METRICS_TOKEN     | bearer token for the gateway's /metrics, when it asks for one  | none                      |
| HXP_PROMETHEUS_URL    | a Prometheus scraping the stack (targets, alert rules)         | compose: 127.0.0.1:9090   |
| HXP_ALERTMANAGER_URL  | its Alertmanager                                               | compose: 127.0.0.1:9093   |
| HXP_GRAFANA_URL       | Grafana (GRAFANA_USER / GRAFANA_PASSWORD)                      | compose: 127.0.0.1:3000   |

DATABASE_URL, REDIS_URL, QDRANT_URL / QDRANT_PATH, HXP_BACKENDS and HXP_BACKEND_URL_TEMPLATE are
read as the gateway reads them. The engines are the gateway's own choice when those two are set,
else the ones a running gateway routes to (its /health/models), else the layout ``hxp run`` starts
(one engine per deployment, on the first model's catalogue port); on the compose stack each
published port of a running compose service that serves catalogue names (``docker compose ps``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import httpx

from hxp.core import catalogue
from hxp.core.catalogue import Catalogue
from hxp.core.paths import PROJECT_ROOT, state_dir
from hxp.core.stores import QdrantLocation

DEFAULT_GATEWAY = "http://127.0.0.1:8000"
_T = TypeVar("_T")
_D = TypeVar("_D")
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Stack:
    kind: str  # "native" | "compose"
    catalogue: Catalogue
    gateways: list[str]
    master_key: str | None
    metrics_token: str | None
    database_url: str | None
    database_problem: str | None  # why the database cannot be addressed (compose: no env file)
    redis_url: str | None
    qdrant: QdrantLocation  # {"url", "api_key"?}, {"path"}, or {}: inside the gateway (compose)
    prometheus_url: str | None = None
    alertmanager_url: str | None = None
    grafana_url: str | None = None
    grafana_auth: tuple[str, str] | None = None
    backends: dict[str, list[str]] = field(default_factory=dict)  # HXP_BACKENDS (explicit engines)
    backend_template: str | None = None  # HXP_BACKEND_URL_TEMPLATE
    project: Path = PROJECT_ROOT

    @property
    def compose(self) -> bool:
        return self.kind == "compose"

    def headers(self) -> dict[str, str]:
        """The master key as a bearer token (readiness details, per-model status, admin and vector APIs)."""
        return {"Authorization": f"Bearer {self.master_key}"} if self.master_key else {}

    def metrics_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.metrics_token}"} if self.metrics_token else {}

    def engines(self, client: httpx.Client) -> tuple[dict[str, list[str]], str]:
        """Each catalogue model's engine base URLs (…/v1), and where they were found."""
        names = self.catalogue.names
        if self.backends or self.backend_template:
            from hxp.core.settings import DEFAULT_BACKEND_URL_TEMPLATE
            from hxp.gateway.deployments import backend_urls

            template = self.backend_template or DEFAULT_BACKEND_URL_TEMPLATE
            return (
                {m.name: backend_urls(m, self.backends, template) for m in self.catalogue.models},
                "HXP_BACKENDS / HXP_BACKEND_URL_TEMPLATE",
            )
        if self.compose:
            return self._published(client)
        routed = self._routed(client)
        if routed is not None:
            return {n: routed.get(n, []) for n in names}, "the gateway's /health/models"
        return run_layout(self.catalogue), "the layout of `hxp run` (gateway not answering)"

    def _published(self, client: httpx.Client) -> tuple[dict[str, list[str]], str]:
        """The compose stack's engines: every published port of a running service that serves catalogue names."""
        from hxp.deploy import published

        engines: dict[str, list[str]] = {n: [] for n in self.catalogue.names}
        try:
            addresses = published.published_addresses(self.project)
        except published.PublishedError as err:
            return engines, f"nowhere: {err}"
        for service in sorted(addresses):
            for address in addresses[service]:
                for name in served_names(client, f"http://{address}/v1"):
                    if name in engines:
                        engines[name].append(f"http://{address}/v1")
        return engines, "the running compose services (docker compose ps)"

    def _routed(self, client: httpx.Client) -> dict[str, list[str]] | None:
        for gateway in self.gateways:
            try:
                response = client.get(f"{gateway}/health/models", headers=self.headers(), timeout=TIMEOUT_S)
                if response.status_code == 200:
                    return {m["model"]: [r["url"] for r in m.get("replicas", [])] for m in response.json()["data"]}
            except (httpx.HTTPError, ValueError, KeyError, TypeError):
                continue
        return None


def served_names(client: httpx.Client, base_url: str) -> list[str]:
    """The model names an OpenAI server at ``base_url`` (…/v1) lists without a key; none when it is not an engine."""
    try:
        response = client.get(f"{base_url}/models", timeout=3)
        return [m["id"] for m in response.json()["data"]] if response.status_code == 200 else []
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return []


def run_layout(cat: Catalogue) -> dict[str, list[str]]:
    """Where `hxp run` serves each model: models with one deployment share an engine on the first one's port."""
    from hxp.model.command import engine_groups

    return {m.name: [f"http://127.0.0.1:{group[0].port}/v1"] for group in engine_groups(cat.models) for m in group}


def stored_master_key() -> str | None:
    """HXP_MASTER_KEY, else the native runner's .state/master.key (read, never created here)."""
    if os.environ.get("HXP_MASTER_KEY"):
        return os.environ["HXP_MASTER_KEY"]
    path = state_dir() / "master.key"
    return path.read_text().strip() if path.is_file() else None


def _urls(value: str | None) -> list[str]:
    return [u.strip().rstrip("/") for u in (value or "").split(",") if u.strip()]


def _backends() -> dict[str, list[str]]:
    raw = os.environ.get("HXP_BACKENDS")
    value: Any = json.loads(raw) if raw else {}
    if not isinstance(value, dict):
        raise SystemExit("HXP_BACKENDS must be a JSON object {model name: [base URL, ...]}")
    return {k: [u.rstrip("/") for u in v] for k, v in value.items()}


def _hide_secrets(found: Stack) -> Stack:
    """Mask the stack's passwords and keys in every text the commands print, whatever the text."""
    from hxp.core import redaction

    for url in (found.database_url, found.redis_url, found.qdrant.get("url")):
        redaction.register_url_secrets(url)
    for secret in (
        found.master_key,
        found.metrics_token,
        found.qdrant.get("api_key"),
        found.grafana_auth[1] if found.grafana_auth else None,
    ):
        redaction.register_secret(secret)
    return found


def load(
    compose: bool = False,
    gateways: list[str] | None = None,
    prometheus: str | None = None,
    alertmanager: str | None = None,
    grafana: str | None = None,
    catalogue_path: str | None = None,
    profile: str | None = None,
    project: Path = PROJECT_ROOT,
) -> Stack:
    """The stack from the environment (native) or from compose's published ports and env files."""
    env = os.environ.get
    cat = catalogue.load(catalogue_path, profile)
    user, password = env("GRAFANA_USER"), env("GRAFANA_PASSWORD")
    common: dict[str, Any] = {
        "catalogue": cat,
        "metrics_token": env("HXP_METRICS_TOKEN") or None,
        "grafana_auth": (user, password) if user and password else None,
    }
    if compose:
        from hxp.deploy import published

        def asked(what: Callable[[], _T], default: _D) -> tuple[_T | _D, str | None]:
            """A published address, or ``default`` when Docker says none (with why)."""
            try:
                return what(), None
            except published.PublishedError as err:
                return default, str(err)

        database, problem = asked(lambda: published.database_url(project), None)
        qdrant, _ = asked(lambda: published.qdrant_url(project), None)
        given = {
            "prometheus": prometheus or env("HXP_PROMETHEUS_URL"),
            "alertmanager": alertmanager or env("HXP_ALERTMANAGER_URL"),
            "grafana": grafana or env("HXP_GRAFANA_URL"),
        }
        monitoring = {
            name: url or asked(partial(published.development_url, name, project), None)[0]
            for name, url in given.items()
        }
        gateway, _ = asked(lambda: published.gateway_url(project), f"http://127.0.0.1:{published.GATEWAY_PORT}")
        return _hide_secrets(
            Stack(
                "compose",
                gateways=gateways or _urls(env("HXP_GATEWAY_URL")) or [gateway],
                master_key=env("HXP_MASTER_KEY") or published.master_key(project),
                database_url=database,
                database_problem=problem,
                redis_url=None,
                qdrant={"url": qdrant} if qdrant else {},
                project=project,
                prometheus_url=monitoring["prometheus"],
                alertmanager_url=monitoring["alertmanager"],
                grafana_url=monitoring["grafana"],
                **{**common, "grafana_auth": common["grafana_auth"] or published.grafana_credentials(project)},
            )
        )
    from hxp.core import settings
    from hxp.core.stores import qdrant_location

    return _hide_secrets(
        Stack(
            "native",
            gateways=gateways or _urls(env("HXP_GATEWAY_URL")) or [DEFAULT_GATEWAY],
            master_key=stored_master_key(),
            database_url=settings.load().database_url,
            database_problem=None,
            redis_url=env("REDIS_URL") or None,
            qdrant=qdrant_location(),
            prometheus_url=prometheus or env("HXP_PROMETHEUS_URL") or None,
            alertmanager_url=alertmanager or env("HXP_ALERTMANAGER_URL") or None,
            grafana_url=grafana or env("HXP_GRAFANA_URL") or None,
            backends=_backends(),
            backend_template=env("HXP_BACKEND_URL_TEMPLATE") or None,
            project=project,
            **common,
        )
    )
