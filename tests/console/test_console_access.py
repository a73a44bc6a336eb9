"""Who reaches the console: only a live session (and its CSRF token for a change), on every replica, until sign-out."""

from __future__ import annotations

import re
import secrets
import time

import httpx
import pytest

from hxp.console import routes, sessions, throttle
from hxp.core import context, settings
from hxp.core.database import Database
from hxp.gateway import route_table
from tests.support.console import ConsoleSession, concrete, console_routes
from tests.support.gateway import Gateway

PAGE_PATHS = set(routes.PAGES)
REDIRECTS = {"/console/": "/console"}  # pages by another spelling: without a session, sent to sign in like a page


@pytest.fixture(scope="module")
def console(gateway: Gateway):
    session = ConsoleSession(gateway)
    yield session
    session.close()


def refused(response: httpx.Response, method: str, path: str) -> bool:
    """A page is sent to the sign-in page (and back after), anything else is 401."""
    if path in PAGE_PATHS | set(REDIRECTS) and method == "GET":
        return response.status_code == 303 and response.headers["location"] == f"/console/sign-in?next={path}"
    return response.status_code == 401 and response.json()["error"]["code"] == "console_sign_in_required"


def test_the_table_guards_every_console_route_but_the_sign_in_page_and_static_files() -> None:
    table = route_table.table()
    served = {r.path for r in table.routes if r.path.startswith("/console")}
    assert {r.path for r in console_routes()} == served - {"/console/sign-in", "/console/static/{asset}"}
    assert PAGE_PATHS <= served
    assert table.match("GET", "/console/sign-in").route.access == "public"


@pytest.mark.parametrize("credentials", ["none", "master bearer", "client key", "forged cookie", "empty cookie"])
def test_without_a_session_every_console_url_redirects_or_answers_401(gateway, credentials) -> None:
    headers = {
        "none": {},
        "master bearer": gateway.headers(),
        "client key": gateway.headers(gateway.create_key()),
        "forged cookie": {"cookie": f"{sessions.COOKIE}={secrets.token_urlsafe(32)}"},
        "empty cookie": {"cookie": f"{sessions.COOKIE}="},
    }[credentials]
    checked = 0
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for route in console_routes():
            for method in route.methods:
                path = concrete(route.path)
                response = client.request(method, path, headers=headers, json={} if method == "POST" else None)
                assert refused(response, method, path), (credentials, method, path, response.status_code)
                checked += 1
    assert checked >= 12


def from_address() -> dict[str, str]:
    """Headers making a request come from an address of its own (uvicorn trusts the loopback proxy), so the
    failed sign-ins a test makes are not counted against the other tests' address."""
    return {"x-forwarded-for": "10." + ".".join(str(secrets.randbelow(256)) for _ in range(3))}


def test_a_wrong_master_key_is_refused_and_opens_no_session(gateway) -> None:
    wrong = ["sk-wrong-" + secrets.token_hex(16), gateway.master_key[:-1] + "#"]
    with httpx.Client(base_url=gateway.url, timeout=30, headers=from_address()) as client:
        for body in ({"master_key": wrong[0]}, {"master_key": wrong[1]}, {"master_key": ""}, {"master_key": 42}, {}):
            response = client.post("/console/sign-in", json=body)
            assert response.status_code == 401, body
            assert response.json()["error"]["message"] == "Wrong master key"
            assert "set-cookie" not in response.headers
        assert client.post("/console/sign-in", content=b"master_key=x").status_code == 400  # a JSON body only
    time.sleep(0.5)
    assert "refused a sign-in" in gateway.log
    assert not any(w in gateway.log for w in wrong)


def test_failed_sign_ins_are_throttled_per_address_and_successful_ones_are_not_counted(gateway) -> None:
    here, elsewhere = from_address(), from_address()
    wrong = {"master_key": "sk-wrong-" + secrets.token_hex(16)}
    right = {"master_key": gateway.master_key}
    with httpx.Client(base_url=gateway.url, timeout=30) as client:
        for _ in range(throttle.FAILED_SIGN_INS + 2):
            assert client.post("/console/sign-in", json=right, headers=here).status_code == 200
        for _ in range(throttle.FAILED_SIGN_INS):
            assert client.post("/console/sign-in", json=wrong, headers=here).status_code == 401
        for body in (wrong, right):  # a throttled address learns nothing about its guess, even a right one
            response = client.post("/console/sign-in", json=body, headers=here)
            assert response.status_code == 429, body
            error = response.json()["error"]
            assert error["code"] == "console_sign_in_throttled" and error["type"] == "rate_limit_error"
            retry_after = int(response.headers["retry-after"])
            assert 0 < retry_after <= 60 and f"try again in {retry_after} s" in error["message"]
            assert "set-cookie" not in response.headers
        assert client.post("/console/sign-in", json=right, headers=elsewhere).status_code == 200
        assert client.post("/console/sign-in", json=wrong, headers=elsewhere).status_code == 401
    time.sleep(0.5)
    assert "(too many failed sign-ins)" in gateway.log


