"""Where the operator commands find the stack: the native one from the environment (engines from
HXP_BACKENDS, else `hxp run`'s layout), the compose one from its published ports and env files."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from hxp.core import catalogue
from hxp.deploy import backup
from hxp.ops import stack as ops_stack
from tests.support.servers import free_port

CATALOGUE = catalogue.load(profile="cpu")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "HXP_BACKENDS",
        "HXP_BACKEND_URL_TEMPLATE",
        "HXP_GATEWAY_URL",
        "HXP_MASTER_KEY",
        "HXP_PUBLISH_ADDRESS",
        "HXP_PROMETHEUS_URL",
        "HXP_ALERTMANAGER_URL",
        "HXP_GRAFANA_URL",
        "GRAFANA_USER",
        "GRAFANA_PASSWORD",
        "REDIS_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HXP_PROFILE", "cpu")


FAKE_DOCKER = """#!{python}
# `docker compose` as a running stack answers it: config --services, port SERVICE PORT, ps --format json
import json, os, sys
spec = json.load(open(os.environ["FAKE_COMPOSE_SPEC"]))
args = sys.argv[2:]
if args[:2] == ["config", "--services"]:
    print("\\n".join(spec))
elif args[0] == "port":
    print(spec.get(args[1], {{}}).get(args[2], ""))
elif args[:3] == ["ps", "--format", "json"]:
    for service, ports in spec.items():
        publishers = [{{"URL": a.rsplit(":", 1)[0], "TargetPort": int(t), "PublishedPort": int(a.rsplit(":", 1)[1]),
                       "Protocol": "tcp"}} for t, a in ports.items()]
        print(json.dumps({{"Service": service, "Publishers": publishers}}))
else:
    sys.exit("unexpected: " + " ".join(sys.argv))
"""


class _Engine:
    """An OpenAI server stand-in listing ``names`` at /v1/models (and 401 for anything else)."""

    def __init__(self, names: list[str]) -> None:
        body = json.dumps({"data": [{"id": n} for n in names]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                ok = self.path == "/v1/models" and names
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", str(len(body) if ok else 0))
                self.end_headers()
                if ok:
                    self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def compose_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    """A project whose `docker compose` reports a running development stack: shared chat engine, embedding
    engine, gateway (answers 401), PostgreSQL and Grafana published; no Qdrant, Prometheus or Alertmanager."""
    env = tmp_path / "env"
    env.mkdir()
    (env / "postgres.env").write_text("POSTGRES_USER=hxp\nPOSTGRES_DB=hxp\nPOSTGRES_PASSWORD=p@ss:word\n")
    (env / "gateway.env").write_text("HXP_MASTER_KEY=sk-hxp-compose-key\n")
    (env / "grafana.env").write_text("GF_SECURITY_ADMIN_USER=admin\nGF_SECURITY_ADMIN_PASSWORD=gpw\n")
    servers = {
        "chat": _Engine([m.name for m in CATALOGUE.chat_models]),
        "embedding": _Engine([m.name for m in CATALOGUE.embedding_models]),
        "gateway": _Engine([]),
    }
    ports = {"postgres": free_port(), "grafana": free_port(), **{k: v.port for k, v in servers.items()}}
    spec = {
        "postgres": {"5432": f"127.0.0.1:{ports['postgres']}"},
        "gateway": {"8000": f"0.0.0.0:{ports['gateway']}"},
        "chat-engine": {"8000": f"127.0.0.1:{ports['chat']}"},
        CATALOGUE.embedding_models[0].name: {"8000": f"127.0.0.1:{ports['embedding']}"},
        "grafana": {"3000": f"127.0.0.1:{ports['grafana']}"},
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER.format(python=sys.executable))
    (bin_dir / "docker").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_COMPOSE_SPEC", str(tmp_path / "spec.json"))
    monkeypatch.delenv("HXP_ENV_DIR", raising=False)
    yield {"project": tmp_path, **ports}
    for server in servers.values():
        server.server.shutdown()
        server.server.server_close()


def test_the_compose_stack_is_found_where_docker_publishes_it(compose_project: dict) -> None:
    project, ports = compose_project.pop("project"), compose_project
    found = ops_stack.load(compose=True, project=project, prometheus="http://prometheus.example:9090")
    assert found.database_url == f"postgresql://hxp:p%40ss%3Aword@127.0.0.1:{ports['postgres']}/hxp"
    assert found.master_key == "sk-hxp-compose-key" and found.gateways == [f"http://127.0.0.1:{ports['gateway']}"]
    assert found.qdrant == {} and found.redis_url is None, "no Qdrant server: the gateway keeps vectors locally"
    assert found.prometheus_url == "http://prometheus.example:9090", "a URL given wins"
    assert found.alertmanager_url is None and found.grafana_url == f"http://127.0.0.1:{ports['grafana']}"
    assert found.grafana_auth == ("admin", "gpw")
    with httpx.Client() as client:
        engines, source = found.engines(client)
    assert engines == {
        **{m.name: [f"http://127.0.0.1:{ports['chat']}/v1"] for m in CATALOGUE.chat_models},
        **{m.name: [f"http://127.0.0.1:{ports['embedding']}/v1"] for m in CATALOGUE.embedding_models},
    }
    assert source == "the running compose services (docker compose ps)"
    stores = backup.Stores.from_compose(project)
    assert stores.database_url == found.database_url and stores.qdrant_url is None


def test_the_compose_stack_without_env_files_or_docker_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no docker at all
    found = ops_stack.load(compose=True, project=tmp_path)
    assert found.database_url is None and "postgres.env is missing" in found.database_problem
    assert found.master_key is None and found.gateways == ["http://127.0.0.1:8000"]
    with httpx.Client() as client:
        engines, source = found.engines(client)
    assert set(map(tuple, engines.values())) == {()} and "docker is not installed" in source


def test_native_engines_come_from_the_environment_or_the_runner_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HXP_GATEWAY_URL", f"http://127.0.0.1:{free_port()}")  # nothing answers there
    with httpx.Client() as client:
        engines, source = ops_stack.load().engines(client)
        chat, embedding = CATALOGUE.chat_models, CATALOGUE.embedding_models
        assert engines == {
            **{m.name: [f"http://127.0.0.1:{chat[0].port}/v1"] for m in chat},
            **{m.name: [f"http://127.0.0.1:{embedding[0].port}/v1"] for m in embedding},
        }
        assert source.startswith("the layout of `hxp run`")
        monkeypatch.setenv("HXP_BACKENDS", json.dumps({"phi-3-mini": ["http://10.0.0.9:9000/v1/"]}))
        engines, source = ops_stack.load().engines(client)
    hermes = CATALOGUE.get("hermes-2")
    assert engines["phi-3-mini"] == ["http://10.0.0.9:9000/v1"], "as the gateway routes it"
    assert engines["hermes-2"] == [f"http://127.0.0.1:{hermes.port}/v1"], "the others on the URL template"
    assert source == "HXP_BACKENDS / HXP_BACKEND_URL_TEMPLATE"
