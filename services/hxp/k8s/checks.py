"""What an API server, a scheduler or a controller would find wrong with the chart's objects, found offline.

Each check takes the rendered objects (``helm template`` output, parsed) and returns problems, one line each,
naming the object. Schema validity is not checked here (kubernetes-validate and the CRDs' schemas do that):
these are the relations between objects and with the catalogue that no schema expresses.
``hxp k8s check`` runs them on a rendering with your values.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

from hxp.core.catalogue import Catalogue

Doc = dict[str, Any]
External = Mapping[str, set[str]]  # kind -> names that exist outside the chart (named in values)

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
PORT_NAME = re.compile(r"^(?=.*[a-z])(?!.*--)[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
QUANTITY = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+))((?:[KMGTPE]i)|[numkMGTPE]|[eE][+-]?\d+)?$")
SUFFIX: dict[str, Decimal | int] = {
    "": 1,
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}
GPU = "nvidia.com/gpu"
WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job")
ONE_NAME_LABEL = ("Service", "Deployment", "StatefulSet", "DaemonSet")  # names that become DNS labels
CONFIGMAP_MAX_BYTES = 1024 * 1024
MODELS_ANNOTATION = "hxp/models"


def where(doc: Doc) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def named(docs: Iterable[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d.get("kind") == kind}


def pod_templates(docs: Iterable[Doc]) -> Iterator[tuple[Doc, Doc]]:
    """(workload, its pod template) for every workload."""
    for doc in docs:
        if doc.get("kind") in WORKLOADS:
            yield doc, doc["spec"]["template"]


def containers(pod: Doc) -> list[Doc]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str] | None) -> bool:
    return bool(selector) and all((labels or {}).get(k) == v for k, v in (selector or {}).items())


def selected(docs: list[Doc], selector: Mapping[str, str] | None) -> list[Doc]:
    """The pod templates ``selector`` (matchLabels or a Service's selector) matches."""
    return [t for _, t in pod_templates(docs) if selects(selector, t["metadata"].get("labels"))]


def quantity(text: Any) -> Decimal:
    """A Kubernetes quantity's value; ValueError when it does not parse."""
    match = QUANTITY.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a quantity")
    suffix = match[2] or ""
    return Decimal(match[1]) * (Decimal(SUFFIX[suffix]) if suffix in SUFFIX else Decimal(f"1{suffix}"))


# --- the checks ------------------------------------------------------------------------


def names(docs: list[Doc]) -> list[str]:
    """Object, container, volume and port names, and label keys and values, as the API server accepts them."""
    problems = []
    for doc in docs:
        meta = doc["metadata"]
        rule = (
            DNS_1035_LABEL
            if doc["kind"] == "Service"
            else DNS_LABEL
            if doc["kind"] in ONE_NAME_LABEL
            else DNS_SUBDOMAIN
        )
        limit = 63 if rule is not DNS_SUBDOMAIN else 253
        if not rule.match(meta["name"]) or len(meta["name"]) > limit:
            problems.append(f"{where(doc)}: the name is not a DNS-1123 {'label' if limit == 63 else 'subdomain'}")
        for key, value in (meta.get("labels") or {}).items():
            prefix, _, name = key.rpartition("/")
            if (prefix and not DNS_SUBDOMAIN.match(prefix)) or not LABEL_NAME.match(name) or len(name) > 63:
                problems.append(f"{where(doc)}: label key {key!r} is not a qualified name")
            if value and (not LABEL_NAME.match(str(value)) or len(str(value)) > 63):
                problems.append(f"{where(doc)}: label {key}={value!r} is not a valid label value")
    for workload, pod in pod_templates(docs):
        for container in containers(pod):
            if not DNS_LABEL.match(container["name"]):
                problems.append(f"{where(workload)}: container name {container['name']!r} is not a DNS-1123 label")
            for port in container.get("ports", []):
                if "name" in port and (not PORT_NAME.match(port["name"]) or len(port["name"]) > 15):
                    problems.append(f"{where(workload)}: port name {port['name']!r} is not an IANA service name")
        for volume in pod["spec"].get("volumes", []):
            if not DNS_LABEL.match(volume["name"]):
                problems.append(f"{where(workload)}: volume name {volume['name']!r} is not a DNS-1123 label")
    return problems


def selectors(docs: list[Doc]) -> list[str]:
    """Every selector selects something of the chart: workloads their own pods, Services, budgets, policies,
    pools and spread constraints some pods, monitors some Service, autoscalers a Deployment."""
    problems = []
    for workload, pod in pod_templates(docs):
        if not selects(workload["spec"]["selector"].get("matchLabels"), pod["metadata"].get("labels")):
            problems.append(f"{where(workload)}: spec.selector does not match its pod template's labels")
        for spread in pod["spec"].get("topologySpreadConstraints", []):
            if not selects(spread["labelSelector"].get("matchLabels"), pod["metadata"].get("labels")):
                problems.append(f"{where(workload)}: a topologySpreadConstraint does not select its own pods")
        if workload["kind"] == "StatefulSet" and workload["spec"].get("serviceName") not in named(docs, "Service"):
            problems.append(f"{where(workload)}: serviceName {workload['spec'].get('serviceName')!r} is no Service")
    pod_selectors: list[tuple[Doc, str, Mapping[str, str] | None]] = []
    for doc in docs:
        kind, spec = doc["kind"], doc.get("spec", {})
        if kind == "Service":
            pod_selectors.append((doc, "spec.selector", spec.get("selector")))
        elif kind in ("PodDisruptionBudget", "InferencePool"):
            pod_selectors.append((doc, "spec.selector", spec["selector"].get("matchLabels")))
        elif kind == "NetworkPolicy":
            pod_selectors.append((doc, "spec.podSelector", spec["podSelector"].get("matchLabels")))
            for rule in spec.get("ingress", []):
                for peer in rule.get("from", []):
                    if "podSelector" in peer and "namespaceSelector" not in peer:
                        pod_selectors.append((doc, "an ingress podSelector", peer["podSelector"].get("matchLabels")))
        elif kind == "HorizontalPodAutoscaler" and spec["scaleTargetRef"]["name"] not in named(docs, "Deployment"):
            problems.append(f"{where(doc)}: scaleTargetRef {spec['scaleTargetRef']['name']!r} is no Deployment")
        elif kind == "ServiceMonitor":
            services = [
                s
                for s in named(docs, "Service").values()
                if selects(spec["selector"].get("matchLabels"), s["metadata"].get("labels"))
            ]
            if not services:
                problems.append(f"{where(doc)}: spec.selector selects no Service of the chart")
            for endpoint in spec.get("endpoints", []):
                for service in services:
                    if endpoint.get("port") not in {p.get("name") for p in service["spec"]["ports"]}:
                        problems.append(
                            f"{where(doc)}: endpoint port {endpoint.get('port')!r} is not a port of {where(service)}"
                        )
    problems += [
        f"{where(doc)}: {field} selects no pods of the chart"
        for doc, field, selector in pod_selectors
        if not selected(docs, selector)
    ]
    return problems


def _declares(pod: Doc, port: Any, container: Doc | None = None) -> bool:
    """Whether ``container`` (default: any container of ``pod``) declares ``port`` (a name or a number)."""
    declared = [p for c in ([container] if container else containers(pod)) for p in c.get("ports", [])]
    return any(port in (p.get("name"), p["containerPort"]) for p in declared)


def ports(docs: list[Doc]) -> list[str]:
    """Probes, Services, network policies and inference pools target ports their pods declare."""
    problems = []
    for workload, pod in pod_templates(docs):
        for container in containers(pod):
            for probe_name in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = container.get(probe_name) or {}
                for action in ("httpGet", "tcpSocket", "grpc"):
                    if action in probe and not _declares(pod, probe[action]["port"], container):
                        problems.append(
                            f"{where(workload)}: {container['name']} {probe_name} targets port "
                            f"{probe[action]['port']!r}, which the container does not declare"
                        )
    for doc in docs:
        spec = doc.get("spec", {})
        if doc["kind"] == "Service":
            targets = [(p.get("targetPort", p["port"]), spec.get("selector")) for p in spec["ports"]]
        elif doc["kind"] == "NetworkPolicy":
            targets = [
                (p["port"], spec["podSelector"].get("matchLabels"))
                for rule in spec.get("ingress", [])
                for p in rule.get("ports", [])
                if "port" in p
            ]
        elif doc["kind"] == "InferencePool":
            targets = [(p["number"], spec["selector"].get("matchLabels")) for p in spec["targetPorts"]]
        else:
            continue
        for port, selector in targets:
            if any(not _declares(pod, port) for pod in selected(docs, selector)):
                problems.append(f"{where(doc)}: port {port!r} is not declared by every pod it selects")
    return problems


def _references(doc: Doc) -> Iterator[tuple[str, str, str | None]]:
    """(kind, name, key or None) of every Secret, ConfigMap, claim and ServiceAccount an object uses."""
    if doc["kind"] == "ServiceMonitor":
        for endpoint in doc["spec"].get("endpoints", []):
            creds = endpoint.get("authorization", {}).get("credentials")
            if creds:
                yield "Secret", creds["name"], creds.get("key")
    if doc["kind"] not in WORKLOADS:
        return
    pod = doc["spec"]["template"]["spec"]
    yield "ServiceAccount", pod.get("serviceAccountName", "default"), None
    for secret in pod.get("imagePullSecrets", []):
        yield "Secret", secret["name"], None
    for container in containers(doc["spec"]["template"]):
        for source in container.get("envFrom", []):
            for field, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                if field in source and not source[field].get("optional"):
                    yield kind, source[field]["name"], None
        for env in container.get("env", []):
            for field, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                ref = env.get("valueFrom", {}).get(field)
                if ref and not ref.get("optional"):
                    yield kind, ref["name"], ref["key"]
    for volume in pod.get("volumes", []):
        if "secret" in volume:
            yield "Secret", volume["secret"]["secretName"], None
        if "configMap" in volume:
            yield "ConfigMap", volume["configMap"]["name"], None
        if "persistentVolumeClaim" in volume:
            yield "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"], None


