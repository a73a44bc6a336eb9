"""Engine benchmark: which dtype answers right and how fast the CPU engines are (prints a markdown table).

``python -m hxp.model.bench [--dtypes bfloat16,float16,float32] [--quantizations w8a8,w4a16] [--compiled]
[--tokens N]`` starts, one at a time on a free port, the chat engine (serving every chat name) once
per dtype, once per catalogue quantization (its weights made first, hxp.model.quantize; one this CPU's
vLLM cannot run is refused before it starts, and its row says so), then the embedding engine, measures
each and stops it. A chat row says what
the engine answers to "What is the capital of France?" at temperature 0 and whether
that is right (it names Paris): a dtype whose kernels misbehave on this CPU answers
nonsense. ``--compiled`` adds the chat engine with the catalogue's dtype, compiled.
Numbers depend on the machine and on what else runs on it: the table says which CPU
and load it saw.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import httpx

from hxp.core import catalogue
from hxp.core.catalogue import Model
from hxp.core.paths import state_path
from hxp.model import quantize
from hxp.model.command import EngineCommand, engine_command, engine_groups
from hxp.model.service import start_engine
from hxp.process import ServiceError, group_pids

CONCURRENCY = 8
DTYPES = ("bfloat16", "float16", "float32")
QUESTION, ANSWER = "What is the capital of France?", "Paris"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_rss_gib(pgid: int) -> float:
    """Resident memory of every process in a process group."""
    total_kib = 0
    for pid in group_pids(pgid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        total_kib += next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)
    return total_kib / 2**20


def generate(base_url: str, model: str, tokens: int) -> int:
    body = {"model": model, "prompt": "Once upon a time", "max_tokens": tokens, "temperature": 0, "ignore_eos": True}
    response = httpx.post(f"{base_url}/v1/completions", json=body, timeout=600)
    response.raise_for_status()
    return response.json()["usage"]["completion_tokens"]


def answer(base_url: str, model: str) -> str:
    """The chat answer to QUESTION at temperature 0."""
    body = {"model": model, "messages": [{"role": "user", "content": QUESTION}], "temperature": 0, "max_tokens": 32}
    response = httpx.post(f"{base_url}/v1/chat/completions", json=body, timeout=600)
    response.raise_for_status()
    return response.json()["choices"][0]["message"]["content"]


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


def measure(command: EngineCommand, quantization: str, tokens: int, timeout: float) -> dict[str, str]:
    eager = "--enforce-eager" in command.argv
    log = state_path("logs", "bench") / (
        f"engine-{command.log_name}-{quantization}-{command.dtype}-{'eager' if eager else 'compiled'}.log"
    )
    row = {
        "engine": "/".join(command.names),
        "quantization": quantization,
        "dtype": command.dtype,
        "eager": str(eager).lower(),
    }
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
            said = answer(engine.base_url, model)
            row["answer (temperature 0)"] = " ".join(said.split())[:60].replace("|", "/")
            row["correct"] = "yes" if ANSWER in said else "NO"
            row["tok/s single"] = f"{tokens_per_s(engine.base_url, model, tokens, 1):.1f}"
            row[f"tok/s {CONCURRENCY} concurrent"] = f"{tokens_per_s(engine.base_url, model, tokens, CONCURRENCY):.1f}"
        else:
            row["tok/s single"] = f"{embeddings_per_s(engine.base_url, model):.1f} emb/s"
        row["RSS GiB"] = f"{group_rss_gib(engine.pid):.2f}"
        return row
    finally:
        engine.stop()


def with_dtype(models: Sequence[Model], dtype: str) -> list[Model]:
    """The models with their vLLM dtype replaced."""
    return [
        replace(
            m,
            deployment=m.deployment.model_copy(update={"vllm": m.deployment.vllm.model_copy(update={"dtype": dtype})}),
        )
        for m in models
    ]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        "unknown CPU",
    )
    return f"{cpu}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hxp.model.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="chat engine dtypes to compare (comma-separated)")
    parser.add_argument(
        "--quantizations", help="catalogue quantizations of the chat engine (comma-separated; default: all)"
    )
    parser.add_argument("--compiled", action="store_true", help="also measure the chat engine without --enforce-eager")
    parser.add_argument("--tokens", type=int, default=128, help="tokens generated per request")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds an engine may take to start")
    args = parser.parse_args(argv)
    cat = catalogue.load(profile="cpu")
    chat = engine_groups(cat.chat_models)[0]
    embedding = engine_groups(cat.embedding_models)[0]
    chat_dtype = chat[0].deployment.vllm.dtype
    names = list(cat.quantizations) if args.quantizations is None else filter(None, args.quantizations.split(","))
    quantized = [quantize.with_quantization(chat, name, cat) for name in names]
    for models in quantized:
        quantize.ensure(models, cat.profile)
    runs = [(with_dtype(chat, dtype), True) for dtype in args.dtypes.split(",")] + [(q, True) for q in quantized]
    runs.append((embedding, True))
    if args.compiled:
        runs.append((chat, False))
    load_before = os.getloadavg()[0]
    rows = []
    for models, eager in runs:
        command = engine_command(models, cat.profile_settings, port=free_port(), enforce_eager=eager)
        rows.append(measure(command, models[0].deployment.quantization or "none", args.tokens, args.timeout))
        if models[0].task == "chat" and command.dtype == chat_dtype and not models[0].quantization:
            rows[-1]["dtype"] += " (catalogue)"
        print(f"[bench] {rows[-1]}", file=sys.stderr, flush=True)
    columns = list(dict.fromkeys(c for row in rows for c in row))
    print(
        f"\nvLLM CPU engines ({machine()}, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after; "
        f"{args.tokens} tokens per request)\n"
    )
    print("| " + " | ".join(columns) + " |\n|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(row.get(c, "-") for c in columns) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
