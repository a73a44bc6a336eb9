"""Scrape configuration derived from the catalogue, remote target files and `hxp prometheus register`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hxp.core import catalogue
from hxp.core.paths import PROJECT_ROOT
from hxp.deploy.compose import DEV_ENGINE_PORT
from hxp.monitoring import prometheus_config, register, targets
from tests.support.prometheus import PrometheusServer
from tests.support.servers import free_port

HXP = [sys.executable, "-m", "hxp.cli"]


def promtool_check(path: Path) -> None:
    result = subprocess.run(["promtool", "check", "config", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def hxp(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*HXP, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env}, cwd=PROJECT_ROOT
    )


def test_committed_compose_config_is_current_and_valid(tmp_path: Path) -> None:
    result = hxp("prometheus", "generate", "--for", "compose", "--out", str(tmp_path), env={})
    assert result.returncode == 0, result.stderr
    committed = PROJECT_ROOT / "prometheus" / "prometheus.yml"
    assert committed.read_text() == (tmp_path / "prometheus.yml").read_text(), (
        "prometheus/prometheus.yml is stale: run `make prometheus-generate`"
    )
    promtool_check(committed)


def test_every_catalogue_model_is_a_labelled_engine_target() -> None:
    cat = catalogue.load()
    config = prometheus_config.development_config(cat, targets.for_compose(cat), rule_files=[])
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"llm-gateway", "llm-server-models", "node", "postgres", "redis", "alertmanager", "prometheus"}
    engines = {g["labels"]["model"]: g["targets"] for g in jobs["llm-server-models"]["static_configs"]}
    # where the development stack's gateway reaches them: the model's name on the engines' container port
    assert engines == {m.name: [f"{m.name}:{DEV_ENGINE_PORT}"] for m in cat.models}


def test_engine_targets_follow_the_gateways_backends() -> None:
    cat = catalogue.load()
    first, second = cat.models[0].name, cat.models[1].name
    env = {
        "HXP_BACKENDS": json.dumps({first: ["http://127.0.0.1:21000/v1", "http://10.0.0.5:21001/v1"]}),
        "HXP_BACKEND_URL_TEMPLATE": "http://127.0.0.1:{port}/v1",
        "HXP_GATEWAY_PORT": "18000",
    }
    endpoints = targets.for_host(cat, "monitored.example", env)
    assert endpoints.engines[first] == ["monitored.example:21000", "10.0.0.5:21001"]
    assert endpoints.engines[second] == [f"monitored.example:{cat.models[1].port}"]
    assert endpoints.gateway == ["monitored.example:18000"]


def test_native_config_is_valid(tmp_path: Path) -> None:
    result = hxp("prometheus", "generate", "--for", "native", "--out", str(tmp_path), env={})
    assert result.returncode == 0, result.stderr
    promtool_check(tmp_path / "prometheus.yml")
    assert "127.0.0.1:8000" in (tmp_path / "prometheus.yml").read_text()


def test_remote_generation_needs_a_public_host(tmp_path: Path) -> None:
    result = hxp("prometheus", "generate", "--for", "remote", "--out", str(tmp_path), env={"HXP_PUBLIC_HOST": ""})
    assert result.returncode != 0 and "HXP_PUBLIC_HOST" in result.stderr


def test_remote_scrape_snippet_is_a_valid_config(tmp_path: Path) -> None:
    result = hxp(
        "prometheus",
        "generate",
        "--for",
        "remote",
        "--out",
        str(tmp_path),
        env={"HXP_PUBLIC_HOST": "127.0.0.1", "HXP_PROMETHEUS_SD_DIR": "ops@127.0.0.1:/srv/file_sd"},
    )
    assert result.returncode == 0, result.stderr
    snippet = yaml.safe_load((tmp_path / "scrape-config.yml").read_text())
    assert snippet[0]["file_sd_configs"][0]["files"] == ["/srv/file_sd/hxp-*.json"]
    (tmp_path / "prometheus.yml").write_text(prometheus_config.dump({"scrape_configs": snippet}))
    promtool_check(tmp_path / "prometheus.yml")
    models = json.loads((tmp_path / "hxp-llm-server-models.json").read_text())
    assert {g["labels"]["model"] for g in models} == set(catalogue.load().names)


@pytest.fixture
def remote_prometheus(tmp_path: Path):
    """A Prometheus standing in for the operators' one: reads target files from sd/, scrapes nothing real."""
    sd = tmp_path / "sd"
    sd.mkdir()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        prometheus_config.dump(
            {
                "global": {"scrape_interval": "1m"},
                "scrape_configs": [
                    {
                        **prometheus_config.remote_scrape_config(str(sd)),
                        "file_sd_configs": [{"files": [f"{sd}/hxp-*.json"], "refresh_interval": "1s"}],
                    }
                ],
            }
        )
    )
    server = PrometheusServer(config)
    server.start()
    yield server, sd
    server.stop()


