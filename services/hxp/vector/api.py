"""The vector API on the gateway: /v1/vector/collections/{collection}/documents, /search, /delete.

Same keys and limits as the model API: the gateway's boundary checks the key on every route
and the collection grant each needs (read: describe, read, search; write: upsert, delete;
hxp.gateway.route_table), and texts are embedded through the gateway's own /v1/embeddings
with the caller's key, so its model access, rate limits and usage log apply. Errors in OpenAI's shape: bad input
400, an unknown collection or document 404. The declared collections are opened, and
created when missing, when the gateway starts.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field

from hxp.core.errors import GatewayError
from hxp.gateway import clients, loopback
from hxp.gateway.request_context import context_of
from hxp.vector.embedder import Embedder, GatewayEmbedder
from hxp.vector.errors import NotFound, StoreUnavailable, VectorError
from hxp.vector.service import Document, close_service, get_service
from hxp.vector.store import UNREACHABLE, Hit

DocumentId = str | int
Filter = dict[str, Any]

FILTER_DOC = (
    "Metadata conditions, all of which must hold: a string, integer or boolean matches equal values, "
    "a list matches any of its values, an object with gt/gte/lt/lte is a numeric range. "
    'Example: {"lang": "en", "tags": ["faq", "howto"], "year": {"gte": 2024}}'
)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DocumentIn(_Request):
    id: DocumentId = Field(description="Your id for the document (compared as text); upserting an id again replaces it")
    text: str = Field(
        "", description="The text; embedded with the collection's embedding model unless `vector` is given"
    )
    metadata: dict[str, Any] = Field(default_factory=dict, description="Any JSON object; searchable with `filter`")
    vector: list[float] | None = Field(
        None, description="A precomputed embedding of the collection's vector size, stored instead of embedding `text`"
    )


class UpsertRequest(_Request):
    documents: list[DocumentIn] = Field(description="The documents to store (1 to 1000 per request by default)")


class UpsertResponse(BaseModel):
    collection: str
    upserted: int = Field(description="How many documents were stored")


class SearchRequest(_Request):
    query: str | None = Field(None, description="Text to search for; embedded with the collection's embedding model")
    vector: list[float] | None = Field(None, description="Search with this vector instead of `query`")
    limit: int | None = Field(None, description="Most results to return (default 10, at most 100)")
    score_threshold: float | None = Field(
        None, description="Leave out hits scoring below this similarity (default 0.7; -1 keeps all)"
    )
    filter: Filter | None = Field(None, description=FILTER_DOC)
    with_text: bool = Field(True, description="Return each document's text with its metadata")


class SearchHit(BaseModel):
    id: DocumentId
    score: float = Field(description="Similarity to the query (cosine: 1 is identical)")
    metadata: dict[str, Any]
    text: str | None = None


class SearchResponse(BaseModel):
    object: str = "list"
    collection: str
    data: list[SearchHit] = Field(description="Hits, best first")


class DeleteRequest(_Request):
    ids: list[DocumentId] = Field(default_factory=list, description="Ids of the documents to delete")
    filter: Filter | None = Field(
        None, description="Also delete every document matching these conditions. " + FILTER_DOC
    )


class DeleteResponse(BaseModel):
    collection: str
    deleted: int = Field(description="How many stored documents were removed")


class CollectionInfo(BaseModel):
    name: str
    description: str
    embedding_model: str = Field(description="The catalogue's embedding model that fills and queries it")
    vector_size: int
    distance: str
    documents: int = Field(description="Documents stored now")


class CollectionList(BaseModel):
    object: str = "list"
    data: list[CollectionInfo]


def _describe(errors: list[dict[str, Any]]) -> tuple[str, str]:
    """The parameter and message of the first validation error, e.g. ``documents.0.text``."""
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "body", f"the body is not valid JSON: {first.get('ctx', {}).get('error', 'parse error')}"
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query")]
    param = ".".join(loc) or "body"
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return param, f"{param}: {first.get('msg', 'invalid value')}{more}"


class _OpenAIErrorRoute(APIRoute):
    """Answers invalid bodies (400) and vector-layer refusals (their own status) in OpenAI's error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except RequestValidationError as err:
                param, message = _describe(list(err.errors()))
                raise GatewayError(400, message, param=param, code="invalid_value") from None
            except UNREACHABLE as err:
                unavailable = StoreUnavailable(err)
                raise GatewayError(503, unavailable.message, headers=unavailable.headers) from None
            except VectorError as err:
                raise GatewayError(err.status, err.message, param=err.param, headers=err.headers) from None

        return route


