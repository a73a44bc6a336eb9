"""A fast, deterministic fake OpenAI-compatible upstream (a stand-in vLLM engine).

Serves /v1/chat/completions (streamed and not), /v1/completions, /v1/embeddings,
/v1/models, /health, vLLM's /tokenize (one token per word) and its queue gauges on /metrics
(requests being answered, and as many waiting as told: POST /_queue?waiting=N) for any model name,
with an optional delay (POST /_delay?s=S changes it). It counts
the requests it served (GET /_stats, POST /_reset) so tests can prove that a request
never reached a backend, keeps the bodies of the latest model requests in order
(GET /_requests), and can be told to fail its health check (POST /_health?ok=0).
With ``--forward URL`` it answers nothing itself: it relays every request to that real
engine, keeping the model requests' bodies.

Its answers are REPLY_WORDS (at most ``max_tokens`` of them, one streamed chunk each) unless
told otherwise (POST /_reply?words=N&rate=R&break_after=B, :meth:`FakeUpstream.set_reply`): then N
words, cycling through REPLY_WORDS, streams paced at R chunks per second (unpaced without R) and,
with B, broken off after B text chunks as by an engine that died (the connection closed mid-stream).
A stream watches for the client's disconnect: /_stats counts the streams ``completed``, ``cut``
(the client went away first) and ``broken``, and how many text chunks each cut stream had sent.

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
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

import httpx

from tests.support.lifetime import die_with_parent
from tests.support.servers import LOOPBACK, Where, free_port

REPLY_WORDS = ["Hello", "from", "the", "fake", "upstream", "."]
EMBEDDING_DIM = 8
REQUESTS_KEPT = 1000
MODEL_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings")
HOP_HEADERS = frozenset({b"host", b"content-length", b"transfer-encoding", b"connection"})

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

    def __init__(self, delay: float = 0.0, forward: str | None = None) -> None:
        self.delay = delay
        self.forward = forward
        self.healthy = True
        self.reply_words = len(REPLY_WORDS)
        self.chunk_rate: float | None = None  # streamed chunks per second; None: as fast as possible
        self.break_after: int | None = None  # text chunks after which a stream breaks off; None: never
        self.counts: Counter[str] = Counter()
        self.fields: Counter[str] = Counter()  # top-level request fields the backend received
        self.health_checks = 0
        self.requests: deque[dict[str, Any]] = deque(maxlen=REQUESTS_KEPT)  # latest model request bodies
        self.running = 0  # requests being answered now (vllm:num_requests_running on /metrics)
        self.waiting = 0.0  # vllm:num_requests_waiting on /metrics, as told (POST /_queue)
        self.streams: Counter[str] = Counter()  # completed | cut | broken
        self.cut_after: list[int] = []  # text chunks each cut stream had sent

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
        if self.forward and not path.startswith("/_"):
            if method == "POST" and path in MODEL_PATHS:
                self.requests.append(json.loads(body or b"{}"))
            await self._relay(scope, body, send)
        elif path == "/health":
            self.health_checks += 1
            await _json(send, {} if self.healthy else {"error": "unhealthy"}, 200 if self.healthy else 503)
        elif path == "/_stats":
            await _json(
                send,
                {
                    "total": sum(self.counts.values()),
                    "by_path": dict(self.counts),
                    "fields": dict(self.fields),
                    "health_checks": self.health_checks,
                    "streams": {
                        "completed": self.streams["completed"],
                        "cut": self.streams["cut"],
                        "broken": self.streams["broken"],
                        "cut_after_chunks": self.cut_after,
                    },
                },
            )
        elif path == "/_requests":
            await _json(send, list(self.requests))
        elif path == "/_reset" and method == "POST":
            self.counts.clear()
            self.fields.clear()
            self.requests.clear()
            self.health_checks = 0
            self.streams.clear()
            self.cut_after = []
            await _json(send, {"ok": True})
        elif path == "/_reply" and method == "POST":
            params = dict(parse_qsl(query))
            self.reply_words = int(params.get("words", len(REPLY_WORDS)))
            self.chunk_rate = float(params["rate"]) if params.get("rate") else None
            self.break_after = int(params["break_after"]) if params.get("break_after") else None
            await _json(send, {"words": self.reply_words, "rate": self.chunk_rate, "break_after": self.break_after})
        elif path == "/_delay" and method == "POST":
            self.delay = float(dict(parse_qsl(query)).get("s", 0))
            await _json(send, {"delay": self.delay})
        elif path == "/_queue" and method == "POST":
            self.waiting = float(dict(parse_qsl(query)).get("waiting", 0))
            await _json(send, {"waiting": self.waiting})
        elif path == "/_health" and method == "POST":
            self.healthy = "ok=0" not in query
            await _json(send, {"healthy": self.healthy})
        elif path == "/tokenize" and method == "POST":
            self.counts[path] += 1
            count = _tokens(_prompt_text(json.loads(body or b"{}")))
            await _json(send, {"count": count, "max_model_len": 0, "tokens": list(range(count))})
        elif path == "/metrics":
            await _text(
                send,
                "# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{engine="0",model_name="fake"}} {float(self.running)}\n'
                "# TYPE vllm:num_requests_waiting gauge\n"
                f'vllm:num_requests_waiting{{engine="0",model_name="fake"}} {self.waiting}\n',
            )
        elif path == "/v1/models":
            await _json(send, {"object": "list", "data": [{"id": "fake", "object": "model", "owned_by": "fake"}]})
        elif method == "POST" and path in MODEL_PATHS:
            self.counts[path] += 1
            try:
                request = json.loads(body or b"{}")
            except ValueError:
                await _json(send, {"error": {"message": "bad json", "type": "BadRequestError"}}, 400)
                return
            self.fields.update(request.keys())
            self.requests.append(request)
            self.running += 1
            try:
                if self.delay:
                    await asyncio.sleep(self.delay)
                await self._answer(path, request, receive, send)
            finally:
                self.running -= 1
        else:
            self.counts[path] += 1  # a call the backend has no route for is still a call that reached it
            await _json(send, {"error": {"message": f"no route {path}", "type": "NotFoundError"}}, 404)

    async def _relay(self, scope: Scope, body: bytes, send: Send) -> None:
        """Pass the request on to the real engine and its answer back, streamed as it comes."""
        query = scope.get("query_string", b"").decode()
        url = f"{self.forward}{scope['path']}" + (f"?{query}" if query else "")
        headers = [(n, v) for n, v in scope["headers"] if n.lower() not in HOP_HEADERS]
        async with httpx.AsyncClient(timeout=None) as client:
            async with client.stream(scope["method"], url, content=body, headers=headers) as response:
                await send(
                    {
                        "type": "http.response.start",
                        "status": response.status_code,
                        "headers": [(n, v) for n, v in response.headers.raw if n.lower() not in HOP_HEADERS],
                    }
                )
                async for chunk in response.aiter_raw():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    async def _answer(self, path: str, request: dict[str, Any], receive: Receive, send: Send) -> None:
        model = request.get("model", "fake")
        prompt_tokens = _tokens(_prompt_text(request))
        if path == "/v1/embeddings":
            inputs = request.get("input", "")
            items = inputs if isinstance(inputs, list) else [inputs]
            data = [
                {"object": "embedding", "index": i, "embedding": [0.125 * (j + 1) for j in range(EMBEDDING_DIM)]}
                for i in range(len(items))
            ]
            await _json(
                send,
                {
                    "object": "list",
                    "model": model,
                    "data": data,
                    "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens},
                },
            )
            return
        count = max(1, min(int(request.get("max_tokens") or self.reply_words), self.reply_words))
        words = [REPLY_WORDS[i % len(REPLY_WORDS)] for i in range(count)]
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(words),
            "total_tokens": prompt_tokens + len(words),
        }
        created, rid = int(time.time()), f"fake-{os.urandom(6).hex()}"
        chat = path == "/v1/chat/completions"
        if request.get("stream"):
            await self._stream(
                receive,
                send,
                rid,
                created,
                model,
                words,
                usage,
                chat,
                bool((request.get("stream_options") or {}).get("include_usage")),
            )
            return
        text = " ".join(words)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        await _json(
            send,
            {
                "id": rid,
                "object": "chat.completion" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [choice],
                "usage": usage,
            },
        )

    async def _stream(
        self,
        receive: Receive,
        send: Send,
        rid: str,
        created: int,
        model: str,
        words: list[str],
        usage: dict[str, int],
        chat: bool,
        include_usage: bool,
    ) -> None:
        """Stream the answer until its end or until the client goes away, whichever comes first."""
        sent = 0  # text chunks sent

        def chunk(piece: str | None, finish: str | None, with_usage: bool = False) -> bytes:
            choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
            if chat:
                choice["delta"] = {} if piece is None else {"role": "assistant", "content": piece}
            else:
                choice["text"] = piece or ""
            event: dict[str, Any] = {
                "id": rid,
                "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created,
                "model": model,
                "choices": [] if with_usage else [choice],
            }
            if with_usage:
                event["usage"] = usage
            return f"data: {json.dumps(event)}\n\n".encode()

        async def produce() -> None:
            nonlocal sent
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
                }
            )
            start = time.perf_counter()
            for i, word in enumerate(words):
                if i == self.break_after:
                    raise EngineDied(f"the stream broke off after {i} chunks")
                if self.chunk_rate:  # on a fixed schedule: a late chunk does not delay the next ones
                    await asyncio.sleep(max(0.0, start + i / self.chunk_rate - time.perf_counter()))
                await send(
                    {
                        "type": "http.response.body",
                        "body": chunk(word if i == 0 else " " + word, None),
                        "more_body": True,
                    }
                )
                sent += 1
            await send({"type": "http.response.body", "body": chunk(None, "stop"), "more_body": True})
            if include_usage:
                await send({"type": "http.response.body", "body": chunk(None, None, True), "more_body": True})
            await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

        producer, watcher = asyncio.ensure_future(produce()), asyncio.ensure_future(_disconnect(receive))
        await asyncio.wait((producer, watcher), return_when=asyncio.FIRST_COMPLETED)
        if producer.done():
            watcher.cancel()
            self.streams["broken" if producer.exception() else "completed"] += 1
            producer.result()  # a broken stream raises: the server closes the connection mid-answer
        else:  # the client went away: stop generating, as an engine does
            producer.cancel()
            self.streams["cut"] += 1
            self.cut_after.append(sent)


class EngineDied(Exception):
    """A stream broken off on purpose (``break_after``)."""


async def _disconnect(receive: Receive) -> None:
    """Return when the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def _text(send: Send, text: str) -> None:
    await _send(send, text.encode(), b"text/plain; version=0.0.4")


