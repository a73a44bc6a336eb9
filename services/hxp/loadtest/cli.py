"""`hxp loadtest plan|propose`: what a load test covers, and targets proposed from measured runs."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from hxp.core import catalogue, traffic
from hxp.loadtest.plan import concurrency, models_under_test, users_needed

MAX_MARGIN = 2.0  # a target looser than twice what was measured checks little (issue 11)


def _plan(args: argparse.Namespace) -> int:
    cat = catalogue.load()
    try:
        models = models_under_test(cat, args.models)
    except catalogue.CatalogueError as err:
        print(f"hxp loadtest plan: {err}", file=sys.stderr)
        return 2
    if args.users:
        print(users_needed(models))
        return 0
    data = traffic.load()
    print(f"profile {cat.profile}: {users_needed(models)} users")
    print(f"{'model':<20} {'workload':<11} {'users':>5}  target avg/p95 ms @ req/s")
    for m in models:
        workload = data.workload_for(m).name if m.task == "chat" else "embeddings"
        t = m.targets
        print(
            f"{m.name:<20} {workload:<11} {concurrency(m):>5}  {t.avg_latency_ms:g}/{t.p95_latency_ms:g} @ "
            f"{t.throughput_rps:g}"
        )
    return 0


def _round_down(value: float) -> float:
    """Down to two significant digits."""
    step = 10 ** (math.floor(math.log10(value)) - 1)
    return math.floor(value / step + 1e-9) * step


def _propose(args: argparse.Namespace) -> int:
    """Targets measured runs honestly support, per model: its worst avg and p95 over the runs times the
    margin, its lowest req/s divided by it, each rounded down to two significant digits: a latency target
    is never looser than the margin, and throughput x latency never exceeds what was measured, so the
    users the plan derives from them (Little's law) stay those of the run. Models sharing an engine still
    get their own targets: their workloads differ."""
    if not 1 < args.margin <= MAX_MARGIN:
        print(f"hxp loadtest propose: --margin must be above 1 and at most {MAX_MARGIN:g}", file=sys.stderr)
        return 2
    runs = [json.loads((Path(folder) / "verdict.json").read_text()) for folder in args.results]
    profiles = {run["profile"] for run in runs}
    if len(profiles) != 1:
        print(f"hxp loadtest propose: runs of different profiles {sorted(profiles)}", file=sys.stderr)
        return 2
    cat = catalogue.load(profile=profiles.pop())
    for model in cat.models:
        measured = [(run, row) for run in runs for row in run["results"] if row["model"] == model.name]
        if not measured:
            continue
        rows = [row for _, row in measured]
        if any(r["avg_ms"] is None or r["failures"] for r in rows):
            print(f"{model.name}: not proposed: a run had failures or no successful request", file=sys.stderr)
            continue
        avg, p95 = max(r["avg_ms"] for r in rows), max(r["p95_ms"] for r in rows)
        rps = min(r["rps"] for r in rows)
        users = "/".join(sorted({str(r["users"]) for r in rows}))
        targets = (
            f"avg_latency_ms: {_round_down(avg * args.margin):g}, "
            f"p95_latency_ms: {_round_down(p95 * args.margin):g}, "
            f"throughput_rps: {_round_down(rps / args.margin):g}"
        )
        dates = ", ".join(sorted({run["started_at"][:10] for run, _ in measured}))
        seconds = "/".join(f"{run['duration_s']:.0f}" for run, _ in measured)
        note = (
            f"{dates}, {len(rows)} run(s) of {seconds} s through the gateway, {users} user(s): "
            f"worst avg {avg:.0f} ms, p95 {p95:.0f} ms, lowest {rps:.2f} req/s; margin {args.margin:g}"
        )
        print(f'{model.name}:\n  {targets}, measured: "{note}"')
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    loadtest = sub.add_parser("loadtest", help="load tests of the models").add_subparsers(dest="action", required=True)
    plan = loadtest.add_parser("plan", help="models under test, their workloads, targets and users needed")
    plan.add_argument("--models", help="comma-separated model names (default HXP_LOADTEST_MODELS, else all)")
    plan.add_argument("--users", action="store_true", help="print only the total number of users")
    plan.set_defaults(func=_plan)
    propose = loadtest.add_parser("propose", help="targets measured runs support, per model (worst run, with margin)")
    propose.add_argument("results", nargs="+", help="results folders of runs (loadtests/results/<timestamp>)")
    propose.add_argument(
        "--margin",
        type=float,
        default=1.5,
        help=f"latency x margin, req/s / margin (default 1.5, at most {MAX_MARGIN:g})",
    )
    propose.set_defaults(func=_propose)
