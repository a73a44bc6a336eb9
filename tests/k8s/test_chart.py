"""The chart is what the catalogue gives, passes helm lint --strict and renders for every profile."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from hxp.cli import main
from hxp.core.paths import PROJECT_ROOT
from hxp.deploy import compose
from hxp.k8s import chart
from tests.support.helm import RENDERINGS, Rendered, Rendering, helm, render


def test_checked_in_chart_matches_the_catalogue() -> None:
    assert chart.stale() == [], "run `hxp k8s generate` and commit deploy/helm/hxp"


@pytest.fixture
def chart_copy(tmp_path: Path) -> Path:
    out = tmp_path / "hxp"
    shutil.copytree(chart.CHART_DIR, out)
    return out


def test_generate_check_follows_the_catalogue(chart_copy: Path, tmp_path: Path) -> None:
    raw = yaml.safe_load((PROJECT_ROOT / "models.yaml").read_text())
    raw["models"][0]["profiles"]["gpu"]["vllm"]["max_num_seqs"] = 7
    changed = tmp_path / "models.yaml"
    changed.write_text(yaml.safe_dump(raw))
    args = ["k8s", "generate", "--out", str(chart_copy), "--catalogue", str(changed)]
    assert main([*args, "--check"]) == 1
    assert main(args) == 0
    assert main([*args, "--check"]) == 0
    engine = yaml.safe_load((chart_copy / "values.yaml").read_text())["engines"][raw["models"][0]["name"]]
    assert engine["args"][engine["args"].index("--max-num-seqs") + 1] == "7"


def test_a_file_the_sources_no_longer_have_is_stale_and_removed(chart_copy: Path) -> None:
    (chart_copy / "files" / "rules" / "removed_alerts.yml").write_text("groups: []\n")
    assert chart.stale(chart_copy) == ["files/rules/removed_alerts.yml"]
    chart.write(chart_copy)
    assert chart.stale(chart_copy) == []


@pytest.mark.parametrize("name", RENDERINGS)
def test_helm_lint_strict(name: str) -> None:
    done = helm("lint", "--strict", str(chart.CHART_DIR), *RENDERINGS[name].helm_args())
    assert done.returncode == 0, done.stdout + done.stderr


def test_helm_lint_strict_fails_on_a_broken_template(chart_copy: Path) -> None:
    (chart_copy / "templates" / "broken.yaml").write_text("kind: ConfigMap\nmetadata: {{ .Values.nope.deeper }}\n")
    done = helm("lint", "--strict", str(chart_copy), *RENDERINGS["gpu"].helm_args())
    assert done.returncode != 0


def test_the_gateway_needs_a_master_key_or_an_existing_secret() -> None:
    done = helm("template", "hxp", str(chart.CHART_DIR))
    assert done.returncode != 0 and "gateway.secrets.masterKey" in done.stderr


def test_the_in_chart_stores_need_passwords() -> None:
    done = helm("template", "hxp", str(chart.CHART_DIR), *RENDERINGS["gpu"].helm_args(), "--set", "redis.enabled=true")
    assert done.returncode != 0 and "redis.auth.password" in done.stderr


def _engines(docs: list[dict]) -> set[str]:
    return {
        d["metadata"]["labels"]["hxp/engine"]
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["labels"]["app.kubernetes.io/component"] == "engine"
    }


@pytest.mark.parametrize("name", RENDERINGS)
def test_each_profile_renders_the_engines_compose_has(name: str, rendered: dict[str, Rendered]) -> None:
    """values-cpu.yaml's nulls remove the gpu engines: exactly the catalogue's engines of the profile remain."""
    assert _engines(rendered[name].docs) == set(compose.engines(rendered[name].cat))


def test_values_override_one_engine(rendered: dict[str, Rendered]) -> None:
    replicas = {
        d["metadata"]["labels"]["hxp/engine"]: d["spec"]["replicas"]
        for d in rendered["multi-replica"].docs
        if d["kind"] == "Deployment" and "hxp/engine" in d["metadata"]["labels"]
    }
    assert replicas.pop("phi-3-mini") == 6 and set(replicas.values()) == {3}


def test_optional_objects_follow_their_switches() -> None:
    kinds = {
        d["kind"]
        for d in render(
            Rendering("gpu", ("ci/gpu-values.yaml",)),
            "--set",
            "metrics.serviceMonitor.enabled=false,metrics.prometheusRule.enabled=false,"
            "networkPolicy.enabled=false,gateway.autoscaling.enabled=false,"
            "gateway.pdb.create=false",
        )
    }
    assert not kinds & {
        "ServiceMonitor",
        "PrometheusRule",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }


def test_the_prometheus_rule_carries_every_alert_rule(rendered: dict[str, Rendered]) -> None:
    rule = next(d for d in rendered["gpu"].docs if d["kind"] == "PrometheusRule")
    source = [
        g
        for p in sorted((PROJECT_ROOT / "prometheus" / "rules").glob("*.yml"))
        for g in yaml.safe_load(p.read_text())["groups"]
    ]
    assert rule["spec"]["groups"] == source


@pytest.mark.parametrize(
    ("setting", "error"),
    [
        ("engineDefault.replicas=2", "additional properties 'engineDefault' not allowed"),
        ("engines.phi-3-mini.replica=2", "invalid propertyName 'replica'"),
        ("gateway.replicas=two", "got string, want integer"),
        ("engines.extra.port=9000", "missing properties"),
        ("inferencePool.endpointPicker.failureMode=Open", "value must be one of"),
    ],
)
def test_values_schema_refuses_a_wrong_value(setting: str, error: str) -> None:
    done = helm("template", "hxp", str(chart.CHART_DIR), *RENDERINGS["gpu"].helm_args(), "--set", setting)
    assert done.returncode != 0 and error in done.stderr, done.stderr
