"""How many simulated users each model needs, from its targets (no Locust import: safe anywhere).

A user sends requests back to back, so by Little's law a model reaches its
throughput target at its average-latency target with
``throughput_rps * avg_latency_s`` users. Under a profile whose verdict compares the gateway with
the engine reached directly (:data:`COMPARED_PROFILES`), each model has as many users again
sending the same requests to its engine directly, in the same run.
"""

from __future__ import annotations

import json
import math
import os

from hxp.core.catalogue import Catalogue, CatalogueError, Model
from hxp.core.settings import DEFAULT_BACKEND_URL_TEMPLATE
from hxp.gateway.deployments import backend_urls

# Profiles whose load-test verdict compares the gateway path with the engine reached directly (a developer's
# CPU measures the CPU, not the stack); the others are judged against the catalogue's absolute targets.
COMPARED_PROFILES = frozenset({"cpu"})


def compared(profile: str) -> bool:
    """Whether a profile's verdict compares the gateway with the engines reached directly."""
    return profile in COMPARED_PROFILES


def concurrency(model: Model) -> int:
    """Users needed for the model's throughput target at its average-latency target (at least 1)."""
    targets = model.targets
    return max(1, math.ceil(targets.throughput_rps * targets.avg_latency_ms / 1000))


def users_needed(models: list[Model]) -> int:
    """Users for a run that can show every model's throughput target (and its direct twin, when compared)."""
    return sum(concurrency(m) * (2 if compared(m.profile) else 1) for m in models)


def engine_urls(cat: Catalogue, models: list[Model]) -> dict[str, str]:
    """The engine base URL (…/v1) of each compared model: its first backend as the gateway is given them
    (HXP_BACKENDS, else HXP_BACKEND_URL_TEMPLATE), else where `make run` starts its engine."""
    raw, template = os.environ.get("HXP_BACKENDS"), os.environ.get("HXP_BACKEND_URL_TEMPLATE")
    if raw or template:
        given: dict[str, list[str]] = json.loads(raw) if raw else {}
        backends = {m.name: backend_urls(m, given, template or DEFAULT_BACKEND_URL_TEMPLATE) for m in models}
    else:
        from hxp.model.command import catalogue_commands
        from hxp.runner import backends as run_backends

        backends = run_backends(catalogue_commands(cat))
    return {m.name: backends[m.name][0] for m in models if compared(m.profile) and backends.get(m.name)}


def models_under_test(cat: Catalogue, names: str | None = None) -> list[Model]:
    """The catalogue's models, narrowed to ``names`` (comma-separated; default HXP_LOADTEST_MODELS) when given."""
    raw = os.environ.get("HXP_LOADTEST_MODELS", "") if names is None else names
    wanted = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(cat.names))
    if unknown:
        raise CatalogueError(f"models to load-test not in the catalogue: {', '.join(unknown)}")
    return [m for m in cat.models if not wanted or m.name in wanted]
