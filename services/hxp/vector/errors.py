"""Errors of the vector layer, each carrying the HTTP status the API answers with."""

from __future__ import annotations


class VectorError(Exception):
    """A request the vector layer refuses (400 unless a subclass says otherwise)."""

    status = 400

    headers: dict[str, str] = {}

    def __init__(self, message: str, param: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status is not None:
            self.status = status


class StoreUnavailable(VectorError):
    """Qdrant did not answer (a server restarting, a network cut): 503 with Retry-After; the next request
    tries again."""

    status = 503
    headers = {"retry-after": "1"}

    def __init__(self, cause: BaseException) -> None:
        super().__init__(f"the vector store is unreachable ({type(cause).__name__}); retry shortly")


class NotFound(VectorError):
    status = 404


class CollectionNotFound(NotFound):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown collection '{name}' (known: {', '.join(known)})", "collection")


class CollectionMismatch(RuntimeError):
    """An existing Qdrant collection disagrees with its declaration; raised at start."""


class EmbeddingFailed(VectorError):
    """The embedding model could not embed the texts."""

    status = 502
