"""Every rendered object is valid, strictly (unknown fields fail), against the Kubernetes 1.30 and 1.37 schemas
(kubernetes-validate, offline) or, for custom resources, against its CRD's schema (tests/k8s/crds)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.support.helm import RENDERINGS, Rendered

KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")
CRDS = Path(__file__).with_name("crds")


def strict(schema: Any) -> Any:
    """A CRD's structural schema that rejects unknown fields, as the API server's strict field validation does:
    objects with properties and without x-kubernetes-preserve-unknown-fields get additionalProperties: false."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


@lru_cache(maxsize=1)
def crd_validators() -> dict[tuple[str, str], jsonschema.Draft4Validator]:
    """(apiVersion, kind) -> a validator of its strict schema, for every version the CRDs serve."""
    validators = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for crd in (d for d in yaml.safe_load_all(path.read_text()) if d):
            spec = crd["spec"]
            for version in spec["versions"]:
                schema = strict(version["schema"]["openAPIV3Schema"])
                validators[(f"{spec['group']}/{version['name']}", spec["names"]["kind"])] = jsonschema.Draft4Validator(
                    schema
                )
    return validators


def problems(doc: dict[str, Any], version: str) -> list[str]:
    """Why ``doc`` is invalid under Kubernetes ``version`` (empty when it is valid)."""
    validator = crd_validators().get((doc["apiVersion"], doc["kind"]))
    if validator is not None:
        return [f"{e.json_path}: {e.message}" for e in validator.iter_errors(doc)]
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return [f"{'.'.join(map(str, err.path))}: {err.message}"]
    return []


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", RENDERINGS)
def test_every_object_is_valid(name: str, version: str, rendered: dict[str, Rendered]) -> None:
    found = {f"{d['kind']}/{d['metadata']['name']}": problems(d, version) for d in rendered[name].docs}
    assert {k: v for k, v in found.items() if v} == {}


def test_custom_resources_are_rendered_and_known(rendered: dict[str, Rendered]) -> None:
    kinds = {(d["apiVersion"], d["kind"]) for r in rendered.values() for d in r.docs}
    assert {
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("inference.networking.k8s.io/v1", "InferencePool"),
        ("gateway.networking.k8s.io/v1", "HTTPRoute"),
    } <= kinds & set(crd_validators())


def _first(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_an_unknown_field_fails(version: str, rendered: dict[str, Rendered]) -> None:
    docs = rendered["multi-replica"].copy()
    deployment, pool = _first(docs, "Deployment"), _first(docs, "InferencePool")
    deployment["spec"]["template"]["spec"]["containers"][0]["gpus"] = 1
    pool["spec"]["endpointPickerRef"]["portNumber"] = 9002
    assert problems(deployment, version) and problems(pool, version)


def test_a_wrong_type_or_missing_field_fails(rendered: dict[str, Rendered]) -> None:
    docs = rendered["gpu"].copy()
    service, monitor = _first(docs, "Service"), _first(docs, "ServiceMonitor")
    service["spec"]["ports"][0]["port"] = "eighty"
    del monitor["spec"]["selector"]
    assert problems(service, "1.37.0") and problems(monitor, "1.37.0")


def test_an_api_version_the_cluster_lacks_fails(rendered: dict[str, Rendered]) -> None:
    hpa = _first(rendered["gpu"].copy(), "HorizontalPodAutoscaler")
    hpa["apiVersion"] = "autoscaling/v2beta2"  # removed in Kubernetes 1.26
    with pytest.raises(kubernetes_validate.SchemaNotFoundError):
        problems(hpa, "1.30.0")