@asynccontextmanager
async def _lifespan(_app: FastAPI) -> AsyncIterator[None]:
    """Open Qdrant and ensure the declared collections when the gateway starts.

    A mismatching collection stops the start; a local store held by a sibling worker does not.
    """
    try:
        await get_service()
    except VectorError:
        pass  # logged; this worker's vector routes answer 503 (and try Qdrant again when it was unreachable)
    try:
        yield
    finally:
        await close_service()


router = APIRouter(
    prefix="/v1/vector",
    tags=["vector"],
    route_class=_OpenAIErrorRoute,
    lifespan=_lifespan,
)

CollectionName = Path(description="A collection declared in collections.yaml")


async def caller_embedder(request: Request) -> Embedder:
    """Embeds through this gateway's own /v1/embeddings with the caller's key: same limits, access and usage log."""
    service = await get_service()
    url = loopback.base_url(request.scope)
    if url is None:  # not on a TCP socket: the proxy's router, uncounted
        return service.embedder
    return GatewayEmbedder(
        clients.shared(), url, loopback.key_headers(request.headers), service.config.upsert.embedding_batch
    )


CallerEmbedder = Depends(caller_embedder)


def _hit(hit: Hit, with_text: bool = True) -> SearchHit:
    return SearchHit(id=hit.id, score=hit.score, metadata=hit.metadata, text=hit.text if with_text else None)


async def _info(name: str) -> CollectionInfo:
    service = await get_service()
    c = service.store.collection(name)
    return CollectionInfo(**c.model_dump(), documents=await service.store.count(name))


@router.get("/collections", response_model=CollectionList)
async def list_collections(request: Request) -> CollectionList:
    service = await get_service()
    caller = context_of(request.scope).caller
    readable = [c for c in service.config.collections if caller is not None and caller.may_read(c.name)]
    return CollectionList(data=[await _info(c.name) for c in readable])


@router.get("/collections/{collection}", response_model=CollectionInfo)
async def describe_collection(collection: str = CollectionName) -> CollectionInfo:
    return await _info(collection)


@router.post("/collections/{collection}/documents", response_model=UpsertResponse)
async def upsert_documents(
    body: UpsertRequest, collection: str = CollectionName, embedder: Embedder = CallerEmbedder
) -> UpsertResponse:
    service = await get_service()
    documents = [Document(d.id, d.text, d.metadata, d.vector) for d in body.documents]
    return UpsertResponse(collection=collection, upserted=await service.upsert(collection, documents, embedder))


@router.get("/collections/{collection}/documents/{document_id}", response_model=SearchHit)
async def get_document(document_id: str, collection: str = CollectionName) -> SearchHit:
    service = await get_service()
    found = await service.store.get(collection, [document_id])
    if not found:
        raise NotFound(f"no document '{document_id}' in collection '{collection}'", "document_id")
    return _hit(found[0])


@router.post("/collections/{collection}/documents/delete", response_model=DeleteResponse)
async def delete_documents(body: DeleteRequest, collection: str = CollectionName) -> DeleteResponse:
    service = await get_service()
    return DeleteResponse(collection=collection, deleted=await service.delete(collection, body.ids, body.filter))


@router.post("/collections/{collection}/search", response_model=SearchResponse)
async def search(
    body: SearchRequest, collection: str = CollectionName, embedder: Embedder = CallerEmbedder
) -> SearchResponse:
    service = await get_service()
    hits = await service.search(
        collection, body.query, body.vector, body.limit, body.score_threshold, body.filter, embedder
    )
    return SearchResponse(collection=collection, data=[_hit(h, body.with_text) for h in hits])
