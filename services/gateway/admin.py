"""The admin HTTP API for API keys; only the master key may call it.

    POST /admin/keys                 {"alias", "owner"?, "models"?, "rpm"?, "tpm"?, "expires"? | "days"?}
    GET  /admin/keys
    POST /admin/keys/{alias_or_id}/revoke
    POST /admin/keys/{alias_or_id}/rotate

Create and rotate answer the secret once, in ``key``.
"""
from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, PositiveInt

from hxp.gateway import auth, errors
from hxp.gateway.keys import KeyNotFound, KeyStoreError, expiry


async def require_master_key(request: Request) -> None:
    secret = auth.bearer(request.headers.get("authorization"))
    if auth.is_master_key(secret):
        return
    await auth.authenticate(secret)  # 401 for a missing, unknown, revoked or expired key
    raise errors.GatewayError(403, "The admin API requires the master key", code="admin_only")


router = APIRouter(prefix="/admin/keys", tags=["admin"], dependencies=[Depends(require_master_key)])


class NewKey(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alias: str
    owner: str | None = None
    models: list[str] = []
    rpm: PositiveInt | None = None
    tpm: PositiveInt | None = None
    expires: str | None = None
    days: float | None = None


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
async def create_key(body: NewKey) -> JSONResponse:
    try:
        expires_at = expiry(body.expires, body.days)
    except KeyStoreError as exc:
        return errors.bad_request(exc.field or "expires", str(exc)).response()
    return await _call(auth.key_store().create, body.alias, owner=body.owner, models=body.models, rpm=body.rpm,
                       tpm=body.tpm, expires_at=expires_at, status=201)


@router.get("")
async def list_keys() -> dict[str, Any]:
    keys = await asyncio.to_thread(auth.key_store().list)
    return {"data": [k.public() for k in keys]}


@router.post("/{ref}/revoke")
async def revoke_key(ref: str) -> JSONResponse:
    response = await _call(auth.key_store().revoke, ref)
    auth.key_cache().clear()
    return response


@router.post("/{ref}/rotate")
async def rotate_key(ref: str) -> JSONResponse:
    response = await _call(auth.key_store().rotate, ref)
    auth.key_cache().clear()
    return response
