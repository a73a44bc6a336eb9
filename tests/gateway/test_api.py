"""The gateway as clients see it (one gateway on the fake upstream, SQLite, no Redis)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from hxp.core import catalogue
from hxp.core.database import Database

CAT = catalogue.load()
CHAT, OTHER = CAT.chat_models[0], CAT.chat_models[1]
EMBEDDING = CAT.embedding_models[0]
ROOT = Path(__file__).resolve().parents[2]


def _client(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30)


def test_openai_client_non_streaming(gateway):
    client = _client(gateway, gateway.create_key())
    answer = client.chat.completions.create(model=CHAT.name, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert answer.choices[0].message.content == "Hello from the fake"
    assert answer.usage.completion_tokens == 4
    assert client.completions.create(model=CHAT.name, prompt="hi").choices[0].text
    vectors = client.embeddings.create(model=EMBEDDING.name, input=["a", "b"])
    assert len(vectors.data) == 2 and len(vectors.data[0].embedding) > 0


def test_openai_client_streaming(gateway):
    client = _client(gateway, gateway.create_key())
    stream = client.chat.completions.create(
        model=CHAT.name,
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake upstream ."
    assert any(c.usage and c.usage.total_tokens for c in chunks)


def test_openai_client_sees_openai_errors(gateway):
    client = _client(gateway, gateway.create_key(models=[CHAT.name]))
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model=OTHER.name, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-nothing", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError):
        _client(gateway, "sk-hxp-wrong").models.list()


def test_models_lists_only_the_keys_models(gateway):
    limited = gateway.create_key(models=[CHAT.name, EMBEDDING.name])
    assert {m.id for m in _client(gateway, limited).models.list()} == {CHAT.name, EMBEDDING.name}
    assert {m.id for m in _client(gateway, gateway.create_key()).models.list()} == set(CAT.names)


def test_response_cache_in_process(gateway, fake_upstream):
    key = gateway.create_key()
    prompt = f"cache me {uuid.uuid4()}"
    first = gateway.chat(key, CHAT.name, prompt, temperature=0)
    served = fake_upstream.requests_served()
    second = gateway.chat(key, CHAT.name, prompt, temperature=0)
    assert (first.headers["x-hxp-cache"], second.headers["x-hxp-cache"]) == ("miss", "hit")
    assert fake_upstream.requests_served() == served
    assert second.json()["choices"][0]["message"] == first.json()["choices"][0]["message"]


def test_backend_receives_only_the_clients_fields(gateway, fake_upstream):
    """The gateway's own bookkeeping (metrics, cache opt-in, usage) never reaches the engine's request."""
    key = gateway.create_key()
    fake_upstream.reset()
    sent = [{"temperature": 0.5, "max_tokens": 4}, {"temperature": 0}, {"stream": True, "top_p": 0.9}]
    for params in sent:
        assert gateway.chat(key, CHAT.name, **params).status_code == 200
    expected = {"model", "messages"}.union(*sent)
    received = set(fake_upstream.stats()["fields"])
    assert {"model", "messages", "temperature", "max_tokens", "top_p"} <= received
    assert received <= expected | {"stream_options"}, received - expected


def test_an_alias_is_answered_and_logged_as_its_model(gateway):
    """OpenAI's embedding model name works for clients written against OpenAI (a catalogue alias)."""
    alias, key_alias = "text-embedding-ada-002", f"alias-{uuid.uuid4().hex[:8]}"
    assert CAT.get(alias).name == EMBEDDING.name
    key = gateway.create_key(key_alias, models=[EMBEDDING.name])
    vectors = _client(gateway, key).embeddings.create(model=alias, input=["alias"])
    assert len(vectors.data) == 1 and len(vectors.data[0].embedding) > 0
    chat_only = gateway.create_key(models=[CHAT.name])
    refused = httpx.post(
        f"{gateway.base_url}/embeddings",
        headers=gateway.headers(chat_only),
        timeout=30,
        json={"model": alias, "input": "x"},
    )
    assert refused.status_code == 403, refused.text
    db = Database(f"sqlite:///{gateway.state_dir / 'gateway.sqlite3'}")
    try:
        deadline = time.monotonic() + 60
        while not (
            rows := db.fetchall("SELECT model_name, status FROM llm_model_requests WHERE user_id = ?", (key_alias,))
        ):
            assert time.monotonic() < deadline, "no usage row"
            time.sleep(0.2)
    finally:
        db.close()
    assert [(r["model_name"], r["status"]) for r in rows] == [(EMBEDDING.name, "success")]


def test_admin_api_only_with_the_master_key(gateway):
    user_key = gateway.create_key()
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer sk-hxp-unknown"}, 401),
        ({"Authorization": f"Bearer {user_key}"}, 403),
    ):
        for method, path in (("GET", ""), ("POST", ""), ("POST", "/x/revoke"), ("POST", "/x/rotate")):
            response = httpx.request(
                method, f"{gateway.url}/admin/keys{path}", headers=headers, json={"alias": "nope"}, timeout=30
            )
            assert response.status_code == status, (method, path, response.text)
            assert response.json()["error"]["type"] in ("authentication_error", "permission_error")
    listing = httpx.get(f"{gateway.url}/admin/keys", headers=gateway.headers(), timeout=30).json()["data"]
    assert "nope" not in {k["alias"] for k in listing}


