"""The web console in a real headless Chromium, against a real gateway on the fake upstream.

Each page is also saved as a screenshot under .state/test-artifacts/console/ (the path is printed).
"""

from __future__ import annotations

import csv
import io
import secrets
import time
from typing import Any

import httpx
from playwright.sync_api import expect

from hxp.console import throttle
from hxp.core import catalogue
from tests.fixtures.console import ConsoleStack
from tests.support.console import artifact

XSS_ALIAS = "<img src=x onerror=alert(1)>"
NUMBERS = ("requests", "errors", "prompt_tokens", "completion_tokens", "total_tokens")
WAIT_MS = 30_000


def sign_in(console_page: Any, stack: ConsoleStack, path: str = "/console") -> None:
    console_page.goto(stack.gateway.url + path)
    expect(console_page).to_have_url(f"{stack.gateway.url}/console/sign-in?next={path}")
    console_page.fill("#master-key", stack.gateway.master_key)
    console_page.click("#sign-in button[type=submit]")
    expect(console_page).to_have_url(stack.gateway.url + path)


def models_status(stack: ConsoleStack, key: str) -> int:
    return httpx.get(f"{stack.gateway.base_url}/models", headers=stack.gateway.headers(key), timeout=30).status_code


def key_id(stack: ConsoleStack, alias: str) -> str:
    row = stack.database.fetchone("SELECT key_id FROM api_keys WHERE alias = ?", (alias,))
    assert row is not None
    return row["key_id"]


def wait_for_rows(stack: ConsoleStack, key: str, count: int) -> None:
    """Until the usage writer has written ``count`` rows of the key."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        row = stack.database.fetchone("SELECT COUNT(*) AS n FROM llm_model_requests WHERE key_id = ?", (key,))
        if row["n"] >= count:
            assert row["n"] == count
            return
        time.sleep(0.2)
    raise AssertionError(f"the usage rows of key {key} were not written")


def table_rows(console_page: Any, table: str) -> dict[str, dict[str, str]]:
    """The page table's rows by their ``data-group``, as {column: text}."""
    return console_page.evaluate(
        """(table) => Object.fromEntries([...document.querySelectorAll(`#${table} tbody tr[data-group]`)].map(
             (tr) => [tr.dataset.group, Object.fromEntries([...tr.querySelectorAll('td[data-col]')].map(
               (td) => [td.dataset.col, td.textContent]))]))""",
        table,
    )


def as_int(text: str) -> int:
    return int(text.replace(",", ""))


def test_sign_in_refuses_a_wrong_master_key_and_sign_out_ends_the_session(console_page, console_stack) -> None:
    url = console_stack.gateway.url
    console_page.goto(url + "/console/keys")
    expect(console_page).to_have_url(f"{url}/console/sign-in?next=/console/keys")
    console_page.fill("#master-key", "sk-wrong-" + secrets.token_hex(16))
    console_page.click("#sign-in button[type=submit]")
    expect(console_page.locator("#error")).to_have_text("Wrong master key")
    console_page.screenshot(path=artifact("sign-in-refused.png"))
    assert console_page.context.cookies() == []
    console_page.fill("#master-key", console_stack.gateway.master_key)
    console_page.click("#sign-in button[type=submit]")
    expect(console_page).to_have_url(url + "/console/keys")
    (cookie,) = console_page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/console"
    assert cookie["expires"] > 0  # not a browser-session cookie: it has an expiry
    console_page.click("#sign-out")
    expect(console_page).to_have_url(url + "/console/sign-in")
    console_page.goto(url + "/console/usage")
    expect(console_page).to_have_url(f"{url}/console/sign-in?next=/console/usage")
    response = console_page.request.get(url + "/console/api/keys")
    assert response.status == 401


def test_a_throttled_sign_in_is_told_when_to_try_again_in_the_form(console_page, console_stack) -> None:
    address = "10." + ".".join(str(secrets.randbelow(256)) for _ in range(3))
    console_page.context.set_extra_http_headers({"x-forwarded-for": address})  # its own address: others unthrottled
    console_page.goto(console_stack.gateway.url + "/console/sign-in")
    for _ in range(throttle.FAILED_SIGN_INS):
        console_page.fill("#master-key", "sk-wrong-" + secrets.token_hex(16))
        console_page.click("#sign-in button[type=submit]")
        expect(console_page.locator("#error")).to_have_text("Wrong master key")
        console_page.locator("#error").evaluate("(error) => { error.textContent = ''; }")
    console_page.fill("#master-key", console_stack.gateway.master_key)
    console_page.click("#sign-in button[type=submit]")
    expect(console_page.locator("#error")).to_contain_text("Too many failed sign-ins from this address: try again in")
    console_page.screenshot(path=artifact("sign-in-throttled.png"))
    assert console_page.context.cookies() == []


