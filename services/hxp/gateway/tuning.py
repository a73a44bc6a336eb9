"""Process tuning for the gateway workers: uvicorn's HTTP stack, the garbage collector.

uvicorn runs on its fast stack (HTTP_STACKS["fast"]: the httptools parser, the uvloop event loop);
the plain one (h11, asyncio) is there for the benchmark that shows the difference.

LiteLLM's import graph leaves ~700,000 objects tracked by Python's cyclic garbage
collector, and a full collection walks all of them (~0.5 s of CPU here). They live as
long as the worker, so after start-up they are moved to the permanent generation
(``gc.freeze``), and the young-generation threshold is raised: a request allocates thousands of
short-lived objects, which reference counting frees without the collector's help.
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000
HTTP_STACKS = {"fast": ("httptools", "uvloop"), "plain": ("h11", "asyncio")}  # name -> (http, loop)


def freeze_startup_heap() -> None:
    """LiteLLM worker startup hook: collect once, freeze what is left, collect the young generation less often."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GEN0_THRESHOLD, gen1, gen2)
