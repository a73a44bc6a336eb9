"""Prefix-aware routing against LiteLLM's default routing, on two real CPU engines with prefix caching on.

Two vLLM CPU engines (the catalogue's chat model, SmolLM2-135M), one per core, each with prefix caching and a KV
cache of ``BENCH_PREFIX_KV_BLOCKS`` blocks of 32 tokens: room for some 6 of the workload's ``BENCH_PREFIX_PROMPTS``
long system prompts (16, some 270 tokens each: 8 full blocks), as on a real server whose tenants' prompts outgrow
one engine's cache (the two together hold some 12 of them). Each request is a random prompt and a short question,
streamed with ``max_tokens`` 8, ``BENCH_PREFIX_CONCURRENCY`` at a time.

Two gateways on the same engines, one with LiteLLM's default routing (HXP_PREFIX_ROUTING=0: a random engine),
one with prefix-aware routing, take turns over ``BENCH_PREFIX_ROUNDS`` rounds (the first to go alternating).
Each turn empties the engines' prefix caches, warms them up with every prompt once through the routing under
test (its steady state: what that routing keeps where), then sends the round's ``BENCH_PREFIX_REQUESTS`` requests
(the same for both routings in a round, other ones in the next). The table: time to first token p50/p95 and
requests/s over every round's measured requests, the engines' prefix cache hit rate over them (vLLM's counters),
and each round's p50 ratio; the verdict holds prefix-aware routing to TTFT p50 at most 0.5x the default's and
throughput no worse.

Run: ``make bench-prefix`` (some 10 minutes on an idle 2-core machine, a third of it the engines' start).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import statistics
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
from prometheus_client.parser import text_string_to_metric_families

from hxp.conversations.routing import prefix_key, rank
from hxp.core import catalogue
from hxp.core.paths import state_path
from hxp.model.command import engine_command, engine_groups
from hxp.model.service import Engine, start_engine
from tests.support.gateway import Gateway, GatewayFactory
from tests.support.servers import free_port

PROMPTS = int(os.environ.get("BENCH_PREFIX_PROMPTS", "16"))
REQUESTS = int(os.environ.get("BENCH_PREFIX_REQUESTS", "64"))  # per round and routing
ROUNDS = int(os.environ.get("BENCH_PREFIX_ROUNDS", "3"))
CONCURRENCY = int(os.environ.get("BENCH_PREFIX_CONCURRENCY", "2"))
KV_BLOCKS = int(os.environ.get("BENCH_PREFIX_KV_BLOCKS", "52"))  # some 6 of the 16 prompts (8-9 blocks each)
PROMPT_WORDS = 220
MAX_MODEL_LEN = 1024  # vLLM wants one whole sequence to fit the KV cache (32 blocks of 32 tokens)
TARGET_TTFT_RATIO = 0.5
WORDS = [
    "river",
    "mountain",
    "engine",
    "harbor",
    "lantern",
    "orchard",
    "copper",
    "violet",
    "meadow",
    "signal",
    "canyon",
    "marble",
    "falcon",
    "ember",
    "glacier",
    "willow",
    "quartz",
    "beacon",
    "thistle",
    "saddle",
    "compass",
    "juniper",
    "lattice",
    "cobalt",
    "pepper",
    "tundra",
    "velvet",
    "anchor",
    "granite",
    "nectar",
    "hollow",
    "summit",
    "prairie",
    "cedar",
    "amber",
    "fjord",
    "lagoon",
    "basalt",
    "crimson",
    "linen",
    "spruce",
    "walnut",
]
QUESTIONS = [
    "What is the first rule?",
    "Summarise the policy.",
    "Who may ask for help?",
    "When does it apply?",
    "Give one example.",
    "What is forbidden?",
    "How long does it last?",
    "Name a key term.",
]


SEED = 7


def system_prompts() -> list[str]:
    rng = random.Random(SEED)
    return [f"Policy {n}. " + " ".join(rng.choice(WORDS) for _ in range(PROMPT_WORDS)) for n in range(PROMPTS)]


def workload(round_: int) -> list[list[dict[str, str]]]:
    """A round's requests: each a random system prompt and question (the same for both routings)."""
    rng, systems = random.Random(SEED + 1 + round_), system_prompts()
    return [
        [{"role": "system", "content": rng.choice(systems)}, {"role": "user", "content": rng.choice(QUESTIONS)}]
        for _ in range(REQUESTS)
    ]


