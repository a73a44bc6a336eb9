"""`hxp plan`'s roofline against real engines on this machine: SmolLM2 (float32) and all-MiniLM-L6-v2.

The machine is measured as `hxp plan --here` measures it (its memory bandwidth just before each engine is
timed, so both see the same load), the engines are the shared test engines (pinned to their cores as the
native runner places them), and each measured rate must lie within ``plan.ROOFLINE_FACTOR`` of the
prediction in either direction. The measured resident memory must stay within the plan's memory.
"""
from __future__ import annotations

import statistics
import time

import httpx
import pytest
from hxp.core import catalogue
from hxp.loadtest import traffic
from hxp.loadtest.traffic import CHARS_PER_TOKEN
from hxp.model import plan
from hxp.model.bench import group_rss_gib
from hxp.model.command import engine_groups

from tests.fixtures.engines import RunningEngine

pytestmark = pytest.mark.engine

DECODE_TOKENS = 96
EMBEDDING_REQUESTS = 20


def estimate_for(engine: RunningEngine, request: plan.Request) -> tuple[plan.Estimate, catalogue.Machine]:
    cat = catalogue.load(profile="cpu")
    machine = plan.measure_machine()
    group = next(g for g in engine_groups(cat.models) if g[0].name == engine.names[0])
    estimates = plan.plan(cat, machine, {m.name: request for m in cat.models})
    return next(e for e in estimates if e.names[0] == group[0].name), machine


def within_factor(measured: float, predicted: float) -> bool:
    return predicted / plan.ROOFLINE_FACTOR <= measured <= predicted * plan.ROOFLINE_FACTOR


def decode_tok_s(engine: RunningEngine) -> float:
    """Tokens per second between the first and the last streamed token of one request (no prefill)."""
    body = {"model": engine.names[0], "prompt": "Once upon a time", "max_tokens": DECODE_TOKENS, "temperature": 0,
            "ignore_eos": True, "stream": True}
    stamps = []
    with httpx.stream("POST", engine.url("/v1/completions"), json=body, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: {"):
                stamps.append(time.monotonic())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def test_decode_speed_of_smollm2_is_within_the_factor_of_the_roofline(chat_engine: RunningEngine) -> None:
    decode_tok_s(chat_engine)  # warm-up
    measured = statistics.median(decode_tok_s(chat_engine) for _ in range(3))
    est, machine = estimate_for(chat_engine, plan.Request(prompt_tokens=4, output_tokens=DECODE_TOKENS))
    print(f"\nSmolLM2 float32 on {len(est.cpus)} core(s), {machine.memory_bandwidth_gbs:.1f} GB/s measured: "
          f"predicted {est.decode_tok_s:.1f} tok/s, measured {measured:.1f} tok/s "
          f"(measured/predicted {measured / est.decode_tok_s:.2f})")
    assert within_factor(measured, est.decode_tok_s)


def test_embedding_latency_of_minilm_is_within_the_factor_of_the_roofline(embedding_engine: RunningEngine) -> None:
    texts = traffic.load().embeddings.texts[:4]
    body = {"model": embedding_engine.names[0], "input": texts}
    seconds = []
    with httpx.Client(timeout=60) as client:
        for _ in range(EMBEDDING_REQUESTS + 1):
            start = time.monotonic()
            client.post(embedding_engine.url("/v1/embeddings"), json=body).raise_for_status()
            seconds.append(time.monotonic() - start)
    measured_ms = statistics.median(seconds[1:]) * 1000
    request = plan.Request(prompt_tokens=sum(len(t) for t in texts) / CHARS_PER_TOKEN, output_tokens=0)
    est, machine = estimate_for(embedding_engine, request)
    print(f"\nMiniLM float32 on {len(est.cpus)} core(s), {machine.memory_bandwidth_gbs:.1f} GB/s measured, "
          f"{request.prompt_tokens:.0f} tokens a request: predicted {est.latency_ms:.1f} ms, measured "
          f"{measured_ms:.1f} ms (measured/predicted {measured_ms / est.latency_ms:.2f})")
    assert within_factor(measured_ms, est.latency_ms)


@pytest.mark.parametrize("fixture", ["chat_engine", "embedding_engine"])
def test_engines_stay_within_their_planned_memory(fixture: str, request: pytest.FixtureRequest) -> None:
    engine: RunningEngine = request.getfixturevalue(fixture)
    if engine.engine is None:
        pytest.skip("an external engine: its processes are not ours to measure")
    est, _ = estimate_for(engine, plan.Request(prompt_tokens=1, output_tokens=1))
    rss = group_rss_gib(engine.engine.pid) * 2**30 / 1e9
    print(f"\n{engine.names[0]}: resident {rss:.2f} GB, planned {est.memory_gb:.2f} GB "
          f"(weights {est.weights_gb:.2f}, KV {est.kv_cache_gb:.2f}, runtime {est.runtime_gb:.2f})")
    assert rss <= est.memory_gb
