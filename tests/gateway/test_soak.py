"""The soak's short form: the full gateway under steady mixed load holds its budgets, and a planted leak fails it.

Each run starts its own PostgreSQL, Redis, fake upstream and 2-worker gateway (tests/support/soak.py);
`make soak` is the long form.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support import soak

pytestmark = pytest.mark.services

LEAK = Path(__file__).resolve().parents[1] / "support" / "planted_leak"


def _soak(workdir: Path, env: dict[str, str] | None = None) -> soak.Result:
    result = soak.run(seconds=75, warmup_s=25, rate=12, interval=2, workdir=workdir, gateway_env=env)
    print(result.table())
    return result


def _check(result: soak.Result, name: str) -> soak.Check:
    return next(c for c in result.checks if c.name.startswith(name))


def test_a_short_soak_holds_its_budgets(tmp_path: Path) -> None:
    result = _soak(tmp_path)
    assert result.ok, result.table()
    assert set(result.outcome.statuses) == {
        "chat",
        "chat-stream",
        "chat-cut",
        "embeddings",
        "responses",
        "vector-search",
        "refused",
    }
    assert all(s.tasks > 0 for s in result.samples)  # every worker's task gauge is read
    soak.plot(result, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_planted_leak_fails_the_soak(tmp_path: Path) -> None:
    path = os.pathsep.join(p for p in (str(LEAK), os.environ.get("PYTHONPATH")) if p)
    result = _soak(tmp_path, {"PYTHONPATH": path})
    assert not _check(result, "rss").ok, result.table()
    assert _check(result, "usage rows").ok, result.table()
