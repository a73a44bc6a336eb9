"""`hxp run`: the whole stack natively, without Docker or a GPU.

Prepares the packaged weights, starts the model engines and the gateway, waits
until all are ready, prints the gateway URL and an API key, and stops everything
(each child's whole process group) on Ctrl-C or SIGTERM, or as soon as one of
them dies.

By default models with the same deployment share one engine: on the cpu profile
one SmolLM2 engine answers the four chat names (~3.8 GiB) next to the embedding
engine (~2 GiB), which fits a 16 GiB machine. ``--separate`` starts one engine
per model on its own catalogue port instead.

On a CPU profile each engine and the gateway are pinned to their own cores, computed
from the cores this process may use (hxp.model.placement), so that engines do not
bind their threads to the same core and starve each other.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

from hxp.core import catalogue
from hxp.core.catalogue import Catalogue
from hxp.core.paths import state_dir, state_path
from hxp.lifecycle import native
from hxp.model.command import EngineCommand, catalogue_commands, engine_groups, planned_placement
from hxp.model.placement import Placement, describe, place
from hxp.model.service import READY_TIMEOUT_S, Engine
from hxp.process import Service, ServiceError, StopRequest, stop_all, wait_all_ready

KEY_ALIAS = "local-dev"


def master_key_file() -> Path:
    """Where the native stack keeps its master key when HXP_MASTER_KEY is not set."""
    return state_dir() / "master.key"


def master_key() -> str:
    """HXP_MASTER_KEY, else the one kept in the state directory (created once, mode 0600)."""
    if os.environ.get("HXP_MASTER_KEY"):
        return os.environ["HXP_MASTER_KEY"]
    path = master_key_file()
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write("sk-hxp-" + secrets.token_hex(24) + "\n")
    return path.read_text().strip()


def check_ports_free(host: str, ports: list[int]) -> None:
    for port in ports:
        with socket.socket() as s:
            if s.connect_ex((host, port)) == 0:
                raise SystemExit(f"port {port} on {host} is already in use (another engine or gateway?)")


def prepare(cat: Catalogue) -> None:
    """Prepare the packaged weights and make the quantized ones the profile names."""
    from hxp.model import quantize
    from hxp.model.weights import engine_python

    argv = [engine_python(), "-m", "hxp.model.weights", "--catalogue", str(cat.path), "--profile", cat.profile]
    subprocess.run(argv, check=True)
    if any(m.quantization for m in cat.models):
        code = quantize.run(catalogue_path=str(cat.path), profile=cat.profile)
        if code:
            raise subprocess.CalledProcessError(code, "hxp quantize")


def backends(engines: list[EngineCommand]) -> dict[str, list[str]]:
    """The gateway's HXP_BACKENDS: each model name to the OpenAI base URL of the engine serving it."""
    return {name: [f"{cmd.base_url}/v1"] for cmd in engines for name in cmd.names}


def gateway_service(host: str, port: int, env: dict[str, str], log: Path, cpus: tuple[int, ...] = ()) -> Service:
    argv = [sys.executable, "-m", "hxp.cli", "gateway", "serve", "--host", host, "--port", str(port)]
    return Service(f"gateway :{port}", argv, env, log, cpus)


def placement(cat: Catalogue, separate: bool) -> Placement | None:
    """On a CPU profile, the cores of each engine and of the gateway among those we may use."""
    if cat.profile_settings.device != "cpu":
        return None
    if cat.profile_settings.machine is not None:
        planned = planned_placement(cat)
        missing = {c for cores in (*planned.engines, planned.gateway) for c in cores} - os.sched_getaffinity(0)
        if missing:
            raise SystemExit(
                f"profile '{cat.profile}' is planned for cores this machine does not give us "
                f"({', '.join(map(str, sorted(missing)))}): see `hxp plan --here --profile {cat.profile}`"
            )
        return planned
    return place(os.sched_getaffinity(0), [group[0].task for group in engine_groups(cat.models, separate)])


