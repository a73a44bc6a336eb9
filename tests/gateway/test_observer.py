"""One observation per request, read off the wire: usage rows, metrics and log lines from the same record."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from hxp.core.database import Database
from hxp.core.redaction import redact
from hxp.gateway import observer
from hxp.gateway.observer import Observation
from hxp.gateway.usage import backlog, pipeline
from hxp.gateway.usage.record import status_name


@pytest.fixture
def usage_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    url = f"sqlite:///{tmp_path / 'gateway.sqlite3'}"
    monkeypatch.setenv("HXP_DATABASE_URL", url)
    monkeypatch.setenv("HXP_USAGE_SPILL_DIR", str(tmp_path / "spill"))
    monkeypatch.setenv("HXP_USAGE_FLUSH_INTERVAL_S", "60")
    db = Database(url)
    yield db
    pipeline.close()
    db.close()


def rows(db: Database) -> list[dict]:
    return db.fetchall("SELECT * FROM llm_model_requests ORDER BY timestamp")


def sse(event: dict[str, Any] | str) -> bytes:
    return f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n".encode()


def chunk(text: str | None = None, finish: str | None = None) -> dict[str, Any]:
    delta = {} if text is None else {"content": text}
    return {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


USAGE = {
    "object": "chat.completion.chunk",
    "choices": [{"index": 0, "delta": {}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}


def play(
    observation: Observation,
    status: int,
    headers: list[tuple[bytes, bytes]],
    bodies: list[bytes],
    complete: bool = True,
) -> list[dict[str, Any]]:
    """Send a response through the observation; return what the client received."""
    received: list[dict[str, Any]] = []

    async def client(message: dict[str, Any]) -> None:
        received.append(message)

    async def answer() -> None:
        send = observation.sender(client)
        await send({"type": "http.response.start", "status": status, "headers": headers})
        for i, body in enumerate(bodies):
            await send({"type": "http.response.body", "body": body, "more_body": not complete or i < len(bodies) - 1})

    asyncio.run(answer())
    return received


@pytest.mark.parametrize(
    "code, status",
    [
        (200, "success"),
        (400, "invalid_request"),
        (401, "unauthorized"),
        (403, "forbidden"),
        (404, "not_found"),
        (413, "invalid_request"),
        (429, "rate_limited"),
        (418, "client_error"),
        (499, "cancelled"),
        (500, "backend_error"),
        (502, "backend_error"),
        (503, "unavailable"),
        (504, "timeout"),
    ],
)
def test_status_names(code: int, status: str) -> None:
    assert status_name(code) == status


def test_a_stream_is_one_row_with_its_usage_and_time_to_first_token(usage_env: Database) -> None:
    pipeline.start()
    obs = Observation(
        "0b7d2c2e-5e8a-4a53-9a55-3c8f2b8a8c11",
        model="phi-3-mini",
        key_alias="alice",
        key_id="k-1",
        stream=True,
        strip_usage=True,
    )
    received = play(
        obs,
        200,
        [(b"content-type", b"text/event-stream")],
        [sse(chunk("Hello")), sse(chunk(" there")), sse(chunk(finish="stop")), sse(USAGE), sse("[DONE]")],
    )
    assert not any(b'"usage"' in m.get("body", b"") for m in received)  # the client did not ask for it
    assert len(received) == 5  # start, three chunks, [DONE]
    obs.finish()
    obs.finish()  # recorded once, whichever path finishes it
    pipeline.close()
    [row] = rows(usage_env)
    assert (row["status"], row["model_name"], row["user_id"], row["key_id"]) == (
        "success",
        "phi-3-mini",
        "alice",
        "k-1",
    )
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (7, 3, 10)
    assert row["stream"] and 0 <= row["time_to_first_token_ms"] <= row["latency_ms"]


def test_a_usage_chunk_held_back_at_the_end_of_the_body_still_ends_it(usage_env: Database) -> None:
    obs = Observation("0c7d2c2e-5e8a-4a53-9a55-3c8f2b8a8c11", model="phi-3-mini", stream=True, strip_usage=True)
    received = play(obs, 200, [(b"content-type", b"text/event-stream")], [sse(chunk("Hello")), sse(USAGE)])
    assert [(m.get("body"), m.get("more_body")) for m in received[1:]] == [(sse(chunk("Hello")), True), (b"", False)]
    obs.finish()
    assert (obs.usage["completion_tokens"], obs.status, obs.complete) == (3, 200, True)


def test_a_client_that_leaves_mid_stream_gets_a_row_with_what_it_received(usage_env: Database) -> None:
    pipeline.start()
    obs = Observation("1b7d2c2e-5e8a-4a53-9a55-3c8f2b8a8c11", model="phi-3-mini", stream=True)
    play(obs, 200, [(b"content-type", b"text/event-stream")], [sse(chunk("a")), sse(chunk("b"))], complete=False)
    obs.finish()
    pipeline.close()
    [row] = rows(usage_env)
    assert row["status"] == "cancelled" and row["completion_tokens"] == 2
    assert row["error_message"].startswith("499") and "disconnected" in row["error_message"]


def test_a_message_of_several_events_counts_each_event_with_text(usage_env: Database) -> None:
    """The relay passes on the events the engine's bytes brought at once as one message."""
    pipeline.start()
    obs = Observation("1c7d2c2e-5e8a-4a53-9a55-3c8f2b8a8c11", model="phi-3-mini", stream=True)
    play(
        obs,
        200,
        [(b"content-type", b"text/event-stream")],
        [sse(chunk("a")) + sse(chunk("b")) + sse(chunk(finish="stop")), sse(chunk("c"))],
        complete=False,
    )
    obs.finish()
    pipeline.close()
    [row] = rows(usage_env)
    assert row["status"] == "cancelled" and row["completion_tokens"] == 3