def warm_up() -> list[list[dict[str, str]]]:
    """Every system prompt once, with the first question."""
    return [[{"role": "system", "content": s}, {"role": "user", "content": QUESTIONS[0]}] for s in system_prompts()]


def split(running: list[Engine]) -> list[int]:
    """How many of the system prompts prefix-aware routing gives each engine first (rendezvous hashing)."""
    urls = [f"{e.base_url}/v1" for e in running]
    firsts = [rank(prefix_key([{"role": "system", "content": s}, {}]) or "", urls)[0] for s in system_prompts()]
    return [firsts.count(url) for url in urls]


@contextmanager
def engines() -> Iterator[list[Engine]]:
    """Two chat engines, one per core, prefix caching on, a small KV cache, cache reset allowed (dev mode)."""
    cat = catalogue.load(profile="cpu")
    models = engine_groups(cat.chat_models)[0]
    cores = sorted(os.sched_getaffinity(0))
    with ExitStack() as stack:
        started = []
        for index in range(2):
            command = engine_command(
                models, cat.profile_settings, port=free_port(), enforce_eager=True, cpus=[cores[index % len(cores)]]
            )
            command = dataclasses.replace(
                command,
                argv=[
                    *command.argv,
                    "--enable-prefix-caching",
                    "--block-size",
                    "32",
                    "--num-gpu-blocks-override",
                    str(KV_BLOCKS),
                    "--max-model-len",
                    str(MAX_MODEL_LEN),
                ],
                env={**command.env, "VLLM_SERVER_DEV_MODE": "1"},
            )
            log = state_path("logs", "bench") / f"prefix-engine-{index}.log"
            engine = start_engine(command, log=log)
            stack.callback(engine.stop)
            started.append(engine)
        yield started


def prefix_cache(engine: Engine) -> tuple[float, float]:
    """(queried tokens, hit tokens) of the engine's prefix cache so far."""
    text = httpx.get(f"{engine.base_url}/metrics", timeout=10).text
    found = {"vllm:prefix_cache_queries": 0.0, "vllm:prefix_cache_hits": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name.removesuffix("_total")
            if name in found:
                found[name] += sample.value
    return found["vllm:prefix_cache_queries"], found["vllm:prefix_cache_hits"]


async def _one(
    client: httpx.AsyncClient, gateway: Gateway, key: str, model: str, messages: list[dict[str, str]]
) -> float:
    # no "temperature": 0: that would make the request cacheable, and repeats of a (prompt, question) pair would be
    # answered from the gateway's response cache instead of by an engine
    body = {"model": model, "messages": messages, "max_tokens": 8, "stream": True}
    start = time.perf_counter()
    async with client.stream(
        "POST", f"{gateway.base_url}/chat/completions", json=body, headers=gateway.headers(key)
    ) as response:
        response.raise_for_status()
        first = None
        async for line in response.aiter_lines():
            if first is None and line.startswith("data: ") and '"content"' in line:
                first = time.perf_counter() - start
    assert first is not None, "a stream without content"
    return first


async def _run(
    gateway: Gateway, key: str, model: str, requests: list[list[dict[str, str]]]
) -> tuple[list[float], float]:
    pending = iter(requests)
    ttfts: list[float] = []

    async def client_loop(client: httpx.AsyncClient) -> None:
        for messages in pending:
            ttfts.append(await _one(client, gateway, key, model, messages))

    start = time.perf_counter()
    async with httpx.AsyncClient(timeout=600) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(CONCURRENCY)))
    return ttfts, time.perf_counter() - start


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p * len(ordered)) - 1))]


@dataclasses.dataclass
class Routing:
    """One routing's gateway and what its measured requests gave, summed over the rounds."""

    name: str
    gateway: Gateway
    key: str
    ttfts: list[float] = dataclasses.field(default_factory=list)
    elapsed_s: float = 0.0
    queried: float = 0.0
    hits: float = 0.0
    round_p50s: list[float] = dataclasses.field(default_factory=list)

    def row(self) -> dict[str, float | str]:
        return {
            "routing": self.name,
            "p50": statistics.median(self.ttfts),
            "p95": percentile(self.ttfts, 0.95),
            "rps": len(self.ttfts) / self.elapsed_s,
            "hit_rate": self.hits / self.queried if self.queried else 0.0,
        }


