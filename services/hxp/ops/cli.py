"""`hxp status`, `hxp usage report`, `hxp validate` and `hxp doctor`: the operator's commands.

Each acts on the native stack (this host's environment) or, with ``--compose``, on the compose
stack through its published ports (see hxp.ops.stack). ``--json`` prints for scripts; the exit
status is 0 only when everything checked is healthy. Imports are deferred to the command run,
so that every other `hxp` command starts as fast as before.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hxp.ops.stack import Stack


def _stack(args: argparse.Namespace) -> Stack:
    from hxp.ops import stack

    return stack.load(
        compose=args.compose,
        gateways=args.gateway,
        prometheus=args.prometheus,
        alertmanager=getattr(args, "alertmanager", None),
        grafana=getattr(args, "grafana", None),
        catalogue_path=args.catalogue,
        profile=args.profile,
    )


def _status(args: argparse.Namespace) -> int:
    from hxp.ops import status

    return status.run(_stack(args), as_json=args.json, watch=args.watch)


def _validate(args: argparse.Namespace) -> int:
    from hxp.ops import findings, validate

    stack = _stack(args)
    return findings.emit("validate", validate.run(stack), args.json, stack=stack.kind)


def _doctor(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hxp.ops import doctor, findings

    stack = _stack(args)
    return findings.emit(
        "doctor", doctor.run(stack, Path(args.env_dir) if args.env_dir else None), args.json, stack=stack.kind
    )


def _usage_report(args: argparse.Namespace) -> int:
    from hxp.core import catalogue
    from hxp.core.database import Database
    from hxp.ops import report

    try:
        span = report.window(args.since, args.until)
    except report.ReportError as err:
        print(f"hxp usage report: {err}", file=sys.stderr)
        return 2
    url = args.database_url or _stack(args).database_url
    if url is None:
        print("hxp usage report: no database to read (compose: env/postgres.env is missing; make env)", file=sys.stderr)
        return 2
    db = Database(url)
    try:
        result = report.build(db, catalogue.load(args.catalogue, args.profile), span, args.by)
    finally:
        db.close()
    if args.csv:
        sys.stdout.write(report.to_csv(result))
    elif args.json:
        print(json.dumps(report.to_json(result), indent=2))
    else:
        print(report.render(result))
    return 0


def _stack_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--compose", action="store_true", help="the compose stack through its published ports (make ... STACK=compose)"
    )
    parser.add_argument(
        "--gateway",
        action="append",
        help="a gateway replica's URL, repeatable (default: HXP_GATEWAY_URL or http://127.0.0.1:8000)",
    )
    parser.add_argument("--prometheus", help="Prometheus URL (default: HXP_PROMETHEUS_URL; compose: :9090)")
    parser.add_argument("--catalogue", help="catalogue file (default: HXP_CATALOGUE or models.yaml)")
    parser.add_argument("--profile", help="profile (default: HXP_PROFILE or cpu)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("status", help="one-look health: engines, gateways, stores, Prometheus, recent traffic")
    _stack_options(p)
    p.add_argument(
        "--watch",
        nargs="?",
        type=float,
        const=5.0,
        metavar="SECONDS",
        help="refresh in place every SECONDS (default 5) until Ctrl-C",
    )
    p.set_defaults(func=_status)

    p = sub.add_parser("validate", help="post-deployment validation of a running stack (PASS/FAIL/SKIP per check)")
    _stack_options(p)
    p.add_argument("--alertmanager", help="Alertmanager URL (default: HXP_ALERTMANAGER_URL; compose: :9093)")
    p.add_argument(
        "--grafana",
        help="Grafana URL (default: HXP_GRAFANA_URL; compose: :3000); GRAFANA_USER/GRAFANA_PASSWORD or env/grafana.env",
    )
    p.set_defaults(func=_validate)

    p = sub.add_parser("doctor", help="find why the stack will not start or is slow, each finding with its fix")
    _stack_options(p)
    p.add_argument("--env-dir", help="the env files' folder (default: env/ of the project)")
    p.set_defaults(func=_doctor)

    usage = sub.add_parser("usage", help="usage statistics from the usage log").add_subparsers(
        dest="action", required=True
    )
    p = usage.add_parser("report", help="requests, tokens, errors, latency and cost per model, key, owner or day")
    p.add_argument("--since", default="7d", help="start: 30m, 12h, 7d, 2w or an ISO date/time (default 7d)")
    p.add_argument("--until", help="end, same forms (default: now)")
    p.add_argument("--by", choices=["model", "key", "owner", "day"], default="model")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="CSV, one line per group")
    out.add_argument("--json", action="store_true", help="JSON with the totals")
    p.add_argument("--database-url", help="the usage database (default: as the gateway reads it)")
    p.add_argument("--compose", action="store_true", help="the compose stack's PostgreSQL (published port)")
    p.add_argument("--catalogue", help="catalogue file, for prices (default: HXP_CATALOGUE or models.yaml)")
    p.add_argument("--profile", help="profile (default: HXP_PROFILE or cpu)")
    p.set_defaults(func=_usage_report, gateway=None, prometheus=None)
