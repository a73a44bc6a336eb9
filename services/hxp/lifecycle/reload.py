"""Live gateway reload: each worker follows the live configuration without a restart.

A worker startup hook (``gateway/extensions.py``) starts :func:`watch` in each worker: it polls the live
generation (one indexed single-row query a second), and when it changed it reads the live version and backends
and applies them in place: LiteLLM's router gets the new model list (``set_model_list``; each deployment's
concurrency limit rebuilt) and router settings (``update_settings``: fallbacks, retries), and the process's
runtime the new catalogue (aliases, limits, timeouts the gateway's own code reads) and backends. Requests in
flight keep the deployment (and limit slot) they were given. A model's standby backends (the old engine while
a rolling update watches the new one) answer only the requests its other backends fail.
At start a worker applies the live state too, so a replica started after a change serves it.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from typing import Any

import litellm

from hxp.core.catalogue import CatalogueError, active_profile
from hxp.core.context import Runtime, runtime
from hxp.core.database import Database
from hxp.core.versions import POLL_S, ConfigStore, Live
from hxp.gateway import deployments
from hxp.lifecycle.plan import load_text

log = logging.getLogger("hxp.lifecycle")


def _store(rt: Runtime) -> ConfigStore:
    return ConfigStore(Database(rt.settings.database_url, pool_size=1))


def standby_deployments(model_list: list[dict[str, Any]], standby: dict[str, list[str]]) -> list[dict[str, Any]]:
    """A model's standby backends as deployments of a second order: LiteLLM's router sends a request to them
    only when the first order's deployments failed it (``order``); the first order is marked so."""
    extra = []
    for name, urls in standby.items():
        own = [d for d in model_list if d["model_name"] == name]
        for deployment in own:
            deployment["litellm_params"]["order"] = 1
        for url in urls if own else []:
            extra.append(
                {
                    "model_name": name,
                    "litellm_params": {**own[0]["litellm_params"], "api_base": url, "order": 2},
                    "model_info": {**own[0]["model_info"], "id": f"{name}-standby"},
                }
            )
    return extra


def apply(text: str, live: Live) -> bool:
    """Serve ``live`` in this process from now on; False while LiteLLM's router is not built yet."""
    from litellm.proxy import proxy_server

    router = proxy_server.llm_router
    if router is None:
        return False
    rt = runtime()
    cat = load_text(text, active_profile(), rt.catalogue.path)
    backends = {**rt.settings.backends, **live.backends}
    for deployment in router.model_list:  # LiteLLM keeps each deployment's concurrency limit under its id
        router.cache.in_memory_cache.delete_cache(f"{deployment['model_info']['id']}_max_parallel_requests_client")
    model_list = deployments.model_list(cat, backends, rt.settings.backend_url_template)
    model_list += standby_deployments(model_list, live.standby)
    for deployment in model_list:  # LiteLLM's cooldowns are per id: a backend must not inherit another's
        url = deployment["litellm_params"]["api_base"]
        deployment["model_info"]["id"] += "@" + hashlib.sha256(url.encode()).hexdigest()[:12]
    router.set_model_list(model_list)
    router.update_settings(**deployments.router_settings(cat))
    litellm.request_timeout = max(m.api.timeout_s for m in cat.models)
    rt.catalogue = cat
    rt.put(deployments.current_backends, backends)
    log.info("configuration v%d (generation %d) applied in worker %d", live.version, live.generation, os.getpid())
    return True


async def watch() -> None:
    """Apply the live configuration now and whenever its generation changes (runs until cancelled)."""
    store = runtime().get(_store)
    seen, failing = 0, False
    while True:
        try:
            generation = await asyncio.to_thread(store.generation)
            live = await asyncio.to_thread(store.live) if generation != seen else None
            if live is not None:
                version = await asyncio.to_thread(store.get, live.version)
                if apply(version.catalogue, live):
                    seen = generation
            failing = False
        except CatalogueError as err:  # a version this gateway cannot serve (e.g. not under its profile)
            log.error("configuration generation %d not applied, still serving the one before: %s", generation, err)
            seen = generation
        except Exception as err:  # noqa: BLE001 - the database away for a while: keep serving what we have, retry
            if not failing:
                log.warning(
                    "configuration watch: cannot read the live configuration (%s); serving the current one", err
                )
            failing = True
        await asyncio.sleep(POLL_S)


_tasks: set[asyncio.Task] = set()


def _log_to_stderr() -> None:
    """Worker processes do not inherit the launcher's logging set-up: give this logger its own handler."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def start_watch() -> None:
    """LiteLLM worker startup hook: follow the live configuration in the background."""
    _log_to_stderr()
    task = asyncio.get_running_loop().create_task(watch())
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)
