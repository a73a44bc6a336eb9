"""Soak: the full gateway under a steady mixed load for a long while, its resources sampled against budgets.

The gateway runs as in production (2 workers, PostgreSQL, Redis, Qdrant's local mode) in front of the fake
upstream. Clients send, at a steady rate, chat (plain, streamed, streamed and cut off by the client),
embeddings, Responses turns (chains of :data:`CHAIN_TURNS`), vector searches and requests refused for a model the
key lacks. Every ``interval`` seconds the sampler reads each gateway process's RSS and open file descriptors
(``/proc``), each worker's asyncio tasks (``llm_gateway_event_loop_tasks`` on /metrics), the database's
connections (``pg_stat_activity``) and Redis's (``CLIENT LIST``).

The verdict (:data:`BUDGETS`): after the warm-up the gateway's total RSS grows by at most max(5 %, 25 MiB) (the
medians of the first and the last fifth of the samples); fds, tasks and connections, read at rest (no request in
flight) once after the warm-up and once at the end, stay flat; every answer is one the API documents for its
request; the usage rows (``SUM(request_count)`` of the soak's keys) equal the requests answered on the observed
routes. Printed as a table, drawn as a PNG.

``make soak DURATION=20m`` runs ``python -m tests.support.soak``; ``tests/gateway/test_soak.py`` a short form.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import redis
import yaml

from hxp.core import catalogue
from tests.fixtures.stores import drop_postgres_database, fresh_postgres_database
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import Gateway, all_models
from tests.support.servers import PostgresServer, RedisServer

MIB = 2**20
CHAIN_TURNS = 4  # Responses turns per chain (previous_response_id), then a new chain
COLLECTION = "soak"
WORKERS = 2
OK = frozenset({200})
REST_S = 3.0  # > the gateway's task gauge interval (metrics.BACKLOG_INTERVAL_S)
STREAM_WORDS, STREAM_RATE = 12, 100.0  # the fake upstream's streams: 12 chunks over ~0.12 s, so a cut lands mid-way


@dataclass(frozen=True)
class Budget:
    """How far a figure may grow after the warm-up: max(``share`` of its start, ``floor``). RSS compares the
    medians of the first and last windows of the run after the warm-up; the counts (``at_rest``) compare the
    lowest values read at rest, once the warm-up's requests have ended and once the last ones have (requests in
    flight add tasks, fds and connections: at rest only what stays is left)."""

    name: str
    unit: str
    share: float
    floor: float
    at_rest: bool = True

    def allowed(self, start: float) -> float:
        return max(self.share * start, self.floor)


BUDGETS = (
    Budget("rss", "MiB", 0.05, 25.0, at_rest=False),
    Budget("fds", "", 0.10, 16.0),
    Budget("tasks", "", 0.0, 8.0),
    Budget("db_connections", "", 0.0, 4.0),
    # the Redis pools (BlockingConnectionPool, up to 50 each) open a connection per request waiting on Redis and
    # keep it: a burst may add up to the clients' concurrency (16), once
    Budget("redis_connections", "", 0.0, 16.0),
)


@dataclass
class Sample:
    t: float  # seconds since the load started
    rss: float  # MiB, every gateway process
    fds: int
    tasks: int  # asyncio tasks, every worker
    db_connections: int
    redis_connections: int
    pids: tuple[int, ...]
    rest: int = 0  # read at rest (no request in flight): 1 after the warm-up, 2 at the end


@dataclass
class Operation:
    """One kind of request: its share of the load, the statuses the API documents for it, and those that leave
    one usage row (its own, or that of the one model call it makes)."""

    name: str
    weight: int
    expected: frozenset[int]
    observed: frozenset[int]
    send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]


@dataclass
class Outcome:
    statuses: dict[str, Counter[int]] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    observed_answers: int = 0  # requests answered on the observed routes (a Responses turn: its one chat call)

    def total(self) -> int:
        return sum(sum(c.values()) for c in self.statuses.values())


class Load:
    """The soak's clients: a steady ``rate`` of requests, the mix of :attr:`operations`."""

    def __init__(
        self, gateway: Gateway, key: str, refused_key: str, chat: str, other_chat: str, embedding: str
    ) -> None:
        self.gateway, self.key, self.refused_key = gateway, key, refused_key
        self.chat, self.other_chat, self.embedding = chat, other_chat, embedding
        self.previous: str | None = None
        self.turns = 0
        self.outcome = Outcome()
        self.operations = [
            Operation("chat", 4, OK, OK, self._chat),
            Operation("chat-stream", 3, OK, OK, self._stream),
            Operation("chat-cut", 1, OK, OK, self._cut),
            Operation("embeddings", 2, OK, OK, self._embeddings),
            Operation("responses", 2, OK, OK, self._responses),  # one chat completion per turn
            # Qdrant's local mode serves one worker; the other answers 503 (documented, see vector/config.py).
            # A search embeds its query: one embeddings row.
            Operation("vector-search", 2, frozenset({200, 503}), OK, self._search),
            Operation("refused", 1, frozenset({403}), frozenset({403}), self._refused),
        ]
        self._cycle = [op for op in self.operations for _ in range(op.weight)]

    def _headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def _chat_body(self, n: int, **extra: Any) -> dict[str, Any]:
        return {"model": self.chat, "messages": [{"role": "user", "content": f"soak {n}"}], "temperature": 0.7, **extra}

    async def _chat(self, client: httpx.AsyncClient) -> httpx.Response:
        return await client.post("/v1/chat/completions", json=self._chat_body(1), headers=self._headers())

    async def _streamed(self, client: httpx.AsyncClient, n: int, cut: bool) -> httpx.Response:
        """A streamed chat read to its end, or left by the client after its first bytes (``cut``)."""
        body = self._chat_body(n, stream=True)
        async with client.stream("POST", "/v1/chat/completions", json=body, headers=self._headers()) as r:
            if r.status_code != 200:
                await r.aread()  # the error's body, for the report
            async for _ in r.aiter_bytes():
                if cut:
                    break
            return r

    async def _stream(self, client: httpx.AsyncClient) -> httpx.Response:
        return await self._streamed(client, 2, cut=False)

    async def _cut(self, client: httpx.AsyncClient) -> httpx.Response:
        return await self._streamed(client, 3, cut=True)

    async def _embeddings(self, client: httpx.AsyncClient) -> httpx.Response:
        body = {"model": self.embedding, "input": ["soak a", "soak b"]}
        return await client.post("/v1/embeddings", json=body, headers=self._headers())

    async def _responses(self, client: httpx.AsyncClient) -> httpx.Response:
        body: dict[str, Any] = {"model": self.chat, "input": f"turn {self.turns}", "max_output_tokens": 16}
        if self.previous and self.turns % CHAIN_TURNS:
            body["previous_response_id"] = self.previous
        self.turns += 1
        r = await client.post("/v1/responses", json=body, headers=self._headers())
        self.previous = r.json().get("id") if r.status_code == 200 else None
        return r

    async def _search(self, client: httpx.AsyncClient) -> httpx.Response:
        body = {"query": "soak", "limit": 3}
        return await client.post(f"/v1/vector/collections/{COLLECTION}/search", json=body, headers=self._headers())

    async def _refused(self, client: httpx.AsyncClient) -> httpx.Response:
        body = {**self._chat_body(4), "model": self.other_chat}
        return await client.post("/v1/chat/completions", json=body, headers=self._headers(self.refused_key))

    async def _one(self, client: httpx.AsyncClient, op: Operation) -> None:
        try:
            response = await op.send(client)
        except httpx.HTTPError as err:
            self.outcome.unexpected.append(f"{op.name}: {type(err).__name__}: {err}")
            return
        status = response.status_code
        self.outcome.statuses.setdefault(op.name, Counter())[status] += 1
        if status not in op.expected:
            self.outcome.unexpected.append(f"{op.name}: HTTP {status} {response.text[:300]}")
        elif status in op.observed:
            self.outcome.observed_answers += 1

    async def run(self, seconds: float, rate: float, concurrency: int) -> None:
        """Start a request every 1/``rate`` s for ``seconds`` (at most ``concurrency`` in flight), then wait for
        those in flight."""
        slots = asyncio.Semaphore(concurrency)
        pending: set[asyncio.Task[None]] = set()

        async def guarded(op: Operation) -> None:
            async with slots:
                await self._one(client, op)

        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(base_url=self.gateway.url, timeout=60, limits=limits) as client:
            start, n = time.monotonic(), 0
            try:
                while (now := time.monotonic()) - start < seconds:
                    due = start + n / rate
                    if due > now:
                        await asyncio.sleep(due - now)
                    if len(pending) < 4 * concurrency:  # a slow gateway is not buried under a queue of our making
                        task = asyncio.create_task(guarded(self._cycle[n % len(self._cycle)]))
                        pending.add(task)
                        task.add_done_callback(pending.discard)
                    n += 1
                await asyncio.gather(*pending)
            finally:  # interrupted: nothing outlives the client
                for task in pending:
                    task.cancel()