def test_admin_api_create_list_rotate_revoke(gateway):
    admin = {"headers": gateway.headers(), "timeout": 30}
    created = httpx.post(
        f"{gateway.url}/admin/keys",
        json={"alias": "svc-a", "owner": "team-a", "rpm": 50, "models": [CHAT.name], "days": 30},
        **admin,
    )
    assert created.status_code == 201, created.text
    old = created.json()["key"]
    assert created.json()["rpm_limit"] == 50 and created.json()["models"] == [CHAT.name]
    listed = {k["alias"]: k for k in httpx.get(f"{gateway.url}/admin/keys", **admin).json()["data"]}
    assert "key" not in listed["svc-a"] and "key_hash" not in listed["svc-a"]
    assert listed["svc-a"]["owner"] == "team-a" and listed["svc-a"]["expires_at"]
    assert httpx.post(f"{gateway.url}/admin/keys", json={"alias": "svc-a"}, **admin).status_code == 400
    bad = httpx.post(f"{gateway.url}/admin/keys", json={"alias": "svc-b", "models": ["nope"]}, **admin)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "models"
    new = httpx.post(f"{gateway.url}/admin/keys/svc-a/rotate", **admin).json()["key"]
    assert new != old
    assert gateway.chat(old, CHAT.name).status_code == 401
    assert gateway.chat(new, CHAT.name).status_code == 200
    assert httpx.post(f"{gateway.url}/admin/keys/svc-a/revoke", **admin).json()["revoked_at"]
    assert gateway.chat(new, CHAT.name).status_code == 401


def _hxp(gateway, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HXP_STATE_DIR": str(gateway.state_dir)}
    env.pop("DATABASE_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "hxp.cli", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_cli_keys(gateway):
    created = _hxp(
        gateway,
        "keys",
        "create",
        "--alias",
        "cli-key",
        "--owner",
        "ops",
        "--models",
        CHAT.name,
        "--rpm",
        "100",
        "--tpm",
        "10000",
        "--days",
        "7",
    )
    assert created.returncode == 0, created.stderr
    issued = json.loads(created.stdout)
    assert issued["key"].startswith("sk-hxp-") and issued["key_id"] and issued["tpm_limit"] == 10000
    assert gateway.chat(issued["key"], CHAT.name).status_code == 200
    assert _hxp(gateway, "keys", "create", "--alias", "cli-key").returncode != 0
    listed = json.loads(_hxp(gateway, "keys", "list").stdout)
    assert issued["key"] not in json.dumps(listed)
    assert {k["alias"]: k["owner"] for k in listed}["cli-key"] == "ops"
    rotated = json.loads(_hxp(gateway, "keys", "rotate", issued["key_id"]).stdout)
    assert rotated["key"] != issued["key"] and rotated["key_id"] == issued["key_id"]
    assert json.loads(_hxp(gateway, "keys", "revoke", "cli-key").stdout)["revoked_at"]
    assert _hxp(gateway, "keys", "revoke", "no-such-key").returncode != 0


def test_keys_never_in_clear_in_sqlite_or_the_log(gateway):
    secret = gateway.create_key()
    assert gateway.chat(secret, CHAT.name).status_code == 200
    assert gateway.chat(secret[:-2], CHAT.name).status_code == 401
    stored = b"".join(p.read_bytes() for p in gateway.state_dir.glob("gateway.sqlite3*"))
    assert stored
    for value in (secret, gateway.master_key):
        body = value.split("-", 2)[-1]
        assert body.encode() not in stored
        assert body[:-2] not in gateway.log


def test_health_endpoints(gateway):
    assert httpx.get(f"{gateway.url}/health/liveness", timeout=10).json() == {"status": "alive"}
    assert httpx.get(f"{gateway.url}/health/liveliness", timeout=10).status_code == 200
    ready = httpx.get(f"{gateway.url}/health/readiness?strict=true", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["components"]["database"] == "up" and ready.json()["components"]["redis"] == "in-process"
    assert "details" not in ready.json()
    details = httpx.get(f"{gateway.url}/health/readiness", headers=gateway.headers(), timeout=30).json()["details"]
    assert details["database"]["healthy"] and details["redis"] == {"mode": "in-process"}
    assert httpx.get(f"{gateway.url}/health/models", timeout=30).status_code == 401  # the operator's view
    models = httpx.get(f"{gateway.url}/health/models", headers=gateway.headers(), timeout=30).json()["data"]
    assert {m["model"] for m in models} == set(CAT.names) and all(m["healthy"] for m in models)
    assert "REDIS_URL is not set" in gateway.log  # in-process limits and cache, said at start-up