def references(docs: list[Doc], external: External) -> list[str]:
    """Every Secret, ConfigMap, claim and ServiceAccount used is in the chart or named in values (``external``);
    a key used from one in the chart is in it."""
    problems = []
    for doc in docs:
        for kind, name, key in _references(doc):
            if name in external.get(kind, set()) or (kind == "ServiceAccount" and name == "default"):
                continue
            target = named(docs, kind).get(name)
            if target is None:
                problems.append(f"{where(doc)}: uses {kind} {name!r}, which is neither in the chart nor in values")
            elif key is not None and key not in {**target.get("data", {}), **target.get("stringData", {})}:
                problems.append(f"{where(doc)}: uses key {key!r} of {kind} {name!r}, which has no such key")
    return problems


def _sizes(doc: Doc) -> Iterator[tuple[str, Any]]:
    """(where, quantity text) of every size an object states."""
    if doc["kind"] == "PersistentVolumeClaim":
        yield "storage", doc["spec"]["resources"]["requests"]["storage"]
    if doc["kind"] not in WORKLOADS:
        return
    for claim in doc["spec"].get("volumeClaimTemplates", []):
        yield f"claim {claim['metadata']['name']}", claim["spec"]["resources"]["requests"]["storage"]
    for volume in doc["spec"]["template"]["spec"].get("volumes", []):
        if "sizeLimit" in volume.get("emptyDir", {}):
            yield f"volume {volume['name']}", volume["emptyDir"]["sizeLimit"]
    for container in containers(doc["spec"]["template"]):
        for bound in ("requests", "limits"):
            for resource, value in container.get("resources", {}).get(bound, {}).items():
                yield f"{container['name']} {bound}.{resource}", value


