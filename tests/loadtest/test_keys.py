"""The load test's key: given, or created with the master key of the env or of the native stack's state
folder; without a usable one the run stops before it sends a request (against a real gateway on the fake
upstream)."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hxp.core import catalogue
from hxp.loadtest import keys
from tests.loadtest.test_run import headless
from tests.support.gateway import Gateway


@pytest.fixture
def no_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No key in the environment; an empty native state folder (returned)."""
    for variable in ("HXP_LOADTEST_KEY", "HXP_MASTER_KEY"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("HXP_STATE_DIR", str(tmp_path / "state"))
    return tmp_path / "state"


def loadtest_keys(gateway: Gateway) -> list[dict]:
    response = httpx.get(f"{gateway.url}/admin/keys", headers=gateway.headers(), timeout=30)
    return [k for k in response.json()["data"] if k["owner"] == "loadtest"]


def test_the_native_stacks_master_key_is_found_and_its_key_revoked(gateway: Gateway, no_keys: Path) -> None:
    no_keys.mkdir()
    (no_keys / "master.key").write_text(gateway.master_key + "\n")
    before = {k["alias"] for k in loadtest_keys(gateway)}
    key = keys.provision(gateway.base_url)
    assert key.alias and key.alias not in before and key.secret != gateway.master_key
    assert httpx.get(f"{gateway.base_url}/models", headers=gateway.headers(key.secret), timeout=30).status_code == 200
    keys.revoke(gateway.url, key)
    made = next(k for k in loadtest_keys(gateway) if k["alias"] == key.alias)
    assert made["revoked_at"] is not None


def test_the_environment_wins_over_the_state_folder(
    gateway: Gateway, no_keys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_keys.mkdir()
    (no_keys / "master.key").write_text("sk-not-this-one\n")
    monkeypatch.setenv("HXP_MASTER_KEY", gateway.master_key)
    key = keys.provision(gateway.url)
    assert key.alias is not None
    keys.revoke(gateway.url, key)
    given = gateway.create_key()
    monkeypatch.setenv("HXP_LOADTEST_KEY", given)
    assert keys.provision(gateway.url) == keys.TestKey(given)


@pytest.mark.parametrize("case", ["none", "refused master key", "refused key"])
def test_no_usable_key_stops_at_once_saying_how_to_give_one(
    gateway: Gateway, no_keys: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    if case == "refused master key":
        no_keys.mkdir()
        (no_keys / "master.key").write_text("sk-wrong\n")
    elif case == "refused key":
        monkeypatch.setenv("HXP_LOADTEST_KEY", "sk-wrong")
    with pytest.raises(SystemExit) as stopped:
        keys.provision(gateway.url)
    message = str(stopped.value)
    assert "HXP_LOADTEST_KEY=" in message and "HXP_MASTER_KEY=" in message and ".state/master.key" in message
    assert "sk-wrong" not in message  # never echo a secret
    expected = {
        "none": f"there is no {no_keys / 'master.key'}",
        "refused master key": f"refused the master key from {no_keys / 'master.key'} (HTTP 401)",
        "refused key": "refused HXP_LOADTEST_KEY (HTTP 401)",
    }[case]
    assert expected in message


class _Counting(http.server.BaseHTTPRequestHandler):
    hits = 0

    def do_GET(self) -> None:  # noqa: N802 - the http.server interface
        type(self).hits += 1
        self.send_response(401)
        self.end_headers()

    do_POST = do_GET

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def counting_server() -> Iterator[str]:
    """An HTTP server on 127.0.0.1 that counts (and refuses) every request; its URL."""
    _Counting.hits = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Counting)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_make_loadtest_without_a_key_sends_nothing(counting_server: str, tmp_path: Path) -> None:
    model = catalogue.load().chat_models[0].name
    run = headless(
        counting_server,
        tmp_path / "results",
        seconds=10,
        users=2,
        timeout=60,
        env={"HXP_LOADTEST_MODELS": model, "HXP_STATE_DIR": str(tmp_path / "state")},
    )
    assert run.returncode != 0, run.stdout
    assert "no API key for the load test" in run.stdout and "HXP_MASTER_KEY=" in run.stdout
    assert _Counting.hits == 0
    assert not (tmp_path / "results" / "verdict.json").exists()