def test_a_key_created_in_the_page_works_its_secret_is_shown_once_and_revoking_it_stops_it(
    console_page, console_stack
) -> None:
    sign_in(console_page, console_stack, "/console/keys")
    alias = "browser-" + secrets.token_hex(4)
    console_page.fill("#new-key input[name=alias]", alias)
    console_page.fill("#new-key input[name=owner]", "team-browser")
    console_page.fill("#new-key input[name=rpm]", "600")
    console_page.click("#new-key button[type=submit]")
    secret = console_page.locator("#new-secret").inner_text()
    assert secret.startswith("sk-hxp-")
    console_page.screenshot(path=artifact("keys-secret-shown-once.png"))
    assert models_status(console_stack, secret) == 200
    console_page.get_by_role("button", name="Done").click()
    expect(console_page.locator("#new-secret")).to_have_count(0)
    console_page.reload()
    row = console_page.locator("#keys tbody tr", has=console_page.locator("td[data-col=alias]", has_text=alias))
    expect(row.locator("td[data-col=status]")).to_have_text("active")
    expect(row.locator("td[data-col=owner]")).to_have_text("team-browser")
    assert secret not in console_page.content()
    assert secret not in console_page.request.get(console_stack.gateway.url + "/console/api/keys").text()
    row.locator("button[data-action=revoke]").click()
    row.locator("button[data-action=confirm-revoke]").click()
    expect(row.locator("td[data-col=status]")).to_contain_text("revoked")
    assert models_status(console_stack, secret) == 401
    console_page.screenshot(path=artifact("keys.png"), full_page=True)


def test_rotating_a_key_in_the_page_replaces_its_secret(console_page, console_stack) -> None:
    alias = "rotate-" + secrets.token_hex(4)
    old = console_stack.gateway.create_key(alias=alias)
    sign_in(console_page, console_stack, "/console/keys")
    row = console_page.locator("#keys tbody tr", has=console_page.locator("td[data-col=alias]", has_text=alias))
    row.locator("button[data-action=rotate]").click()
    new = console_page.locator("#new-secret").inner_text()
    assert new != old
    assert models_status(console_stack, new) == 200
    assert models_status(console_stack, old) == 401


def test_a_state_change_without_the_csrf_token_is_refused_in_the_browser(console_page, console_stack) -> None:
    sign_in(console_page, console_stack, "/console/keys")
    alias = "csrf-probe-" + secrets.token_hex(4)
    status = console_page.evaluate(
        """(alias) => fetch('/console/api/keys', {method: 'POST', credentials: 'same-origin',
        headers: {'Content-Type': 'application/json'}, body: JSON.stringify({alias})}).then((r) => r.status)""",
        alias,
    )
    assert status == 403
    assert console_stack.database.fetchone("SELECT 1 AS found FROM api_keys WHERE alias = ?", (alias,)) is None


def test_usage_chart_table_and_csv_show_the_requests_the_database_holds(console_page, console_stack) -> None:
    gateway, cat = console_stack.gateway, catalogue.load()
    alias = "usage-" + secrets.token_hex(4)
    key = gateway.create_key(alias=alias)
    chat, other = cat.chat_models[0].name, cat.chat_models[1].name
    assert [gateway.chat(key, chat).status_code for _ in range(3)] == [200] * 3
    assert [gateway.chat(key, other, stream=True).status_code for _ in range(2)] == [200] * 2
    embedded = httpx.post(
        f"{gateway.base_url}/embeddings",
        headers=gateway.headers(key),
        timeout=30,
        json={"model": cat.embedding_models[0].name, "input": ["one", "two"]},
    )
    assert embedded.status_code == 200
    assert gateway.chat(key, "no-such-model").status_code == 404
    wait_for_rows(console_stack, key_id(console_stack, alias), 7)

    expected = {
        r["model_name"]: r
        for r in console_stack.database.fetchall(
            "SELECT model_name, COUNT(*) AS requests, SUM(CASE WHEN status = 'success' THEN 0 ELSE 1 END) AS errors,"
            " COALESCE(SUM(prompt_tokens), 0) AS prompt_tokens,"
            " COALESCE(SUM(completion_tokens), 0) AS completion_tokens"
            " FROM llm_model_requests GROUP BY model_name"
        )
    }
    sign_in(console_page, console_stack, "/console/usage")
    console_page.wait_for_selector("#usage tbody tr[data-group]")
    shown = table_rows(console_page, "usage")
    assert set(shown) == set(expected)
    for model, row in expected.items():
        for column in ("requests", "errors", "prompt_tokens", "completion_tokens"):
            assert as_int(shown[model][column]) == row[column], (model, column)
    assert shown["no-such-model"]["errors"] == "1"
    bars = console_page.evaluate("""() => [...document.querySelectorAll('svg[data-metric=requests] rect[data-group]')]
        .map((r) => [r.dataset.group, Number(r.dataset.value)])""")
    per_model: dict[str, int] = {}
    for model, value in bars:
        per_model[model] = per_model.get(model, 0) + value
    assert per_model == {m: r["requests"] for m, r in expected.items()}
    assert int(console_page.get_attribute("svg[data-metric=requests]", "data-total")) == sum(
        r["requests"] for r in expected.values()
    )
    console_page.screenshot(path=artifact("usage.png"), full_page=True)

    with console_page.expect_download() as download_info:
        console_page.click("#csv")
    download = download_info.value
    saved = artifact("usage-by-model.csv")
    download.save_as(saved)
    lines = list(csv.DictReader(io.StringIO(saved.read_text())))
    assert {line["model"]: {c: int(line[c]) for c in NUMBERS} for line in lines} == {
        group: {c: as_int(cells[c]) for c in NUMBERS} for group, cells in shown.items()
    }

    console_page.select_option("#range select[name=by]", "key")
    console_page.click("#range button[type=submit]")
    console_page.wait_for_selector(f"#usage tbody tr[data-group='{alias}']")
    mine = table_rows(console_page, "usage")[alias]
    assert (as_int(mine["requests"]), as_int(mine["errors"])) == (7, 1)


