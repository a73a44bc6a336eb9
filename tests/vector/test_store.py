"""The Qdrant layer in local mode (the embedded engine on a path), with hand-made vectors."""

from __future__ import annotations

from pathlib import Path

import pytest

from hxp.core import context
from hxp.vector.config import Collection, VectorConfig
from hxp.vector.errors import CollectionMismatch, CollectionNotFound, VectorError
from hxp.vector.store import Record, VectorStore, build_filter

pytestmark = pytest.mark.anyio

AXES = {"x": [1.0, 0.0, 0.0, 0.0], "y": [0.0, 1.0, 0.0, 0.0], "z": [0.0, 0.0, 1.0, 0.0]}


def _config(size: int = 4, distance: str = "Cosine") -> VectorConfig:
    return VectorConfig(
        collections=[Collection(name="docs", embedding_model="all-minilm-l6-v2", vector_size=size, distance=distance)]
    )


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store(tmp_path: Path):
    opened = await VectorStore.open(_config(), path=str(tmp_path / "qdrant"))
    await opened.upsert(
        "docs",
        [
            Record("a", AXES["x"], "about x", {"lang": "en", "year": 2023, "tags": ["x"]}),
            Record("b", [0.9, 0.1, 0.0, 0.0], "nearly x", {"lang": "de", "year": 2024, "tags": ["x", "near"]}),
            Record(7, AXES["y"], "about y", {"lang": "en", "year": 2025, "draft": True}),
            Record("c", AXES["z"], "about z", {"lang": "fr", "year": 2020}),
        ],
    )
    yield opened
    await opened.close()


async def test_search_ranks_by_similarity_and_returns_ids_text_metadata(store: VectorStore) -> None:
    hits = await store.search("docs", AXES["x"], limit=10, score_threshold=0.5)
    assert [h.id for h in hits] == ["a", "b"]
    assert hits[0].score == pytest.approx(1.0)
    assert hits[0].text == "about x" and hits[0].metadata["year"] == 2023
    assert [h.id for h in await store.search("docs", AXES["x"], limit=1)] == ["a"]


async def test_integer_ids_round_trip(store: VectorStore) -> None:
    hits = await store.search("docs", AXES["y"], limit=1)
    assert hits[0].id == 7
    assert [h.id for h in await store.get("docs", ["7", "missing"])] == [7]


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ({"lang": "en"}, ["a", 7]),
        ({"lang": ["de", "fr"]}, ["b", "c"]),
        ({"year": {"gte": 2024}}, ["b", 7]),
        ({"year": {"gt": 2020, "lt": 2025}}, ["a", "b"]),
        ({"draft": True}, [7]),
        ({"tags": "near"}, ["b"]),
        ({"lang": "en", "year": {"lte": 2023}}, ["a"]),
        ({"lang": "xx"}, []),
    ],
)
async def test_metadata_filters(store: VectorStore, where: dict, expected: list) -> None:
    hits = await store.search("docs", AXES["x"], limit=10, score_threshold=-1.0, where=where)
    assert sorted(str(h.id) for h in hits) == sorted(str(e) for e in expected)


@pytest.mark.parametrize("where", [{"k": 1.5}, {"k": []}, {"k": {"between": 1}}, {"k": {"gte": "a"}}, {"k": None}])
def test_unsupported_filters_are_refused(where: dict) -> None:
    with pytest.raises(VectorError, match="filter 'k'") as err:
        build_filter(where)
    assert err.value.status == 400 and err.value.param == "filter"


async def test_upsert_same_id_replaces(store: VectorStore) -> None:
    await store.upsert("docs", [Record("a", AXES["z"], "now about z", {"lang": "en"})])
    assert await store.count("docs") == 4
    hits = await store.search("docs", AXES["z"], limit=2, score_threshold=0.5)
    assert {h.id for h in hits} == {"a", "c"}
    assert (await store.get("docs", ["a"]))[0].text == "now about z"


async def test_delete_by_ids_and_by_filter_counts_what_was_removed(store: VectorStore) -> None:
    assert await store.delete("docs", ids=["a", "never-stored"]) == 1
    assert await store.delete("docs", where={"lang": "en"}) == 1
    assert await store.count("docs") == 2
    assert [h.id for h in await store.search("docs", AXES["x"], limit=10, score_threshold=0.5)] == ["b"]


async def test_wrong_vector_size_and_unknown_collection(store: VectorStore) -> None:
    with pytest.raises(VectorError, match="vector size 3 does not match collection 'docs' \\(size 4\\)") as err:
        await store.search("docs", [1.0, 0.0, 0.0], limit=1)
    assert err.value.status == 400
    with pytest.raises(VectorError, match=r"documents\[1\].vector: vector size 5"):
        await store.upsert("docs", [Record("ok", AXES["x"]), Record("bad", [0.0] * 5)])
    with pytest.raises(CollectionNotFound, match="unknown collection 'nope' \\(known: docs\\)") as missing:
        await store.search("nope", AXES["x"], limit=1)
    assert missing.value.status == 404
    assert await store.count("docs") == 4


async def test_documents_persist_across_reopen_and_mismatch_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "qdrant")
    first = await VectorStore.open(_config(), path=path)
    assert await first.ensure_collections() == []
    await first.upsert("docs", [Record("kept", AXES["y"], "still here", {"n": 1})])
    await first.close()

    again = await VectorStore.open(_config(), path=path)
    assert [(h.id, h.text) for h in await again.search("docs", AXES["y"], limit=1)] == [("kept", "still here")]
    await again.close()

    for size, distance in [(8, "Cosine"), (4, "Dot")]:
        with pytest.raises(
            CollectionMismatch,
            match=f"collection 'docs' exists with vector size 4 \\(Cosine\\) but is "
            f"declared with size {size} \\({distance}\\)",
        ):
            await VectorStore.open(_config(size, distance), path=path)


async def test_a_second_process_on_the_local_store_answers_503(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hxp.vector import service as service_module

    path = tmp_path / "qdrant"
    holder = await VectorStore.open(_config(), path=str(path))  # another gateway worker holds the local store
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.setenv("QDRANT_PATH", str(path))
    context.use()  # a fresh process
    try:
        for _ in range(2):  # remembered: not reopened on every request
            with pytest.raises(VectorError, match="held by another gateway worker; set QDRANT_URL") as err:
                await service_module.get_service()
            assert err.value.status == 503
    finally:
        await holder.close()


async def test_an_unreachable_qdrant_server_answers_503_with_retry_after_and_is_tried_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Qdrant server that does not answer (killed, restarting): each request is a 503 with Retry-After and
    the next one connects again, so the vector routes come back with Qdrant without a gateway restart."""
    import socket
    import threading

    from hxp.vector import service as service_module

    accepted = []
    server = socket.create_server(("127.0.0.1", 0))

    def drop_every_connection() -> None:  # a port where Qdrant went away: connections are dropped
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            accepted.append(conn)
            conn.close()

    threading.Thread(target=drop_every_connection, daemon=True).start()
    monkeypatch.setenv("QDRANT_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.delenv("QDRANT_PATH", raising=False)
    context.use()  # a fresh process
    try:
        for attempt in range(1, 3):
            with pytest.raises(VectorError, match="the vector store is unreachable") as err:
                await service_module.get_service()
            assert err.value.status == 503 and err.value.headers == {"retry-after": "1"}
            assert len(accepted) >= attempt  # tried again, not remembered as unavailable
    finally:
        server.close()
