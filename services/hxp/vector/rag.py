"""Retrieval-augmented chat: an optional ``rag`` field on /v1/chat/completions.

    {"model": "phi-3-mini", "messages": [...],
     "rag": {"collection": "knowledge_base", "top_k": 4, "score_threshold": 0.3, "filter": {"lang": "en"}}}

Before the backend call the hook embeds the last user message, retrieves the closest
passages of the collection, puts them with their ids into that message and removes
the field. The answer comes back with the passages used: a ``sources`` list on the
response body and an ``x-hxp-rag-sources`` header (URL-encoded ids, comma-separated; streams too).
Registered in the gateway's LiteLLM callbacks as ``hxp.vector.rag.rag_hook``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

from litellm.integrations.custom_logger import CustomLogger
from litellm.proxy._types import UserAPIKeyAuth
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from hxp.core.errors import GatewayError, bad_request
from hxp.vector.errors import VectorError
from hxp.vector.service import VectorService, get_service
from hxp.vector.store import Hit

FIELD = "rag"
METADATA_KEY = "hxp_rag_sources"
SOURCES_HEADER = "x-hxp-rag-sources"
CHAT_CALL_TYPES = {"completion", "acompletion"}
INSTRUCTION = (
    "Answer the question using the passages below, retrieved from the knowledge base '{collection}'. "
    "Cite the passages you use by their id in square brackets, like [{example}]. "
    "If the passages do not contain the answer, say so."
)


class RagRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    collection: str = Field(min_length=1, description="The collection to retrieve passages from")
    top_k: int | None = Field(None, description="How many passages to add (default and maximum in collections.yaml)")
    score_threshold: float | None = Field(None, description="Leave out passages scoring below this similarity")
    filter: dict[str, Any] | None = Field(None, description="Metadata conditions, as in the vector search API")


def _text(content: Any) -> str:
    """The text of a message's content (a string or a list of OpenAI content parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _last_user_index(messages: list[dict[str, Any]]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user" and _text(messages[index].get("content")).strip():
            return index
    raise bad_request("messages", "rag: the request has no user message with text to retrieve passages for")


def augment(messages: list[dict[str, Any]], collection: str, hits: list[Hit]) -> list[dict[str, Any]]:
    """The messages with the passages and the instruction put before the last user question.

    Put into the user message rather than a system message so every chat template accepts it.
    """
    index = _last_user_index(messages)
    question = _text(messages[index]["content"])
    if hits:
        passages = "\n\n".join(f"[{hit.id}] {hit.text}" for hit in hits)
        preamble = INSTRUCTION.format(collection=collection, example=hits[0].id) + "\n\n" + passages
    else:
        preamble = f"No passage of the knowledge base '{collection}' matches this question; say so if you need one."
    augmented = dict(messages[index], content=f"{preamble}\n\nQuestion: {question}")
    return [*messages[:index], augmented, *messages[index + 1 :]]


def sources_of(data: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The sources the pre-call hook recorded for this request, if it was a RAG request."""
    metadata = data.get("metadata")
    return metadata.get(METADATA_KEY) if isinstance(metadata, dict) else None


class RagHook(CustomLogger):
    """Retrieves passages before a chat call and returns them with the answer."""

    def __init__(self, service: Callable[[], Awaitable[VectorService]] = get_service) -> None:
        super().__init__()
        self.service = service

    async def async_pre_call_hook(
        self, user_api_key_dict: UserAPIKeyAuth, cache: Any, data: dict, call_type: str
    ) -> dict | None:
        if FIELD not in data:
            return None
        spec = data.pop(FIELD)
        if spec is None:
            return data
        if call_type not in CHAT_CALL_TYPES:
            raise bad_request(FIELD, "rag: retrieval is supported on /v1/chat/completions only")
        try:
            request = RagRequest.model_validate(spec)
        except ValidationError as err:
            first = err.errors()[0]
            param = ".".join([FIELD, *(str(p) for p in first["loc"])])
            raise bad_request(param, f"{param}: {first['msg']}") from None
        messages = data.get("messages") or []
        question = _text(messages[_last_user_index(messages)]["content"])
        try:
            service = await self.service()
            settings = service.config.rag
            top_k = settings.default_top_k if request.top_k is None else request.top_k
            if not 1 <= top_k <= settings.max_top_k:
                raise VectorError(f"top_k: {top_k} is outside 1..{settings.max_top_k}", "top_k")
            threshold = settings.score_threshold if request.score_threshold is None else request.score_threshold
            hits = await service.search(request.collection, question, None, top_k, threshold, request.filter)
        except VectorError as err:
            message = f"rag.{err.message}" if err.message.startswith(f"{err.param}:") else f"rag: {err.message}"
            raise GatewayError(err.status, message, param=f"{FIELD}.{err.param or 'collection'}") from None
        data["messages"] = augment(messages, request.collection, hits)
        metadata = data.get("metadata")
        if not isinstance(metadata, dict):
            metadata = data["metadata"] = {}
        metadata[METADATA_KEY] = [
            {"id": h.id, "score": h.score, "collection": request.collection, "metadata": h.metadata} for h in hits
        ]
        return data

    async def async_post_call_success_hook(self, data: dict, user_api_key_dict: UserAPIKeyAuth, response: Any) -> Any:
        sources = sources_of(data)
        if sources is None:
            return None
        response.sources = sources
        return response

    async def async_post_call_response_headers_hook(
        self,
        data: dict,
        user_api_key_dict: UserAPIKeyAuth,
        response: object,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, object] | None = None,
    ) -> dict[str, str] | None:
        sources = sources_of(data)
        if sources is None:
            return None
        return {SOURCES_HEADER: ",".join(quote(str(s["id"]), safe="") for s in sources)}


rag_hook = RagHook()
