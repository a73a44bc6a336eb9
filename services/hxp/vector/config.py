"""The vector settings (collections.yaml) and where Qdrant lives.

Collections are data: adding one is an entry in collections.yaml. Each names the
catalogue's embedding model that fills it, so its vectors and queries agree.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from hxp.core import catalogue
from hxp.core.stores import qdrant_location

DEFAULT_PATH = Path(__file__).with_name("collections.yaml")
log = logging.getLogger("hxp.vector")


class VectorConfigError(ValueError):
    """collections.yaml is invalid; the message names the entry and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Collection(_Strict):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_\-]+$")
    description: str = ""
    embedding_model: str = Field(min_length=1)
    vector_size: PositiveInt
    distance: Literal["Cosine", "Dot", "Euclid"] = "Cosine"


class SearchLimits(_Strict):
    default_limit: PositiveInt = 10
    max_limit: PositiveInt = 100
    score_threshold: float = 0.7

    @model_validator(mode="after")
    def _default_within_max(self) -> SearchLimits:
        if self.default_limit > self.max_limit:
            raise ValueError(f"default_limit {self.default_limit} exceeds max_limit {self.max_limit}")
        return self


class UpsertLimits(_Strict):
    max_documents: PositiveInt = 1000
    embedding_batch: PositiveInt = 64


class RagSettings(_Strict):
    default_top_k: PositiveInt = 4
    max_top_k: PositiveInt = 20
    score_threshold: float = 0.3


class VectorConfig(_Strict):
    collections: list[Collection] = Field(min_length=1)
    search: SearchLimits = SearchLimits()
    upsert: UpsertLimits = UpsertLimits()
    rag: RagSettings = RagSettings()

    def get(self, name: str) -> Collection | None:
        return next((c for c in self.collections if c.name == name), None)


def parse(raw: object, models: catalogue.Catalogue) -> VectorConfig:
    """Validate a collections document against the catalogue's embedding models."""
    try:
        config = VectorConfig.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in err.errors())
        raise VectorConfigError(f"invalid vector configuration: {problems}") from None
    embedding = {m.name for m in models.embedding_models}
    seen: set[str] = set()
    for c in config.collections:
        if c.name in seen:
            raise VectorConfigError(f"collection '{c.name}': duplicate name")
        seen.add(c.name)
        if c.embedding_model not in embedding:
            known = ", ".join(sorted(embedding)) or "none"
            raise VectorConfigError(
                f"collection '{c.name}' field embedding_model: '{c.embedding_model}' is not an embedding model "
                f"of the catalogue (known: {known})"
            )
    return config


def load(path: str | Path | None = None, models: catalogue.Catalogue | None = None) -> VectorConfig:
    """Load HXP_VECTOR_CONFIG (default services/hxp/vector/collections.yaml)."""
    file = Path(path or os.environ.get("HXP_VECTOR_CONFIG") or DEFAULT_PATH)
    try:
        raw = yaml.safe_load(file.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise VectorConfigError(f"cannot read vector configuration {file}: {err}") from None
    return parse(raw, models or catalogue.load())


def collection_names() -> list[str]:
    """The declared collections' names (the key grants' choices)."""
    return [c.name for c in load().collections]


def warn_local_mode_with_workers() -> None:
    """Launcher hook before several gateway workers start: the embedded engine serves one process only."""
    where = qdrant_location()
    if "path" in where:
        log.warning(
            "Qdrant's local mode (%s) serves one process: only one gateway worker will serve the vector API and "
            "retrieval-augmented chat, the others answer 503. Run one worker, or set QDRANT_URL to a Qdrant server.",
            where["path"],
        )
