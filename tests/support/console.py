"""The web console from the tests' side: an HTTP session signed in like a browser, Chromium, screenshots.

- :class:`ConsoleSession`: an httpx client holding a console cookie and the page's CSRF token.
- :func:`launch_chromium`: Debian's Chromium driven by Playwright (never a downloaded browser).
- :data:`ARTIFACTS`: where the browser tests leave their screenshots and downloads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx

from hxp.console import sessions
from hxp.gateway import route_table
from tests.support.gateway import ROOT, Gateway

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / ".state" / "test-artifacts" / "console"
_CSRF = re.compile(r'<meta name="hxp-csrf" content="([0-9a-f]+)">')


def console_routes() -> list[route_table.Route]:
    """Every route of the table that needs a console session."""
    return [r for r in route_table.table().routes if r.access == "console"]


def concrete(path: str) -> str:
    """A route's path with its parameters filled in."""
    return re.sub(r"\{[^}]+\}", "x", path)


def launch_chromium(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


class ConsoleSession:
    """An HTTP client signed in to a gateway's console (``.client``, ``.csrf``, ``.token``)."""

    def __init__(self, gateway: Gateway, master_key: str | None = None) -> None:
        self.gateway = gateway
        self.client = httpx.Client(base_url=gateway.url, timeout=60)
        response = self.client.post("/console/sign-in", json={"master_key": master_key or gateway.master_key})
        response.raise_for_status()
        self.token = self.client.cookies[sessions.COOKIE]
        self.csrf = csrf_of(self.client.get("/console").text)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.client.get(path, **kwargs)

    def post(self, path: str, body: dict[str, Any] | None = None, csrf: str | None = "page") -> httpx.Response:
        """POST with the page's CSRF token (``csrf=None``: without one; another string: that one)."""
        headers = {} if csrf is None else {sessions.CSRF_HEADER: self.csrf if csrf == "page" else csrf}
        return self.client.post(path, json=body, headers=headers)

    def close(self) -> None:
        self.client.close()


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page carries no CSRF token"
    return found.group(1)


def artifact(name: str) -> Path:
    """A path for a test artifact (the folder is created and printed)."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    print(f"console test artifact: {ARTIFACTS / name}")
    return ARTIFACTS / name