def test_failed_sign_ins_are_counted_across_replicas_sharing_redis(
    gateway_factory, fake_upstream, redis_server, tmp_path
) -> None:
    master = "sk-master-" + secrets.token_hex(16)
    env = {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'shared.sqlite3'}",
        "HXP_MASTER_KEY": master,
        "REDIS_URL": redis_server.url,
    }
    first, second = (gateway_factory(fake_upstream.url, env=env, wait=False) for _ in range(2))
    for replica in (first, second):
        replica.wait_ready()
    here, wrong = from_address(), {"master_key": "sk-wrong-" + secrets.token_hex(16)}
    for attempt in range(throttle.FAILED_SIGN_INS):
        replica = (first, second)[attempt % 2]
        response = httpx.post(f"{replica.url}/console/sign-in", json=wrong, headers=here, timeout=30)
        assert response.status_code == 401
    for replica in (first, second):
        response = httpx.post(f"{replica.url}/console/sign-in", json={"master_key": master}, headers=here, timeout=30)
        assert response.status_code == 429 and "retry-after" in response.headers, replica.url
    response = httpx.post(
        f"{second.url}/console/sign-in", json={"master_key": master}, headers=from_address(), timeout=30
    )
    assert response.status_code == 200


def test_a_redirect_sends_a_signed_in_operator_to_its_page(console) -> None:
    for path, target in REDIRECTS.items():
        response = console.get(path)
        assert response.status_code == 307 and response.headers["location"] == target, path
        assert response.headers["cache-control"] == "no-store"
        assert console.get(path, follow_redirects=True).url.path == target


def test_the_sign_in_page_sends_a_signed_in_operator_on(gateway, console) -> None:
    assert console.get("/console/sign-in").headers.get("location") == "/console"
    page = httpx.get(f"{gateway.url}/console/sign-in", timeout=30)
    assert page.status_code == 200 and 'method="post"' in page.text  # never the key in a URL, even without script


def test_the_session_cookie_is_httponly_strict_expiring_and_secure_over_tls(gateway) -> None:
    ttl = settings.Settings().console_session_ttl_s
    for scheme, secure in (("http", False), ("https", True)):
        response = httpx.post(
            f"{gateway.url}/console/sign-in",
            json={"master_key": gateway.master_key},
            headers={"x-forwarded-proto": scheme},
            timeout=30,
        )  # uvicorn trusts the loopback proxy
        assert response.status_code == 200
        cookie = response.headers["set-cookie"]
        attributes = {a.strip().split("=")[0].lower(): a.strip() for a in cookie.split(";")[1:]}
        assert cookie.startswith(f"{sessions.COOKIE}=")
        assert "httponly" in attributes and attributes["samesite"].lower() == "samesite=strict"
        assert attributes["path"] == "Path=/console" and attributes["max-age"] == f"Max-Age={ttl}"
        assert ("secure" in attributes) is secure, cookie


def test_every_state_change_needs_the_sessions_csrf_token(gateway, console) -> None:
    other = ConsoleSession(gateway)
    alias = "csrf-" + secrets.token_hex(4)
    victim = gateway.create_key(alias=alias)
    posts = [r for r in console_routes() if "POST" in r.methods]
    assert {r.path for r in posts} >= {"/console/api/keys", "/console/api/keys/{ref}/revoke", "/console/sign-out"}
    for route in posts:
        path = route.path.replace("{ref}", alias)
        for token in (None, "", "0" * 64, other.csrf):
            response = console.post(path, {"alias": alias + "-new"}, csrf=token)
            assert response.status_code == 403, (path, token, response.text)
            assert response.json()["error"]["code"] == "csrf_token_invalid"
    assert console.get("/console/api/keys").status_code == 200  # still signed in: sign-out was refused too
    assert httpx.get(f"{gateway.base_url}/models", headers=gateway.headers(victim), timeout=30).status_code == 200
    keys = {k["alias"] for k in console.get("/console/api/keys").json()["data"]}
    assert alias in keys and alias + "-new" not in keys
    created = console.post("/console/api/keys", {"alias": alias + "-new"})
    assert created.status_code == 201 and created.json()["key"].startswith("sk-hxp-")
    other.close()


