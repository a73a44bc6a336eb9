"""Store benchmark: upsert throughput and search latency over N stored vectors (local mode by default).

    python -m hxp.vector.bench [--vectors 10000] [--dim 384] [--batch 1000] [--queries 300] [--url URL]

Random unit vectors stand in for embeddings (the store's cost does not depend on where
vectors come from); searches ask for the top 10 with no threshold, plain and with a
metadata filter. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time

import numpy as np

from hxp.core.stores import QdrantLocation
from hxp.vector.config import Collection, VectorConfig
from hxp.vector.store import Record, VectorStore

COLLECTION = "bench"
TOPICS = ["billing", "network", "storage", "security", "models"]


def _unit_vectors(rng: np.random.Generator, count: int, dim: int) -> np.ndarray:
    vectors = rng.standard_normal((count, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _percentile(samples: list[float], q: int) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1] if len(samples) > 1 else samples[0]


async def _run(args: argparse.Namespace, location: QdrantLocation) -> list[tuple[str, str]]:
    config = VectorConfig(
        collections=[Collection(name=COLLECTION, embedding_model=args.embedding_model, vector_size=args.dim)]
    )
    store = await VectorStore.open(config, **location)
    rng = np.random.default_rng(7)
    vectors = _unit_vectors(rng, args.vectors, args.dim)
    started = time.perf_counter()
    for start in range(0, args.vectors, args.batch):
        await store.upsert(
            COLLECTION,
            [
                Record(f"doc-{i}", vectors[i].tolist(), f"document {i}", {"topic": TOPICS[i % len(TOPICS)], "n": i})
                for i in range(start, min(start + args.batch, args.vectors))
            ],
        )
    upsert_s = time.perf_counter() - started
    stored = await store.count(COLLECTION)

    queries = _unit_vectors(rng, args.queries, args.dim).tolist()
    rows = [
        ("stored vectors", f"{stored:,} x {args.dim} dims ({'server' if 'url' in location else 'local mode'})"),
        ("upsert throughput", f"{args.vectors / upsert_s:,.0f} vectors/s ({args.batch} per batch, {upsert_s:.1f} s)"),
    ]
    for label, where in [("search", None), ("search + filter", {"topic": "network"})]:
        latencies = []
        for q in queries:
            t0 = time.perf_counter()
            hits = await store.search(COLLECTION, q, limit=10, where=where)
            latencies.append((time.perf_counter() - t0) * 1000)
            assert len(hits) == 10
        rows.append(
            (
                f"{label} p50 / p95 (top 10)",
                f"{_percentile(latencies, 50):.2f} / {_percentile(latencies, 95):.2f} ms ({len(queries)} queries)",
            )
        )
    await store.client.delete_collection(COLLECTION)
    await store.close()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--embedding-model", default="all-minilm-l6-v2", help=argparse.SUPPRESS)
    parser.add_argument("--url", help="a Qdrant server instead of a fresh local-mode store")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hxp-vector-bench-") as tmp:
        rows = asyncio.run(_run(args, {"url": args.url} if args.url else {"path": tmp}))
    print("\n### Vector store (Qdrant)\n")
    print("| measure | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
