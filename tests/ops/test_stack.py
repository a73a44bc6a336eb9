"""Where the operator commands find the stack: the native one from the environment (engines from
HXP_BACKENDS, else `hxp run`'s layout), the compose one from its published ports and env files."""
from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from hxp import catalogue
from hxp.deploy import backup
from hxp.ops import stack as ops_stack
from tests.support.servers import free_port

CATALOGUE = catalogue.load(profile="cpu")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HXP_BACKENDS", "HXP_BACKEND_URL_TEMPLATE", "HXP_GATEWAY_URL", "HXP_MASTER_KEY",
                 "HXP_PUBLISH_ADDRESS", "HXP_PROMETHEUS_URL", "HXP_ALERTMANAGER_URL", "HXP_GRAFANA_URL", "GRAFANA_USER",
                 "GRAFANA_PASSWORD", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HXP_PROFILE", "cpu")


def _project(tmp_path: Path) -> Path:
    env = tmp_path / "env"
    env.mkdir()
    (env / "postgres.env").write_text("POSTGRES_USER=hxp\nPOSTGRES_DB=hxp\nPOSTGRES_PASSWORD=p@ss:word\n")
    (env / "gateway.env").write_text("HXP_MASTER_KEY=sk-hxp-compose-key\n")
    (env / "grafana.env").write_text("GF_SECURITY_ADMIN_USER=admin\nGF_SECURITY_ADMIN_PASSWORD=gpw\n")
    return tmp_path


def test_the_compose_stack_is_found_through_its_published_ports(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    project = _project(tmp_path)
    monkeypatch.setenv("HXP_PUBLISH_ADDRESS", "10.1.2.3")
    found = ops_stack.load(compose=True, project=project, grafana="http://grafana.example:3000")
    assert found.database_url == "postgresql://hxp:p%40ss%3Aword@10.1.2.3:5432/hxp"
    assert found.master_key == "sk-hxp-compose-key" and found.gateways == ["http://127.0.0.1:8000"]
    assert found.qdrant == {"url": "http://10.1.2.3:6333"} and found.redis_url is None
    assert found.prometheus_url == "http://127.0.0.1:9090" and found.grafana_auth == ("admin", "gpw")
    assert found.guessed == {"prometheus", "alertmanager"}, "a URL given is never taken for a guess"
    with httpx.Client() as client:
        engines, source = found.engines(client)
    assert engines == {m.name: [f"http://10.1.2.3:{m.port}/v1"] for m in CATALOGUE.models}
    assert source == "compose's published ports"
    assert backup.Stores.from_compose(project).database_url == found.database_url


def test_the_compose_stack_without_env_files_says_so(tmp_path: Path) -> None:
    found = ops_stack.load(compose=True, project=tmp_path)
    assert found.database_url is None and "postgres.env is missing" in found.database_problem
    assert found.master_key is None


def test_native_engines_come_from_the_environment_or_the_runner_layout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HXP_GATEWAY_URL", f"http://127.0.0.1:{free_port()}")  # nothing answers there
    with httpx.Client() as client:
        engines, source = ops_stack.load().engines(client)
        chat, embedding = CATALOGUE.chat_models, CATALOGUE.embedding_models
        assert engines == {**{m.name: [f"http://127.0.0.1:{chat[0].port}/v1"] for m in chat},
                           **{m.name: [f"http://127.0.0.1:{embedding[0].port}/v1"] for m in embedding}}
        assert source.startswith("the layout of `hxp run`")
        monkeypatch.setenv("HXP_BACKENDS", json.dumps({"phi-3-mini": ["http://10.0.0.9:9000/v1/"]}))
        engines, source = ops_stack.load().engines(client)
    hermes = CATALOGUE.get("hermes-2")
    assert engines["phi-3-mini"] == ["http://10.0.0.9:9000/v1"], "as the gateway routes it"
    assert engines["hermes-2"] == [f"http://127.0.0.1:{hermes.port}/v1"], "the others on the URL template"
    assert source == "HXP_BACKENDS / HXP_BACKEND_URL_TEMPLATE"
