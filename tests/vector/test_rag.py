"""The retrieval-augmented chat hooks, called as LiteLLM calls them (no gateway)."""

from __future__ import annotations

from pathlib import Path

import litellm
import pytest
from litellm.proxy._types import UserAPIKeyAuth

from hxp.core.errors import GatewayError
from hxp.vector import config as vector_config
from hxp.vector.embedder import Embedder
from hxp.vector.rag import SOURCES_HEADER, RagHook, augment
from hxp.vector.service import Document, VectorService
from hxp.vector.store import Hit

USER = UserAPIKeyAuth(api_key="test")
QUESTION = "How often must the backup tapes be rotated?"
PASSAGES = [
    Document(
        "policy/backup#3",
        "Backup tapes are rotated every 14 days and kept off site for a year.",
        {"source": "it-policy.pdf", "page": 3},
    ),
    Document(
        "policy/vpn#1",
        "VPN access requires a hardware token issued by the security team.",
        {"source": "it-policy.pdf", "page": 7},
    ),
    Document("menu", "The canteen serves vegetarian lasagne on Wednesdays.", {"source": "menu.txt"}),
]


def test_augment_puts_passages_with_ids_before_the_last_question() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": [{"type": "text", "text": QUESTION}]},
    ]
    hits = [Hit("policy/backup#3", 0.8, PASSAGES[0].text, {}), Hit(12, 0.5, "Second passage.", {})]
    out = augment(messages, "kb", hits)
    assert out[:3] == messages[:3] and messages[3]["content"][0]["text"] == QUESTION  # input untouched
    content = out[3]["content"]
    assert out[3]["role"] == "user" and content.endswith(f"Question: {QUESTION}")
    assert f"[policy/backup#3] {PASSAGES[0].text}" in content and "[12] Second passage." in content
    assert "knowledge base 'kb'" in content and content.index("[policy/backup#3]") < content.index("[12]")


def test_augment_without_hits_says_so_and_needs_a_user_question() -> None:
    out = augment([{"role": "user", "content": "q?"}], "kb", [])
    assert "No passage of the knowledge base 'kb' matches" in out[0]["content"]
    with pytest.raises(GatewayError, match="no user message with text") as err:
        augment([{"role": "system", "content": "x"}, {"role": "user", "content": "  "}], "kb", [])
    assert err.value.status_code == 400


@pytest.mark.anyio
async def test_requests_without_the_field_are_left_alone() -> None:
    async def no_service():  # must not be reached
        raise AssertionError("retrieval without a rag field")

    hook = RagHook(no_service)
    data = {"model": "m", "messages": [{"role": "user", "content": "q"}]}
    assert await hook.async_pre_call_hook(USER, None, data, "acompletion") is None
    assert await hook.async_post_call_success_hook(data, USER, litellm.ModelResponse()) is None
    assert await hook.async_post_call_response_headers_hook(data, USER, None) is None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def hook(tmp_path: Path, embedder: Embedder):
    service = await VectorService.open(vector_config.load(), embedder, path=str(tmp_path / "qdrant"))
    await service.upsert("knowledge_base", PASSAGES)

    async def provide() -> VectorService:
        return service

    yield RagHook(provide)
    await service.close()


def _chat(rag: object) -> dict:
    return {
        "model": "phi-3-mini",
        "messages": [{"role": "user", "content": QUESTION}],
        "rag": rag,
        "metadata": {"user_api_key_alias": "k"},
    }


@pytest.mark.anyio
@pytest.mark.engine
async def test_pre_call_retrieves_and_post_call_returns_the_sources(hook: RagHook) -> None:
    data = await hook.async_pre_call_hook(
        USER, None, _chat({"collection": "knowledge_base", "top_k": 2}), "acompletion"
    )
    assert "rag" not in data and data["metadata"]["user_api_key_alias"] == "k"
    prompt = data["messages"][-1]["content"]
    assert "[policy/backup#3] Backup tapes are rotated every 14 days" in prompt and prompt.endswith(QUESTION)
    assert "lasagne" not in prompt
    sources = data["metadata"]["hxp_rag_sources"]
    assert sources[0]["id"] == "policy/backup#3" and sources[0]["metadata"]["page"] == 3
    assert len(sources) <= 2 and sources[0]["collection"] == "knowledge_base"

    response = await hook.async_post_call_success_hook(data, USER, litellm.ModelResponse())
    assert response.model_dump()["sources"] == sources
    headers = await hook.async_post_call_response_headers_hook(data, USER, response)
    assert headers[SOURCES_HEADER].split(",")[0] == "policy%2Fbackup%233"


@pytest.mark.anyio
@pytest.mark.engine
@pytest.mark.parametrize(
    ("rag", "call_type", "status", "message"),
    [
        ({"collection": "nope"}, "acompletion", 404, "rag: unknown collection 'nope'"),
        ({"collection": "knowledge_base", "top_k": 0}, "acompletion", 400, "rag.top_k: 0 is outside 1..20"),
        ({"collection": "knowledge_base", "top_k": 21}, "acompletion", 400, "rag.top_k: 21 is outside 1..20"),
        ({"collection": "knowledge_base", "k": 3}, "acompletion", 400, "rag.k: Extra inputs are not permitted"),
        ({}, "acompletion", 400, "rag.collection: Field required"),
        ("knowledge_base", "acompletion", 400, "rag: Input should be a valid dictionary"),
        ({"collection": "knowledge_base", "filter": {"page": 1.5}}, "acompletion", 400, "rag: filter 'page'"),
        ({"collection": "knowledge_base"}, "aembedding", 400, "supported on /v1/chat/completions only"),
    ],
)
async def test_bad_rag_fields_are_refused(
    hook: RagHook, rag: object, call_type: str, status: int, message: str
) -> None:
    with pytest.raises(GatewayError, match=message) as err:
        await hook.async_pre_call_hook(USER, None, _chat(rag), call_type)
    assert err.value.status_code == status
