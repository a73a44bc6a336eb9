"""The vector service with the real embedding engine and local-mode Qdrant (no gateway)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hxp.vector import config as vector_config
from hxp.vector.embedder import Embedder
from hxp.vector.errors import VectorError
from hxp.vector.service import Document, VectorService

pytestmark = [pytest.mark.anyio, pytest.mark.engine]

KB = "knowledge_base"
CORPUS = [
    Document(
        "eiffel",
        "The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889.",
        {"topic": "landmarks", "lang": "en"},
    ),
    Document(
        "tower-de", "Der Eiffelturm ist ein Turm aus Schmiedeeisen in Paris.", {"topic": "landmarks", "lang": "de"}
    ),
    Document("python", "Python is a programming language that emphasises code readability.", {"topic": "software"}),
    Document(
        "photosynthesis",
        "Plants turn sunlight, water and carbon dioxide into sugar by photosynthesis.",
        {"topic": "biology"},
    ),
    Document("kubernetes", "Kubernetes schedules containers across a cluster of machines.", {"topic": "software"}),
    Document("coffee", "Espresso is brewed by forcing hot water through finely ground coffee.", {"topic": "food"}),
    Document(
        "everest",
        "Mount Everest is the highest mountain above sea level, in the Himalayas.",
        {"topic": "landmarks", "lang": "en"},
    ),
    Document("vaccines", "Vaccines train the immune system to recognise a pathogen.", {"topic": "biology"}),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def service(tmp_path: Path, embedder: Embedder):
    opened = await VectorService.open(vector_config.load(), embedder, path=str(tmp_path / "qdrant"))
    assert await opened.upsert(KB, CORPUS) == len(CORPUS)
    yield opened
    await opened.close()


async def test_text_search_finds_the_right_document_among_distractors(service: VectorService) -> None:
    hits = await service.search(KB, "Which famous iron tower stands in the French capital?", score_threshold=0.2)
    assert hits[0].id == "eiffel"
    assert hits[0].metadata == {"topic": "landmarks", "lang": "en"} and "Paris" in hits[0].text
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    hits = await service.search(KB, "how do green plants make food from light", score_threshold=0.2)
    assert hits[0].id == "photosynthesis"


async def test_default_threshold_keeps_close_matches_only(service: VectorService) -> None:
    exact = await service.search(KB, CORPUS[4].text)
    assert exact[0].id == "kubernetes" and exact[0].score > 0.99
    assert all(h.score >= 0.7 for h in exact)
    assert await service.search(KB, "a recipe for lemon cake with vanilla frosting") == []


async def test_metadata_filter_narrows_the_search(service: VectorService) -> None:
    query = "iron tower in Paris"
    assert (await service.search(KB, query, score_threshold=0.0, where={"lang": "de"}))[0].id == "tower-de"
    software = await service.search(KB, query, score_threshold=-1.0, where={"topic": "software"})
    assert {h.id for h in software} == {"python", "kubernetes"}


async def test_search_by_vector_and_limit(service: VectorService, embedder: Embedder) -> None:
    [vector] = await embedder.embed("all-minilm-l6-v2", ["the tallest mountain on earth"])
    assert len(vector) == 384
    hits = await service.search(KB, vector=vector, limit=2, score_threshold=-1.0)
    assert len(hits) == 2 and hits[0].id == "everest"


async def test_batches_larger_than_one_embedding_call_keep_their_order(service: VectorService) -> None:
    documents = [
        Document(f"note-{i}", f"Maintenance note {i}: replace filter {i * 7} in building {i % 5}.") for i in range(40)
    ]  # the test embedder sends 16 texts per call
    assert await service.upsert("documents", documents) == 40
    for i in (0, 17, 39):
        hits = await service.search("documents", documents[i].text, limit=1)
        assert hits[0].id == f"note-{i}" and hits[0].score > 0.99


async def test_delete_then_search_no_longer_finds(service: VectorService) -> None:
    assert await service.delete(KB, ids=["eiffel"]) == 1
    assert await service.delete(KB, where={"topic": "biology"}) == 2
    hits = await service.search(KB, "Which famous iron tower stands in the French capital?", score_threshold=0.2)
    assert "eiffel" not in {h.id for h in hits}
    assert await service.store.count(KB) == len(CORPUS) - 3


@pytest.mark.parametrize(
    ("call", "status", "message"),
    [
        ({"query": ""}, 400, "query: the text is empty"),
        ({"query": "   "}, 400, "query: the text is empty"),
        ({"query": "x", "limit": 101}, 400, "limit: 101 is outside 1..100"),
        ({"query": "x", "limit": 0}, 400, "limit: 0 is outside 1..100"),
        ({}, 400, "exactly one of 'query'"),
        ({"query": "x", "vector": [0.0] * 384}, 400, "exactly one of 'query'"),
        ({"vector": [0.1] * 383}, 400, "vector size 383 does not match collection 'knowledge_base' \\(size 384\\)"),
        ({"query": "x", "collection": "missing"}, 404, "unknown collection 'missing'"),
    ],
)
async def test_bad_searches_are_refused(service: VectorService, call: dict, status: int, message: str) -> None:
    collection = call.pop("collection", KB)
    with pytest.raises(VectorError, match=message) as err:
        await service.search(collection, **call)
    assert err.value.status == status


@pytest.mark.parametrize(
    ("documents", "message"),
    [
        ([], "at least one document is required"),
        ([Document("a", "fine"), Document("b", " ")], r"documents\[1\].text: the text is empty"),
        ([Document("a", "one"), Document("a", "two")], r"documents\[1\].id: duplicate id 'a'"),
        ([Document(i, "t") for i in range(1001)], "1001 documents exceed the limit of 1000"),
        ([Document("v", vector=[1.0] * 10)], r"documents\[0\].vector: vector size 10"),
    ],
)
async def test_bad_upserts_are_refused_and_store_nothing(service: VectorService, documents: list, message: str) -> None:
    with pytest.raises(VectorError, match=message) as err:
        await service.upsert(KB, documents)
    assert err.value.status == 400
    assert await service.store.count(KB) == len(CORPUS)


async def test_delete_needs_ids_or_filter(service: VectorService) -> None:
    with pytest.raises(VectorError, match="give 'ids' and/or a non-empty 'filter'"):
        await service.delete(KB)
