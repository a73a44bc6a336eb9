"""Documents in, hits out: request limits, embedding and the store together.

The API and the retrieval-augmented chat hook both go through ``VectorService``; inside
the gateway there is one per process (``get_service``), opened at start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Unpack

from hxp.core.context import Runtime, runtime
from hxp.core.stores import QdrantLocation
from hxp.vector import config as vector_config
from hxp.vector.embedder import Embedder
from hxp.vector.errors import StoreUnavailable, VectorError
from hxp.vector.store import UNREACHABLE, DocumentId, Hit, Record, VectorStore, Where

log = logging.getLogger("hxp.vector")


@dataclass(frozen=True)
class Document:
    """A document to store: its text is embedded unless a vector is given."""

    id: DocumentId
    text: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    vector: Sequence[float] | None = None


class VectorService:
    def __init__(self, store: VectorStore, embedder: Embedder) -> None:
        self.store = store
        self.embedder = embedder
        self.config = store.config

    @classmethod
    async def open(
        cls,
        config: vector_config.VectorConfig | None = None,
        embedder: Embedder | None = None,
        **location: Unpack[QdrantLocation],
    ) -> VectorService:
        """Open the store (``url=``/``path=`` or the environment) and ensure the declared collections."""
        config = config or vector_config.load()
        store = await VectorStore.open(config, **location)
        return cls(store, embedder or Embedder(batch_size=config.upsert.embedding_batch))

    async def close(self) -> None:
        await self.store.close()

    async def embed_query(self, collection: str, text: str, embedder: Embedder | None = None) -> list[float]:
        if not text.strip():
            raise VectorError("query: the text is empty", "query")
        model = self.store.collection(collection).embedding_model
        return (await (embedder or self.embedder).embed(model, [text]))[0]

    async def upsert(self, collection: str, documents: Sequence[Document], embedder: Embedder | None = None) -> int:
        """Embed the documents that carry no vector (with ``embedder``, default the service's) and store them all."""
        c = self.store.collection(collection)
        cap = self.config.upsert.max_documents
        if not documents:
            raise VectorError("documents: at least one document is required", "documents")
        if len(documents) > cap:
            raise VectorError(
                f"documents: {len(documents)} documents exceed the limit of {cap} per request", "documents"
            )
        seen: set[str] = set()
        for i, d in enumerate(documents):
            if str(d.id) in seen:
                raise VectorError(f"documents[{i}].id: duplicate id {d.id!r} in one request", f"documents[{i}].id")
            seen.add(str(d.id))
            if d.vector is None and not d.text.strip():
                raise VectorError(f"documents[{i}].text: the text is empty", f"documents[{i}].text")
        to_embed = [i for i, d in enumerate(documents) if d.vector is None]
        vectors = await (embedder or self.embedder).embed(c.embedding_model, [documents[i].text for i in to_embed])
        computed = dict(zip(to_embed, vectors))
        records = [
            Record(d.id, d.vector if d.vector is not None else computed[i], d.text, d.metadata)
            for i, d in enumerate(documents)
        ]
        await self.store.upsert(c.name, records)
        return len(records)

    async def search(
        self,
        collection: str,
        query: str | None = None,
        vector: Sequence[float] | None = None,
        limit: int | None = None,
        score_threshold: float | None = None,
        where: Where | None = None,
        embedder: Embedder | None = None,
    ) -> list[Hit]:
        """Search by text (embedded with the collection's model) or by vector."""
        limits = self.config.search
        self.store.collection(collection)
        if (query is None) == (vector is None):
            raise VectorError("give exactly one of 'query' (text) or 'vector'", "query")
        limit = limits.default_limit if limit is None else limit
        if not 1 <= limit <= limits.max_limit:
            raise VectorError(f"limit: {limit} is outside 1..{limits.max_limit}", "limit")
        threshold = limits.score_threshold if score_threshold is None else score_threshold
        if vector is None:
            vector = await self.embed_query(collection, query or "", embedder)
        return await self.store.search(collection, vector, limit, threshold, where)

    async def delete(self, collection: str, ids: Sequence[DocumentId] = (), where: Where | None = None) -> int:
        if not ids and not where:
            raise VectorError("give 'ids' and/or a non-empty 'filter' to delete", "ids")
        return await self.store.delete(collection, ids, where)


LOCAL_MODE_HELD = "already accessed by another instance"


class _Slot:
    """The runtime's service once opened, or why it cannot be (then not retried)."""

    def __init__(self) -> None:
        self.service: VectorService | None = None
        self.unavailable: str | None = None
        self.lock = asyncio.Lock()


def _slot(rt: Runtime) -> _Slot:
    return _Slot()


async def get_service() -> VectorService:
    """The gateway process's service, opened on first use from the environment and collections.yaml.

    Qdrant's local mode admits one process: in a second gateway worker the vector layer
    answers 503 (it is not retried: opening loads every stored point before it fails). A Qdrant server
    that does not answer is a 503 with Retry-After, and the next request opens the store again.
    """
    slot = runtime().get(_slot)
    async with slot.lock:
        if slot.unavailable is not None:
            raise VectorError(slot.unavailable, status=503)
        if slot.service is None:
            try:
                slot.service = await VectorService.open()
            except UNREACHABLE as err:  # a Qdrant server away: this request fails, the next one tries again
                log.warning("vector store unreachable: %s", err)
                raise StoreUnavailable(err) from None
            except RuntimeError as err:
                if LOCAL_MODE_HELD not in str(err):
                    raise
                slot.unavailable = (
                    "the vector store is Qdrant's local mode, held by another gateway worker; "
                    "set QDRANT_URL to a Qdrant server to serve vectors from several workers"
                )
                log.warning(slot.unavailable)
                raise VectorError(slot.unavailable, status=503) from None
        return slot.service


async def close_service() -> None:
    slot = runtime().peek(_slot)
    if slot is None:
        return
    async with slot.lock:
        if slot.service is not None:
            await slot.service.close()
            slot.service = None
