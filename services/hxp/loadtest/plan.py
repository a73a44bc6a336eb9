"""How many simulated users each model needs, from its targets (no Locust import: safe anywhere).

A user sends requests back to back, so by Little's law a model reaches its
throughput target at its average-latency target with
``throughput_rps * avg_latency_s`` users.
"""
from __future__ import annotations

import math
import os

from hxp.core.catalogue import Catalogue, CatalogueError, Model


def concurrency(model: Model) -> int:
    """Users needed for the model's throughput target at its average-latency target (at least 1)."""
    targets = model.targets
    return max(1, math.ceil(targets.throughput_rps * targets.avg_latency_ms / 1000))


def users_needed(models: list[Model]) -> int:
    """Users for a run that can show every model's throughput target."""
    return sum(concurrency(m) for m in models)


def models_under_test(cat: Catalogue, names: str | None = None) -> list[Model]:
    """The catalogue's models, narrowed to ``names`` (comma-separated; default HXP_LOADTEST_MODELS) when given."""
    raw = os.environ.get("HXP_LOADTEST_MODELS", "") if names is None else names
    wanted = [n.strip() for n in raw.split(",") if n.strip()]
    unknown = sorted(set(wanted) - set(cat.names))
    if unknown:
        raise CatalogueError(f"models to load-test not in the catalogue: {', '.join(unknown)}")
    return [m for m in cat.models if not wanted or m.name in wanted]
