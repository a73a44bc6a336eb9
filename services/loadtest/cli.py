"""`hxp loadtest plan|propose`: what a load test covers, and targets proposed from a measured run."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from hxp import catalogue
from hxp.loadtest import traffic
from hxp.loadtest.plan import concurrency, models_under_test, users_needed


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
        print(f"{m.name:<20} {workload:<11} {concurrency(m):>5}  {t.avg_latency_ms:g}/{t.p95_latency_ms:g} @ "
              f"{t.throughput_rps:g}")
    return 0


def _round_up(value: float) -> float:
    """Up to two significant digits."""
    step = 10 ** (math.floor(math.log10(value)) - 1)
    return math.ceil(value / step - 1e-9) * step


def _round_down(value: float) -> float:
    """Down to two significant digits."""
    step = 10 ** (math.floor(math.log10(value)) - 1)
    return math.floor(value / step + 1e-9) * step


def _propose(args: argparse.Namespace) -> int:
    """Targets a measured run honestly supports: its worst latencies times the margin, its lowest req/s divided by it.

    Models sharing one deployment (the cpu profile's chat models) share one set of targets, so the
    proposal is per task, from the worst model of that task.
    """
    data = json.loads((Path(args.results) / "verdict.json").read_text())
    cat = catalogue.load(profile=data["profile"])
    for task in ("chat", "embedding"):
        rows = [r for r in data["results"] if cat.get(r["model"]).task == task]
        if not rows:
            continue
        if any(r["avg_ms"] is None or r["failures"] for r in rows):
            print(f"{task}: not proposed: a model had failures or no successful request", file=sys.stderr)
            continue
        avg, p95 = max(r["avg_ms"] for r in rows), max(r["p95_ms"] for r in rows)
        rps = min(r["rps"] for r in rows)
        users = "/".join(sorted({str(r["users"]) for r in rows}))
        targets = (f"avg_latency_ms: {_round_up(avg * args.margin):g}, "
                   f"p95_latency_ms: {_round_up(p95 * args.margin):g}, "
                   f"throughput_rps: {_round_down(rps / args.margin):g}")
        note = (f"{data['started_at'][:10]}, users per model {users}, {data['duration_s']:.0f} s through the gateway: "
                f"worst avg {avg:.0f} ms, p95 {p95:.0f} ms, lowest {rps:.2f} req/s; margin {args.margin:g}")
        print(f"{task} ({', '.join(r['model'] for r in rows)}):\n  {targets}, measured: \"{note}\"")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    loadtest = sub.add_parser("loadtest", help="load tests of the models").add_subparsers(dest="action", required=True)
    plan = loadtest.add_parser("plan", help="models under test, their workloads, targets and users needed")
    plan.add_argument("--models", help="comma-separated model names (default HXP_LOADTEST_MODELS, else all)")
    plan.add_argument("--users", action="store_true", help="print only the total number of users")
    plan.set_defaults(func=_plan)
    propose = loadtest.add_parser("propose", help="targets a measured run supports (worst model per task, with margin)")
    propose.add_argument("results", help="a results folder of a run (loadtests/results/<timestamp>)")
    propose.add_argument("--margin", type=float, default=1.5, help="latency x margin, req/s / margin (default 1.5)")
    propose.set_defaults(func=_propose)
