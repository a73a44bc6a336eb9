"""Texts to vectors through a LiteLLM router: the catalogue's embedding model, OpenAI /v1/embeddings.

Inside the gateway the router is the proxy's own (same deployments, retries and timeouts
as /v1/embeddings); tools and tests pass a router of their own.
"""
from __future__ import annotations

from collections.abc import Sequence

import litellm
from litellm import Router

from hxp.vector.errors import EmbeddingFailed, VectorError


def proxy_router() -> Router:
    """The router of the running LiteLLM proxy (set when the gateway starts)."""
    from litellm.proxy import proxy_server

    if proxy_server.llm_router is None:
        raise EmbeddingFailed("the gateway has no model router yet; the embedding model is unavailable")
    return proxy_server.llm_router


class Embedder:
    """Embeds texts in batches with a named model of the router."""

    def __init__(self, router: Router | None = None, batch_size: int = 64) -> None:
        self._router = router
        self.batch_size = batch_size

    async def embed(self, model: str, texts: Sequence[str]) -> list[list[float]]:
        router = self._router or proxy_router()
        vectors: list[list[float]] = []
        for start in range(0, len(texts), self.batch_size):
            batch = list(texts[start : start + self.batch_size])
            try:
                response = await router.aembedding(model=model, input=batch)
            except litellm.BadRequestError as err:
                raise VectorError(f"embedding model '{model}' refused the text: {err.message}", "text") from None
            except Exception as err:  # noqa: BLE001 - any backend failure is reported as such, with its cause
                raise EmbeddingFailed(f"embedding model '{model}' failed: {err}") from None
            items = sorted(response.data, key=lambda item: item["index"])
            if len(items) != len(batch):
                raise EmbeddingFailed(f"embedding model '{model}' returned {len(items)} vectors for {len(batch)} texts")
            vectors.extend(list(item["embedding"]) for item in items)
        return vectors
