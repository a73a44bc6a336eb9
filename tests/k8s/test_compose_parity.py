"""The same catalogue gives the same engines, images, arguments and GPUs in the compose stacks (compose.yaml with
the compose.gpu.yaml or compose.dev.yaml overlay) and in the chart, and the chart's gateway and stores run
compose's images."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from hxp.core.paths import PROJECT_ROOT
from hxp.deploy import compose
from hxp.k8s import chart
from tests.support.helm import Rendered

# rendering -> the compose files of its profile, as `docker compose -f ... -f ...` takes them
COMPOSE = {"gpu": ("compose.yaml", "compose.gpu.yaml"), "cpu": ("compose.yaml", "compose.dev.yaml")}


def compose_engines(files: tuple[str, ...], rendering: Rendered) -> dict[str, dict[str, Any]]:
    """The compose engines a default `docker compose up` of these files starts (no profile), by engine name."""
    services: dict[str, Any] = {}
    for file in files:
        services = compose.overlaid(services, compose.load_yaml((PROJECT_ROOT / file).read_text())["services"])
    return {name: services[name] for name in compose.engines(rendering.cat)}


def chart_engines(rendering: Rendered) -> dict[str, dict[str, Any]]:
    return {
        d["metadata"]["labels"]["hxp/engine"]: d
        for d in rendering.docs
        if d["kind"] == "Deployment" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "engine"
    }


@pytest.mark.parametrize("name", COMPOSE)
def test_engines_run_what_compose_runs(name: str, rendered: dict[str, Rendered]) -> None:
    r = rendered[name]
    in_compose, in_chart = compose_engines(COMPOSE[name], r), chart_engines(r)
    assert set(in_chart) == set(in_compose)
    for engine, service in in_compose.items():
        container = in_chart[engine]["spec"]["template"]["spec"]["containers"][0]
        assert (container["image"], container["command"], container["args"]) == (
            service["image"],
            list(service["entrypoint"]),
            service["command"],
        ), engine
        env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
        assert env.items() >= {k: str(v) for k, v in service["environment"].items()}.items(), engine
        published = int(str(service["ports"][0]).rsplit(":", 1)[1])
        assert [p["containerPort"] for p in container["ports"]] == [published], engine


def test_gpus_are_those_compose_reserves(rendered: dict[str, Rendered]) -> None:
    r = rendered["gpu"]
    in_chart = chart_engines(r)
    for engine, service in compose_engines(COMPOSE["gpu"], r).items():
        reserved = service["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        limits = in_chart[engine]["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == len(reserved), engine


def test_the_gateway_and_stores_run_composes_images() -> None:
    stack = compose.load_yaml((compose.HERE / "stack.yaml").read_text())["services"]
    values = yaml.safe_load((chart.CHART_DIR / "values.yaml").read_text())
    pairs = {"gateway": "gateway", "postgres": "postgresql", "redis": "redis", "qdrant": "qdrant"}
    for service, key in pairs.items():
        image = values[key]["image"]
        assert f"{image['repository']}:{image['tag']}" == stack[service]["image"], key
