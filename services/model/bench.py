"""Engine benchmark: start time, memory and generation speed of the CPU engines (prints a markdown table).

``python -m hxp.model.bench [--compiled] [--tokens N]`` starts each engine of the
shared layout (the chat engine serving every chat name, the embedding engine) on a
free port, one at a time, measures it and stops it. Numbers depend on the machine
and on what else runs on it: the table says which CPU and load it saw.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from hxp import catalogue
from hxp.model.command import EngineCommand, engine_command, engine_groups
from hxp.model.service import start_engine
from hxp.paths import state_path
from hxp.process import ServiceError

CONCURRENCY = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_rss_gib(pgid: int) -> float:
    """Resident memory of every process in a process group."""
    total_kib = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) != pgid:
                continue
            status = (proc / "status").read_text()
        except (OSError, ValueError):
            continue
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total_kib / 2**20


def generate(base_url: str, model: str, tokens: int) -> int:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": tokens, "temperature": 0,
            "ignore_eos": True}
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=600)
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"]


def tokens_per_s(base_url: str, model: str, tokens: int, concurrency: int) -> float:
    start = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        produced = sum(pool.map(lambda _: generate(base_url, model, tokens), range(concurrency)))
    return produced / (time.monotonic() - start)


def embeddings_per_s(base_url: str, model: str, requests: int = 64) -> float:
    start = time.monotonic()
    with httpx.Client(timeout=120) as client:
        for i in range(requests):
            client.post(f"{base_url}/v1/embeddings", json={"model": model, "input": f"sentence {i}"}).raise_for_status()
    return requests / (time.monotonic() - start)


def measure(command: EngineCommand, tokens: int, timeout: float) -> dict[str, str]:
    eager = "--enforce-eager" in command.argv
    log = state_path("logs", "bench") / f"engine-{command.log_name}-{'eager' if eager else 'compiled'}.log"
    row = {"engine": "/".join(command.names), "eager": str(eager).lower()}
    started = time.monotonic()
    try:
        engine = start_engine(command, log=log, timeout=timeout)
    except ServiceError as err:
        row["start s"] = f"failed: {str(err).splitlines()[0]} (log: {log})"
        return row
    row["start s"] = f"{time.monotonic() - started:.0f}"
    try:
        model = command.names[0]
        if command.task == "chat":
            generate(engine.base_url, model, 8)  # warm-up
            row["tok/s single"] = f"{tokens_per_s(engine.base_url, model, tokens, 1):.1f}"
            row[f"tok/s {CONCURRENCY} concurrent"] = f"{tokens_per_s(engine.base_url, model, tokens, CONCURRENCY):.1f}"
        else:
            row["tok/s single"] = f"{embeddings_per_s(engine.base_url, model):.1f} emb/s"
            row[f"tok/s {CONCURRENCY} concurrent"] = "-"
        row["RSS GiB"] = f"{group_rss_gib(engine.pid):.2f}"
        return row
    finally:
        engine.stop()


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    return f"{cpu}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hxp.model.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--compiled", action="store_true", help="also measure engines without --enforce-eager")
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per request")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds an engine may take to start")
    args = parser.parse_args(argv)
    cat = catalogue.load(profile="cpu")
    load_before = os.getloadavg()[0]
    rows = []
    for eager in ([True, False] if args.compiled else [True]):
        for group in engine_groups(cat.models):
            if group[0].task == "embedding" and not eager:
                continue
            command = engine_command(group, cat.profile_settings, port=free_port(), enforce_eager=eager)
            rows.append(measure(command, args.tokens, args.timeout))
            print(f"[bench] {rows[-1]}", file=sys.stderr, flush=True)
    columns = list(max(rows, key=len))
    print(f"\nvLLM CPU engines ({machine()}, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after; "
          f"{args.tokens} tokens per request)\n")
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row.get(c, "") for c in columns) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