def test_a_non_streamed_answer_reports_usage_and_cache_hit(usage_env: Database) -> None:
    pipeline.start()
    obs = Observation("2b7d2c2e-5e8a-4a53-9a55-3c8f2b8a8c11", model="phi-3-mini")
    text = 'say "usage": {"prompt_tokens": 999}'  # the model's text cannot pass for the usage
    answer = json.dumps(
        {
            "choices": [{"message": {"content": text}}],
            "usage": {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9},
        }
    ).encode()
    play(obs, 200, [(b"content-type", b"application/json"), (b"x-hxp-cache", b"hit")], [answer[:20], answer[20:]])
    obs.finish()
    pipeline.close()
    [row] = rows(usage_env)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (4, 5, 9)
    assert row["cache_hit"]


def test_an_error_row_has_the_message_the_client_got_without_secrets(usage_env: Database) -> None:
    secret = "sk-hxp-" + "Q" * 32
    pipeline.start()
    obs = Observation("3b7d2c2e-5e8a-4a53-9a55-3c8f2b8a8c11", model="phi-3-mini", key_alias="alice")
    error = {"error": {"message": f"limit of key {secret} exceeded", "type": "requests", "code": "rate_limit"}}
    play(obs, 429, [(b"content-type", b"application/json")], [json.dumps(error).encode()])
    obs.finish()
    assert backlog() == 1  # buffered: the interval is long
    pipeline.close()
    [row] = rows(usage_env)
    assert row["status"] == "rate_limited" and row["error_message"].startswith("429 requests: limit of key")
    assert secret not in row["error_message"]


