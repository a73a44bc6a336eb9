"""The configuration page's data: the catalogue this gateway serves, read-only, and whether its files validate.

The served catalogue is the one loaded at start (:func:`hxp.gateway.deployments.catalogue`); the
catalogue file and collections.yaml are validated again now, so an operator sees an edit that
would not load, or one that the gateway only serves after a restart. Store URLs are redacted.
"""

from __future__ import annotations

from typing import Any

from hxp.core import catalogue as catalogue_module
from hxp.core.catalogue import Catalogue, CatalogueError, Model
from hxp.core.context import runtime
from hxp.core.redaction import redact, redact_url
from hxp.gateway import deployments
from hxp.vector import config as vector_config


def _model(model: Model, backends: list[str]) -> dict[str, Any]:
    dep = model.deployment
    return {
        "name": model.name,
        "task": model.task,
        "description": model.description,
        "port": model.port,
        "source": model.source,
        "aliases": list(model.api.aliases),
        "backends": [redact_url(u) for u in backends],
        "devices": list(dep.devices),
        "tensor_parallel_size": dep.tensor_parallel_size,
        "limits": {
            "timeout_s": model.api.timeout_s,
            "max_concurrent_requests": model.api.max_concurrent_requests,
            "retries": model.api.retries,
            "fallbacks": list(model.api.fallbacks),
            "cache": model.api.cache,
        },
        "vllm": dep.vllm.model_dump(exclude_none=True),
        "targets": dep.targets.model_dump(exclude={"measured"}),
    }


def _validation(served: Catalogue) -> dict[str, Any]:
    """The catalogue file and collections.yaml validated now, against what this gateway serves."""
    try:
        on_disk = catalogue_module.load(served.path, served.profile)
    except CatalogueError as exc:
        catalogue = {"valid": False, "message": redact(str(exc))}
    else:
        current = on_disk.models == served.models
        catalogue = {
            "valid": True,
            "current": current,
            "message": "valid, and what this gateway serves"
            if current
            else "valid, but it differs from what this gateway serves: restart the gateway to apply it",
        }
    try:
        vector_config.load(models=served)
        collections = {"valid": True, "message": "valid"}
    except vector_config.VectorConfigError as exc:
        collections = {"valid": False, "message": redact(str(exc))}
    return {"catalogue": catalogue, "collections": collections}


def configuration() -> dict[str, Any]:
    """The served catalogue (profile, models with ports, limits and targets), collections, gateway settings."""
    cat = deployments.catalogue()
    backends = deployments.served()
    cfg = runtime().settings
    try:
        collections = [c.model_dump() for c in vector_config.load(models=cat).collections]
    except vector_config.VectorConfigError:
        collections = []
    return {
        "file": str(cat.path),
        "profile": {"name": cat.profile, **cat.profile_settings.model_dump(exclude_none=True)},
        "models": [_model(m, backends[m.name]) for m in cat.models],
        "collections": collections,
        "validation": _validation(cat),
        "gateway": {
            "database": redact_url(cfg.database_url),
            "redis": redact_url(cfg.redis_url) if cfg.redis_url else "in-process (one replica)",
            "rate_limit_fail_closed": cfg.rate_limit_fail_closed,
            "cache_ttl_s": cfg.cache_ttl_s,
            "key_cache_ttl_s": cfg.key_cache_ttl_s,
            "max_body_bytes": cfg.max_body_bytes,
            "max_inputs": cfg.max_inputs,
            "metrics_token": "set" if cfg.metrics_token else "not set (open)",
            "request_log": cfg.request_log,
            "console_session_ttl_s": cfg.console_session_ttl_s,
        },
    }
