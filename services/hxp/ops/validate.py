"""`hxp validate`: the requirements' post-deployment checklist (appendix D), automated against a running stack.

In order: each gateway is ready; /v1/models lists every catalogue model; each model's engines
answer and serve its name; a real answer from each model through the gateway (a non-empty
text, or a vector); a request without a key or with a wrong one is refused (401); the answered
requests' usage rows reach the database; Redis answers a round trip and a key with rpm=1 is
refused its second request of the minute (sent to another replica when there are several);
every Qdrant collection of collections.yaml exists and answers a search; the embedding models'
vectors have the collections' size; Prometheus scrapes every target and has the alert rules
loaded, Alertmanager answers, Grafana has the three dashboards (each when its URL is known);
each local engine's memory is within the catalogue's ``memory_gb``.

Two short-lived keys (expiring in a day) are created through the admin API with the master
key and revoked at the end. One PASS/FAIL/WARN/SKIP line per check with its reason.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
import yaml

from hxp.core.catalogue import Catalogue, Model
from hxp.monitoring.dashboards import DASHBOARDS
from hxp.monitoring.prometheus_config import RULES_DIR
from hxp.monitoring.targets import JOB_GATEWAY, JOB_MODELS
from hxp.ops import probes
from hxp.ops.findings import PASS, Finding, failed, passed, skipped
from hxp.ops.stack import Stack

USAGE_WAIT_S = 30.0  # the usage writer flushes every second; a busy database may take longer
CHAT_PROMPT = "Reply with one short word."
KEY_PREFIX = "hxp-validate-"


def _error_text(response: httpx.Response) -> str:
    try:
        return probes.describe(str(response.json()["error"]["message"]))
    except (ValueError, KeyError, TypeError):
        return probes.describe(response.text or "(empty body)")


def _engine_fix(stack: Stack, model: str) -> str:
    if stack.compose:
        return f"`docker compose ps {model}` and `docker compose logs {model}`; `docker compose up -d {model}`"
    return f"start it (`make run`, or `hxp model serve {model}`); its log is under .state/logs/; `hxp doctor`"


def ask(client: httpx.Client, model: Model, root: str, headers: dict[str, str], tokens: int = 4) -> httpx.Response:
    """A real request to ``model`` at ``root`` (a gateway, or an engine: the part before /v1)."""
    if model.task == "embedding":
        return client.post(
            f"{root}/v1/embeddings",
            headers=headers,
            json={"model": model.name, "input": f"hxp validate {secrets.token_hex(4)}"},
            timeout=model.api.timeout_s + 30,
        )
    body = {
        "model": model.name,
        "max_tokens": tokens,
        "messages": [{"role": "user", "content": f"{CHAT_PROMPT} ({secrets.token_hex(4)})"}],
    }
    return client.post(f"{root}/v1/chat/completions", headers=headers, json=body, timeout=model.api.timeout_s + 30)


def serving_problem(state: probes.EngineState, name: str) -> str:
    """Why the engine probed in ``state`` does not serve ``name``; "" when it does."""
    if not state.up:
        return f"{state.url}: {state.error}"
    if state.served and name not in state.served:
        return f"{state.url} serves {', '.join(state.served)}, not {name}"
    return ""


def answer_finding(check: str, model: Model, response: httpx.Response, fix: str) -> tuple[Finding, int]:
    """Whether ``response`` is a real answer of ``model`` (a non-empty text, or a vector); the vector's size."""
    if response.status_code != 200:
        return failed(check, f"HTTP {response.status_code}: {_error_text(response)}", fix), 0
    body = response.json()
    if model.task == "embedding":
        vector = (body.get("data") or [{}])[0].get("embedding") or []
        if vector:
            return passed(check, f"a {len(vector)}-dimensional vector"), len(vector)
        return failed(check, "the answer holds no vector", fix), 0
    content = ((body.get("choices") or [{}])[0].get("message") or {}).get("content")
    if isinstance(content, str) and content:
        tokens = (body.get("usage") or {}).get("completion_tokens", "?")
        return passed(check, f"{len(content)} characters of text ({tokens} tokens)"), 0
    return (
        failed(
            check,
            f"an empty answer: {probes.describe(str(body)[:200])}",
            "the engine runs but answers nothing: its log, its dtype (models.yaml)",
        ),
        0,
    )


