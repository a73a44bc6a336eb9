"""The live observability stack: a 2-worker gateway on a real CPU engine, PostgreSQL, Redis, the three
exporters and a Prometheus scraping them every second with the alert rules loaded, after known traffic."""

from __future__ import annotations

import secrets
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from hxp.core import catalogue
from hxp.monitoring import prometheus_config, targets
from tests.support.exporters import Exporter
from tests.support.gateway import Gateway, GatewayFactory
from tests.support.prometheus import PrometheusServer
from tests.support.servers import free_port

GATEWAY_START_TIMEOUT_S = 300  # two workers each importing LiteLLM on a busy 2-core machine


@dataclass
class LiveStack:
    gateway: Gateway
    prometheus: PrometheusServer
    chat_model: str
    broken_model: str  # an embedding model whose backend is down: 5xx, llm_backend_up 0
    metrics_token: str  # /metrics needs it (HXP_METRICS_TOKEN); Prometheus sends it
    keys: dict[str, str] = field(default_factory=dict)  # alias -> secret
    statuses: list[int] = field(default_factory=list)  # every status the traffic got


def _traffic(stack: LiveStack) -> None:
    gw, model = stack.gateway, stack.chat_model
    stack.keys = {
        "team-live": gw.create_key(alias="team-live"),
        "team-limited": gw.create_key(alias="team-limited", rpm=1),
    }
    key = stack.keys["team-live"]
    for i in range(4):
        stack.statuses.append(gw.chat(key, model, content=f"Say {i}", max_tokens=8).status_code)
    for _ in range(2):
        stack.statuses.append(
            gw.chat(
                key, model, content="Count to three", max_tokens=8, stream=True, stream_options={"include_usage": True}
            ).status_code
        )
    for _ in range(2):  # the second is a response-cache hit
        stack.statuses.append(gw.chat(key, model, content="cache me", max_tokens=8, temperature=0).status_code)
    for _ in range(3):  # rpm=1: two 429
        stack.statuses.append(gw.chat(stack.keys["team-limited"], model, content="hi", max_tokens=4).status_code)
    stack.statuses.append(gw.chat("sk-not-a-key-" + secrets.token_hex(8), model).status_code)
    stack.statuses.append(
        httpx.post(
            f"{gw.base_url}/embeddings",
            json={"model": stack.broken_model, "input": "x"},
            headers=gw.headers(key),
            timeout=60,
        ).status_code
    )


@pytest.fixture(scope="package")
def live_stack(chat_engine, postgres, redis_server) -> Iterator[LiveStack]:
    cat = catalogue.load()
    chat_model = chat_engine.names[0]
    broken = cat.embedding_models[0].name
    workdir = Path(tempfile.mkdtemp(prefix="hxp-obs-"))
    engine_url = chat_engine.base_url.rstrip("/") + "/v1"
    backends = {name: [engine_url] for name in chat_engine.names}
    backends[broken] = [f"http://127.0.0.1:{free_port()}/v1"]  # nothing listens there
    exporters: list[Exporter] = []
    factory = GatewayFactory()
    prometheus: PrometheusServer | None = None
    token = "metrics-" + secrets.token_hex(16)
    (workdir / "metrics-token").write_text(token)
    try:
        gateway = factory(
            backends,
            env={"DATABASE_URL": postgres.url, "REDIS_URL": redis_server.url, "HXP_METRICS_TOKEN": token},
            workers=2,
            wait=False,
        )
        exporters = [
            Exporter.node().start(workdir / "node.log"),
            Exporter.postgres(postgres.url).start(workdir / "postgres-exporter.log"),
            Exporter.redis(redis_server.url).start(workdir / "redis-exporter.log"),
        ]
        gateway.wait_ready(GATEWAY_START_TIMEOUT_S)
        prometheus = PrometheusServer(workdir / "prometheus.yml")
        engine_address = urlsplit(chat_engine.base_url).netloc
        endpoints = targets.Endpoints(
            gateway=[f"127.0.0.1:{gateway.port}"],
            engines={name: [engine_address] for name in chat_engine.names},
            exporters={
                targets.JOB_NODE: [exporters[0].address],
                targets.JOB_POSTGRES: [exporters[1].address],
                targets.JOB_REDIS: [exporters[2].address],
            },
            own={targets.JOB_PROMETHEUS: [f"127.0.0.1:{prometheus.port}"]},
        )
        config = prometheus_config.development_config(
            cat,
            endpoints,
            rule_files=[str(prometheus_config.RULES_DIR / "*.yml")],
            scrape_interval="1s",
            job_intervals=False,
            gateway_token_file=str(workdir / "metrics-token"),
        )
        (workdir / "prometheus.yml").write_text(prometheus_config.dump(config))
        prometheus.start()
        stack = LiveStack(gateway, prometheus, chat_model, broken, token)
        _traffic(stack)
        yield stack
    finally:
        if prometheus is not None:
            prometheus.stop()
        factory.close()
        for exporter in exporters:
            exporter.stop()
        shutil.rmtree(workdir, ignore_errors=True)
