"""Every engine command of every catalogue profile parses with the installed vLLM's own `vllm serve` parser.

The commands are built here (hxp.model.command, as the native runner, systemd and compose build them) and
parsed in the engine virtualenv by vLLM's serve subcommand: its argument parser (``make_arg_parser``) and its
checks of the parsed arguments (``validate_parsed_serve_args``), without loading any model.
"""

from __future__ import annotations

import json
import subprocess

import yaml

from hxp.core import catalogue
from hxp.model import weights
from hxp.model.command import ENTRYPOINT, catalogue_commands

PROFILES = sorted(yaml.safe_load(catalogue.DEFAULT_PATH.read_text())["profiles"])
PARSE = """
import json, sys
from vllm.entrypoints.cli.serve import ServeSubcommand
from vllm.utils.argparse_utils import FlexibleArgumentParser

command = ServeSubcommand()
failures = {}
for label, argv in json.load(sys.stdin).items():
    parser = FlexibleArgumentParser(prog="vllm")
    command.subparser_init(parser.add_subparsers(dest="subparser"))
    parser.exit_on_error = False
    try:
        command.validate(parser.parse_args(argv))
    except (SystemExit, Exception) as err:
        failures[label] = f"{type(err).__name__}: {err}"
print(json.dumps(failures))
"""


def vllm_rejects(commands: dict[str, list[str]]) -> dict[str, str]:
    """The commands (argv after vLLM's entrypoint, by label) vLLM's serve parser rejects, with why."""
    done = subprocess.run(
        [weights.engine_python(), "-c", PARSE],
        input=json.dumps(commands),
        capture_output=True,
        check=False,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def every_command() -> dict[str, list[str]]:
    commands = {}
    for profile in PROFILES:
        for engine in catalogue_commands(catalogue.load(profile=profile), separate=True, enforce_eager=True):
            argv = engine.argv[engine.argv.index(ENTRYPOINT) + 1 :]
            commands[f"{profile}/{engine.names[0]}"] = argv
    return commands


def test_every_engine_command_of_every_profile_parses_with_vllms_own_parser() -> None:
    commands = every_command()
    assert {label.split("/")[0] for label in commands} == set(PROFILES) >= {"cpu", "gpu", "server", "server-256"}
    commands["a flag vLLM does not have"] = [*commands["server/phi-3-mini"], "--kv-cache-gib", "6"]
    commands["a dtype vLLM does not have"] = [*commands["server/hermes-2"], "--dtype", "int4"]
    rejected = vllm_rejects(commands)
    print(json.dumps(rejected, indent=1))
    assert set(rejected) == {"a flag vLLM does not have", "a dtype vLLM does not have"}
