"""The Qdrant layer: declared collections, documents as points, filtered similarity search.

A document id (string or integer, compared as text) becomes a deterministic UUID point
id, so upserting the same id replaces the document. The payload keeps the original id,
the text and the metadata; metadata filters address ``metadata.<key>``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Unpack

import httpx
from qdrant_client import AsyncQdrantClient, models
from qdrant_client.http.exceptions import ResponseHandlingException

from hxp.core.stores import QdrantLocation, qdrant_location
from hxp.vector.config import Collection, VectorConfig
from hxp.vector.errors import CollectionMismatch, CollectionNotFound, VectorError

DocumentId = str | int
Where = Mapping[str, Any]

ID_NAMESPACE = uuid.UUID("6f1e3b1c-6b55-4c3a-9d0e-6a7c0d6b2f10")
RANGE_KEYS = {"gt", "gte", "lt", "lte"}
UNREACHABLE = (ResponseHandlingException, httpx.TransportError)  # what the client raises when Qdrant does not answer


@dataclass(frozen=True)
class Record:
    """A document ready to store: its vector is already computed."""

    id: DocumentId
    vector: Sequence[float]
    text: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    id: DocumentId
    score: float
    text: str
    metadata: dict[str, Any]


FIELD_NAME = re.compile(r"[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*")


def point_id(doc_id: DocumentId) -> str:
    """The Qdrant point id of a document id (stable across processes)."""
    return str(uuid.uuid5(ID_NAMESPACE, str(doc_id)))


def _is_scalar(value: object) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _condition(key: str, value: Any) -> models.FieldCondition:
    if not FIELD_NAME.fullmatch(key):
        raise VectorError(
            f"filter: {key!r} is not a metadata field name (letters, digits, '_', '-', '.' between nested names)",
            "filter",
        )
    target = f"metadata.{key}"
    if _is_scalar(value) or isinstance(value, bool):
        return models.FieldCondition(key=target, match=models.MatchValue(value=value))
    if isinstance(value, list) and value and all(_is_scalar(v) for v in value):
        return models.FieldCondition(key=target, match=models.MatchAny(any=value))
    if isinstance(value, dict) and value and set(value) <= RANGE_KEYS and all(_is_number(v) for v in value.values()):
        return models.FieldCondition(key=target, range=models.Range(**value))
    raise VectorError(
        f"filter '{key}': expected a string, integer or boolean (equal), a non-empty list of strings or "
        f"integers (any of), or an object with gt/gte/lt/lte numbers (range); got {value!r}",
        "filter",
    )


def build_filter(where: Where | None) -> models.Filter | None:
    """All conditions must hold: {"lang": "en", "tags": ["a", "b"], "year": {"gte": 2020}}."""
    if not where:
        return None
    return models.Filter(must=[_condition(key, value) for key, value in where.items()])


class VectorStore:
    """The declared collections in one Qdrant (server or embedded local engine)."""

    def __init__(self, client: AsyncQdrantClient, config: VectorConfig) -> None:
        self.client = client
        self.config = config

    @classmethod
    async def open(cls, config: VectorConfig, **location: Unpack[QdrantLocation]) -> VectorStore:
        """Connect (``url=`` or ``path=``, default from the environment) and ensure the collections."""
        client = AsyncQdrantClient(**(location or qdrant_location()))
        store = cls(client, config)
        try:
            await store.ensure_collections()
        except BaseException:
            await client.close()
            raise
        return store

    async def close(self) -> None:
        await self.client.close()

    def collection(self, name: str) -> Collection:
        found = self.config.get(name)
        if found is None:
            raise CollectionNotFound(name, [c.name for c in self.config.collections])
        return found

    async def ensure_collections(self) -> list[str]:
        """Create missing collections; refuse existing ones whose size or distance disagree."""
        created = []
        for c in self.config.collections:
            if not await self.client.collection_exists(c.name):
                await self.client.create_collection(
                    c.name, vectors_config=models.VectorParams(size=c.vector_size, distance=models.Distance(c.distance))
                )
                created.append(c.name)
                continue
            params = (await self.client.get_collection(c.name)).config.params.vectors
            if not isinstance(params, models.VectorParams):
                raise CollectionMismatch(
                    f"collection '{c.name}' exists with named vectors; expected one unnamed vector"
                )
            if params.size != c.vector_size or params.distance.value != c.distance:
                raise CollectionMismatch(
                    f"collection '{c.name}' exists with vector size {params.size} ({params.distance.value}) but is "
                    f"declared with size {c.vector_size} ({c.distance}); fix collections.yaml or migrate the collection"
                )
        return created

    def _check_vector(self, c: Collection, vector: Sequence[float], param: str) -> None:
        if len(vector) != c.vector_size:
            raise VectorError(
                f"{param}: vector size {len(vector)} does not match collection '{c.name}' (size {c.vector_size})", param
            )

    async def upsert(self, name: str, records: Sequence[Record]) -> None:
        c = self.collection(name)
        for i, r in enumerate(records):
            self._check_vector(c, r.vector, f"documents[{i}].vector")
        points = [
            models.PointStruct(
                id=point_id(r.id),
                vector=list(r.vector),
                payload={"id": r.id, "text": r.text, "metadata": dict(r.metadata)},
            )
            for r in records
        ]
        await self.client.upsert(c.name, points=points, wait=True)

    async def get(self, name: str, ids: Sequence[DocumentId]) -> list[Hit]:
        """The stored documents among ``ids`` (score 1.0), in the order asked."""
        c = self.collection(name)
        found = await self.client.retrieve(c.name, [point_id(i) for i in ids], with_payload=True)
        by_id = {str(r.id): r.payload or {} for r in found}
        return [
            Hit(payload["id"], 1.0, payload.get("text", ""), payload.get("metadata", {}))
            for payload in (by_id.get(point_id(i)) for i in ids)
            if payload is not None
        ]

    async def delete(self, name: str, ids: Sequence[DocumentId] = (), where: Where | None = None) -> int:
        """Delete by ids and/or by metadata filter; returns how many documents were removed."""
        c = self.collection(name)
        removed = 0
        if ids:
            removed += len(await self.get(c.name, ids))
            await self.client.delete(c.name, models.PointIdsList(points=[point_id(i) for i in ids]), wait=True)
        flt = build_filter(where)
        if flt is not None:
            removed += (await self.client.count(c.name, count_filter=flt, exact=True)).count
            await self.client.delete(c.name, models.FilterSelector(filter=flt), wait=True)
        return removed

    async def search(
        self,
        name: str,
        vector: Sequence[float],
        limit: int,
        score_threshold: float | None = None,
        where: Where | None = None,
    ) -> list[Hit]:
        c = self.collection(name)
        self._check_vector(c, vector, "vector")
        result = await self.client.query_points(
            c.name,
            query=list(vector),
            query_filter=build_filter(where),
            limit=limit,
            score_threshold=score_threshold,
            with_payload=True,
        )
        return [
            Hit(p.payload["id"], p.score, p.payload.get("text", ""), p.payload.get("metadata", {}))
            for p in result.points
            if p.payload is not None
        ]

    async def count(self, name: str) -> int:
        c = self.collection(name)
        return (await self.client.count(c.name, exact=True)).count