def test_a_refusal_echoing_a_huge_field_is_recorded_cheaply(
    usage_env: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refusal may echo what the client sent (a megabyte-long 'temperature'): only the row's share is redacted."""
    redacted: list[int] = []

    def measured(text: str) -> str:
        redacted.append(len(text))
        return redact(text)

    monkeypatch.setattr(observer, "redact", measured)
    pipeline.start()
    obs = Observation("4b7d2c2e-5e8a-4a53-9a55-3c8f2b8a8c11", model="phi-3-mini", key_alias="alice")
    echoed = "redis://:" + "p" * 20 + "@h " + "a." * 2_000_000
    obs.refused(400, f"invalid_request_error: 'temperature' must be a number, got {echoed!r}")
    obs.finish()
    pipeline.close()
    assert redacted and max(redacted) <= 4 * 2000  # the share the row keeps, with room for what redaction shortens
    [row] = rows(usage_env)
    assert row["error_message"].startswith("400 invalid_request_error") and len(row["error_message"]) == 2000
    assert "p" * 20 not in row["error_message"]


def test_a_row_arriving_after_shutdown_is_kept_on_disk_and_replayed_at_start(
    usage_env: Database, tmp_path: Path
) -> None:
    pipeline.start()
    pipeline.close()
    obs = Observation("4b7d2c2e-5e8a-4a53-9a55-3c8f2b8a8c11", model="phi-3-mini")
    obs.refused(503, "service_unavailable_error: backend down")  # a request that outlived the shutdown
    obs.finish()
    deadline = time.monotonic() + 10  # written to disk by a thread of the writer, not the caller's
    while sum(1 for p in (tmp_path / "spill").glob("usage-*.jsonl") for _ in p.open()) != 1:
        assert time.monotonic() < deadline, "the late row never reached the spill folder"
        time.sleep(0.02)
    assert rows(usage_env) == []
    pipeline.start()  # the next start replays it
    assert pipeline.start().writer.flush(10)
    assert [r["status"] for r in rows(usage_env)] == ["unavailable"]


def test_metrics_count_each_request_once(usage_env: Database) -> None:
    from hxp.gateway import metrics

    before = metrics.REQUESTS.labels("hermes-2", "200", "bob")._value.get()
    active = metrics.ACTIVE.labels("hermes-2")._value.get()
    prompt_tokens = metrics.TOKENS.labels("hermes-2", "prompt")._value.get()
    obs = Observation("5b7d2c2e-5e8a-4a53-9a55-3c8f2b8a8c11", model="hermes-2", key_alias="bob")
    obs.admitted()
    assert metrics.ACTIVE.labels("hermes-2")._value.get() == active + 1
    play(obs, 200, [(b"content-type", b"application/json")], [b'{"usage": {"prompt_tokens": 1}}'])
    obs.finish()
    obs.finish()
    assert metrics.REQUESTS.labels("hermes-2", "200", "bob")._value.get() == before + 1
    assert metrics.ACTIVE.labels("hermes-2")._value.get() == active  # no longer in flight, and only once
    assert metrics.TOKENS.labels("hermes-2", "prompt")._value.get() == prompt_tokens + 1  # the answer's usage
    assert observer.UNKNOWN == Observation("x").label


def test_one_wrapper_edits_the_headers_then_observes_the_stream(usage_env: Database) -> None:
    pipeline.start()
    obs = Observation("6b7d2c2e-5e8a-4a53-9a55-3c8f2b8a8c11", model="phi-3-mini", stream=True, strip_usage=True)
    received: list[dict[str, Any]] = []

    async def client(message: dict[str, Any]) -> None:
        received.append(message)

    def edit(message: dict[str, Any]) -> None:  # what the boundary does to every answer's start
        message["headers"] = [(n, v) for n, v in message["headers"] if n != b"x-backend"] + [(b"x-request-id", b"r")]

    async def answer() -> None:
        send = obs.sender(client, edit)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"text/event-stream"),
                    (b"x-backend", b"secret"),
                    (b"x-hxp-cache", b"miss"),
                ],
            }
        )
        for body in (sse(chunk("Hello")), sse(chunk(finish="stop")), sse(USAGE), sse("[DONE]")):
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    asyncio.run(answer())
    assert received[0]["headers"] == [
        (b"content-type", b"text/event-stream"),
        (b"x-hxp-cache", b"miss"),
        (b"x-request-id", b"r"),
    ]
    assert [m["body"] for m in received[1:]] == [sse(chunk("Hello")), sse(chunk(finish="stop")), sse("[DONE]"), b""]
    obs.finish()
    pipeline.close()
    [row] = rows(usage_env)
    assert row["status"] == "success" and row["completion_tokens"] == 3 and not row["cache_hit"]


@pytest.mark.parametrize(
    "body",
    [
        b'data: {"choices":[{"index":0,"delta":{"content":"Hi","role":"assistant"}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":"","role":"assistant"}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":null},"finish_reason":"stop"}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content": " spaced"}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":""}},{"index":1,"delta":{"content":"b"}}]}\n\n',
        b'data: {"choices":[{"index":0,"text":"completion"}]}\n\n',
        b'data: {"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"{\\"a"}}]}}]}\n\n',
        b'data: {"choices":[{"index":0,"delta":{"content":"',
        b": ping\n\n",
    ],
)
def test_text_chunks_are_found_as_the_pattern_finds_them(body: bytes) -> None:
    assert observer._has_text(body) == (observer._DELTA_TEXT.search(body) is not None)
