"""The gateway's extension points: every listed hook resolves, and a missing one stops the start by name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hxp.gateway import extensions, tuning


def test_every_listed_extension_resolves() -> None:
    extensions.check()


def test_a_missing_extension_stops_the_gateway_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extensions, "ROUTERS", [*extensions.ROUTERS, "hxp.gateway.health:no_such_router"])
    with pytest.raises(SystemExit, match="hxp.gateway.health:no_such_router"):
        extensions.check()


def test_worker_heap_freeze_moves_startup_objects_out_of_the_collectors_way() -> None:
    """In a fresh interpreter (freezing this one would change the test run): after the startup hook the
    objects alive at start are frozen and the young generation is collected less often."""
    script = (
        "import gc, litellm; from hxp.gateway import tuning; tuning.freeze_startup_heap(); "
        "print(gc.get_freeze_count(), gc.get_threshold()[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
        timeout=300,
    ).stdout.split()
    frozen, threshold = int(out[-2]), int(out[-1])
    assert frozen > 100_000  # LiteLLM's import graph alone leaves hundreds of thousands of objects
    assert threshold == tuning.GEN0_THRESHOLD