def size_finding(collection: Any, size: int | None) -> Finding:
    """Whether the vectors of ``collection``'s embedding model (``size`` dimensions) fit the collection."""
    check = f"embedding size fits {collection.name}"
    if size is None:
        return skipped(check, f"no vector was answered by {collection.embedding_model}")
    if size != collection.vector_size:
        return failed(
            check,
            f"{collection.embedding_model} answers {size} dimensions, the collection holds {collection.vector_size}",
            "serve the model the collection was made with, or recreate the collection",
        )
    return passed(check, f"{size} dimensions from {collection.embedding_model}")


def memory_finding(check: str, model: Model, used_gb: float) -> Finding:
    """Whether an engine of ``model`` using ``used_gb`` stays within the catalogue's ``memory_gb``."""
    limit = model.targets.memory_gb
    if used_gb > limit:
        return failed(
            check,
            f"{used_gb:.2f} GiB, above the catalogue's {limit} GiB",
            "fewer sequences (vllm.max_num_seqs), a smaller KV cache (VLLM_CPU_KVCACHE_SPACE) "
            "or a new memory_gb in models.yaml",
        )
    return passed(check, f"{used_gb:.2f} GiB of {limit} GiB")


def engine_checks(client: httpx.Client, root: str, models: Sequence[Model], cat: Catalogue) -> list[Finding]:
    """The models' own checks of `hxp validate`, against one engine directly (no key, no gateway: a new engine
    before it gets traffic): it is up and serves each name, each answers (a text, or a vector of its collections'
    size), and its memory (its processes on this host, else its API server's) is within ``memory_gb``."""
    from hxp.vector import config as vector_config

    fix = f"the new engine at {root}: its log"
    state = probes.engine(client, f"{root}/v1", local=probes.local_url(f"{root}/v1"))
    findings = []
    for model in models:
        problem = serving_problem(state, model.name)
        findings.append(
            failed(f"model {model.name} engine health", problem, fix)
            if problem
            else passed(f"model {model.name} engine health", f"up and serving it ({root})")
        )
        check = f"model {model.name} answers"
        try:
            finding, size = answer_finding(check, model, ask(client, model, root, {}), fix)
        except httpx.HTTPError as exc:
            finding, size = failed(check, probes.describe(exc), fix), 0
        findings.append(finding)
        declared = vector_config.load(models=cat).collections if model.task == "embedding" else []
        findings += [size_finding(c, size or None) for c in declared if c.embedding_model == model.name]
        if state.memory_gb is not None and cat.profile_settings.device == "cpu":
            findings.append(memory_finding(f"model {model.name} engine memory", model, state.memory_gb))
    return findings