class Sampler:
    """Reads the figures of :class:`Sample` (blocking; run it in a thread)."""

    def __init__(self, gateway: Gateway, postgres: PostgresServer, database: str, redis_url: str) -> None:
        self.gateway, self.postgres, self.database = gateway, postgres, database
        self._redis = redis.Redis.from_url(redis_url)
        self._redis.client_setname("soak-sampler")

    def _processes(self) -> list[psutil.Process]:
        assert self.gateway.pid is not None
        root = psutil.Process(self.gateway.pid)
        return [root, *root.children(recursive=True)]

    def _tasks(self) -> int:
        text = httpx.get(f"{self.gateway.url}/metrics", timeout=10).text
        return sum(int(float(v)) for v in re.findall(r"^llm_gateway_event_loop_tasks\{[^}]*\} (\S+)$", text, re.M))

    def sample(self, t: float) -> Sample:
        rss, fds, pids = 0, 0, []
        for process in self._processes():
            try:
                with process.oneshot():
                    rss += process.memory_info().rss
                    fds += process.num_fds()
                pids.append(process.pid)
            except psutil.NoSuchProcess:
                continue
        with psycopg.connect(self.postgres.url, autocommit=True) as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s", (self.database,)).fetchone()
        db_connections = int(row[0]) if row else 0
        clients = self._redis.client_list()
        return Sample(
            t,
            rss / MIB,
            fds,
            self._tasks(),
            db_connections,
            sum(1 for c in clients if c.get("name") != "soak-sampler"),
            tuple(sorted(pids)),
        )

    def close(self) -> None:
        self._redis.close()