def test_register_writes_targets_the_remote_prometheus_loads(remote_prometheus, tmp_path: Path) -> None:
    server, sd = remote_prometheus
    rules = tmp_path / "rules"
    result = hxp(
        "prometheus",
        "register",
        env={
            "HXP_PUBLIC_HOST": "127.0.0.1",
            "HXP_PROMETHEUS_SD_DIR": str(sd),
            "HXP_PROMETHEUS_RULES_DIR": str(rules),
            "HXP_REMOTE_PROMETHEUS_URL": server.url,
        },
    )
    assert result.returncode == 0, result.stderr
    assert "reloaded" in result.stdout
    cat = catalogue.load()
    server.wait(lambda: len(server.targets()) == len(cat.models) + 4, 30, "targets from the file_sd files")
    found = {(t["labels"]["job"], t["labels"].get("model", "")) for t in server.targets()}
    assert found == {("llm-server-models", m.name) for m in cat.models} | {
        ("llm-gateway", ""),
        ("node", ""),
        ("postgres", ""),
        ("redis", ""),
    }
    assert sorted(p.name for p in rules.iterdir()) == sorted(
        f"hxp-{p.name}" for p in prometheus_config.RULES_DIR.glob("*.yml")
    )


def test_register_over_ssh_uses_the_configured_command(tmp_path: Path) -> None:
    """An ssh destination is written through HXP_SSH (here a stand-in running the remote command locally)."""
    fake_ssh = tmp_path / "fake-ssh"
    fake_ssh.write_text('#!/bin/sh\necho "$1" >> "$(dirname "$0")/hosts"\nexec sh -c "$2"\n')
    fake_ssh.chmod(fake_ssh.stat().st_mode | stat.S_IEXEC)
    target = tmp_path / "remote" / "file_sd"
    unreachable = f"http://127.0.0.1:{free_port()}"
    result = hxp(
        "prometheus",
        "register",
        env={
            "HXP_PUBLIC_HOST": "127.0.0.1",
            "HXP_PROMETHEUS_SD_DIR": f"ops@127.0.0.1:{target}",
            "HXP_SSH": str(fake_ssh),
            "HXP_REMOTE_PROMETHEUS_URL": unreachable,
        },
    )
    assert result.returncode == 0, result.stderr
    assert "not reachable" in result.stdout
    assert sorted(p.name for p in target.iterdir()) == [
        "hxp-llm-gateway.json",
        "hxp-llm-server-models.json",
        "hxp-node.json",
        "hxp-postgres.json",
        "hxp-redis.json",
    ]
    assert set((tmp_path / "hosts").read_text().split()) == {"ops@127.0.0.1"}


def test_reload_reports_a_disabled_lifecycle_api(tmp_path: Path) -> None:
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config.dump({"scrape_configs": []}))
    server = PrometheusServer(config, lifecycle=False)
    server.start()
    try:
        ok, message = register.reload(server.url)
    finally:
        server.stop()
    assert not ok and "--web.enable-lifecycle" in message
