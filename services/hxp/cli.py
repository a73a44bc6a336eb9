"""The operator command line: `hxp <command>`.

Each concern registers its own subcommands; this module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules exposing ``register(subparsers)``; each adds its own subcommands.
COMMAND_MODULES = [
    "hxp.core.cli",
    "hxp.gateway.cli",
    "hxp.conversations.cli",
    "hxp.model.cli",
    "hxp.runner",
    "hxp.loadtest.cli",
    "hxp.deploy.cli",
    "hxp.k8s.cli",
    "hxp.monitoring.cli",
    "hxp.ops.cli",
    "hxp.audit.cli",
    "hxp.lifecycle.cli",
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hxp", description="HXP-Enterprise LLM Server operator tool")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