def quantities(docs: list[Doc]) -> list[str]:
    """Sizes parse as quantities; requests are at most the limits; GPUs are whole and requested as limited;
    ConfigMaps fit etcd's 1 MiB."""
    problems = []
    for doc in docs:
        for place, value in _sizes(doc):
            try:
                quantity(value)
            except ValueError as err:
                problems.append(f"{where(doc)}: {place}: {err}")
        if doc["kind"] == "ConfigMap":
            size = sum(len(str(v).encode()) for v in (doc.get("data") or {}).values())
            if size > CONFIGMAP_MAX_BYTES:
                problems.append(f"{where(doc)}: {size} bytes of data, more than a ConfigMap holds (1 MiB)")
    for workload, pod in pod_templates(docs):
        for container in containers(pod):
            requests = container.get("resources", {}).get("requests", {})
            limits = container.get("resources", {}).get("limits", {})
            for resource in set(requests) & set(limits):
                try:
                    if quantity(requests[resource]) > quantity(limits[resource]):
                        problems.append(
                            f"{where(workload)}: {container['name']} requests more {resource} than its limit"
                        )
                except ValueError:
                    continue  # reported above
            if GPU in limits and (
                str(requests.get(GPU, limits[GPU])) != str(limits[GPU]) or not str(limits[GPU]).isdigit()
            ):
                problems.append(
                    f"{where(workload)}: {container['name']} {GPU} must be a whole number, requested as limited"
                )
    return problems


