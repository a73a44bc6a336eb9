"""`hxp catalogue`: check and show the model catalogue."""

from __future__ import annotations

import argparse
import json

from hxp.core import catalogue


def _show(args: argparse.Namespace) -> int:
    cat = catalogue.load(args.catalogue, args.profile)
    rows = [
        {
            "name": m.name,
            "port": m.port,
            "task": m.task,
            "source": m.source,
            "tools": m.tools.model_dump() if m.tools else None,
            **m.targets.model_dump(),
        }
        for m in cat.models
    ]
    print(json.dumps({"profile": cat.profile, "models": rows}, indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("catalogue", help="validate and show the model catalogue")
    p.add_argument("--catalogue", help="catalogue file (default: HXP_CATALOGUE or models.yaml)")
    p.add_argument("--profile", help="profile (default: HXP_PROFILE or cpu)")
    p.set_defaults(func=_show)