def api_key(env: dict[str, str]) -> str:
    """A usable API key: create the local-dev key, or give it a new secret when it already exists."""
    hxp = [sys.executable, "-m", "hxp.cli", "keys"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*hxp, *args], env={**os.environ, **env}, capture_output=True, text=True)

    result = run("create", "--alias", KEY_ALIAS)
    if result.returncode != 0:
        result = run("rotate", KEY_ALIAS)
    if result.returncode != 0:
        raise ServiceError(f"could not create an API key: {result.stderr.strip()}")
    return json.loads(result.stdout)["key"]


def run(
    cat: Catalogue, *, separate: bool, enforce_eager: bool, host: str, port: int, timeout: float = READY_TIMEOUT_S
) -> int:
    stop = StopRequest()
    cores = placement(cat, separate)
    commands = catalogue_commands(cat, separate=separate, enforce_eager=enforce_eager, placement=cores)
    check_ports_free("127.0.0.1", [c.port for c in commands] + [port])
    try:
        prepare(cat)
    except subprocess.CalledProcessError as err:
        print(f"[run] preparing the weights failed (exit code {err.returncode})", file=sys.stderr)
        return 1
    logs = state_path("logs")
    engines = [Engine(cmd, logs / f"engine-{cmd.log_name}.log") for cmd in commands]
    env = {
        "HXP_MASTER_KEY": master_key(),
        "HXP_BACKENDS": json.dumps(backends(commands)),
        "HXP_CATALOGUE": str(cat.path),
        "HXP_PROFILE": cat.profile,
    }
    gateway = gateway_service(host, port, env, logs / "gateway.log", cores.gateway if cores else ())
    services: list[Service] = [*engines, gateway]
    gateway_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '') else host}:{port}"
    if cores is not None:
        for line in describe(cores, [f"engine {cmd.log_name}" for cmd in commands]):
            print(f"[run] {line}", flush=True)
    try:
        native.begin(cat.path)
        for engine in engines:
            print(f"[run] starting {engine.name} (log: {engine.log})", flush=True)
            engine.start()
        print(f"[run] starting {gateway.name} (log: {gateway.log})", flush=True)
        gateway.start()
        checks = [(e, f"{e.base_url}/health") for e in engines] + [(gateway, f"{gateway_url}/health/readiness")]
        if not wait_all_ready(checks, timeout, stop):
            return 0
        key = api_key(env)
        model = cat.chat_models[0].name if cat.chat_models else cat.models[0].name
        print(
            f"""
[run] ready: {gateway_url}/v1  (models: {", ".join(cat.names)})
[run] API key: {key}
[run] try:  curl -s {gateway_url}/v1/chat/completions -H 'Authorization: Bearer {key}' \\
              -H 'Content-Type: application/json' \\
              -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Hello!"}}]}}'
[run] Ctrl-C stops everything.""",
            flush=True,
        )
        while not stop:
            for dead in [s for s in services if not s.alive()]:
                if not (isinstance(dead, Engine) and native.replaced(dead.base_url, dead.names)):
                    raise ServiceError(f"{dead.name} exited unexpectedly\n{dead.log_tail()}")
                print(f"[run] {dead.name} was replaced by `hxp model update`", flush=True)
                services.remove(dead)
            stop.sleep(1.0)
        return 0
    except ServiceError as err:
        print(f"[run] {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        print("[run] stopping", flush=True)
        stop_all([gateway, *engines])
        native.stop_replacements([e.base_url for e in engines])
        print("[run] stopped", flush=True)


def _run(args: argparse.Namespace) -> int:
    cat = catalogue.load(args.catalogue, args.profile)
    return run(cat, separate=args.separate, enforce_eager=not args.compile, host=args.host, port=args.port)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="serve the stack natively: model engines + gateway (Ctrl-C stops all)")
    p.add_argument(
        "--separate",
        action="store_true",
        help="one engine per model on its catalogue port (default: models with the same "
        "deployment share one engine; ~4 GiB each on CPU)",
    )
    p.add_argument(
        "--compile", action="store_true", help="let vLLM compile its graphs (slower start; default is --enforce-eager)"
    )
    p.add_argument("--host", default="127.0.0.1", help="gateway address (engines stay on 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="gateway port")
    p.add_argument("--catalogue", help="catalogue file (default: HXP_CATALOGUE or models.yaml)")
    p.add_argument("--profile", help="profile (default: HXP_PROFILE or cpu)")
    p.set_defaults(func=_run)
