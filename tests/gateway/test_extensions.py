"""The gateway's extension points: every listed hook resolves, and a missing one stops the start by name."""
from __future__ import annotations

import pytest

from hxp.gateway import extensions


def test_every_listed_extension_resolves() -> None:
    extensions.check()


def test_a_missing_extension_stops_the_gateway_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(extensions, "ROUTERS", [*extensions.ROUTERS, "hxp.gateway.health:no_such_router"])
    with pytest.raises(SystemExit, match="hxp.gateway.health:no_such_router"):
        extensions.check()