def test_a_session_works_on_every_replica_and_signing_out_ends_it_everywhere(
    gateway_factory, fake_upstream, tmp_path
) -> None:
    master = "sk-master-" + secrets.token_hex(16)
    env = {"DATABASE_URL": f"sqlite:///{tmp_path / 'shared.sqlite3'}", "HXP_MASTER_KEY": master}
    first, second = (gateway_factory(fake_upstream.url, env=env, wait=False) for _ in range(2))
    for replica in (first, second):
        replica.wait_ready()
    session = ConsoleSession(first, master)
    cookie = {"cookie": f"{sessions.COOKIE}={session.token}"}
    for replica in (first, second):
        assert httpx.get(f"{replica.url}/console/api/keys", headers=cookie, timeout=30).status_code == 200
    created = httpx.post(
        f"{second.url}/console/api/keys",
        json={"alias": "made-on-second"},
        timeout=30,
        headers={**cookie, sessions.CSRF_HEADER: session.csrf},
    )
    assert created.status_code == 201
    assert session.post("/console/sign-out").status_code == 200
    for replica in (first, second):
        response = httpx.get(f"{replica.url}/console/api/keys", headers=cookie, timeout=30)
        assert response.status_code == 401, replica.url
        page = httpx.get(f"{replica.url}/console/usage", headers=cookie, timeout=30)
        assert page.status_code == 303


def test_a_session_ends_at_its_expiry_and_when_the_master_key_changes(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HXP_MASTER_KEY", "sk-master-" + "a" * 32)
    db = Database(f"sqlite:///{tmp_path / 'sessions.sqlite3'}")
    db.migrate()
    store = sessions.SessionStore(db)
    short, long = store.open(ttl_s=1), store.open(ttl_s=3600)
    assert store.is_live(short) and store.is_live(long)
    time.sleep(1.2)
    assert not store.is_live(short) and store.is_live(long)
    csrf = sessions.csrf_token(long)
    monkeypatch.setenv("HXP_MASTER_KEY", "sk-master-" + "b" * 32)
    context.use()  # a new process reads the new key
    assert not store.is_live(long) and sessions.csrf_token(long) != csrf
    store.open(ttl_s=60)  # opening a session clears the expired ones
    assert db.fetchone("SELECT COUNT(*) AS n FROM console_sessions")["n"] == 2
    db.close()


def test_console_answers_carry_security_headers_and_a_strict_csp(gateway, console) -> None:
    for path in ["/console", "/console/api/overview", "/console/static/console.js", "/console/api/usage.csv"]:
        response = console.get(path)
        assert response.status_code == 200, path
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["cache-control"] == "no-store"
    sign_in = httpx.get(f"{gateway.url}/console/sign-in", timeout=30)
    assert sign_in.status_code == 200 and "unsafe-inline" not in sign_in.headers["content-security-policy"]


def test_everything_a_page_loads_is_served_by_the_gateway(gateway, console) -> None:
    """Offline: no CDN, no inline script or style; every asset a page names comes from /console/static/."""
    pages = [console.get(path).text for path in PAGE_PATHS] + [httpx.get(f"{gateway.url}/console/sign-in").text]
    assets = {
        a
        for html in pages
        for a in re.findall(r'(?:src|href)="([^"]+)"', html)
        if not a.startswith("/console") or a.startswith("/console/static/")
    }
    assert assets and all(a.startswith("/console/static/") for a in assets), assets
    for html in pages:
        assert not re.search(r"<script>|<style|style=", html)
    for asset in assets:
        response = httpx.get(gateway.url + asset, timeout=30)
        assert response.status_code == 200 and response.content, asset
    for file in routes.STATIC.values():
        assert not re.search(r"https?://(?!www\.w3\.org/2000/svg)", file.read_text()), file.name
    assert httpx.get(f"{gateway.url}/console/static/nothing.js", timeout=30).status_code == 404


def test_usage_range_and_grouping_are_checked(console) -> None:
    for query, field in (
        ("since=yesterday", "since"),
        ("until=2026-13-01", "until"),
        ("since=2026-02-01&until=2026-01-01", "since"),
        ("since=2020-01-01&until=2026-01-01", "since"),
        ("by=owner", "by"),
    ):
        for path in ("/console/api/usage", "/console/api/usage.csv"):
            response = console.get(f"{path}?{query}")
            assert response.status_code == 400, (path, query)
            assert response.json()["error"]["param"] == field
