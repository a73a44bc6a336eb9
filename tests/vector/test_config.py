"""collections.yaml validation and the choice of Qdrant (URL or local path)."""

from __future__ import annotations

import pytest

from hxp.core import catalogue, stores
from hxp.vector import config


@pytest.fixture(scope="module")
def models() -> catalogue.Catalogue:
    return catalogue.load()


def _doc(**collection: object) -> dict:
    entry = {"name": "kb", "embedding_model": "all-minilm-l6-v2", "vector_size": 384, **collection}
    return {"collections": [entry]}


def test_shipped_file_is_valid_and_names_the_catalogue_embedding_model(models: catalogue.Catalogue) -> None:
    cfg = config.load(models=models)
    embedding = {m.name for m in models.embedding_models}
    assert cfg.collections and all(c.embedding_model in embedding for c in cfg.collections)
    assert all(c.distance == "Cosine" for c in cfg.collections)
    assert (cfg.search.default_limit, cfg.search.max_limit, cfg.search.score_threshold) == (10, 100, 0.7)
    assert cfg.upsert.max_documents == 1000


def test_unknown_embedding_model_is_named(models: catalogue.Catalogue) -> None:
    with pytest.raises(config.VectorConfigError, match="collection 'kb' field embedding_model: 'phi-3-mini'"):
        config.parse(_doc(embedding_model="phi-3-mini"), models)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"collections": []}, "collections: List should have at least 1 item"),
        (_doc(vector_size=0), "collections.0.vector_size"),
        (_doc(distance="Manhattan"), "collections.0.distance"),
        (_doc(name="has space"), "collections.0.name"),
        ({**_doc(), "search": {"default_limit": 200, "max_limit": 100}}, "default_limit 200 exceeds max_limit 100"),
        ({**_doc(), "surprise": 1}, "surprise: Extra inputs are not permitted"),
        ({"collections": _doc()["collections"] * 2}, "collection 'kb': duplicate name"),
    ],
)
def test_invalid_documents_are_refused_with_the_field(models: catalogue.Catalogue, raw: dict, message: str) -> None:
    with pytest.raises(config.VectorConfigError, match=message):
        config.parse(raw, models)


def test_unreadable_file_is_reported(tmp_path) -> None:
    with pytest.raises(config.VectorConfigError, match="cannot read vector configuration"):
        config.load(tmp_path / "missing.yaml")


def test_qdrant_location_url_then_path_then_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.delenv("QDRANT_PATH", raising=False)
    monkeypatch.setenv("HXP_STATE_DIR", str(tmp_path / "state"))
    assert stores.qdrant_location() == {"path": str(tmp_path / "state" / "qdrant")}
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "q"))
    assert stores.qdrant_location() == {"path": str(tmp_path / "q")}
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("QDRANT_API_KEY", "k")
    assert stores.qdrant_location() == {"url": "http://qdrant:6333", "api_key": "k"}


def test_several_workers_on_local_mode_are_warned_about(
    monkeypatch: pytest.MonkeyPatch, tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv("QDRANT_URL", raising=False)
    monkeypatch.setenv("QDRANT_PATH", str(tmp_path / "q"))
    config.warn_local_mode_with_workers()
    assert "serves one process" in caplog.text and "set QDRANT_URL" in caplog.text
    caplog.clear()
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    config.warn_local_mode_with_workers()
    assert caplog.text == ""
