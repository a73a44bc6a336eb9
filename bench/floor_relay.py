"""The smallest relay on the gateway's own HTTP stack: the floor of any Python relay's cost (`make bench-streaming`).

uvicorn with httptools and uvloop in front, an aiohttp pool behind (as the gateway's relay), and nothing else:
no key, limit, validation, routing, usage row or metric. It forwards the request body to HXP_FLOOR_UPSTREAM
and relays the answer's bytes as they come. What the full gateway costs beyond it is the price of its
guarantees; what this costs is the stack's own (event-loop wake-ups, HTTP parsing, one read and one write a
chunk), which no change to the gateway's code can go under.
"""

from __future__ import annotations

import os
from typing import Any

import aiohttp
from starlette.types import Receive, Scope, Send

UPSTREAM = os.environ.get("HXP_FLOOR_UPSTREAM", "")
_pool: list[aiohttp.ClientSession] = []


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        for session in _pool:
            await session.close()
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = b""
    more = True
    while more:
        message: dict[str, Any] = dict(await receive())
        body += message.get("body", b"")
        more = bool(message.get("more_body"))
    if not _pool:
        _pool.append(aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), auto_decompress=False))
    url = UPSTREAM + str(scope["path"]).removeprefix("/v1")
    async with _pool[0].post(url, data=body, headers={"content-type": "application/json"}) as response:
        headers = [(b"content-type", response.headers["content-type"].encode())]
        await send({"type": "http.response.start", "status": response.status, "headers": headers})
        async for data in response.content.iter_any():
            await send({"type": "http.response.body", "body": data, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})
