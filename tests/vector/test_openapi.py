"""The vector API's OpenAPI description: the router's schemas, the route table's summaries (as the gateway's
/openapi.json builds it, from this router alone)."""

from __future__ import annotations

from fastapi import FastAPI

from hxp.gateway.openapi import describe
from hxp.vector.api import router


def test_openapi_documents_every_route_with_described_models() -> None:
    app = FastAPI()
    app.include_router(router)
    spec = describe(app)
    paths = spec["paths"]
    assert set(paths) == {
        "/v1/vector/collections",
        "/v1/vector/collections/{collection}",
        "/v1/vector/collections/{collection}/documents",
        "/v1/vector/collections/{collection}/documents/{document_id}",
        "/v1/vector/collections/{collection}/documents/delete",
        "/v1/vector/collections/{collection}/search",
    }
    search = paths["/v1/vector/collections/{collection}/search"]["post"]
    assert search["summary"] == "Similarity search" and search["tags"] == ["vector"]  # the table's summary
    assert search["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchRequest")
    assert search["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/SearchResponse")
    schemas = spec["components"]["schemas"]
    request = schemas["SearchRequest"]["properties"]
    assert "default 10, at most 100" in request["limit"]["description"]
    assert "default 0.7" in request["score_threshold"]["description"]
    assert "gte" in request["filter"]["description"]
    assert all(field.get("description") for field in schemas["DocumentIn"]["properties"].values())
    assert "upserting an id again replaces it" in schemas["DocumentIn"]["properties"]["id"]["description"]
    assert schemas["SearchHit"]["properties"]["score"]["description"]
