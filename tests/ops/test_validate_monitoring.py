"""`hxp validate`'s monitoring checks: a real Prometheus (a target down, the alert rules loaded or not),
an Alertmanager address where nothing answers, and Grafana's dashboard API (a stand-in: no Grafana
server can run here) with and without the credentials it asks for."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from hxp.core import catalogue
from hxp.monitoring import prometheus_config, targets
from hxp.monitoring.dashboards import DASHBOARDS
from hxp.ops import stack as ops_stack
from hxp.ops.validate import Validation
from tests.support.prometheus import PrometheusServer
from tests.support.servers import free_port

GRAFANA_AUTH = ("admin", "grafana-pw")


class _Http:
    """A small HTTP server on 127.0.0.1 answering GETs with ``answer(path, headers) -> (status, body)``."""

    def __init__(self, answer) -> None:  # noqa: ANN001
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                status, body = answer(self.path, self.headers)
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def engine_metrics() -> Iterator[_Http]:
    server = _Http(lambda path, headers: (200, b"vllm:num_requests_running 0\n") if path == "/metrics" else (404, b""))
    yield server
    server.close()


def _prometheus_findings(tmp_path: Path, engine: str, rules: bool, monkeypatch: pytest.MonkeyPatch) -> dict[str, dict]:
    """The Prometheus checks against a real Prometheus scraping a stopped gateway and a live engine stand-in."""
    cat = catalogue.load()
    endpoints = targets.Endpoints(
        gateway=[f"127.0.0.1:{free_port()}"],  # nothing listens: down
        engines={name: [engine] for name in cat.names},
        exporters={},
    )
    config = prometheus_config.development_config(
        cat,
        endpoints,
        rule_files=[str(prometheus_config.RULES_DIR / "*.yml")] if rules else [],
        scrape_interval="1s",
        job_intervals=False,
    )
    (tmp_path / "prometheus.yml").write_text(prometheus_config.dump(config))
    server = PrometheusServer(tmp_path / "prometheus.yml")
    server.start()
    try:

        def scraped() -> bool:
            found = server.targets()
            return len(found) == 1 + len(cat.names) and all(t["health"] != "unknown" for t in found)

        server.wait(scraped, 60, "every target scraped once")
        return _findings(monkeypatch, "prometheus", prometheus=server.url)
    finally:
        server.stop()


def _findings(monkeypatch: pytest.MonkeyPatch, method: str, **urls: str | None) -> dict[str, dict]:
    for name in ("HXP_PROMETHEUS_URL", "HXP_ALERTMANAGER_URL", "HXP_GRAFANA_URL", "GRAFANA_USER", "GRAFANA_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    stack = ops_stack.load(**urls)
    with httpx.Client() as client:
        validation = Validation(stack, client)
        getattr(validation, method)()
    return {f.check: f.__dict__ for f in validation.findings}


def test_prometheus_names_a_down_target_and_finds_the_alert_rules(
    tmp_path: Path, engine_metrics: _Http, monkeypatch: pytest.MonkeyPatch
) -> None:
    found = _prometheus_findings(tmp_path, engine_metrics.address, True, monkeypatch)
    assert found["prometheus targets"]["status"] == "FAIL"
    assert found["prometheus targets"]["detail"].startswith("down: llm-gateway 127.0.0.1:")
    assert "llm-server-models" not in found["prometheus targets"]["detail"]
    assert found["prometheus alert rules"]["status"] == "PASS"


def test_prometheus_without_the_rules_is_named(
    tmp_path: Path, engine_metrics: _Http, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = _prometheus_findings(tmp_path, engine_metrics.address, False, monkeypatch)["prometheus alert rules"]
    assert rules["status"] == "FAIL" and "LLMServiceDown" in rules["detail"] and "rule_files" in rules["fix"]


def test_monitoring_without_urls_is_skipped_and_a_dead_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    found = _findings(monkeypatch, "alertmanager")
    assert found["alertmanager"]["status"] == "SKIP"
    found = _findings(monkeypatch, "alertmanager", alertmanager=f"http://127.0.0.1:{free_port()}")
    assert found["alertmanager"]["status"] == "FAIL" and "Connect" in found["alertmanager"]["detail"]


def test_grafana_dashboards_need_the_three_and_the_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    present = {d.uid for d in DASHBOARDS[:2]}
    token = base64.b64encode(":".join(GRAFANA_AUTH).encode()).decode()

    def answer(path: str, headers) -> tuple[int, bytes]:  # noqa: ANN001
        if headers.get("Authorization") != f"Basic {token}":
            return 401, b'{"message": "Unauthorized"}'
        uid = path.rsplit("/", 1)[-1]
        return (200, b'{"dashboard": {}}') if uid in present else (404, b'{"message": "Dashboard not found"}')

    grafana = _Http(answer)
    try:
        url = f"http://{grafana.address}"
        found = _findings(monkeypatch, "grafana", grafana=url)
        assert (
            found["grafana dashboards"]["status"] == "FAIL"
            and "refused the credentials" in found["grafana dashboards"]["detail"]
        )
        monkeypatch.setenv("GRAFANA_USER", GRAFANA_AUTH[0])
        monkeypatch.setenv("GRAFANA_PASSWORD", GRAFANA_AUTH[1])
        stack = ops_stack.load(grafana=url)
        with httpx.Client() as client:
            validation = Validation(stack, client)
            validation.grafana()
            (finding,) = validation.findings
            assert finding.status == "FAIL" and finding.detail == f"missing: {DASHBOARDS[2].title} (HTTP 404)"
            present.add(DASHBOARDS[2].uid)
            validation.findings.clear()
            validation.grafana()
        assert validation.findings[0].status == "PASS"
    finally:
        grafana.close()
