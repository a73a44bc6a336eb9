"""Usage logging: one SQL row per request answered, never lost (batched, retried, spilled, replayed).

Rows come from each request's observation (:mod:`hxp.gateway.observer`) through
``pipeline.submit``.

- ``router``: an APIRouter without routes whose lifespan starts the pipeline
  (migrations, replay of spilled rows) and flushes it at shutdown;
- ``backlog()``: rows not yet in the database (for the metrics).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter

from hxp.gateway.usage import pipeline
from hxp.gateway.usage.pipeline import backlog


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    await asyncio.to_thread(pipeline.start)
    try:
        yield
    finally:
        await asyncio.to_thread(pipeline.close)


router = APIRouter(lifespan=_lifespan)

__all__ = ["backlog", "router"]
