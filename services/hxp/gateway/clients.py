"""This worker's HTTP client for its own calls: engine probes, /tokenize, requests to this same gateway.

A new httpx client builds an SSL context (the CA bundle parsed: milliseconds of CPU, a few hundred KB), even to
reach a plain-http URL, and that context outlives the client in a reference cycle until the garbage collector's
next pass, which is rare in a worker (hxp.gateway.tuning). A client per call (each vector search, each probe
round) grew a worker's heap by up to some 200 MB under load, kept as its high-water mark (the soak's RSS step,
docs/reliability.md). So each worker builds one client on first use, every caller passes its own timeout, and
the router's lifespan closes it at stop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from fastapi import APIRouter, FastAPI

from hxp.core.context import Runtime, runtime
from hxp.gateway.deployments import IDLE_CONNECTION_S

CONNECT_TIMEOUT_S = 10.0
KEPT_ALIVE = 64


def _client(rt: Runtime) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        timeout=httpx.Timeout(None, connect=CONNECT_TIMEOUT_S),
        limits=httpx.Limits(
            max_connections=None, max_keepalive_connections=KEPT_ALIVE, keepalive_expiry=IDLE_CONNECTION_S
        ),
    )


def shared() -> httpx.AsyncClient:
    """This worker's client (no read timeout: pass the call's own)."""
    return runtime().get(_client)


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    yield
    client = runtime().drop(_client)
    if client is not None:
        await client.aclose()


router = APIRouter(lifespan=_lifespan)