class Validation:
    """One validation run: its HTTP client, the keys it created and what earlier checks measured."""

    def __init__(self, stack: Stack, client: httpx.Client) -> None:
        self.stack = stack
        self.client = client
        self.gateway = stack.gateways[0]
        self.findings: list[Finding] = []
        self.keys: dict[str, dict[str, Any]] = {}  # purpose -> the admin API's answer (secret in "key")
        self.dimensions: dict[str, int] = {}  # embedding model -> vector size answered
        self.answered = 0
        self.started = datetime.now(UTC)

    def add(self, finding: Finding) -> None:
        self.findings.append(finding)

    # --- the gateway and the engines --------------------------------------------------------
    def gateways_ready(self) -> None:
        for url in self.stack.gateways:
            g = probes.gateway(self.client, url, self.stack.headers(), self.stack.metrics_headers())
            check = f"gateway {url} ready"
            if g.error:
                self.add(
                    failed(
                        check,
                        f"unreachable: {g.error}",
                        "is it running? `hxp status`; native: `make run`, compose: `docker compose logs gateway`",
                    )
                )
            elif g.ready_code != 200:
                down = [
                    f"{n} down" + (f" ({g.errors[n]})" if n in g.errors else "")
                    for n, v in g.components.items()
                    if probes.component_ok(v) is False
                ]
                self.add(
                    failed(
                        check,
                        f"readiness answered HTTP {g.ready_code} ({g.readiness})"
                        + (f": {'; '.join(down)}" if down else ""),
                        "the component named is down: `hxp status`, then `hxp doctor`",
                    )
                )
            else:
                degraded = " (a backend is down: see the engine checks)" if g.readiness == "degraded" else ""
                self.add(passed(check, f"{g.readiness} in {g.latency_ms} ms{degraded}"))

    def _gateway_json(self, check: str, path: str, fix: str) -> Any | None:
        """GET a gateway path with the master key: its JSON, or None with a FAIL recorded."""
        try:
            response = self.client.get(f"{self.gateway}{path}", headers=self.stack.headers(), timeout=30)
        except httpx.HTTPError as exc:
            self.add(failed(check, probes.describe(exc), "the gateway is not answering: `hxp status`"))
            return None
        if response.status_code != 200:
            self.add(failed(check, f"{path} answered HTTP {response.status_code}: {_error_text(response)}", fix))
            return None
        return response.json()

    def models_listed(self) -> None:
        check = "gateway /v1/models lists every model"
        body = self._gateway_json(check, "/v1/models", "check the master key (HXP_MASTER_KEY) and the gateway's log")
        if body is None:
            return
        listed = {m["id"] for m in body.get("data", [])}
        missing = [n for n in self.stack.catalogue.names if n not in listed]
        if missing:
            self.add(
                failed(
                    check,
                    f"missing: {', '.join(missing)}",
                    "the gateway runs another catalogue: restart it after editing models.yaml",
                )
            )
        else:
            self.add(passed(check, f"{len(self.stack.catalogue.names)} models"))

    def engines_healthy(self, engines: dict[str, list[str]], source: str) -> None:
        cache: dict[str, probes.EngineState] = {}
        for model in self.stack.catalogue.models:
            check = f"model {model.name} engine health"
            urls = engines.get(model.name) or []
            if not urls:
                self.add(failed(check, f"no engine known for it ({source})", _engine_fix(self.stack, model.name)))
                continue
            bad = []
            for url in urls:
                state = cache.get(url) or cache.setdefault(url, probes.engine(self.client, url, local=False))
                problem = serving_problem(state, model.name)
                if problem:
                    bad.append(problem)
            if bad:
                self.add(failed(check, "; ".join(bad), _engine_fix(self.stack, model.name)))
            else:
                self.add(passed(check, f"{len(urls)} engine(s) up and serving it ({', '.join(urls)})"))

    # --- keys --------------------------------------------------------------------------------
    def create_key(self, purpose: str, **fields: Any) -> dict[str, Any] | None:
        body = {"alias": f"{KEY_PREFIX}{purpose}-{secrets.token_hex(4)}", "days": 1, **fields}
        try:
            response = self.client.post(
                f"{self.gateway}/admin/keys", json=body, headers=self.stack.headers(), timeout=30
            )
        except httpx.HTTPError as exc:
            self.add(failed(f"admin API creates a key ({purpose})", probes.describe(exc), "`hxp status`"))
            return None
        if response.status_code not in (200, 201):
            self.add(
                failed(
                    f"admin API creates a key ({purpose})",
                    f"HTTP {response.status_code}: {_error_text(response)}",
                    "the master key is wrong or unset: HXP_MASTER_KEY "
                    "(native: .state/master.key; compose: env/gateway.env)",
                )
            )
            return None
        self.keys[purpose] = response.json()
        return self.keys[purpose]

    def revoke_keys(self) -> None:
        for key in self.keys.values():
            try:
                self.client.post(
                    f"{self.gateway}/admin/keys/{key['key_id']}/revoke", headers=self.stack.headers(), timeout=30
                )
            except httpx.HTTPError:
                pass  # it expires within a day anyway

    def _call(self, model: Model, secret: str, gateway: str | None = None, tokens: int = 4) -> httpx.Response:
        return ask(self.client, model, gateway or self.gateway, {"Authorization": f"Bearer {secret}"}, tokens)

    # --- answers, refusals, usage ----------------------------------------------------------------
    def answers(self, secret: str) -> None:
        for model in self.stack.catalogue.models:
            check = f"model {model.name} answers"
            try:
                response = self._call(model, secret)
            except httpx.HTTPError as exc:
                self.add(failed(check, probes.describe(exc), _engine_fix(self.stack, model.name)))
                continue
            finding, size = answer_finding(check, model, response, _engine_fix(self.stack, model.name))
            self.add(finding)
            self.answered += finding.status == PASS
            if size:
                self.dimensions[model.name] = size

    def refuses_missing_key(self) -> None:
        model = self.stack.catalogue.models[0]
        body = {"model": model.name, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        got: list[tuple[str, int | str]] = []  # a status code, or why there was none
        wrong = {"Authorization": f"Bearer sk-{secrets.token_hex(16)}"}
        for label, headers in (("no key", {}), ("a wrong key", wrong)):
            try:
                got.append(
                    (
                        label,
                        self.client.post(
                            f"{self.gateway}/v1/chat/completions", json=body, headers=headers, timeout=30
                        ).status_code,
                    )
                )
            except httpx.HTTPError as exc:
                got.append((label, probes.describe(exc)))
        accepted = [f"{label}: {code}" for label, code in got if code != 401]
        if accepted:
            self.add(
                failed(
                    "gateway refuses requests without a valid key",
                    f"expected 401, got {', '.join(accepted)}",
                    "the key check is off: the gateway must run with hxp's custom_auth (hxp gateway serve)",
                )
            )
        else:
            self.add(passed("gateway refuses requests without a valid key", "401 for no key and for a wrong key"))

    def usage_logged(self, key_id: str) -> None:
        check = "usage rows reach the database"
        if self.answered == 0:
            self.add(skipped(check, "no request was answered"))
            return
        if not self.stack.database_url:
            self.add(failed(check, self.stack.database_problem or "no database URL", "make env"))
            return
        from hxp.core.database import Database
        from hxp.gateway.usage.record import iso

        deadline = time.monotonic() + USAGE_WAIT_S
        count, error = 0, None
        db = Database(self.stack.database_url, pool_size=1)
        try:
            while time.monotonic() < deadline:
                try:
                    row = db.fetchone(
                        "SELECT COUNT(*) AS n FROM llm_model_requests WHERE timestamp >= ? AND key_id = ?"
                        " AND status = 'success'",
                        (iso(self.started), key_id),
                    )
                    count, error = int(row["n"]) if row else 0, None
                except Exception as exc:  # noqa: BLE001 - reported below
                    error = probes.describe(exc)
                if count >= self.answered:
                    break
                time.sleep(0.5)
        finally:
            db.close()
        if error:
            self.add(failed(check, f"cannot read the usage table: {error}", "`hxp doctor` (database reachability)"))
        elif count < self.answered:
            self.add(
                failed(
                    check,
                    f"{count} of {self.answered} answered requests have a row after {USAGE_WAIT_S:.0f} s",
                    "the gateway cannot write: its log ('usage'), `hxp status` (usage backlog)",
                )
            )
        else:
            self.add(passed(check, f"{count} rows for the {self.answered} answered requests"))

    # --- Redis and the shared limit ------------------------------------------------------------
    def redis(self) -> None:
        check = "redis round trip"
        if self.stack.redis_url:
            probe = probes.redis_round_trip(self.stack.redis_url)
            where = probes.redact(self.stack.redis_url)
            if probe.ok:
                self.add(passed(check, f"{where}: {probe.detail} in {probe.latency_ms} ms"))
            else:
                refused = probe.cause == probes.AUTHENTICATION
                fix = (
                    "the password in REDIS_URL is not Redis' (env/gateway.env vs env/redis.env)"
                    if refused
                    else "start Redis, or fix the host/port in REDIS_URL"
                )
                self.add(
                    failed(
                        check,
                        f"Redis at {where} {'refused the password' if refused else 'is unreachable'}: {probe.detail}",
                        fix,
                    )
                )
            return
        seen = probes.gateway(self.client, self.gateway, self.stack.headers(), {})
        healthy = probes.component_ok(seen.components.get("redis"))
        if healthy is None:
            self.add(skipped(check, "no Redis configured: limits and cache are in-process (one gateway replica)"))
        elif healthy:
            self.add(passed(check, "the gateway reaches Redis (not published to this host)"))
        else:
            self.add(
                failed(
                    check,
                    f"the gateway cannot reach Redis: {seen.errors.get('redis', 'down')}",
                    "`docker compose ps redis`; the password in env/gateway.env REDIS_URL vs env/redis.env",
                )
            )

    def shared_limit(self) -> None:
        check = "rate limit (rpm=1) " + ("shared by the replicas" if len(self.stack.gateways) > 1 else "enforced")
        model = (self.stack.catalogue.embedding_models or self.stack.catalogue.models)[0]
        key = self.create_key("limit", rpm=1, models=[model.name])
        if key is None:
            return
        codes: list[int | str] = []  # a status code, or why there was none
        for gateway in (self.stack.gateways[0], self.stack.gateways[-1]):
            try:
                codes.append(self._call(model, key["key"], gateway, tokens=1).status_code)
            except httpx.HTTPError as exc:
                codes.append(probes.describe(exc))
        if codes[0] != 200:
            self.add(
                failed(
                    check,
                    f"the first request on {model.name} got {codes[0]}, not 200: cannot test the limit",
                    _engine_fix(self.stack, model.name),
                )
            )
        elif codes[1] != 429:
            redis = " (Redis unreachable and limits fail open?)" if self.stack.redis_url else ""
            self.add(
                failed(
                    check,
                    f"the second request within the minute got {codes[1]}, not 429: the limit is not enforced{redis}",
                    "check Redis (`hxp status`); several replicas need one REDIS_URL",
                )
            )
        else:
            self.add(passed(check, "200, then 429 for the second request within the minute"))

    # --- Qdrant ---------------------------------------------------------------------------------
    def vectors(self) -> None:
        from hxp.vector import config as vector_config

        declared = vector_config.load(models=self.stack.catalogue).collections
        check = "qdrant collections present"
        body = self._gateway_json(
            check,
            "/v1/vector/collections",
            "Qdrant is down or its local folder is held by another process: the gateway's log",
        )
        if body is None:
            return
        present = {c["name"]: c for c in body["data"]}
        missing = [c.name for c in declared if c.name not in present]
        if missing:
            self.add(failed(check, f"missing: {', '.join(missing)}", "restart the gateway (it creates them)"))
        else:
            self.add(passed(check, ", ".join(f"{c.name} ({present[c.name]['documents']} documents)" for c in declared)))
        for collection in declared:
            if collection.name in missing:
                continue
            check = f"qdrant search in {collection.name}"
            try:
                found = self.client.post(
                    f"{self.gateway}/v1/vector/collections/{collection.name}/search",
                    json={"query": "post-deployment validation", "limit": 1, "score_threshold": -1},
                    headers=self.stack.headers(),
                    timeout=60,
                )
            except httpx.HTTPError as exc:
                self.add(failed(check, probes.describe(exc), "`hxp status`"))
                continue
            if found.status_code == 200:
                self.add(passed(check, f"{len(found.json()['data'])} hit(s)"))
            else:
                self.add(
                    failed(
                        check,
                        f"HTTP {found.status_code}: {_error_text(found)}",
                        f"the embedding model {collection.embedding_model} or Qdrant: `hxp status`",
                    )
                )
            self.add(size_finding(collection, self.dimensions.get(collection.embedding_model)))

    # --- monitoring -----------------------------------------------------------------------------
    def _get(self, check: str, component: str, url: str | None, path: str, **kwargs: Any) -> httpx.Response | None:
        """GET from a monitoring component; None, with a SKIP or FAIL recorded, when it has no URL or no answer."""
        if not url:
            where = "the compose stack has none" if self.stack.compose else "no URL"
            self.add(skipped(check, f"{where} (--{component} or HXP_{component.upper()}_URL)"))
            return None
        try:
            response = self.client.get(f"{url.rstrip('/')}{path}", timeout=15, **kwargs)
        except httpx.HTTPError as exc:
            self.add(failed(check, f"{url}: {probes.describe(exc)}", f"is {component} running at that URL?"))
            return None
        if response.status_code in (401, 403):
            self.add(
                failed(
                    check,
                    f"{url} refused the credentials (HTTP {response.status_code})",
                    f"the {component} credentials (GRAFANA_USER / GRAFANA_PASSWORD; compose: env/grafana.env)",
                )
            )
            return None
        return response

    def prometheus(self) -> None:
        response = self._get(
            "prometheus targets", "prometheus", self.stack.prometheus_url, "/api/v1/targets", params={"state": "active"}
        )
        if response is not None:
            targets = response.json()["data"]["activeTargets"]
            jobs = {t["labels"].get("job") for t in targets}
            down = [
                f"down: {t['labels'].get('job')} {t['labels'].get('instance')} "
                f"({t.get('lastError') or t.get('health')})"
                for t in targets
                if t.get("health") != "up"
            ]
            unscraped = [f"no job {j}" for j in (JOB_GATEWAY, JOB_MODELS) if j not in jobs]
            if down or unscraped:
                self.add(
                    failed(
                        "prometheus targets",
                        "; ".join([*down, *unscraped]),
                        "the target is down (`hxp status`), or Prometheus' configuration misses it "
                        "(`make prometheus-register`, `hxp prometheus generate`)",
                    )
                )
            else:
                self.add(passed("prometheus targets", f"{len(targets)} targets up (jobs {', '.join(sorted(jobs))})"))
        response = self._get("prometheus alert rules", "prometheus", self.stack.prometheus_url, "/api/v1/rules")
        if response is not None:
            expected = {
                r["alert"]
                for f in sorted(RULES_DIR.glob("*.yml"))
                for g in yaml.safe_load(f.read_text())["groups"]
                for r in g["rules"]
                if "alert" in r
            }
            loaded = {
                r["name"] for g in response.json()["data"]["groups"] for r in g["rules"] if r.get("type") == "alerting"
            }
            missing = sorted(expected - loaded)
            if missing:
                self.add(
                    failed(
                        "prometheus alert rules",
                        f"not loaded: {', '.join(missing)}",
                        "add prometheus/rules/*.yml to its rule_files (`make prometheus-register`), reload",
                    )
                )
            else:
                self.add(passed("prometheus alert rules", f"all {len(expected)} alerts of prometheus/rules loaded"))

    def alertmanager(self) -> None:
        response = self._get("alertmanager", "alertmanager", self.stack.alertmanager_url, "/-/ready")
        if response is None:
            return
        if response.status_code == 200:
            self.add(passed("alertmanager", f"{self.stack.alertmanager_url} is ready"))
        else:
            self.add(
                failed(
                    "alertmanager",
                    f"/-/ready answered HTTP {response.status_code}",
                    "its log; `amtool check-config prometheus/alertmanager.yml`",
                )
            )

    def grafana(self) -> None:
        missing = []
        for dashboard in DASHBOARDS:
            response = self._get(
                "grafana dashboards",
                "grafana",
                self.stack.grafana_url,
                f"/api/dashboards/uid/{dashboard.uid}",
                auth=self.stack.grafana_auth,
            )
            if response is None:
                return
            if response.status_code != 200:
                missing.append(f"{dashboard.title} (HTTP {response.status_code})")
        if missing:
            self.add(
                failed(
                    "grafana dashboards",
                    f"missing: {', '.join(missing)}",
                    "provision grafana/dashboards/*.json (compose.dev.yaml does; `make grafana-dashboards`)",
                )
            )
        else:
            self.add(passed("grafana dashboards", ", ".join(d.title for d in DASHBOARDS)))

    # --- memory ---------------------------------------------------------------------------------
    def memory(self, engines: dict[str, list[str]]) -> None:
        if self.stack.catalogue.profile_settings.device == "cuda":
            self.add(skipped("engine memory", "GPU engines reserve gpu_memory_utilization of their GPUs: nvidia-smi"))
            return
        for model in self.stack.catalogue.models:
            check = f"model {model.name} engine memory"
            urls = [u for u in engines.get(model.name, []) if probes.local_url(u)]
            if self.stack.compose or not urls:
                self.add(skipped(check, "the engine is not a process of this host (`docker stats` for containers)"))
                continue
            sizes = [probes.engine(self.client, u, local=True).memory_gb for u in urls]
            if any(s is None for s in sizes):
                self.add(skipped(check, "no process of this host serves its port (down, or another user's)"))
                continue
            self.add(memory_finding(check, model, max(s for s in sizes if s is not None)))

    # --- the run ----------------------------------------------------------------------------------
    def run(self) -> list[Finding]:
        self.gateways_ready()
        if not self.stack.master_key:
            self.add(
                failed(
                    "master key",
                    "none found",
                    "set HXP_MASTER_KEY (native: `hxp run` writes .state/master.key; compose: env/gateway.env)",
                )
            )
            return self.findings
        self.models_listed()
        engines, source = self.stack.engines(self.client)
        self.engines_healthy(engines, source)
        try:
            key = self.create_key("answers")
            if key is not None:
                self.answers(key["key"])
            self.refuses_missing_key()
            if key is not None:
                self.usage_logged(key["key_id"])
            self.redis()
            self.shared_limit()
            self.vectors()
        finally:
            self.revoke_keys()
        self.prometheus()
        self.alertmanager()
        self.grafana()
        self.memory(engines)
        return self.findings


def run(stack: Stack) -> list[Finding]:
    """Every check against ``stack``, in order."""
    with httpx.Client() as client:
        return Validation(stack, client).run()
