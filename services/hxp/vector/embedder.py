"""Texts to vectors with the catalogue's embedding model (OpenAI /v1/embeddings), in batches.

Two ways in, one batching loop:

- ``Embedder``: a LiteLLM router, inside the gateway the proxy's own (same deployments,
  retries and timeouts as /v1/embeddings). Used for retrieval inside a chat request,
  which is already counted against its key, and by tools and tests.
- ``GatewayEmbedder``: the gateway's own /v1/embeddings with the caller's key, so the
  vector API's embedding work goes through the same key checks, rate limits and usage
  log as any embeddings request.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import httpx
import litellm
from litellm import Router

from hxp.vector.errors import EmbeddingFailed, VectorError


def proxy_router() -> Router:
    """The router of the running LiteLLM proxy (set when the gateway starts)."""
    from litellm.proxy import proxy_server

    if proxy_server.llm_router is None:
        raise EmbeddingFailed("the gateway has no model router yet; the embedding model is unavailable")
    return proxy_server.llm_router


def _vectors(model: str, items: Sequence[Any], expected: int) -> list[list[float]]:
    ordered = sorted(items, key=lambda item: item["index"])
    if len(ordered) != expected:
        raise EmbeddingFailed(f"embedding model '{model}' returned {len(ordered)} vectors for {expected} texts")
    return [list(item["embedding"]) for item in ordered]


class Embedder:
    """Embeds texts in batches with a named model of a LiteLLM router (default: the proxy's)."""

    def __init__(self, router: Router | None = None, batch_size: int = 64) -> None:
        self._router = router
        self.batch_size = batch_size

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            vectors.extend(await self._embed_batch(model, list(texts[start : start + self.batch_size])))
        return vectors

    async def _embed_batch(self, model: str, batch: list[str]) -> list[list[float]]:
        router = self._router or proxy_router()
        try:
            response = await router.aembedding(model=model, input=batch)
        except litellm.BadRequestError as err:
            raise VectorError(f"embedding model '{model}' refused the text: {err.message}", "text") from None
        except Exception as err:  # noqa: BLE001 - any backend failure is reported as such, with its cause
            raise EmbeddingFailed(f"embedding model '{model}' failed: {err}") from None
        return _vectors(model, response.data, len(batch))


class GatewayEmbedder(Embedder):
    """Embeds through the gateway's /v1/embeddings at ``base_url`` with the caller's key headers, on ``client``
    (the worker's own, shared: hxp.gateway.clients)."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        base_url: str,
        key_headers: dict[str, str],
        batch_size: int = 64,
        timeout_s: float = 300.0,
    ) -> None:
        super().__init__(batch_size=batch_size)
        self.client = client
        self.base_url = base_url.rstrip("/")
        self.key_headers = key_headers
        self.timeout_s = timeout_s

    async def _embed_batch(self, model: str, batch: list[str]) -> list[list[float]]:
        try:
            response = await self.client.post(
                f"{self.base_url}/embeddings",
                json={"model": model, "input": batch},
                headers=self.key_headers,
                timeout=self.timeout_s,
            )
        except httpx.HTTPError as err:
            raise EmbeddingFailed(f"embedding model '{model}' failed: {err!r}") from None
        if response.status_code != 200:
            try:
                error = response.json()["error"]
                message, param = str(error.get("message")), error.get("param")
            except (ValueError, KeyError, TypeError, AttributeError):
                message, param = response.text[:500], None
            raise VectorError(f"embedding with '{model}': {message}", param, status=response.status_code)
        return _vectors(model, response.json()["data"], len(batch))
