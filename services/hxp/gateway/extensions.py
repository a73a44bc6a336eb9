"""The gateway's extension points, one place each.

CALLBACKS are LiteLLM CustomLogger instances (``module:attribute``) added to
``litellm_settings.callbacks``; ROUTERS are FastAPI routers (``module:attribute``)
included in the proxy app, ahead of LiteLLM's routes (a router's ``lifespan`` runs
with the app's); WORKER_STARTUP_HOOKS are functions each worker calls at start
(LiteLLM's LITELLM_WORKER_STARTUP_HOOKS); BEFORE_WORKERS are functions the
launcher calls before it starts several workers; ACCESS_CHECKS are the route table's access kinds a
feature defines, each an async ``check(method, path, headers) -> Caller`` (401/403 raised); BODY_CHECKS
are the body kinds a feature defines, each ``check(body, model, max_inputs)`` (400 raised); COLLECTIONS
list the names of the collections a key may be granted. Each concern adds its own line here; the
core imports no feature, it resolves these names.
"""

from __future__ import annotations

import importlib
from typing import Any

CALLBACKS = [
    "hxp.gateway.hooks:gateway_hooks",  # the admitted model, cache opt-in, error shapes
    "hxp.vector.rag:rag_hook",  # retrieval-augmented prompts
    "hxp.conversations.routing:engine_routing",  # healthy engines; a session or a prompt prefix to one
]

ROUTERS = [
    "hxp.gateway.health:router",  # liveness, readiness, per-model status
    "hxp.gateway.openapi:router",  # our API description (HXP_OPENAPI)
    "hxp.gateway.admin:router",  # key management (master key only)
    "hxp.gateway.model_info:router",  # /v1/models: the key's models and their capabilities
    "hxp.gateway.usage:router",  # usage pipeline lifespan: replay at start, flush at stop
    "hxp.gateway.audited:router",  # audit recorder lifespan: refusal windows, spill replay, retention
    "hxp.gateway.metrics:router",  # /metrics
    "hxp.gateway.relay:router",  # the relay's connection pool, closed at stop
    "hxp.gateway.clients:router",  # the worker's HTTP client for its own calls, closed at stop
    "hxp.gateway.redis_pools:router",  # LiteLLM's Redis caches kept on one bounded pool each
    "hxp.vector.api:router",  # Qdrant collections and search
    "hxp.console.routes:router",  # the operator's web console (/console)
    "hxp.conversations.api:router",  # Responses and Conversations APIs, stored state, retention
]

WORKER_STARTUP_HOOKS = [
    "hxp.gateway.health:start_redis_watch",  # log + gauge when Redis goes away or comes back
    "hxp.gateway.tuning:freeze_startup_heap",  # keep the collector off LiteLLM's long-lived objects
    "hxp.gateway.request_log:configure",  # the request log stream (audit events go there from the start)
    "hxp.lifecycle.reload:start_watch",  # follow the live configuration (hxp config apply)
]

BEFORE_WORKERS = [
    "hxp.gateway.metrics:prepare_multiprocess_dir",  # Prometheus samples summed over the workers
    "hxp.vector.config:warn_local_mode_with_workers",  # Qdrant's local mode serves one process
]


ACCESS_CHECKS = {
    "console": "hxp.console.sessions:authorize",  # a live console session (+ CSRF token on POST)
}

BODY_CHECKS = {
    "responses": "hxp.conversations.checks:check_create",  # POST /v1/responses
}

COLLECTIONS = [
    "hxp.vector.config:collection_names",  # collections.yaml
]


def resolve(path: str) -> Any:
    """The object named by ``module:attribute``."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def check() -> None:
    """Resolve every extension now, so that a missing one stops the gateway at start with its name."""
    for path in [
        *CALLBACKS,
        *ROUTERS,
        *WORKER_STARTUP_HOOKS,
        *BEFORE_WORKERS,
        *ACCESS_CHECKS.values(),
        *BODY_CHECKS.values(),
        *COLLECTIONS,
    ]:
        try:
            resolve(path)
        except (ImportError, AttributeError) as exc:
            raise SystemExit(f"gateway extension {path} cannot be loaded: {exc}") from exc
