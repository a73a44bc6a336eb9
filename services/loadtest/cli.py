"""`hxp loadtest plan`: the models a load test covers, their workloads, targets and the users they need."""
from __future__ import annotations

import argparse
import sys

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


def register(sub: argparse._SubParsersAction) -> None:
    loadtest = sub.add_parser("loadtest", help="load tests of the models").add_subparsers(dest="action", required=True)
    plan = loadtest.add_parser("plan", help="models under test, their workloads, targets and users needed")
    plan.add_argument("--models", help="comma-separated model names (default HXP_LOADTEST_MODELS, else all)")
    plan.add_argument("--users", action="store_true", help="print only the total number of users")
    plan.set_defaults(func=_plan)
