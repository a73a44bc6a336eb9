"""Every route enforces the key's rights: models on every route that names one, collections for reading and
writing, the admin API for the master key only. Checked in one place (the boundary), before any backend call."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import httpx
import pytest

from hxp.core import catalogue
from hxp.gateway import route_table
from tests.support.gateway import ROOT, Gateway

CAT = catalogue.load()
ALLOWED, DENIED = CAT.chat_models[0].name, CAT.chat_models[1].name
EMBED = CAT.embedding_models[0].name
# A valid request of each body kind naming ``model``: a route of a new kind fails here until it is added.
BODIES = {
    "chat": lambda model: {"model": model, "messages": [{"role": "user", "content": "hi"}]},
    "completion": lambda model: {"model": model, "prompt": "hi"},
    "embedding": lambda model: {"model": model, "input": "hi"},
    "responses": lambda model: {"model": model, "input": "hi"},
}
VECTOR = [0.05] * 384


def model_routes() -> list[route_table.Route]:
    return [r for r in route_table.table().routes if r.model is not None]


def call(gateway: Gateway, route: route_table.Route, key: str, model: str) -> httpx.Response:
    method = route.methods[0]
    if route.model == "path":
        return httpx.request(
            method, gateway.url + route.path.replace("{model_id}", model), headers=gateway.headers(key), timeout=30
        )
    return httpx.request(
        method, gateway.url + route.path, json=BODIES[route.body](model), headers=gateway.headers(key), timeout=30
    )


def test_the_table_names_the_model_of_every_openai_model_route() -> None:
    routes = {r.path for r in model_routes()}
    assert {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/models/{model_id}",
        "/v1/responses",
    } <= routes
    assert all(r.body in BODIES for r in model_routes() if r.model == "body")


@pytest.mark.parametrize("route", model_routes(), ids=lambda r: r.path)
def test_a_key_without_the_model_gets_403_on_every_route_naming_one(gateway, fake_upstream, route) -> None:
    denied = EMBED if route.body == "embedding" else DENIED
    key = gateway.create_key(models=[ALLOWED])
    before = fake_upstream.requests_served()
    response = call(gateway, route, key, denied)
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "model_not_allowed" and response.json()["error"]["param"] == "model"
    assert fake_upstream.requests_served() == before
    granted = gateway.create_key(models=[denied])
    assert call(gateway, route, granted, denied).status_code == 200


def test_models_list_shows_only_the_granted_ones(gateway) -> None:
    key = gateway.create_key(models=[ALLOWED])
    listed = httpx.get(gateway.base_url + "/models", headers=gateway.headers(key), timeout=30).json()["data"]
    assert [m["id"] for m in listed] == [ALLOWED]


# --- vector collections ------------------------------------------------------------------------------------
def upsert(gateway: Gateway, key: str, collection: str, doc_id: str, text: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/vector/collections/{collection}/documents",
        headers=gateway.headers(key),
        json={"documents": [{"id": doc_id, "text": text, "vector": VECTOR}]},
        timeout=30,
    )


def search(gateway: Gateway, key: str, collection: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.base_url}/vector/collections/{collection}/search",
        headers=gateway.headers(key),
        json={"vector": VECTOR, "score_threshold": -1},
        timeout=30,
    )


def test_a_new_key_reads_but_cannot_plant_or_delete_documents(gateway) -> None:
    key = gateway.create_key(models=["phi-3-mini"])
    planted = upsert(gateway, key, "knowledge_base", "planted-1", "The capital of France is Berlin.")
    assert planted.status_code == 403 and planted.json()["error"]["code"] == "collection_not_allowed"
    deleted = httpx.post(
        f"{gateway.base_url}/vector/collections/knowledge_base/documents/delete",
        headers=gateway.headers(key),
        json={"ids": ["planted-1"]},
        timeout=30,
    )
    assert deleted.status_code == 403
    assert upsert(gateway, gateway.master_key, "knowledge_base", "kb-1", "Paris is the capital.").status_code == 200
    assert search(gateway, key, "knowledge_base").status_code == 200
    hits = search(gateway, key, "knowledge_base").json()["data"]
    assert [h["id"] for h in hits] == ["kb-1"]  # the planted document never got in


def test_grants_limit_reads_and_writes_to_named_collections(gateway) -> None:
    key = gateway.create_key(read_collections=["documents"], write_collections=["documents"])
    assert upsert(gateway, key, "documents", "d-1", "a document").status_code == 200
    assert search(gateway, key, "documents").status_code == 200
    assert search(gateway, key, "knowledge_base").status_code == 403
    assert upsert(gateway, key, "knowledge_base", "x", "x").status_code == 403
    listed = httpx.get(f"{gateway.base_url}/vector/collections", headers=gateway.headers(key), timeout=30).json()
    assert [c["name"] for c in listed["data"]] == ["documents"]
    described = httpx.get(
        f"{gateway.base_url}/vector/collections/knowledge_base", headers=gateway.headers(key), timeout=30
    )
    assert described.status_code == 403


def test_retrieval_augmented_chat_needs_the_read_grant(gateway, fake_upstream) -> None:
    key = gateway.create_key(read_collections=["documents"])
    before = fake_upstream.requests_served()
    refused = gateway.chat(key, ALLOWED, rag={"collection": "knowledge_base"})
    assert refused.status_code == 403 and refused.json()["error"]["param"] == "rag.collection"
    assert fake_upstream.requests_served() == before


def test_grants_through_the_admin_api_take_effect_at_once(gateway) -> None:
    alias = "grants-admin"
    key = gateway.create_key(alias=alias)
    assert upsert(gateway, key, "documents", "g-1", "x").status_code == 403
    changed = httpx.post(
        f"{gateway.url}/admin/keys/{alias}/grants",
        headers=gateway.headers(),
        json={"write_collections": ["documents"]},
        timeout=30,
    )
    assert changed.status_code == 200 and changed.json()["write_collections"] == ["documents"]
    assert upsert(gateway, key, "documents", "g-1", "x").status_code == 200
    unknown = httpx.post(
        f"{gateway.url}/admin/keys/{alias}/grants",
        headers=gateway.headers(),
        json={"write_collections": ["nope"]},
        timeout=30,
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "write_collections"


def test_grants_through_the_cli(tmp_path) -> None:
    env = {
        "HXP_DATABASE_URL": f"sqlite:///{tmp_path / 'keys.sqlite3'}",
        "HXP_STATE_DIR": str(tmp_path),
        "PATH": "/usr/bin:/bin",
    }

    def hxp(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, "-m", "hxp.cli", "keys", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        return json.loads(done.stdout)

    created = hxp("create", "--alias", "cli-key", "--read", "documents")
    assert (created["read_collections"], created["write_collections"]) == (["documents"], [])
    granted = hxp("grant", "cli-key", "--write", "*")
    assert (granted["read_collections"], granted["write_collections"]) == (["documents"], ["*"])


# --- the admin surface --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "method, path",
    [
        (m, r.path.replace("{ref}", "someone"))
        for r in route_table.table().routes
        if r.access == "master"
        for m in r.methods
    ],
)
def test_master_routes_refuse_client_keys(gateway, method, path) -> None:
    key = gateway.create_key()
    assert httpx.request(method, gateway.url + path, json={}, timeout=30).status_code == 401
    response = httpx.request(method, gateway.url + path, json={}, headers=gateway.headers(key), timeout=30)
    assert response.status_code == 403 and response.json()["error"]["code"] == "admin_only"


@pytest.mark.parametrize(
    "field, value", [("api_base", "http://127.0.0.1:9/v1"), ("base_url", "http://127.0.0.1:9/v1"), ("model_list", [])]
)
def test_a_client_cannot_send_a_model_call_elsewhere(gateway, fake_upstream, field: str, value: Any) -> None:
    """A client-chosen endpoint (SSRF with the deployment's credentials) is a 400 naming it, from every caller."""
    before = fake_upstream.requests_served()
    for key in (gateway.create_key(), gateway.master_key):
        response = gateway.chat(key, ALLOWED, **{field: value})
        assert response.status_code == 400, response.text
        assert field in response.json()["error"]["message"]
    assert fake_upstream.requests_served() == before