async def _json(send: Send, payload: Any, status: int = 200) -> None:
    await _send(send, json.dumps(payload).encode(), b"application/json", status)


async def _send(send: Send, data: bytes, content_type: bytes, status: int = 200) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", content_type), (b"content-length", str(len(data)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": data})


class FakeUpstream:
    """A fake upstream process on a free port of 127.0.0.1 (or of the host ``where`` names); ``.url`` is its
    OpenAI base URL (…/v1)."""

    def __init__(
        self, delay: float = 0.0, port: int | None = None, forward: str | None = None, where: Where = LOOPBACK
    ) -> None:
        self.where = where
        self.port = port or free_port()
        self.delay = delay
        self.forward = forward
        self.root = f"http://{where.address}:{self.port}"
        self.url = f"{self.root}/v1"
        self._proc: subprocess.Popen | None = None

    def start(self) -> FakeUpstream:
        root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        forward = ["--forward", self.forward] if self.forward else []
        self._proc = subprocess.Popen(
            self.where.wrap(
                [
                    sys.executable,
                    "-m",
                    "tests.support.fake_upstream",
                    "--host",
                    self.where.address,
                    "--port",
                    str(self.port),
                    "--delay",
                    str(self.delay),
                    *forward,
                ]
            ),
            cwd=root,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        return self.wait_ready()

    def wait_ready(self) -> FakeUpstream:
        """Wait until it accepts connections (asked from where it runs)."""
        self.where.wait_port(self.port)
        return self

    def stop(self) -> None:
        if self._proc and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(10)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def _control(self, method: str, path: str) -> httpx.Response:
        """A call to one of its own routes, made from where it runs."""
        return self.where.call(httpx.request, method, f"{self.root}{path}", timeout=5)

    def stats(self) -> dict[str, Any]:
        return self._control("GET", "/_stats").json()

    def requests(self) -> list[dict[str, Any]]:
        """The bodies of the latest model requests it received, oldest first."""
        return self._control("GET", "/_requests").json()

    def requests_served(self) -> int:
        return int(self.stats()["total"])

    def reset(self) -> None:
        self._control("POST", "/_reset")

    def set_healthy(self, ok: bool) -> None:
        self._control("POST", f"/_health?ok={int(ok)}")

    def set_delay(self, seconds: float) -> None:
        """Wait this long before answering each model request from now on."""
        self._control("POST", f"/_delay?s={seconds}").raise_for_status()

    def set_waiting(self, waiting: int) -> None:
        """Report this many waiting requests on /metrics (as an engine with a queue)."""
        self._control("POST", f"/_queue?waiting={waiting}").raise_for_status()

    def set_reply(
        self, words: int = len(REPLY_WORDS), rate: float | None = None, break_after: int | None = None
    ) -> None:
        """Answer ``words`` words (capped by ``max_tokens``), streamed at ``rate`` chunks/s (None: unpaced) and
        broken off after ``break_after`` text chunks (None: never)."""
        query = (
            f"words={words}"
            + (f"&rate={rate}" if rate else "")
            + (f"&break_after={break_after}" if break_after is not None else "")
        )
        self._control("POST", f"/_reply?{query}").raise_for_status()

    def stream_outcomes(self) -> dict[str, Any]:
        """{"completed": n, "cut": n, "broken": n, "cut_after_chunks": [text chunks each cut stream had sent]}."""
        return self.stats()["streams"]


def main() -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    parser.add_argument("--forward", help="relay every request to this engine root URL, recording them")
    args = parser.parse_args()
    uvicorn.run(
        Upstream(args.delay, args.forward),
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        loop="uvloop",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