def _gpus(pod: Doc) -> Decimal:
    return sum((quantity(c.get("resources", {}).get("limits", {}).get(GPU, 0)) for c in containers(pod)), Decimal(0))


def _served(pod: Doc) -> list[str]:
    return [m for m in (pod["metadata"].get("annotations") or {}).get(MODELS_ANNOTATION, "").split(",") if m]


def gpus(docs: list[Doc], cat: Catalogue) -> list[str]:
    """Every catalogue model is served by an engine with the GPUs the catalogue gives it (none on a CPU profile)."""
    problems, served = [], set()
    for workload, pod in pod_templates(docs):
        try:
            have = _gpus(pod)
        except ValueError:
            have = None  # reported by quantities
        for name in _served(pod):
            served.add(name)
            want = cat.get(name).deployment.tensor_parallel_size if cat.profile_settings.device == "cuda" else 0
            if have is not None and have != want:
                problems.append(
                    f"{where(workload)}: {have:g} GPUs for {name}, the catalogue ({cat.profile}) gives it {want}"
                )
    problems += [
        f"no engine serves {name} (catalogue profile {cat.profile})" for name in cat.names if name not in served
    ]
    return problems


def _service_host(host: str, services: Mapping[str, Doc]) -> Doc | None:
    """The chart's Service a host name resolves to in the cluster (name, name.ns, name.ns.svc[.cluster.local])."""
    parts = host.split(".")
    if len(parts) == 1 or parts[2:] in ([], ["svc"], ["svc", "cluster", "local"]):
        return services.get(parts[0])
    return None


def _route_target(url: str, docs: list[Doc]) -> Doc | None:
    """The chart's InferencePool an HTTPRoute of the chart sends ``url``'s path to."""
    path = urlsplit(url).path
    for route in named(docs, "HTTPRoute").values():
        for rule in route["spec"].get("rules", []):
            prefixes = [
                m["path"]["value"].rstrip("/")
                for m in rule.get("matches", [])
                if m.get("path", {}).get("type") == "PathPrefix"
            ]
            if any(path == p or path.startswith(p + "/") for p in prefixes):
                for ref in rule.get("backendRefs", []):
                    if ref.get("kind") == "InferencePool":
                        return named(docs, "InferencePool").get(ref["name"])
    return None


