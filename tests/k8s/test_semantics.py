"""The checks only an API server or a controller would otherwise make (hxp.k8s.checks): clean on every
rendering, and each one catches a violation planted in a rendering."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from hxp.cli import main
from hxp.k8s import checks
from tests.support.helm import RENDERINGS, Rendered

Docs = list[dict[str, Any]]


@pytest.mark.parametrize("name", RENDERINGS)
def test_renderings_have_no_problems(name: str, rendered: dict[str, Rendered]) -> None:
    r = rendered[name]
    assert checks.run(r.docs, r.cat, r.external) == []


def _container(doc: dict[str, Any]) -> dict[str, Any]:
    return doc["spec"]["template"]["spec"]["containers"][0]


def _backends(r: Rendered, docs: Docs) -> dict[str, list[str]]:
    return json.loads(r.get("ConfigMap", "gateway", docs)["data"]["HXP_BACKENDS"])


def _set_backends(r: Rendered, docs: Docs, backends: dict[str, list[str]]) -> None:
    r.get("ConfigMap", "gateway", docs)["data"]["HXP_BACKENDS"] = json.dumps(backends)


def plant_service_name(r: Rendered, docs: Docs) -> None:
    r.get("Service", "openchat-3-5", docs)["metadata"]["name"] = "openchat-3.5"


def plant_label_value(r: Rendered, docs: Docs) -> None:
    r.get("Deployment", "gateway", docs)["metadata"]["labels"]["hxp/models"] = "a,b"


def plant_port_name(r: Rendered, docs: Docs) -> None:
    _container(r.get("Deployment", "gateway", docs))["ports"][0]["name"] = "gateway-http-port"


def plant_workload_selector(r: Rendered, docs: Docs) -> None:
    r.get("Deployment", "hermes-2", docs)["spec"]["selector"]["matchLabels"]["hxp/engine"] = "phi-3-mini"


def plant_service_selector(r: Rendered, docs: Docs) -> None:
    r.get("Service", "hermes-2", docs)["spec"]["selector"]["hxp/engine"] = "hermes2"


def plant_pdb_selector(r: Rendered, docs: Docs) -> None:
    r.get("PodDisruptionBudget", "gateway", docs)["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] = (
        "api"
    )


def plant_policy_peer(r: Rendered, docs: Docs) -> None:
    peer = r.get("NetworkPolicy", "hermes-2", docs)["spec"]["ingress"][0]["from"][0]
    peer["podSelector"]["matchLabels"]["app.kubernetes.io/component"] = "gw"


def plant_hpa_target(r: Rendered, docs: Docs) -> None:
    r.get("HorizontalPodAutoscaler", "gateway", docs)["spec"]["scaleTargetRef"]["name"] = "hxp-gw"


def plant_monitor_port(r: Rendered, docs: Docs) -> None:
    r.get("ServiceMonitor", "gateway-metrics", docs)["spec"]["endpoints"][0]["port"] = "metrics"


def plant_probe_port(r: Rendered, docs: Docs) -> None:
    _container(r.get("Deployment", "gateway", docs))["readinessProbe"]["httpGet"]["port"] = "metrics"


def plant_target_port(r: Rendered, docs: Docs) -> None:
    r.get("Service", "phi-3-mini", docs)["spec"]["ports"][0]["targetPort"] = 8000


def plant_pool_port(r: Rendered, docs: Docs) -> None:
    r.get("InferencePool", "phi-3-mini", docs)["spec"]["targetPorts"][0]["number"] = 8000


def plant_missing_secret(r: Rendered, docs: Docs) -> None:
    docs.remove(r.get("Secret", "gateway", docs))


def plant_missing_key(r: Rendered, docs: Docs) -> None:
    del r.get("Secret", "stores", docs)["stringData"]["redis-password"]


def plant_missing_configmap(r: Rendered, docs: Docs) -> None:
    docs.remove(r.get("ConfigMap", "chat-templates", docs))


def plant_missing_claim(r: Rendered, docs: Docs) -> None:
    docs.remove(r.get("PersistentVolumeClaim", "hermes-2-cache", docs))


def plant_bad_quantity(r: Rendered, docs: Docs) -> None:
    r.get("PersistentVolumeClaim", "hermes-2-cache", docs)["spec"]["resources"]["requests"]["storage"] = "200GB"


def plant_request_over_limit(r: Rendered, docs: Docs) -> None:
    _container(r.get("Deployment", "gateway", docs))["resources"]["requests"]["memory"] = "5Gi"


def plant_fractional_gpu(r: Rendered, docs: Docs) -> None:
    _container(r.get("Deployment", "hermes-2", docs))["resources"]["limits"]["nvidia.com/gpu"] = "1.5"


def plant_big_configmap(r: Rendered, docs: Docs) -> None:
    r.get("ConfigMap", "chat-templates", docs)["data"]["padding"] = "x" * (1024 * 1024)


def plant_gpu_count(r: Rendered, docs: Docs) -> None:
    resources = _container(r.get("Deployment", "mixtral-8x7b", docs))["resources"]
    resources["limits"]["nvidia.com/gpu"] = resources["requests"]["nvidia.com/gpu"] = 1


def plant_unserved_model(r: Rendered, docs: Docs) -> None:
    docs.remove(r.get("Deployment", "phi-3-mini", docs))


def plant_backend_port(r: Rendered, docs: Docs) -> None:
    backends = _backends(r, docs)
    backends["hermes-2"] = [backends["hermes-2"][0].replace(":11401", ":11400")]
    _set_backends(r, docs, backends)


def plant_backend_host(r: Rendered, docs: Docs) -> None:
    _set_backends(r, docs, {**_backends(r, docs), "hermes-2": ["http://127.0.0.1:11401/v1"]})


def plant_backend_other_model(r: Rendered, docs: Docs) -> None:
    backends = _backends(r, docs)
    _set_backends(r, docs, {**backends, "hermes-2": backends["phi-3-mini"]})


def plant_backend_missing(r: Rendered, docs: Docs) -> None:
    backends = _backends(r, docs)
    del backends["all-minilm-l6-v2"]
    _set_backends(r, docs, backends)


def plant_route_prefix(r: Rendered, docs: Docs) -> None:
    match = r.get("HTTPRoute", "hermes-2", docs)["spec"]["rules"][0]["matches"][0]
    match["path"]["value"] = "/hxp/hermes"


def plant_shared_rwo_claim(r: Rendered, docs: Docs) -> None:
    r.get("PersistentVolumeClaim", "hermes-2-cache", docs)["spec"]["accessModes"] = ["ReadWriteOnce"]


def plant_unrequested_cpu(r: Rendered, docs: Docs) -> None:
    del _container(r.get("Deployment", "gateway", docs))["resources"]["requests"]["cpu"]


# (rendering, what is planted, a part of the problem the checks must report)
PLANTED: list[tuple[str, Callable[[Rendered, Docs], None], str]] = [
    ("gpu", plant_service_name, "Service/openchat-3.5: the name is not a DNS-1123 label"),
    ("gpu", plant_label_value, "label hxp/models='a,b' is not a valid label value"),
    ("gpu", plant_port_name, "port name 'gateway-http-port' is not an IANA service name"),
    ("gpu", plant_workload_selector, "Deployment/hxp-hermes-2: spec.selector does not match"),
    ("gpu", plant_service_selector, "Service/hxp-hermes-2: spec.selector selects no pods"),
    ("gpu", plant_pdb_selector, "PodDisruptionBudget/hxp-gateway: spec.selector selects no pods"),
    ("gpu", plant_policy_peer, "NetworkPolicy/hxp-hermes-2: an ingress podSelector selects no pods"),
    ("gpu", plant_hpa_target, "scaleTargetRef 'hxp-gw' is no Deployment"),
    ("gpu", plant_monitor_port, "endpoint port 'metrics' is not a port of Service/hxp-gateway"),
    ("gpu", plant_probe_port, "readinessProbe targets port 'metrics'"),
    ("gpu", plant_target_port, "Service/hxp-phi-3-mini: port 8000 is not declared"),
    ("multi-replica", plant_pool_port, "InferencePool/hxp-phi-3-mini: port 8000 is not declared"),
    ("gpu", plant_missing_secret, "uses Secret 'hxp-gateway', which is neither in the chart nor in values"),
    ("cpu", plant_missing_key, "uses key 'redis-password' of Secret 'hxp-stores'"),
    ("gpu", plant_missing_configmap, "uses ConfigMap 'hxp-chat-templates'"),
    ("gpu", plant_missing_claim, "uses PersistentVolumeClaim 'hxp-hermes-2-cache'"),
    ("gpu", plant_bad_quantity, "storage: '200GB' is not a quantity"),
    ("gpu", plant_request_over_limit, "gateway requests more memory than its limit"),
    ("gpu", plant_fractional_gpu, "nvidia.com/gpu must be a whole number"),
    ("gpu", plant_big_configmap, "more than a ConfigMap holds"),
    ("gpu", plant_gpu_count, "1 GPUs for mixtral-8x7b, the catalogue (gpu) gives it 2"),
    ("gpu", plant_unserved_model, "no engine serves phi-3-mini"),
    ("gpu", plant_backend_port, "hermes-2 -> http://hxp-hermes-2:11400/v1: port 11400 is not a port"),
    ("gpu", plant_backend_host, "hermes-2 -> http://127.0.0.1:11401/v1 reaches no Service or HTTPRoute"),
    ("gpu", plant_backend_other_model, "reaches pods that do not serve hermes-2"),
    ("gpu", plant_backend_missing, "HXP_BACKENDS has no URL for all-minilm-l6-v2"),
    (
        "multi-replica",
        plant_route_prefix,
        "hermes-2 -> http://inference-gateway.llm-d.svc:80/hxp/hermes-2/v1 reaches no Service or HTTPRoute",
    ),
    ("multi-replica", plant_shared_rwo_claim, "3 replicas share PersistentVolumeClaim/hxp-hermes-2-cache"),
    ("gpu", plant_unrequested_cpu, "scales on cpu, which a container of Deployment/hxp-gateway does not request"),
]


@pytest.mark.parametrize(("name", "plant", "problem"), PLANTED, ids=[p[1].__name__[6:] for p in PLANTED])
def test_a_planted_violation_is_caught(
    name: str, plant: Callable[[Rendered, Docs], None], problem: str, rendered: dict[str, Rendered]
) -> None:
    r = rendered[name]
    docs = r.copy()
    plant(r, docs)
    found = checks.run(docs, r.cat, r.external)
    assert any(problem in p for p in found), found


def test_values_naming_an_existing_secret_stand_for_it(rendered: dict[str, Rendered]) -> None:
    r = rendered["multi-replica"]
    assert "hxp-gateway-secrets" in r.external["Secret"]
    assert any("hxp-gateway-secrets" in p for p in checks.run(r.docs, r.cat, {}))


def test_the_other_profiles_catalogue_finds_wrong_gpus(rendered: dict[str, Rendered]) -> None:
    cpu, gpu = rendered["cpu"], rendered["gpu"]
    assert any("0 GPUs for mixtral-8x7b" in p for p in checks.gpus(cpu.docs, gpu.cat))
    assert any("the catalogue (cpu) gives it 0" in p for p in checks.gpus(gpu.docs, cpu.cat))


@pytest.mark.parametrize(
    ("text", "value"), [("200Gi", 200 * 2**30), ("500m", 0.5), ("1e3", 1000), ("2", 2), ("1.5G", 1.5e9), ("3E", 3e18)]
)
def test_quantities_parse(text: str, value: float) -> None:
    assert float(checks.quantity(text)) == value


@pytest.mark.parametrize("text", ["200GB", "1.2.3", "Gi", "", "-"])
def test_non_quantities_do_not(text: str) -> None:
    with pytest.raises(ValueError):
        checks.quantity(text)


def test_hxp_k8s_check_exits_1_on_a_problem(
    rendered: dict[str, Rendered], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    r = rendered["gpu"]
    values = [str(f) for f in RENDERINGS["gpu"].value_files]
    manifests = tmp_path / "rendered.yaml"
    manifests.write_text(yaml.safe_dump_all(r.docs))
    args = ["k8s", "check", str(manifests), "--profile", "gpu", *(a for v in values for a in ("--values", v))]
    assert main(args) == 0
    docs = r.copy()
    plant_gpu_count(r, docs)
    manifests.write_text(yaml.safe_dump_all(docs))
    assert main(args) == 1
    assert "the catalogue (gpu) gives it 2" in capsys.readouterr().err
