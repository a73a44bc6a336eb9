"""``GET /v1/models`` and ``/v1/models/{model_id}``: the models a key may use and what each can do.

OpenAI's shape (``{"object": "list", "data": [{"id", "object": "model", "created", "owned_by"}]}``)
plus, per model, its context window (``max_model_len``) and ``capabilities``: chat completions or
embeddings, ``tools`` (declared in the catalogue, :attr:`hxp.core.catalogue.Model.tools`), ``json_mode``
(``response_format`` ``json_object``) and ``json_schema`` (``json_schema``, strict), so that a client
or an agent framework can pick a model before calling it. The list holds only the catalogue models the
caller's key may use; for one model the boundary has already answered 404 (unknown) or 403 (not granted).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from hxp.core.catalogue import Model
from hxp.core.context import Runtime, runtime
from hxp.gateway import deployments
from hxp.gateway.request_context import context_of

router = APIRouter()
OWNER = "hxp"


def capabilities(model: Model) -> dict[str, bool]:
    """What a model can be asked for."""
    chat = model.task == "chat"
    return {
        "chat_completions": chat,
        "embeddings": not chat,
        "tools": chat and model.tools is not None,
        "json_mode": chat,
        "json_schema": chat,
    }


def _created(rt: Runtime) -> int:
    """The models' ``created`` time: when the catalogue serving them last changed."""
    return int(rt.catalogue.path.stat().st_mtime)


def describe(model: Model, name: str | None = None) -> dict[str, Any]:
    """One model as listed, under ``name`` (a client's alias) or its catalogue name."""
    return {
        "id": name or model.name,
        "object": "model",
        "created": runtime().get(_created),
        "owned_by": OWNER,
        "max_model_len": model.max_model_len,
        "capabilities": capabilities(model),
    }


@router.get("/v1/models")
async def list_models(request: Request) -> JSONResponse:
    caller = context_of(request.scope).caller
    assert caller is not None  # a client route: the boundary has identified the key
    models = [describe(m) for m in deployments.catalogue().models if caller.allows(m.name)]
    return JSONResponse({"object": "list", "data": models})


@router.get("/v1/models/{model_id}")
async def retrieve_model(model_id: str, request: Request) -> JSONResponse:
    model = context_of(request.scope).model
    assert model is not None  # the route names its model: the boundary found it and checked the grant
    return JSONResponse(describe(model, model_id))