def backends(docs: list[Doc], cat: Catalogue) -> list[str]:
    """The gateway's HXP_BACKENDS name every catalogue model, each URL reaching pods that serve that model:
    through a Service of the chart (on one of its ports), or an HTTPRoute of the chart to an InferencePool."""
    configs = [d for d in named(docs, "ConfigMap").values() if "HXP_BACKENDS" in (d.get("data") or {})]
    if len(configs) != 1:
        return [f"{len(configs)} ConfigMaps set HXP_BACKENDS; the gateway needs one"]
    backends_of: dict[str, list[str]] = json.loads(configs[0]["data"]["HXP_BACKENDS"])
    services = named(docs, "Service")
    problems = [f"{where(configs[0])}: HXP_BACKENDS has no URL for {n}" for n in cat.names if not backends_of.get(n)]
    for model, urls in backends_of.items():
        for url in urls:
            parts = urlsplit(url)
            service = _service_host(parts.hostname or "", services)
            pool = None if service else _route_target(url, docs)
            if service is not None:
                port_ok = parts.port in {p["port"] for p in service["spec"]["ports"]}
                pods = selected(docs, service["spec"].get("selector"))
            elif pool is not None:
                port_ok, pods = True, selected(docs, pool["spec"]["selector"].get("matchLabels"))
            else:
                problems.append(f"{where(configs[0])}: {model} -> {url} reaches no Service or HTTPRoute of the chart")
                continue
            if not port_ok:
                problems.append(
                    f"{where(configs[0])}: {model} -> {url}: port {parts.port} is not a port of {where(service or {})}"
                )
            if not pods or any(model not in _served(pod) for pod in pods):
                problems.append(f"{where(configs[0])}: {model} -> {url} reaches pods that do not serve {model}")
    return problems


def scaling(docs: list[Doc]) -> list[str]:
    """A claim that only one node can mount is not shared by several replicas; an autoscaler's resource metric
    has requests to be measured against."""
    problems = []
    claims = named(docs, "PersistentVolumeClaim")
    for workload, pod in pod_templates(docs):
        if workload["kind"] != "Deployment" or workload["spec"].get("replicas", 1) <= 1:
            continue
        for volume in pod["spec"].get("volumes", []):
            claim = claims.get(volume.get("persistentVolumeClaim", {}).get("claimName", ""))
            if claim is not None and set(claim["spec"]["accessModes"]) <= {"ReadWriteOnce", "ReadWriteOncePod"}:
                problems.append(
                    f"{where(workload)}: {workload['spec']['replicas']} replicas share {where(claim)}, "
                    "which only one node can mount (use ReadWriteMany)"
                )
    deployments = named(docs, "Deployment")
    for hpa in named(docs, "HorizontalPodAutoscaler").values():
        target = deployments.get(hpa["spec"]["scaleTargetRef"]["name"])
        for metric in hpa["spec"].get("metrics", []):
            resource = metric.get("resource", {}).get("name")
            if target is None or metric["type"] != "Resource":
                continue
            if any(
                resource not in c.get("resources", {}).get("requests", {})
                for c in target["spec"]["template"]["spec"]["containers"]
            ):
                problems.append(
                    f"{where(hpa)}: scales on {resource}, which a container of {where(target)} does not request"
                )
    return problems


CHECKS: tuple[Callable[..., list[str]], ...] = (names, selectors, ports, quantities, scaling)


def run(docs: list[Doc], cat: Catalogue, external: External) -> list[str]:
    """Every check's problems."""
    return [
        *(p for check in CHECKS for p in check(docs)),
        *references(docs, external),
        *gpus(docs, cat),
        *backends(docs, cat),
    ]


def external_names(values: Iterable[Any]) -> dict[str, set[str]]:
    """The Secrets and claims values name as existing (``existingSecret``, ``existingClaim`` keys)."""
    found: dict[str, set[str]] = {"Secret": set(), "PersistentVolumeClaim": set()}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("existingSecret", "existingClaim") and isinstance(value, str) and value:
                    found["Secret" if key == "existingSecret" else "PersistentVolumeClaim"].add(value)
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    for document in values:
        walk(document)
    return found
