"""Start the gateway: `hxp gateway serve --host H --port P --workers N`.

The launcher applies the SQL migrations, writes the LiteLLM config into the
state directory, prepares the workers' environment and runs the proxy app
(:mod:`hxp.gateway.app`) under uvicorn with N workers.

DATABASE_URL names *our* database; LiteLLM would read it too and try to start
its Prisma client, so the launcher moves it to HXP_DATABASE_URL before any
worker imports LiteLLM.
"""

from __future__ import annotations

import logging
import os

import yaml

from hxp.core import catalogue as catalogue_module
from hxp.core import redaction, settings
from hxp.core.context import runtime
from hxp.core.database import Database
from hxp.core.paths import state_path
from hxp.core.redaction import redact_url
from hxp.gateway import auth, extensions, litellm_env, proxy_config, tuning

log = logging.getLogger("hxp.gateway")

# How long uvicorn waits for a worker's answer before it kills it as hung. Its default (5 s) is shorter
# than LiteLLM's start-up on a busy machine, which would make it kill and restart workers forever.
WORKER_HEALTHCHECK_S = 120


def prepare_environment() -> settings.Settings:
    """Hide DATABASE_URL from LiteLLM and pass on what the workers need; return the settings."""
    cfg = settings.load()
    os.environ[settings.DATABASE_URL_VAR] = cfg.database_url
    os.environ.pop("DATABASE_URL", None)
    litellm_env.apply()
    problem = cfg.master_key_problem()
    if problem:
        raise SystemExit(problem)
    os.environ["LITELLM_MASTER_KEY"] = auth.litellm_master_key(cfg.master_secret or "")
    extensions.check()
    os.environ["LITELLM_WORKER_STARTUP_HOOKS"] = ",".join(extensions.WORKER_STARTUP_HOOKS)  # module:function
    return cfg


def write_config(cfg: settings.Settings) -> str:
    path = state_path("gateway") / "litellm_config.yaml"
    path.write_text(yaml.safe_dump(proxy_config.build(cfg, catalogue_module.load()), sort_keys=False))
    os.environ["CONFIG_FILE_PATH"] = str(path)
    return str(path)


def serve(host: str, port: int, workers: int = 1, http_stack: str = "fast") -> None:
    """Serve the gateway app under uvicorn with its HTTP stack (:data:`hxp.gateway.tuning.HTTP_STACKS`)."""
    import uvicorn

    # INFO for our own loggers only: LiteLLM's loggers inherit the root level, and at INFO they would
    # format a line per request (a measurable share of the gateway's CPU).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("hxp").setLevel(logging.INFO)
    redaction.install_output_redaction()
    cfg = prepare_environment()
    missed = litellm_env.unread()  # this process serves a one-worker gateway itself
    if missed:
        raise SystemExit(f"LiteLLM was imported before its settings were applied: {', '.join(missed)}")
    settings.register_secrets(runtime().settings)
    db = Database(cfg.database_url)
    applied = db.migrate()
    db.close()
    log.info("database %s (migrations applied: %s)", redact_url(cfg.database_url), ", ".join(applied) or "none")
    if cfg.redis_url:
        log.info(
            "redis %s: shared rate limits and response cache; rate limits fail %s when it is unreachable",
            redact_url(cfg.redis_url),
            "closed" if cfg.rate_limit_fail_closed else "open",
        )
    else:
        log.warning(
            "REDIS_URL is not set: rate limits and the response cache are in-process, "
            "so run ONE gateway replica (workers share nothing)"
        )
    if workers > 1:
        for path in extensions.BEFORE_WORKERS:
            extensions.resolve(path)()
    log.info("LiteLLM config written to %s; serving on %s:%d with %d worker(s)", write_config(cfg), host, port, workers)
    http, loop = tuning.HTTP_STACKS[http_stack]
    uvicorn.run(
        "hxp.gateway.app:app",
        host=host,
        port=port,
        workers=workers,
        log_level="warning",
        access_log=False,
        http=http,
        loop=loop,
        timeout_graceful_shutdown=30,
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )
