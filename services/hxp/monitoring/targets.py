"""What Prometheus scrapes: one job per component, derived from the catalogue and the environment.

Jobs (the alert rules and dashboards select on these names):

| job               | component                                        | default port |
|-------------------|--------------------------------------------------|--------------|
| llm-gateway       | the gateway's /metrics (hxp.gateway.metrics)     | 8000         |
| llm-server-models | each model engine's vLLM /metrics, label `model` | catalogue    |
| node              | prometheus-node-exporter                         | 9100         |
| postgres          | prometheus-postgres-exporter                     | 9187         |
| redis             | prometheus-redis-exporter                        | 9121         |
| alertmanager      | the development Alertmanager                     | 9093         |
| prometheus        | the development Prometheus itself                | 9090         |

Where each component is reached depends on who scrapes: the development
Prometheus in compose uses the compose service names (``COMPOSE_SERVICES``,
engines by model name on the development engines' port), a native one uses 127.0.0.1, and the operators'
remote Prometheus uses HXP_PUBLIC_HOST. Engines are found where the gateway
finds them (HXP_BACKENDS / HXP_BACKEND_URL_TEMPLATE), so replicas are scraped
too; a loopback engine address is replaced by the scraping host.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from hxp.core.catalogue import Catalogue
from hxp.core.settings import DEFAULT_BACKEND_URL_TEMPLATE
from hxp.deploy.compose import DEV_BACKEND_URL_TEMPLATE
from hxp.gateway.deployments import backend_urls

JOB_GATEWAY = "llm-gateway"
JOB_MODELS = "llm-server-models"
JOB_NODE = "node"
JOB_POSTGRES = "postgres"
JOB_REDIS = "redis"
JOB_ALERTMANAGER = "alertmanager"
JOB_PROMETHEUS = "prometheus"

# job -> (environment variable of its port, default port)
PORTS: dict[str, tuple[str, int]] = {
    JOB_GATEWAY: ("HXP_GATEWAY_PORT", 8000),
    JOB_NODE: ("HXP_NODE_EXPORTER_PORT", 9100),
    JOB_POSTGRES: ("HXP_POSTGRES_EXPORTER_PORT", 9187),
    JOB_REDIS: ("HXP_REDIS_EXPORTER_PORT", 9121),
    JOB_ALERTMANAGER: ("HXP_ALERTMANAGER_PORT", 9093),
    JOB_PROMETHEUS: ("HXP_PROMETHEUS_PORT", 9090),
}
# job -> compose service name (model engines are services named after the model)
COMPOSE_SERVICES: dict[str, str] = {
    JOB_GATEWAY: "gateway",
    JOB_NODE: "node-exporter",
    JOB_POSTGRES: "postgres-exporter",
    JOB_REDIS: "redis-exporter",
    JOB_ALERTMANAGER: "alertmanager",
    JOB_PROMETHEUS: "prometheus",
}
COMPOSE_ENGINE_URL_TEMPLATE = DEV_BACKEND_URL_TEMPLATE  # where the development stack's gateway finds them
LOOPBACK = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


@dataclass(frozen=True)
class TargetGroup:
    """One static_configs / file_sd entry: addresses sharing a job and labels."""

    job: str
    targets: list[str]
    labels: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Endpoints:
    """The addresses (host:port) of every component one Prometheus scrapes."""

    gateway: list[str]
    engines: dict[str, list[str]]
    exporters: dict[str, list[str]]  # node / postgres / redis
    own: dict[str, list[str]] = field(default_factory=dict)  # alertmanager / prometheus (development only)

    def groups(self, catalogue: Catalogue) -> list[TargetGroup]:
        """The target groups, one per job and one per model (labelled with its name and task)."""
        groups = [TargetGroup(JOB_GATEWAY, self.gateway)] if self.gateway else []
        for model in catalogue.models:
            addresses = self.engines.get(model.name)
            if addresses:
                groups.append(TargetGroup(JOB_MODELS, addresses, {"model": model.name, "task": model.task}))
        for job, addresses in [*self.exporters.items(), *self.own.items()]:
            if addresses:
                groups.append(TargetGroup(job, addresses))
        return groups


def _port(job: str, env: Mapping[str, str]) -> int:
    var, default = PORTS[job]
    return int(env.get(var) or default)


def _engine_addresses(
    catalogue: Catalogue, env: Mapping[str, str], template: str | None, host: str | None
) -> dict[str, list[str]]:
    backends = {} if template else json.loads(env.get("HXP_BACKENDS") or "{}")
    template = template or env.get("HXP_BACKEND_URL_TEMPLATE") or DEFAULT_BACKEND_URL_TEMPLATE
    engines: dict[str, list[str]] = {}
    for model in catalogue.models:
        addresses = []
        for url in backend_urls(model, backends, template):
            parts = urlsplit(url)
            name = host if host and parts.hostname in LOOPBACK else parts.hostname
            addresses.append(f"{name}:{parts.port or (443 if parts.scheme == 'https' else 80)}")
        engines[model.name] = addresses
    return engines


def for_host(
    catalogue: Catalogue, host: str, env: Mapping[str, str] = os.environ, development: bool = False
) -> Endpoints:
    """Every component on one host (native development, or the operators' remote Prometheus)."""
    jobs = (JOB_NODE, JOB_POSTGRES, JOB_REDIS)
    own = (JOB_ALERTMANAGER, JOB_PROMETHEUS) if development else ()
    return Endpoints(
        gateway=[f"{host}:{_port(JOB_GATEWAY, env)}"],
        engines=_engine_addresses(catalogue, env, None, host),
        exporters={job: [f"{host}:{_port(job, env)}"] for job in jobs},
        own={job: [f"{host}:{_port(job, env)}"] for job in own},
    )


def for_compose(catalogue: Catalogue) -> Endpoints:
    """The compose stack: components reached by their service names on their default ports."""

    def address(job: str) -> list[str]:
        return [f"{COMPOSE_SERVICES[job]}:{PORTS[job][1]}"]

    return Endpoints(
        gateway=address(JOB_GATEWAY),
        engines=_engine_addresses(catalogue, {}, COMPOSE_ENGINE_URL_TEMPLATE, None),
        exporters={job: address(job) for job in (JOB_NODE, JOB_POSTGRES, JOB_REDIS)},
        own={job: address(job) for job in (JOB_ALERTMANAGER, JOB_PROMETHEUS)},
    )
