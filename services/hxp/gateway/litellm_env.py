"""LiteLLM's environment: settings LiteLLM reads once, when it is first imported (``litellm.constants``).

:func:`apply` must run before anything imports LiteLLM, and imports nothing of it: ``hxp gateway serve`` calls it
first (a one-worker gateway serves in the launching process; more workers inherit the environment), and the
launcher refuses to start where LiteLLM read its constants before (:func:`unread`): its connections to the
engines would have no keep-alive, its retries the slow default back-off, and it would fetch its cost map from
the internet.
"""

from __future__ import annotations

import os

# LiteLLM's retry back-off (seconds). Its defaults (0.5 doubling, up to 8, plus 0.75 jitter) make a
# request to a dead single-replica backend wait seconds before its 503; engines are local, so retry fast.
RETRY_BACKOFF = {"INITIAL_RETRY_DELAY": "0.05", "MAX_RETRY_DELAY": "1.0", "JITTER": "0.05"}
# TCP keep-alive on the connections to the engines: a request waiting on an engine whose host went away
# (no reset ever comes) fails after about KEEPIDLE + KEEPINTVL * KEEPCNT seconds instead of the model's
# timeout, and the router retries it on another engine (it had no first byte yet).
UPSTREAM_KEEPALIVE = {
    "AIOHTTP_SO_KEEPALIVE": "true",
    "AIOHTTP_TCP_KEEPIDLE": "2",
    "AIOHTTP_TCP_KEEPINTVL": "1",
    "AIOHTTP_TCP_KEEPCNT": "3",
}
SETTINGS = {**RETRY_BACKOFF, **UPSTREAM_KEEPALIVE}  # defaults: an operator's own value stands
FIXED = {"LITELLM_LOCAL_MODEL_COST_MAP": "True"}  # the cost map shipped with LiteLLM, never a download


def apply() -> None:
    """Set LiteLLM's environment (idempotent); effective only before LiteLLM is imported."""
    os.environ.update(FIXED)
    os.environ.setdefault("LITELLM_LOG", "WARNING")
    for name, value in SETTINGS.items():
        os.environ.setdefault(name, value)


def unread() -> list[str]:
    """The settings whose value LiteLLM's constants do not hold: it was imported before :func:`apply`."""
    from litellm import constants

    missed = []
    for name in SETTINGS:
        held, value = getattr(constants, name), os.environ.get(name, "")
        try:
            wanted = value.lower() == "true" if isinstance(held, bool) else type(held)(value)
        except ValueError:
            wanted = value
        if held != wanted:
            missed.append(name)
    return missed
