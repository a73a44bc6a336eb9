"""`hxp status` with nothing running: every model and the gateway down, named, exit 1; --watch redraws."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hxp.cli import main
from hxp.core import catalogue
from hxp.ops import status
from tests.support.servers import free_port


@pytest.fixture(autouse=True)
def nothing_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "HXP_BACKENDS",
        "HXP_BACKEND_URL_TEMPLATE",
        "HXP_MASTER_KEY",
        "DATABASE_URL",
        "HXP_DATABASE_URL",
        "REDIS_URL",
        "QDRANT_URL",
        "HXP_PROMETHEUS_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    port = free_port()
    monkeypatch.setenv("HXP_GATEWAY_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HXP_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv(
        "HXP_BACKENDS", json.dumps({m.name: [f"http://127.0.0.1:{port}/v1"] for m in catalogue.load().models})
    )


def test_everything_down_is_named_and_fails(capsys: pytest.CaptureFixture) -> None:
    assert main(["status", "--json"]) == 1
    found = json.loads(capsys.readouterr().out)
    assert not found["healthy"]
    assert {m["state"] for m in found["models"]} == {"down"}
    services = {s["name"].split()[0]: s for s in found["services"]}
    assert services["gateway"]["state"] == "down" and "Connection refused" in services["gateway"]["detail"]
    assert services["redis"]["state"] == "skip" and not services["redis"]["required"]
    assert len(found["problems"]) == len(found["models"]) + 1 + 1  # every model, the gateway, the missing SQLite file
    assert all("Connection refused" in p for p in found["problems"] if p.startswith("model "))


def test_watch_redraws_until_interrupted(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    frames = []

    def sleep(seconds: float) -> None:
        frames.append(seconds)
        if len(frames) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(status.time, "sleep", sleep)
    assert main(["status", "--watch", "0.5"]) == 1
    out = capsys.readouterr().out
    assert frames == [0.5, 0.5] and out.count("\x1b[H\x1b[2J") == 2 and out.count("UNHEALTHY:") == 2
