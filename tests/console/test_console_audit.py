"""The console's audit events and its Audit page, in a real headless Chromium: a failed and a good sign-in, a key
created in the page and signing out are one row each with the session as actor; the page filters the trail and
downloads it as CSV; an expired session is audited once; bad filters are named."""

from __future__ import annotations

import csv
import io
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import expect

from hxp.audit.trail import Trail
from tests.fixtures.console import ConsoleStack
from tests.support.console import ConsoleSession, artifact


def audit_rows(stack: ConsoleStack, client: str) -> list[dict[str, Any]]:
    return [r for r in Trail(stack.database).rows() if r["client"] == client and r["action"] != "request.refused"]


def test_console_actions_are_one_row_each_and_the_audit_page_finds_them(console_page, console_stack) -> None:
    url = console_stack.gateway.url
    address = "10." + ".".join(str(secrets.randbelow(256)) for _ in range(3))  # this test's rows: its address
    console_page.context.set_extra_http_headers({"x-forwarded-for": address})
    console_page.goto(url + "/console/sign-in")
    console_page.fill("#master-key", "sk-wrong-" + secrets.token_hex(16))
    console_page.click("#sign-in button[type=submit]")
    expect(console_page.locator("#error")).to_have_text("Wrong master key")
    console_page.fill("#master-key", console_stack.gateway.master_key)
    console_page.click("#sign-in button[type=submit]")
    expect(console_page).to_have_url(url + "/console")
    console_page.goto(url + "/console/keys")
    alias = "audited-" + secrets.token_hex(4)
    console_page.fill("#new-key input[name=alias]", alias)
    console_page.click("#new-key button[type=submit]")
    secret = console_page.locator("#new-secret").inner_text()
    rows = audit_rows(console_stack, address)
    session = rows[1]["actor"]
    assert session.startswith("console:") and len(session) == len("console:") + 12
    assert [(r["action"], r["outcome"], r["actor"], r["target"]) for r in rows] == [
        ("console.sign_in", "denied", "anonymous", "console"),
        ("console.sign_in", "ok", session, "console"),
        ("key.create", "ok", session, alias),
    ]

    console_page.goto(f"{url}/console/audit?action=key.create&target={alias}")
    table = console_page.locator("#audit tbody tr")
    expect(table).to_have_count(1)
    expect(table.locator("td[data-col=actor]")).to_have_text(session)
    expect(table.locator("td[data-col=target]")).to_have_text(alias)
    console_page.screenshot(path=artifact("audit.png"), full_page=True)
    with console_page.expect_download() as download:
        console_page.click("#csv")
    lines = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
    assert [(r["action"], r["actor"], r["target"]) for r in lines] == [("key.create", session, alias)]
    assert secret not in console_page.content()

    console_page.goto(f"{url}/console/audit?actor={session}")  # the session's own history, newest first
    expect(console_page.locator("#audit tbody tr")).to_have_count(2)
    console_page.goto(f"{url}/console/audit?since=not-a-date")
    expect(console_page.locator("#status")).to_contain_text("since: 'not-a-date' is not a date")

    console_page.click("#sign-out")
    expect(console_page).to_have_url(url + "/console/sign-in")
    assert [(r["action"], r["actor"]) for r in audit_rows(console_stack, address)][-1] == ("console.sign_out", session)
    assert len(audit_rows(console_stack, address)) == 4


def test_an_expired_session_is_audited_once(console_stack) -> None:
    console = ConsoleSession(console_stack.gateway)
    try:
        past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
        console_stack.database.execute("UPDATE console_sessions SET expires_at = ?", (past,))
        for _ in range(2):
            assert console.get("/console/api/keys").status_code == 401
        expired = [r for r in Trail(console_stack.database).rows() if r["action"] == "console.session_expired"]
        assert len(expired) == 1 and expired[0]["actor"].startswith("console:")
    finally:
        console.close()


def test_the_audit_api_names_a_bad_filter(console_stack) -> None:
    console = ConsoleSession(console_stack.gateway)
    try:
        for query, field in (("colour=red", "colour"), ("until=2026-02-30", "until"), ("limit=0", "limit")):
            answer = console.get(f"/console/api/audit.csv?{query}")
            assert answer.status_code == 400 and answer.json()["error"]["param"] == field
        assert httpx.get(f"{console_stack.gateway.url}/console/api/audit", timeout=30).status_code == 401
    finally:
        console.close()
