"""Every dashboard query returns data and every alert expression parses, on a Prometheus scraping the live stack."""

from __future__ import annotations

import time

import pytest
import yaml

from hxp.monitoring import dashboards
from hxp.monitoring.prometheus_config import RULES_DIR
from tests.monitoring.conftest import LiveStack

pytestmark = [pytest.mark.engine, pytest.mark.services]

ALERTS = [
    rule
    for path in sorted(RULES_DIR.glob("*.yml"))
    for group in yaml.safe_load(path.read_text())["groups"]
    for rule in group["rules"]
]


def test_every_target_is_up(live_stack: LiveStack) -> None:
    prom = live_stack.prometheus
    prom.wait(lambda: all(t["health"] == "up" for t in prom.targets()), 30, "all targets up")
    jobs = {t["labels"]["job"] for t in prom.targets()}
    assert jobs == {"llm-gateway", "llm-server-models", "node", "postgres", "redis", "prometheus"}


def test_every_dashboard_query_returns_data(live_stack: LiveStack) -> None:
    prom = live_stack.prometheus
    queries = {dashboards.resolve(q) for q in dashboards.queries()}
    empty = set(queries)
    deadline = time.monotonic() + 90
    while empty and time.monotonic() < deadline:  # rates need two scrapes after the traffic
        empty = {q for q in empty if not prom.query(q)}
        time.sleep(1)
    assert not empty, "queries without data:\n" + "\n".join(sorted(empty))


def test_every_alert_expression_parses_and_the_rules_are_loaded(live_stack: LiveStack) -> None:
    prom = live_stack.prometheus
    for rule in ALERTS:
        prom.query(rule["expr"])  # raises on a parse error
    loaded = [r for g in prom.api("rules")["groups"] for r in g["rules"]]
    assert sorted(r["name"] for r in loaded) == sorted(r["alert"] for r in ALERTS)
    prom.wait(
        lambda: all(r.get("health") == "ok" for g in prom.api("rules")["groups"] for r in g["rules"]),
        30,
        "every rule evaluated without error",
    )


def test_a_dead_backend_raises_its_alert(live_stack: LiveStack) -> None:
    prom = live_stack.prometheus

    def pending() -> bool:
        return any(
            a["labels"]["alertname"] == "LLMBackendUnhealthy" and a["labels"].get("model") == live_stack.broken_model
            for a in prom.api("alerts")["alerts"]
        )

    prom.wait(pending, 60, "LLMBackendUnhealthy for the model without a backend")