def test_an_alias_with_html_in_it_is_shown_as_text(console_page, console_stack) -> None:
    dialogs: list[str] = []
    console_page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    key = console_stack.gateway.create_key(alias=XSS_ALIAS, owner="<script>alert(2)</script>")
    assert console_stack.gateway.chat(key, catalogue.load().chat_models[0].name).status_code == 200
    wait_for_rows(console_stack, key_id(console_stack, XSS_ALIAS), 1)
    sign_in(console_page, console_stack, "/console/keys")
    cell = console_page.locator("#keys td[data-col=alias]", has_text=XSS_ALIAS)
    expect(cell).to_have_count(1)
    assert cell.inner_text() == XSS_ALIAS
    expect(console_page.locator("#keys td[data-col=owner]", has_text="<script>alert(2)</script>")).to_have_count(1)
    console_page.goto(console_stack.gateway.url + "/console/usage?by=key")
    console_page.wait_for_selector("#usage tbody tr[data-group]")
    assert XSS_ALIAS in table_rows(console_page, "usage")
    expect(console_page.locator(".legend li", has_text=XSS_ALIAS).first).to_be_visible()
    assert console_page.locator("img[src=x]").count() == 0
    console_page.wait_for_timeout(500)
    assert dialogs == []


def test_the_configuration_page_shows_the_served_catalogue_and_its_validation(console_page, console_stack) -> None:
    sign_in(console_page, console_stack, "/console/configuration")
    expect(console_page.locator("[data-validation^=Catalogue]")).to_contain_text("valid, and what this gateway serves")
    for model in catalogue.load().models:
        row = console_page.locator(f"#catalogue tr[data-model='{model.name}']")
        expect(row).to_contain_text(str(model.port))
    console_page.screenshot(path=artifact("configuration.png"), full_page=True)


def test_the_overview_shows_a_model_down_once_its_backend_stops(console_page, console_stack) -> None:
    stack = console_stack
    sign_in(console_page, stack)
    row = console_page.locator(f"#models tr[data-model='{stack.down_model}']")
    status = row.locator("td[data-col=status]")
    expect(status).to_have_text("up", timeout=WAIT_MS)
    models = len(catalogue.load().models)
    expect(console_page.locator("#models td[data-col=status]", has_text="up")).to_have_count(models)
    expect(console_page.locator("[data-store=Database] .badge")).to_have_text("up")
    expect(row.locator("td[data-col=running]")).to_have_text("0")  # vLLM's gauge, from the engine's /metrics
    expect(row.locator("td[data-col=served]")).to_have_text("fake")
    console_page.screenshot(path=artifact("overview.png"), full_page=True)
    stack.second.stop()
    try:
        expect(status).to_have_text("down", timeout=WAIT_MS)  # the page refreshes by itself: no reload
        expect(console_page.locator("#models td[data-col=status]", has_text="down")).to_have_count(1)
        console_page.screenshot(path=artifact("overview-model-down.png"), full_page=True)
    finally:
        stack.second.start()
    expect(status).to_have_text("up", timeout=WAIT_MS)