@dataclass
class Check:
    name: str
    start: float
    end: float
    allowed: str
    ok: bool


@dataclass
class Result:
    samples: list[Sample]  # over time, those read at rest among them (``rest``)
    warmup_s: float
    outcome: Outcome
    usage_rows: Counter[str]  # per "model status"
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def table(self) -> str:
        lines = ["| check | start | end | budget | verdict |", "|---|---|---|---|---|"]
        for c in self.checks:
            lines.append(f"| {c.name} | {c.start:g} | {c.end:g} | {c.allowed} | {'PASS' if c.ok else 'FAIL'} |")
        counts = ", ".join(f"{name} {dict(sorted(c.items()))}" for name, c in self.outcome.statuses.items())
        rows = ", ".join(f"{k}: {n}" for k, n in sorted(self.usage_rows.items()))
        lines += ["", f"requests: {self.outcome.total()} ({counts})", f"usage rows: {rows}"]
        lines += [f"unexpected: {u}" for u in self.outcome.unexpected[:20]]
        return "\n".join(lines)


def window(values: list[float]) -> tuple[float, float]:
    """The medians of the first and the last fifth (at least 3 values each)."""
    size = max(3, len(values) // 5)
    return statistics.median(values[:size]), statistics.median(values[-size:])


def judge(samples: list[Sample], warmup_s: float, outcome: Outcome, usage_rows: Counter[str]) -> Result:
    """The verdict of a run against :data:`BUDGETS`, the documented answers and the usage rows."""
    steady = [s for s in samples if s.t >= warmup_s and not s.rest]
    checks = []
    for budget in BUDGETS:
        if budget.at_rest:
            start, end = (min(getattr(s, budget.name) for s in samples if s.rest == phase) for phase in (1, 2))
        else:
            start, end = window([getattr(s, budget.name) for s in steady])
        allowed = budget.allowed(start)
        unit = f" {budget.unit}" if budget.unit else ""
        where = " at rest" if budget.at_rest else ""
        checks.append(
            Check(
                f"{budget.name} growth{where}",
                round(start, 1),
                round(end, 1),
                f"+{allowed:.4g}{unit} (max({budget.share:.0%}, {budget.floor:g}{unit}))",
                end - start <= allowed,
            )
        )
    pids = {s.pids for s in samples}
    checks.append(
        Check(
            "gateway processes (none restarted)",
            len(samples[0].pids),
            len(samples[-1].pids),
            "the same pids throughout",
            len(pids) == 1,
        )
    )
    checks.append(Check("undocumented answers / errors", 0, len(outcome.unexpected), "0", not outcome.unexpected))
    checks.append(
        Check(
            "usage rows = observed answers",
            outcome.observed_answers,
            usage_rows.total(),
            "equal",
            usage_rows.total() == outcome.observed_answers,
        )
    )
    return Result(samples, warmup_s, outcome, usage_rows, checks)


def plot(result: Result, path: Path) -> None:
    """RSS, fds, tasks and connections over time, the warm-up shaded and RSS's budget drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.t / 60 for s in result.samples]
    fig, axes = plt.subplots(len(BUDGETS), 1, figsize=(9, 2.2 * len(BUDGETS)), sharex=True)
    for ax, budget, check in zip(axes, BUDGETS, result.checks[: len(BUDGETS)], strict=True):
        ax.plot(minutes, [getattr(s, budget.name) for s in result.samples], color="tab:blue")
        ax.axvspan(0, result.warmup_s / 60, color="0.9", label="warm-up")
        ax.axhline(check.start + budget.allowed(check.start), color="tab:red", linestyle="--", label="budget")
        ax.set_ylabel(f"{budget.name}{f' ({budget.unit})' if budget.unit else ''}")
        ax.set_title(
            f"{check.name}: {check.start:g} -> {check.end:g} ({'PASS' if check.ok else 'FAIL'})", fontsize=9, loc="left"
        )
    axes[0].legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def write_vector_config(folder: Path, embedding: str) -> Path:
    path = folder / "soak-collections.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "collections": [
                    {
                        "name": COLLECTION,
                        "description": "the soak's documents",
                        "embedding_model": embedding,
                        "vector_size": 8,
                        "distance": "Cosine",
                    }
                ]
            }
        )
    )  # the fake upstream's embeddings have 8 dimensions
    return path


def seed(gateway: Gateway, key: str) -> None:
    """A few documents in the soak collection, through the worker that holds Qdrant's local engine."""
    docs = {"documents": [{"id": f"doc-{i}", "text": f"soak document {i}"} for i in range(20)]}
    for _ in range(50):
        r = httpx.post(
            f"{gateway.url}/v1/vector/collections/{COLLECTION}/documents",
            json=docs,
            headers=gateway.headers(key),
            timeout=30,
        )
        if r.status_code == 200:
            return
    raise RuntimeError(f"no worker stored the soak's documents: {r.status_code} {r.text}")


def usage_rows(url: str, aliases: tuple[str, ...], expected: int, timeout: float = 120.0) -> Counter[str]:
    """SUM(request_count) of these keys' usage rows per "model status", once their total reaches ``expected`` or
    ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(url) as conn:
            found = conn.execute(
                "SELECT model_name, status, SUM(request_count) FROM llm_model_requests "
                "WHERE user_id = ANY(%s) GROUP BY model_name, status",
                (list(aliases),),
            ).fetchall()
        rows = Counter({f"{model} {status}": int(n) for model, status, n in found})
        if rows.total() >= expected or time.monotonic() > deadline:
            return rows
        time.sleep(1)


async def _sample_until(
    sampler: Sampler, done: asyncio.Event, interval: float, start: float, samples: list[Sample]
) -> None:
    while not done.is_set():
        samples.append(await asyncio.to_thread(sampler.sample, time.monotonic() - start))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), interval)


async def _at_rest(sampler: Sampler, start: float, samples: list[Sample], phase: int) -> None:
    """Samples read at rest: REST_S after the last request ended (the workers' task gauges refreshed), 3 of them."""
    for _ in range(3):
        await asyncio.sleep(REST_S)
        sample = await asyncio.to_thread(sampler.sample, time.monotonic() - start)
        sample.rest = phase
        samples.append(sample)


async def _drive(
    load: Load, sampler: Sampler, seconds: float, warmup_s: float, rate: float, concurrency: int, interval: float
) -> list[Sample]:
    """The warm-up's load, samples at rest, the rest of the load, samples at rest; sampled every ``interval``."""
    samples: list[Sample] = []
    done = asyncio.Event()
    start = time.monotonic()
    watcher = asyncio.create_task(_sample_until(sampler, done, interval, start, samples))
    try:
        await load.run(warmup_s, rate, concurrency)
        await _at_rest(sampler, start, samples, 1)
        await load.run(seconds - warmup_s, rate, concurrency)
        await _at_rest(sampler, start, samples, 2)
    finally:
        done.set()
        await watcher
    return samples


def run(
    seconds: float,
    warmup_s: float,
    rate: float,
    interval: float,
    workdir: Path,
    gateway_env: dict[str, str] | None = None,
    concurrency: int = 16,
) -> Result:
    """Start PostgreSQL, Redis, the fake upstream and the gateway; soak; stop them all; the verdict."""
    cat = catalogue.load()
    chat, other_chat = cat.chat_models[0].name, cat.chat_models[-1].name
    embedding = cat.embedding_models[0].name
    postgres, redis_server, upstream = PostgresServer(), RedisServer(), FakeUpstream()
    gateway: Gateway | None = None
    postgres.start()
    try:
        redis_server.start()
        upstream.start()
        upstream.set_reply(words=STREAM_WORDS, rate=STREAM_RATE)
        db_url = fresh_postgres_database(postgres)
        env = {
            "DATABASE_URL": db_url,
            "REDIS_URL": redis_server.url,
            "QDRANT_URL": "",
            "QDRANT_PATH": str(workdir / "qdrant"),
            "HXP_VECTOR_CONFIG": str(write_vector_config(workdir, embedding)),
            **(gateway_env or {}),
        }
        (workdir / "gateway").mkdir(parents=True, exist_ok=True)
        gateway = Gateway(all_models(upstream.url), env, workers=WORKERS, state_dir=workdir / "gateway")
        gateway.start()
        aliases = ("soak-client", "soak-refused")
        key = gateway.create_key(aliases[0], write_collections=[COLLECTION])
        refused = gateway.create_key(aliases[1], models=[chat])
        seed(gateway, key)
        load = Load(gateway, key, refused, chat, other_chat, embedding)
        load.outcome.observed_answers = 1  # the seed's documents were embedded in one observed call
        sampler = Sampler(gateway, postgres, db_url.rsplit("/", 1)[1], redis_server.url)
        try:
            samples = asyncio.run(_drive(load, sampler, seconds, warmup_s, rate, concurrency, interval))
        finally:
            sampler.close()
        rows = usage_rows(db_url, aliases, load.outcome.observed_answers)
        gateway.close()
        drop_postgres_database(postgres, db_url)
        return judge(samples, warmup_s, load.outcome, rows)
    finally:
        if gateway is not None:
            gateway.close()
        upstream.stop()
        redis_server.close()
        postgres.close()


def duration_s(text: str) -> float:
    """Seconds of ``90``, ``90s``, ``20m`` or ``1h``."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 20m, 1h)")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=duration_s, default=1200.0, help="how long the load runs (20m)")
    parser.add_argument("--warmup", type=duration_s, help="left out of the verdict (default 15%%, at least 60s)")
    parser.add_argument("--rate", type=float, default=15.0, help="requests started per second")
    parser.add_argument("--interval", type=duration_s, default=5.0, help="seconds between samples")
    parser.add_argument("--out", type=Path, default=Path(".state/soak"), help="folder for the table, CSV and PNG")
    args = parser.parse_args()
    warmup = args.warmup if args.warmup is not None else max(60.0, 0.15 * args.duration)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out / "run"
    workdir.mkdir(exist_ok=True)
    result = run(args.duration, warmup, args.rate, args.interval, workdir.resolve())
    table = result.table()
    print(table)
    (args.out / "soak.md").write_text(table + "\n")
    (args.out / "samples.json").write_text(json.dumps([vars(s) for s in result.samples]))
    plot(result, args.out / "soak.png")
    print(f"\nplot: {args.out / 'soak.png'}; samples: {args.out / 'samples.json'}")
    raise SystemExit(0 if result.ok else 1)


if __name__ == "__main__":
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    main()
