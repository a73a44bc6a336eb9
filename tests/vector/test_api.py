"""The vector API, /v1/embeddings and retrieval-augmented chat through a real gateway.

Embeddings come from the real embedding engine; Qdrant is the embedded local engine
under the gateway's state directory; chat goes to the fake upstream (and, in one test,
to the real chat engine).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from hxp.core import catalogue
from hxp.core.database import Database
from tests.fixtures.engines import RunningEngine
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway, GatewayFactory

pytestmark = pytest.mark.engine

KB = "knowledge_base"
DOCS = [
    {
        "id": "eiffel",
        "text": "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.",
        "metadata": {"topic": "landmarks", "lang": "en", "year": 1889},
    },
    {
        "id": "tower-de",
        "text": "Der Eiffelturm ist ein Turm aus Schmiedeeisen in Paris.",
        "metadata": {"topic": "landmarks", "lang": "de", "year": 1889},
    },
    {
        "id": "python",
        "text": "Python is a programming language that emphasises code readability.",
        "metadata": {"topic": "software", "year": 1991},
    },
    {
        "id": "photosynthesis",
        "text": "Plants turn sunlight, water and carbon dioxide into sugar by photosynthesis.",
        "metadata": {"topic": "biology"},
    },
    {
        "id": "backup-policy",
        "text": "Backup tapes are rotated every 14 days and kept off site for one year.",
        "metadata": {"topic": "it-policy", "source": "it-policy.pdf"},
    },
    {
        "id": 42,
        "text": "Espresso is brewed by forcing hot water through finely ground coffee.",
        "metadata": {"topic": "food"},
    },
]
QUESTION = "Which famous iron tower stands in the French capital?"


def _backends(chat_url: str, embedding_backends: dict[str, list[str]]) -> dict[str, list[str]]:
    chat = {m.name: [chat_url] for m in catalogue.load().chat_models}
    return {**chat, **embedding_backends}


# QDRANT_URL empty: the embedded engine under the gateway's state dir, whatever the developer's shell says.
LOCAL_QDRANT = {"QDRANT_URL": "", "QDRANT_PATH": "", "HXP_VECTOR_CONFIG": ""}


@pytest.fixture(scope="module")
def gw(fake_upstream: FakeUpstream, embedding_backends: dict[str, list[str]]) -> Iterator[Gateway]:
    factory = GatewayFactory()
    gateway = factory(_backends(fake_upstream.url, embedding_backends), env=LOCAL_QDRANT)
    response = post(gateway, f"/v1/vector/collections/{KB}/documents", {"documents": DOCS})
    assert response.status_code == 200, response.text
    yield gateway
    factory.close()


def post(gateway: Gateway, path: str, body: object, key: str | None = None) -> httpx.Response:
    return httpx.post(gateway.url + path, json=body, headers=gateway.headers(key), timeout=120)


def search(gateway: Gateway, body: dict, collection: str = KB, key: str | None = None) -> httpx.Response:
    return post(gateway, f"/v1/vector/collections/{collection}/search", body, key)


def test_upsert_then_search_finds_the_right_document_among_distractors(gw: Gateway) -> None:
    response = search(gw, {"query": QUESTION, "score_threshold": 0.3, "limit": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["collection"] == KB and len(body["data"]) <= 3
    best = body["data"][0]
    assert best["id"] == "eiffel" and best["metadata"]["year"] == 1889 and "Paris" in best["text"]
    assert 0.3 <= best["score"] <= 1.0
    exact = search(gw, {"query": DOCS[5]["text"], "with_text": False}).json()["data"]
    assert exact[0]["id"] == 42 and exact[0]["text"] is None and exact[0]["score"] > 0.99
    assert all(hit["score"] >= 0.7 for hit in exact)  # the default threshold


def test_filters(gw: Gateway) -> None:
    german = search(gw, {"query": QUESTION, "score_threshold": 0.0, "filter": {"lang": "de"}}).json()["data"]
    assert [h["id"] for h in german] == ["tower-de"]
    old = search(gw, {"query": QUESTION, "score_threshold": -1, "filter": {"year": {"lt": 1990}}}).json()["data"]
    assert {h["id"] for h in old} == {"eiffel", "tower-de"}
    some = search(gw, {"query": QUESTION, "score_threshold": -1, "filter": {"topic": ["food", "biology"]}}).json()
    assert {h["id"] for h in some["data"]} == {42, "photosynthesis"}


def test_search_by_vector_from_the_embeddings_endpoint(gw: Gateway) -> None:
    client = openai.OpenAI(base_url=gw.base_url, api_key=gw.master_key, timeout=120)
    vector = (
        client.embeddings.create(model="all-minilm-l6-v2", input="sunlight makes sugar in leaves").data[0].embedding
    )
    hits = search(gw, {"vector": vector, "limit": 1, "score_threshold": 0.2}).json()["data"]
    assert [h["id"] for h in hits] == ["photosynthesis"]


def test_get_and_delete_documents(gw: Gateway) -> None:
    temporary = [
        {"id": f"tmp-{i}", "text": f"Temporary note number {i}", "metadata": {"tmp": True, "n": i}} for i in range(3)
    ]
    assert post(gw, "/v1/vector/collections/documents/documents", {"documents": temporary}).json()["upserted"] == 3
    got = httpx.get(f"{gw.url}/v1/vector/collections/documents/documents/tmp-1", headers=gw.headers(), timeout=30)
    assert got.status_code == 200 and got.json()["metadata"] == {"tmp": True, "n": 1}
    deleted = post(gw, "/v1/vector/collections/documents/documents/delete", {"ids": ["tmp-0", "never"]})
    assert deleted.json() == {"collection": "documents", "deleted": 1}
    deleted = post(gw, "/v1/vector/collections/documents/documents/delete", {"filter": {"n": {"gte": 1}}})
    assert deleted.json()["deleted"] == 2
    missing = httpx.get(f"{gw.url}/v1/vector/collections/documents/documents/tmp-1", headers=gw.headers(), timeout=30)
    assert missing.status_code == 404 and "no document 'tmp-1'" in missing.json()["error"]["message"]
    info = httpx.get(f"{gw.url}/v1/vector/collections/documents", headers=gw.headers(), timeout=30).json()
    assert info["documents"] == 0 and info["vector_size"] == 384 and info["embedding_model"] == "all-minilm-l6-v2"


def test_collections_are_listed_with_their_counts(gw: Gateway) -> None:
    listed = httpx.get(f"{gw.url}/v1/vector/collections", headers=gw.headers(), timeout=30).json()["data"]
    kb = next(c for c in listed if c["name"] == KB)
    assert kb["documents"] == len(DOCS) and kb["distance"] == "Cosine"


def test_same_keys_as_the_model_api(gw: Gateway) -> None:
    assert search(gw, {"query": "x"}, key="sk-not-a-key").status_code == 401
    anonymous = httpx.post(f"{gw.url}/v1/vector/collections/{KB}/search", json={"query": "x"}, timeout=30)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["type"] == "authentication_error"
    key = gw.create_key()
    assert search(gw, {"query": QUESTION, "score_threshold": 0.3}, key=key).json()["data"][0]["id"] == "eiffel"


def test_same_model_access_and_rate_limits_as_the_model_api(gw: Gateway) -> None:
    chat_only = gw.create_key(models=["phi-3-mini"])
    refused = search(gw, {"query": QUESTION}, key=chat_only)
    assert refused.status_code == 403 and "all-minilm-l6-v2" in refused.json()["error"]["message"]
    assert post(gw, f"/v1/vector/collections/{KB}/documents", {"documents": DOCS[:1]}, chat_only).status_code == 403

    limited = gw.create_key(rpm=2)
    statuses = [search(gw, {"query": f"question {i}"}, key=limited).status_code for i in range(3)]
    assert statuses == [200, 200, 429]
    error = search(gw, {"query": "one more"}, key=limited).json()["error"]
    assert error["type"] == "rate_limit_error"


@pytest.mark.parametrize(
    ("path", "body", "status", "param", "message"),
    [
        ("/v1/vector/collections/nope/search", {"query": "x"}, 404, "collection", "unknown collection 'nope'"),
        ("/v1/vector/collections/nope/documents", {"documents": DOCS[:1]}, 404, "collection", "unknown collection"),
        (
            f"/v1/vector/collections/{KB}/search",
            {"vector": [0.1] * 10},
            400,
            "vector",
            "vector size 10 does not match collection 'knowledge_base' (size 384)",
        ),
        (
            f"/v1/vector/collections/{KB}/documents",
            {"documents": [{"id": "v", "vector": [1.0] * 3}]},
            400,
            "documents[0].vector",
            "vector size 3",
        ),
        (f"/v1/vector/collections/{KB}/search", {"query": "x", "limit": 101}, 400, "limit", "101 is outside 1..100"),
        (f"/v1/vector/collections/{KB}/search", {"query": ""}, 400, "query", "the text is empty"),
        (
            f"/v1/vector/collections/{KB}/documents",
            {"documents": [{"id": "e", "text": ""}]},
            400,
            "documents[0].text",
            "the text is empty",
        ),
        (f"/v1/vector/collections/{KB}/documents", {"documents": []}, 400, "documents", "at least one document"),
        (
            f"/v1/vector/collections/{KB}/documents",
            {"documents": [{"id": i, "text": "t"} for i in range(1001)]},
            400,
            "documents",
            "1001 documents exceed the limit of 1000",
        ),
        (f"/v1/vector/collections/{KB}/search", {"query": "x", "vector": [0.0] * 384}, 400, "query", "exactly one"),
        (
            f"/v1/vector/collections/{KB}/search",
            {"query": "x", "filter": {"year": {"about": 3}}},
            400,
            "filter",
            "filter 'year'",
        ),
        (f"/v1/vector/collections/{KB}/search", {"query": "x", "top_k": 3}, 400, "top_k", "Extra inputs"),
        (f"/v1/vector/collections/{KB}/search", {"query": "x", "limit": "many"}, 400, "limit", "valid integer"),
        (
            f"/v1/vector/collections/{KB}/documents",
            {"documents": [{"text": "no id"}]},
            400,
            "documents.0.id",
            "Field required",
        ),
        (f"/v1/vector/collections/{KB}/documents/delete", {}, 400, "ids", "give 'ids' and/or a non-empty 'filter'"),
    ],
)
def test_bad_input_is_refused_in_openai_shape(
    gw: Gateway, path: str, body: dict, status: int, param: str, message: str
) -> None:
    response = post(gw, path, body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert message in error["message"] and error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_malformed_json_is_a_400(gw: Gateway) -> None:
    response = httpx.post(
        f"{gw.url}/v1/vector/collections/{KB}/search",
        content=b"{not json",
        headers={**gw.headers(), "content-type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]


def test_embeddings_endpoint_batch_usage_and_logging(gw: Gateway) -> None:
    key = gw.create_key(alias="embedding-user")
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, timeout=120)
    texts = ["first sentence", "a second, somewhat longer sentence", "third"]
    response = client.embeddings.create(model="all-minilm-l6-v2", input=texts)
    assert [d.index for d in response.data] == [0, 1, 2]
    assert all(len(d.embedding) == 384 for d in response.data)
    assert response.usage.prompt_tokens >= len(" ".join(texts).split()) and response.usage.total_tokens > 0
    single = client.embeddings.create(model="all-minilm-l6-v2", input="third").data[0].embedding
    assert single == pytest.approx(response.data[2].embedding, abs=1e-4)
    with pytest.raises(openai.BadRequestError):
        client.embeddings.create(model="all-minilm-l6-v2", input=[])

    db = Database(f"sqlite:///{gw.state_dir / 'gateway.sqlite3'}")
    deadline = time.monotonic() + 30
    rows: list = []
    while time.monotonic() < deadline and not rows:
        rows = db.fetchall(
            "SELECT prompt_tokens, status FROM llm_model_requests WHERE model_name = ? "
            "AND status = 'success' AND prompt_tokens = ?",
            ("all-minilm-l6-v2", response.usage.prompt_tokens),
        )
        time.sleep(0.3)
    assert rows, "the embedding request was not logged"


def test_rag_chat_returns_the_sources_and_sends_the_passages(gw: Gateway, fake_upstream: FakeUpstream) -> None:
    question = "How often are the backup tapes rotated?"
    plain = gw.chat(gw.master_key, "phi-3-mini", question)
    rag = gw.chat(gw.master_key, "phi-3-mini", question, rag={"collection": KB, "top_k": 2})
    assert rag.status_code == 200, rag.text
    body = rag.json()
    assert body["sources"][0]["id"] == "backup-policy" and body["sources"][0]["collection"] == KB
    assert body["sources"][0]["metadata"]["source"] == "it-policy.pdf" and len(body["sources"]) <= 2
    assert rag.headers["x-hxp-rag-sources"].split(",")[0] == "backup-policy"
    # the fake upstream counts prompt words: the passages reached the backend, the field did not break it
    assert body["usage"]["prompt_tokens"] > plain.json()["usage"]["prompt_tokens"] + 15
    assert "sources" not in plain.json() and "x-hxp-rag-sources" not in plain.headers


def test_rag_streaming_carries_the_sources_header(gw: Gateway) -> None:
    body = {
        "model": "phi-3-mini",
        "stream": True,
        "messages": [{"role": "user", "content": QUESTION}],
        "rag": {"collection": KB, "top_k": 1},
    }
    with httpx.stream(
        "POST", f"{gw.base_url}/chat/completions", json=body, headers=gw.headers(), timeout=120
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-hxp-rag-sources"] == "eiffel"
        assert "data: [DONE]" in response.read().decode()


@pytest.mark.parametrize(
    ("rag", "status", "message"),
    [
        ({"collection": "nope"}, 404, "rag: unknown collection 'nope'"),
        ({"collection": KB, "top_k": 50}, 400, "rag.top_k: 50 is outside 1..20"),
        ({"top_k": 2}, 400, "rag.collection: Field required"),
    ],
)
def test_bad_rag_field_is_refused(gw: Gateway, rag: dict, status: int, message: str) -> None:
    response = gw.chat(gw.master_key, "phi-3-mini", QUESTION, rag=rag)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


def test_real_chat_rag_and_documents_persist_across_gateway_restarts(
    gateway_factory,
    chat_engine: RunningEngine,
    fake_upstream: FakeUpstream,
    embedding_backends: dict[str, list[str]],
    tmp_path: Path,
) -> None:
    first = gateway_factory(_backends(chat_engine.url("/v1"), embedding_backends), env=LOCAL_QDRANT, state_dir=tmp_path)
    assert post(first, f"/v1/vector/collections/{KB}/documents", {"documents": DOCS}).status_code == 200
    response = first.chat(
        first.master_key,
        "phi-3-mini",
        "How often are the backup tapes rotated?",
        rag={"collection": KB, "top_k": 2},
        max_tokens=24,
        temperature=0,
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["choices"][0]["message"]["content"].strip() and answer["usage"]["completion_tokens"] > 0
    assert answer["sources"][0]["id"] == "backup-policy"
    first.stop()

    backends = _backends(fake_upstream.url, embedding_backends)  # the restarts need no real chat
    second = gateway_factory(backends, env=LOCAL_QDRANT, state_dir=tmp_path)
    hits = search(second, {"query": QUESTION, "score_threshold": 0.3}).json()["data"]
    assert hits[0]["id"] == "eiffel"
    second.stop()

    # the same store declared with another vector size: the gateway refuses to start, naming both sizes
    changed = tmp_path / "collections.yaml"
    changed.write_text(f"collections:\n  - {{name: {KB}, embedding_model: all-minilm-l6-v2, vector_size: 768}}\n")
    with pytest.raises(RuntimeError, match="gateway exited"):
        gateway_factory(backends, env={**LOCAL_QDRANT, "HXP_VECTOR_CONFIG": str(changed)}, state_dir=tmp_path)
    log = (tmp_path / "gateway.log").read_text(errors="replace")
    assert "collection 'knowledge_base' exists with vector size 384 (Cosine) but is declared with size 768" in log
