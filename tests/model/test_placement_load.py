"""CPU placement on the real engines: each engine runs on the cores hxp.model.placement gives it, and
embeddings keep answering through a real gateway while chat streams run (two engines that bound their
threads to the same core starved each other: every embedding timed out while chat generated)."""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from hxp.core import catalogue
from hxp.model.placement import omp_threads_bind
from hxp.process import group_pids
from tests.fixtures.engines import RunningEngine

pytestmark = pytest.mark.engine

STREAMS = 4  # concurrent chat streams, as many as `make loadtest` runs chat users on the cpu profile
EMBEDDINGS = 24  # embedding requests sent while the streams run
DEADLINE_S = 600  # the whole mixed run, whatever happens
PROMPT = "Write a long story about a lighthouse keeper and a storm."


def _local(engine: RunningEngine) -> None:
    if engine.engine is None:
        pytest.skip("an external engine (HXP_TEST_*_ENGINE): its placement is not ours")


def test_engines_run_on_their_own_cores(chat_engine: RunningEngine, embedding_engine: RunningEngine) -> None:
    _local(chat_engine)
    _local(embedding_engine)
    placed = {}
    for running in (chat_engine, embedding_engine):
        command = running.engine.command
        assert command.cpus, "a test engine is placed like the native runner's"
        pids = group_pids(running.engine.pid)
        assert len(pids) >= 2  # the API server and its engine core at least
        assert {frozenset(os.sched_getaffinity(pid)) for pid in pids} == {frozenset(command.cpus)}
        threads = [int(c) for c in omp_threads_bind(command.cpus).split(",")]
        assert f"core ids={threads}" in running.engine.log.read_text(), "vLLM bound its threads elsewhere"
        placed[command.task] = set(command.cpus)
    if len(os.sched_getaffinity(0)) >= 2:
        assert not placed["chat"] & placed["embedding"]


def test_embeddings_keep_answering_while_chat_streams(
    gateway_factory, chat_engine: RunningEngine, embedding_engine: RunningEngine
) -> None:
    cat = catalogue.load(profile="cpu")
    embedding_model, chat_model = embedding_engine.names[0], chat_engine.names[0]
    timeout = cat.get(embedding_model).api.timeout_s  # what the gateway allows an embedding request
    gateway = gateway_factory(
        {name: [f"{engine.base_url}/v1"] for engine in (chat_engine, embedding_engine) for name in engine.names}
    )
    headers = gateway.headers(gateway.create_key())
    done = threading.Event()
    streaming = threading.Semaphore(0)  # released at each stream's first token
    in_flight = [0]
    lock = threading.Lock()
    deadline = time.monotonic() + DEADLINE_S

    def chat_stream() -> int:
        """Stream chat answers back to back until the embeddings are done; the tokens received."""
        body = {
            "model": chat_model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 128,
            "temperature": 0.8,
            "stream": True,
        }
        received, first = 0, True
        while not done.is_set() and time.monotonic() < deadline:
            with lock:
                in_flight[0] += 1
            try:
                with httpx.stream(
                    "POST",
                    f"{gateway.base_url}/chat/completions",
                    json=body,
                    headers=headers,
                    timeout=cat.get(chat_model).api.timeout_s,
                ) as response:
                    assert response.status_code == 200, response.read()
                    for line in response.iter_lines():
                        if line.startswith("data: {"):
                            received += 1
                            if first:
                                streaming.release()
                                first = False
            finally:
                with lock:
                    in_flight[0] -= 1
        return received

    with ThreadPoolExecutor(STREAMS) as pool:
        streams = [pool.submit(chat_stream) for _ in range(STREAMS)]
        try:
            for _ in range(STREAMS):
                assert streaming.acquire(timeout=300), "a chat stream never produced a token"
            latencies, busy = [], []
            with httpx.Client(timeout=timeout, headers=headers) as client:
                for i in range(EMBEDDINGS):
                    busy.append(in_flight[0])
                    started = time.monotonic()
                    response = client.post(
                        f"{gateway.base_url}/embeddings",
                        json={"model": embedding_model, "input": [f"sentence {i}", "cats"]},
                    )
                    latencies.append(time.monotonic() - started)
                    assert response.status_code == 200, response.text
                    assert [len(d["embedding"]) for d in response.json()["data"]] == [384, 384]
        finally:
            done.set()
        tokens = [future.result() for future in streams]
    print(
        f"embeddings under {STREAMS} chat streams: max {max(latencies) * 1000:.0f} ms, "
        f"median {sorted(latencies)[len(latencies) // 2] * 1000:.0f} ms; chat chunks {tokens}"
    )
    assert all(n > 0 for n in busy), f"chat streams in flight at each embedding request: {busy}"
    assert max(latencies) < timeout
    assert all(n > 1 for n in tokens)
