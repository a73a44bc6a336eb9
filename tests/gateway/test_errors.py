"""Every error the gateway answers itself: status, OpenAI error type, message; none reaches a backend."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from hxp.core import catalogue
from hxp.core.database import Database
from tests.support.servers import free_port

CHAT = catalogue.load().chat_models[0]
OTHER = catalogue.load().chat_models[1]
USER = [{"role": "user", "content": "hello"}]


def _error(response: httpx.Response, status: int, error_type: str, contains: str, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == error_type
    assert contains in error["message"]
    if param is not None:
        assert error["param"] == param
    return error


@pytest.fixture(scope="module")
def key(gateway) -> str:
    return gateway.create_key(models=[CHAT.name])


def _post(gateway, key: str | None, body: dict | bytes, path: str = "/chat/completions") -> httpx.Response:
    headers = {"content-type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(gateway.base_url + path, headers=headers, timeout=30, **kwargs)


def test_success_reaches_the_backend(gateway, fake_upstream, key):
    before = fake_upstream.requests_served()
    response = _post(gateway, key, {"model": CHAT.name, "messages": USER})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"]
    assert fake_upstream.requests_served() == before + 1


@pytest.mark.parametrize(
    "auth, contains",
    [
        (None, "API key"),
        ("sk-hxp-not-a-real-key", "Invalid API key"),
    ],
)
def test_missing_or_unknown_key_is_401(gateway, auth, contains):
    error = _error(_post(gateway, auth, {"model": CHAT.name, "messages": USER}), 401, "authentication_error", contains)
    assert error["code"] == "invalid_api_key"


def test_revoked_key_is_401(gateway):
    secret = gateway.create_key(alias="to-revoke")
    assert (
        httpx.post(f"{gateway.url}/admin/keys/to-revoke/revoke", headers=gateway.headers(), timeout=30).status_code
        == 200
    )
    _error(_post(gateway, secret, {"model": CHAT.name, "messages": USER}), 401, "authentication_error", "revoked")


def test_expired_key_is_401(gateway):
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    secret = gateway.create_key(expires=past)
    _error(_post(gateway, secret, {"model": CHAT.name, "messages": USER}), 401, "authentication_error", "expired")


def test_model_not_allowed_is_403(gateway, key):
    error = _error(
        _post(gateway, key, {"model": OTHER.name, "messages": USER}), 403, "permission_error", OTHER.name, "model"
    )
    assert error["code"] == "model_not_allowed"


def test_unknown_model_is_404_model_not_found(gateway, key):
    error = _error(
        _post(gateway, key, {"model": "no-such-model", "messages": USER}),
        404,
        "invalid_request_error",
        "no-such-model",
        "model",
    )
    assert error["code"] == "model_not_found"


@pytest.mark.parametrize(
    "body, param",
    [
        ({"messages": USER, "temperature": 2.5}, "temperature"),
        ({"messages": USER, "temperature": -0.1}, "temperature"),
        ({"messages": USER, "temperature": "hot"}, "temperature"),
        ({"messages": USER, "top_p": 1.5}, "top_p"),
        ({"messages": USER, "max_tokens": CHAT.max_model_len + 1}, "max_tokens"),
        ({"messages": USER, "max_tokens": 0}, "max_tokens"),
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0].content"),
    ],
)
def test_invalid_parameters_are_400_naming_the_field(gateway, fake_upstream, key, body, param):
    before = fake_upstream.requests_served()
    _error(_post(gateway, key, {"model": CHAT.name, **body}), 400, "invalid_request_error", param, param)
    assert fake_upstream.requests_served() == before


def test_malformed_json_is_400(gateway, fake_upstream, key):
    before = fake_upstream.requests_served()
    response = _post(gateway, key, b'{"model": "x", "messages": [')
    _error(response, 400, "invalid_request_error", "JSON")
    assert fake_upstream.requests_served() == before


def test_completions_and_embeddings_are_validated(gateway, fake_upstream):
    key = gateway.create_key()
    embedding = catalogue.load().embedding_models[0]
    _error(_post(gateway, key, {"model": CHAT.name}, "/completions"), 400, "invalid_request_error", "prompt", "prompt")
    _error(
        _post(gateway, key, {"model": embedding.name, "input": []}, "/embeddings"),
        400,
        "invalid_request_error",
        "input",
        "input",
    )
    assert _post(gateway, key, {"model": CHAT.name, "prompt": "hi"}, "/completions").status_code == 200
    assert _post(gateway, key, {"model": embedding.name, "input": ["a", "b"]}, "/embeddings").status_code == 200


def test_rate_limit_is_429_with_retry_after(gateway):
    key = gateway.create_key(rpm=2)
    statuses = [_post(gateway, key, {"model": CHAT.name, "messages": USER}) for _ in range(3)]
    assert [r.status_code for r in statuses[:2]] == [200, 200]
    limited = statuses[2]
    error = _error(limited, 429, "requests", "Rate limit")
    assert error["code"] == "rate_limit_exceeded"
    assert int(limited.headers["retry-after"]) > 0


def test_backend_down_is_503_and_readiness_says_so(gateway_factory, fake_upstream):
    dead = [f"http://127.0.0.1:{free_port()}/v1"]
    backends = {name: [fake_upstream.url] for name in catalogue.load().names}
    backends[CHAT.name] = dead
    backends[OTHER.name] = [fake_upstream.url, *dead]  # one replica of two is down
    down = gateway_factory(backends)
    key = down.create_key()
    for _ in range(2):  # answered, not hung until the client gives up (the latency is in `make bench`)
        response = httpx.post(
            f"{down.base_url}/chat/completions",
            headers=down.headers(key),
            timeout=15,
            json={"model": CHAT.name, "messages": USER},
        )
        error = _error(response, 503, "service_unavailable_error", CHAT.name)
        assert error["code"] == "backend_unavailable"
        assert int(response.headers["retry-after"]) >= 1
    # the usage rows say what the client got (503), not LiteLLM's original 500
    db = Database(f"sqlite:///{down.state_dir / 'gateway.sqlite3'}")
    try:
        deadline = time.monotonic() + 60
        while (
            len(
                logged := db.fetchall(
                    "SELECT status, error_message FROM llm_model_requests WHERE model_name = ?", (CHAT.name,)
                )
            )
            < 2
        ):
            assert time.monotonic() < deadline, logged
            time.sleep(0.2)
    finally:
        db.close()
    assert [(r["status"], r["error_message"][:4]) for r in logged] == [("unavailable", "503 ")] * 2, logged
    statuses = [down.chat(key, OTHER.name).status_code for _ in range(6)]
    assert statuses == [200] * 6, statuses  # the dead replica is set aside, the live one answers
    ready = httpx.get(f"{down.url}/health/readiness", timeout=30)
    assert ready.status_code == 200 and ready.json()["status"] == "degraded"
    models = ready.json()["components"]["models"]
    assert models[CHAT.name] == "down" and models[OTHER.name] == "up"
    assert "details" not in ready.json()  # the details are the operator's
    assert httpx.get(f"{down.url}/health/readiness?strict=true", timeout=30).status_code == 503
    replicas = {
        m["model"]: m["replicas"]
        for m in httpx.get(f"{down.url}/health/models", headers=down.headers(), timeout=30).json()["data"]
    }
    assert [r["healthy"] for r in replicas[OTHER.name]] == [True, False]