def turn(routing: Routing, running: list[Engine], model: str, round_: int) -> None:
    """One routing's turn of a round: caches emptied, warmed up through it, the round's requests measured."""
    for engine in running:
        httpx.post(f"{engine.base_url}/reset_prefix_cache", timeout=30).raise_for_status()
    asyncio.run(_run(routing.gateway, routing.key, model, warm_up()))
    before = [prefix_cache(e) for e in running]
    ttfts, elapsed = asyncio.run(_run(routing.gateway, routing.key, model, workload(round_)))
    after = [prefix_cache(e) for e in running]
    routing.ttfts += ttfts
    routing.elapsed_s += elapsed
    routing.queried += sum(a[0] - b[0] for a, b in zip(after, before, strict=True))
    routing.hits += sum(a[1] - b[1] for a, b in zip(after, before, strict=True))
    routing.round_p50s.append(statistics.median(ttfts))
    print(
        f"round {round_ + 1}, {routing.name}: TTFT p50 {statistics.median(ttfts):.3f} s, "
        f"{len(ttfts) / elapsed:.2f} requests/s, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )


def table(rows: list[dict[str, float | str]]) -> str:
    lines = ["| routing | TTFT p50 s | TTFT p95 s | requests/s | prefix cache hits |", "|---|---:|---:|---:|---:|"]
    lines += [
        f"| {r['routing']} | {r['p50']:.3f} | {r['p95']:.3f} | {r['rps']:.2f} | {r['hit_rate']:.0%} |" for r in rows
    ]
    return "\n".join(lines)


def verdict(default: dict[str, float | str], prefix: dict[str, float | str]) -> tuple[bool, str]:
    ratio = float(prefix["p50"]) / float(default["p50"])
    throughput = float(prefix["rps"]) / float(default["rps"])
    ok = ratio <= TARGET_TTFT_RATIO and throughput >= 1.0
    return ok, (
        f"TTFT p50 prefix-aware / default = {ratio:.2f}x (target <= {TARGET_TTFT_RATIO}x); "
        f"throughput {throughput:.2f}x (target >= 1.00x): {'PASS' if ok else 'FAIL'}"
    )


def main() -> int:
    model = engine_groups(catalogue.load(profile="cpu").chat_models)[0][0].name
    print(
        f"{PROMPTS} system prompts of {PROMPT_WORDS} words, {ROUNDS} rounds x {REQUESTS} requests per routing, "
        f"concurrency {CONCURRENCY}, 2 engines x {KV_BLOCKS} KV blocks of 32 tokens; "
        f"load average {os.getloadavg()[0]:.1f} before",
        flush=True,
    )
    factory = GatewayFactory()
    with engines() as running:
        try:
            print(
                f"prefix-aware routing's first choice: {' / '.join(map(str, split(running)))} prompts per engine",
                flush=True,
            )
            backends = {name: [f"{e.base_url}/v1" for e in running] for name in catalogue.load().names}
            gateways = [
                factory(backends, env={"HXP_PREFIX_ROUTING": flag, "HXP_REQUEST_LOG": "off"}, wait=False)
                for flag in ("0", "1")
            ]
            for gateway in gateways:
                gateway.wait_ready()
            default, prefix = (
                Routing(name, gateway, gateway.create_key())
                for name, gateway in zip(
                    ("LiteLLM default (HXP_PREFIX_ROUTING=0)", "prefix-aware (HXP_PREFIX_ROUTING=1)"),
                    gateways,
                    strict=True,
                )
            )
            for round_ in range(ROUNDS):
                for routing in (default, prefix) if round_ % 2 == 0 else (prefix, default):
                    turn(routing, running, model, round_)
        finally:
            factory.close()
    print(table([default.row(), prefix.row()]))
    ratios = [p / d for p, d in zip(prefix.round_p50s, default.round_p50s, strict=True)]
    print(f"TTFT p50 ratio per round: {', '.join(f'{r:.2f}x' for r in ratios)}")
    ok, line = verdict(default.row(), prefix.row())
    print(f"{line} (load average {os.getloadavg()[0]:.1f} after)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
