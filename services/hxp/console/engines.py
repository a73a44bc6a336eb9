"""What each engine reports about itself: the model names it serves and, for vLLM, its running and waiting requests.

Every distinct engine behind the gateway (several models may share one) is asked for ``/v1/models``
and ``/metrics`` (vLLM's ``vllm:num_requests_running`` and ``vllm:num_requests_waiting``, summed over
their label sets); an engine that does not export them reports None. Probed at most once every two
seconds per worker, however many consoles are open.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from hxp.core.redaction import redact
from hxp.gateway import clients, deployments
from hxp.gateway.engines import queue_lengths
from hxp.gateway.health import PROBE_TIMEOUT_S, Readiness

MAX_AGE_S = 2.0


async def _served_names(client: httpx.AsyncClient, root: str) -> list[str]:
    response = await client.get(f"{root}/v1/models", timeout=PROBE_TIMEOUT_S)
    response.raise_for_status()
    return sorted(str(m.get("id")) for m in response.json().get("data", []) if isinstance(m, dict))


async def _report(client: httpx.AsyncClient, root: str) -> dict[str, Any]:
    try:
        names, queues = await asyncio.gather(_served_names(client, root), queue_lengths(client, root, PROBE_TIMEOUT_S))
    except (httpx.HTTPError, ValueError) as exc:
        return {
            "served_names": [],
            "running": None,
            "waiting": None,
            "error": redact(f"{type(exc).__name__}: {exc}")[:300],
        }
    return {"served_names": names, **queues}


class EngineReports(Readiness):
    """Each engine's report by its root URL, computed at most once per ``max_age`` seconds."""

    @staticmethod
    async def _compute() -> dict[str, Any]:
        roots = sorted({deployments.engine_root(url) for urls in deployments.served().values() for url in urls})
        client = clients.shared()
        reports = await asyncio.gather(*(_report(client, root) for root in roots))
        return dict(zip(roots, reports))


reports = EngineReports(MAX_AGE_S)
