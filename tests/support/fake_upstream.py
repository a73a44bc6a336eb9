"""A fast, deterministic fake OpenAI-compatible upstream (a stand-in vLLM engine).

Serves /v1/chat/completions (streamed and not), /v1/completions, /v1/embeddings,
/v1/models and /health for any model name, with an optional fixed delay. It
counts the requests it served (GET /_stats, POST /_reset) so tests can prove
that a request never reached a backend, and can be told to fail its health
check (POST /_health?ok=0).

Run it as a process: ``python -m tests.support.fake_upstream --port P [--delay S]``,
or from tests through :class:`FakeUpstream`.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Awaitable, Callable

import httpx

from tests.support.lifetime import die_with_parent
from tests.support.servers import free_port, wait_port

REPLY_WORDS = ["Hello", "from", "the", "fake", "upstream", "."]
EMBEDDING_DIM = 8

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _tokens(text: str) -> int:
    return max(1, len(text.split()))


def _prompt_text(body: dict[str, Any]) -> str:
    if "messages" in body:
        return " ".join(str(m.get("content") or "") for m in body["messages"] if isinstance(m, dict))
    prompt = body.get("prompt", "")
    return " ".join(prompt) if isinstance(prompt, list) else str(prompt)


class Upstream:
    """The ASGI application; state lives in the process."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.healthy = True
        self.counts: Counter[str] = Counter()
        self.fields: Counter[str] = Counter()  # top-level request fields the backend received
        self.health_checks = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        query = scope.get("query_string", b"").decode()
        if path == "/health":
            self.health_checks += 1
            await _json(send, {} if self.healthy else {"error": "unhealthy"}, 200 if self.healthy else 503)
        elif path == "/_stats":
            await _json(send, {"total": sum(self.counts.values()), "by_path": dict(self.counts),
                               "fields": dict(self.fields), "health_checks": self.health_checks})
        elif path == "/_reset" and method == "POST":
            self.counts.clear()
            self.fields.clear()
            self.health_checks = 0
            await _json(send, {"ok": True})
        elif path == "/_health" and method == "POST":
            self.healthy = "ok=0" not in query
            await _json(send, {"healthy": self.healthy})
        elif path == "/v1/models":
            await _json(send, {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "fake"}]})
        elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            self.counts[path] += 1
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                await _json(send, {"error": {"message": "bad json", "type": "BadRequestError"}}, 400)
                return
            self.fields.update(request.keys())
            if self.delay:
                await asyncio.sleep(self.delay)
            await self._answer(path, request, send)
        else:
            self.counts[path] += 1  # a call the backend has no route for is still a call that reached it
            await _json(send, {"error": {"message": f"no route {path}", "type": "NotFoundError"}}, 404)

    async def _answer(self, path: str, request: dict[str, Any], send: Send) -> None:
        model = request.get("model", "fake")
        prompt_tokens = _tokens(_prompt_text(request))
        if path == "/v1/embeddings":
            inputs = request.get("input", "")
            items = inputs if isinstance(inputs, list) else [inputs]
            data = [{"object": "embedding", "index": i, "embedding": [0.125 * (j + 1) for j in range(EMBEDDING_DIM)]}
                    for i in range(len(items))]
            await _json(send, {"object": "list", "model": model, "data": data,
                               "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}})
            return
        words = REPLY_WORDS[: max(1, int(request.get("max_tokens") or len(REPLY_WORDS)))]
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(words),
                 "total_tokens": prompt_tokens + len(words)}
        created, rid = int(time.time()), f"fake-{os.urandom(6).hex()}"
        chat = path == "/v1/chat/completions"
        if request.get("stream"):
            await self._stream(send, rid, created, model, words, usage, chat,
                               bool((request.get("stream_options") or {}).get("include_usage")))
            return
        text = " ".join(words)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        await _json(send, {"id": rid, "object": "chat.completion" if chat else "text_completion",
                           "created": created, "model": model, "choices": [choice], "usage": usage})

    async def _stream(self, send: Send, rid: str, created: int, model: str, words: list[str],
                      usage: dict[str, int], chat: bool, include_usage: bool) -> None:
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]})
        obj = "chat.completion.chunk" if chat else "text_completion"

        def chunk(piece: str | None, finish: str | None, with_usage: bool = False) -> bytes:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if chat:
                choice["delta"] = {} if piece is None else {"role": "assistant", "content": piece}
            else:
                choice["text"] = piece or ""
            event: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model,
                                     "choices": [] if with_usage else [choice]}
            if with_usage:
                event["usage"] = usage
            return f"data: {json.dumps(event)}\n\n".encode()

        for i, word in enumerate(words):
            await send({"type": "http.response.body", "body": chunk(word if i == 0 else " " + word, None),
                        "more_body": True})
        await send({"type": "http.response.body", "body": chunk(None, "stop"), "more_body": True})
        if include_usage:
            await send({"type": "http.response.body", "body": chunk(None, None, True), "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})


async def _json(send: Send, payload: Any, status: int = 200) -> None:
    data = json.dumps(payload).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


class FakeUpstream:
    """A fake upstream process on a free 127.0.0.1 port; ``.url`` is its OpenAI base URL (…/v1)."""

    def __init__(self, delay: float = 0.0, port: int | None = None) -> None:
        self.port = port or free_port()
        self.delay = delay
        self.root = f"http://127.0.0.1:{self.port}"
        self.url = f"{self.root}/v1"
        self._proc: subprocess.Popen | None = None

    def start(self) -> "FakeUpstream":
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.fake_upstream", "--port", str(self.port), "--delay", str(self.delay)],
            cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def stats(self) -> dict[str, Any]:
        return httpx.get(f"{self.root}/_stats", timeout=5).json()

    def requests_served(self) -> int:
        return int(self.stats()["total"])

    def reset(self) -> None:
        httpx.post(f"{self.root}/_reset", timeout=5)

    def set_healthy(self, ok: bool) -> None:
        httpx.post(f"{self.root}/_health?ok={int(ok)}", timeout=5)


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    args = parser.parse_args()
    uvicorn.run(Upstream(args.delay), host=args.host, port=args.port, log_level="warning",
                access_log=False, loop="uvloop", backlog=4096)


if __name__ == "__main__":
    main()
