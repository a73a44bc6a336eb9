"""`hxp k8s generate|check`: the Helm chart from the catalogue, and the checks an API server would make."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from hxp.core import catalogue, generated
from hxp.k8s import chart, checks


def _generate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    return generated.generate(
        out,
        args.check,
        lambda: chart.stale(out, args.catalogue),
        lambda: chart.write(out, args.catalogue),
        "hxp k8s generate",
    )


def _check(args: argparse.Namespace) -> int:
    docs = [
        d for d in yaml.safe_load_all(Path(args.manifests).read_text() if args.manifests != "-" else sys.stdin) if d
    ]
    values = [yaml.safe_load(Path(v).read_text()) for v in args.values]
    problems = checks.run(docs, catalogue.load(args.catalogue, args.profile), checks.external_names(values))
    for problem in problems:
        print(problem, file=sys.stderr)
    print(f"{len(docs)} objects, {len(problems)} problems")
    return 1 if problems else 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("k8s", help="the Helm chart (deploy/helm/hxp) for Kubernetes")
    ksub = p.add_subparsers(dest="k8s_command", required=True)
    g = ksub.add_parser("generate", help="write the chart's values and files from the catalogue")
    g.add_argument("--check", action="store_true", help="only report (exit 1) when the chart differs")
    g.add_argument("--out", default=str(chart.CHART_DIR), help="the chart's folder (default: deploy/helm/hxp)")
    g.add_argument("--catalogue", help="catalogue file (default: HXP_CATALOGUE or models.yaml)")
    g.set_defaults(func=_generate)
    c = ksub.add_parser(
        "check",
        help="check a rendering (helm template ... | hxp k8s check -) for what only an API "
        "server or a controller would otherwise find",
    )
    c.add_argument("manifests", help="the rendered objects (a YAML stream), - for standard input")
    c.add_argument("--profile", required=True, help="the catalogue profile the rendering serves (gpu | cpu)")
    c.add_argument(
        "--values",
        action="append",
        default=[],
        metavar="FILE",
        help="a values file of the rendering (the Secrets and claims it names exist outside the chart)",
    )
    c.add_argument("--catalogue", help="catalogue file (default: HXP_CATALOGUE or models.yaml)")
    c.set_defaults(func=_check)
