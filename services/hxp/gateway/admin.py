"""The admin HTTP API for API keys; the route table lets only the master key call it.

    POST /admin/keys                 {"alias", "owner"?, "models"?, "rpm"?, "tpm"?, "expires"? | "days"?,
                                      "read_collections"? (default ["*"]), "write_collections"? (default [])}
    GET  /admin/keys
    POST /admin/keys/{alias_or_id}/grants   {"read_collections"?, "write_collections"?}
    POST /admin/keys/{alias_or_id}/revoke
    POST /admin/keys/{alias_or_id}/rotate

Create and rotate answer the secret once, in ``key``. Each change is audited (:mod:`hxp.gateway.audited`):
refused with 503, changing nothing, when the audit trail cannot be written.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, PositiveInt

from hxp.core import errors
from hxp.gateway import audited, auth
from hxp.gateway.keys import KeyNotFound, KeyStoreError, expiry

router = APIRouter(prefix="/admin/keys", tags=["admin"])


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str
    owner: str | None = None
    models: list[str] = []
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    expires: str | None = None
    days: float | None = None
    read_collections: list[str] | None = None
    write_collections: list[str] = []


class Grants(BaseModel):
    model_config = ConfigDict(extra="forbid")

    read_collections: list[str] | None = None
    write_collections: list[str] | None = None


async def _call(fn: Any, *args: Any, status: int = 200, **kwargs: Any) -> JSONResponse:
    try:
        result = await asyncio.to_thread(fn, *args, **kwargs)
    except KeyNotFound as exc:
        return errors.GatewayError(404, str(exc), code="key_not_found").response()
    except KeyStoreError as exc:
        return errors.bad_request(exc.field or "key", str(exc)).response()
    if isinstance(result, tuple):  # (key, secret): shown this once
        return JSONResponse(result[0].issued(result[1]), status_code=status)
    return JSONResponse(result.public(), status_code=status)


@router.post("")
async def create_key(body: NewKey) -> Response:
    return await audited.admin_action(
        "key.create", body.alias, lambda: _create(body), **body.model_dump(exclude_none=True)
    )


async def _create(body: NewKey) -> JSONResponse:
    try:
        expires_at = expiry(body.expires, body.days)
    except KeyStoreError as exc:
        return errors.bad_request(exc.field or "expires", str(exc)).response()
    return await _call(
        auth.key_store().create,
        body.alias,
        owner=body.owner,
        models=body.models,
        rpm=body.rpm,
        tpm=body.tpm,
        expires_at=expires_at,
        read_collections=body.read_collections,
        write_collections=body.write_collections,
        status=201,
    )


@router.get("")
async def list_keys() -> dict[str, Any]:
    keys = await asyncio.to_thread(auth.key_store().list)
    return {"data": [k.public() for k in keys]}


async def _changed(action: str, ref: str, fn: Any, *args: Any, **details: Any) -> Response:
    """An audited change of key ``ref``; the worker's key cache is cleared after it."""

    async def change() -> JSONResponse:
        response = await _call(fn, ref, *args)
        auth.key_cache().clear()
        return response

    return await audited.admin_action(action, ref, change, **details)


@router.post("/{ref}/grants")
async def set_grants(ref: str, body: Grants) -> Response:
    return await _changed(
        "key.grants",
        ref,
        auth.key_store().set_grants,
        body.read_collections,
        body.write_collections,
        **body.model_dump(exclude_none=True),
    )


@router.post("/{ref}/revoke")
async def revoke_key(ref: str) -> Response:
    return await _changed("key.revoke", ref, auth.key_store().revoke)


@router.post("/{ref}/rotate")
async def rotate_key(ref: str) -> Response:
    return await _changed("key.rotate", ref, auth.key_store().rotate)
