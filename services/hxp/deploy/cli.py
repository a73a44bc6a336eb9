"""`hxp compose`, `hxp systemd` and `hxp backup`: the deployment commands."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from hxp.audit import operator
from hxp.audit.trail import AuditUnavailable
from hxp.core import catalogue, generated
from hxp.core.paths import PROJECT_ROOT, state_path
from hxp.deploy import backup, compose, envfiles, systemd


def _compose_generate(args: argparse.Namespace) -> int:
    out = Path(args.out)
    return generated.generate(
        out,
        args.check,
        lambda: compose.stale(out, args.catalogue),
        lambda: compose.write(out, args.catalogue),
        "hxp compose generate",
    )


def _compose_env(args: argparse.Namespace) -> int:
    created = envfiles.create(Path(args.env_dir))
    for path in created:
        print(f"created {path}")
    if not created:
        print("every env file exists already and .env names them; nothing changed")
    return 0


def _compose_cpus(args: argparse.Namespace) -> int:
    for task, cpus in compose.cpu_sets(sorted(os.sched_getaffinity(0))).items():
        print(f"{compose.cpus_variable(task)}={cpus}")
    return 0


def _systemd_generate(args: argparse.Namespace) -> int:
    cat = catalogue.load(args.catalogue, args.profile)
    install = systemd.Install.at(
        Path(args.prefix),
        args.user,
        args.group,
        Path(args.hxp) if args.hxp else None,
        Path(args.state_dir) if args.state_dir else None,
    )
    for path in systemd.write(Path(args.out), cat, install):
        print(f"wrote {path}")
    return 0


def _backups(args: argparse.Namespace) -> Path:
    return Path(args.out) if args.out else state_path("backups")


def _stores(args: argparse.Namespace) -> backup.Stores:
    return backup.Stores.from_compose() if args.compose else backup.Stores.from_environment()


def _backup_create(args: argparse.Namespace) -> int:
    stores = _stores(args)
    with operator.recorded(stores.database_url, "backup.create", str(_backups(args))) as details:
        details["folder"] = str(backup.create(stores, _backups(args)))
    print(details["folder"])
    return 0


def _backup_restore(args: argparse.Namespace) -> int:
    src = Path(args.path) if args.path else backup.latest(_backups(args))
    backup.read_manifest(src)  # not a backup: said before anything else
    stores = _stores(args)
    replaced = operator.head(stores.database_url)  # the restored chain goes back to the backup's: from where
    with operator.recorded(
        stores.database_url,
        "backup.restore",
        str(src),
        config=args.config,
        replaced_head=f"{replaced.seq}:{replaced.hash}",
    ):
        manifest = backup.restore(stores, src, config=args.config)
    print(
        f"restored {src} (database: {manifest['database']['dialect']}, qdrant: {manifest['qdrant']['mode']}"
        f"{', configuration' if args.config else ''})"
    )
    return 0


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Report a backup error (or an audit trail that cannot be written) as one line and exit status 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except backup.BackupError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        except AuditUnavailable as err:
            print(f"error: refused: the audit trail cannot be written ({err})", file=sys.stderr)
            return 1

    return run


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compose", help="the Docker Compose files and their env files")
    csub = p.add_subparsers(dest="compose_command", required=True)
    g = csub.add_parser("generate", help="write compose.yaml, compose.gpu.yaml and compose.dev.yaml from the catalogue")
    g.add_argument("--check", action="store_true", help="only report (exit 1) when the files differ")
    g.add_argument("--out", default=str(PROJECT_ROOT), help="folder of the compose files (default: the project)")
    g.add_argument("--catalogue", help="catalogue file (default: HXP_CATALOGUE or models.yaml)")
    g.set_defaults(func=_compose_generate)
    e = csub.add_parser("env", help="create env/*.env from the examples with fresh secrets (never overwrites)")
    e.add_argument("--env-dir", default=str(PROJECT_ROOT / "env"))
    e.set_defaults(func=_compose_env)
    c = csub.add_parser(
        "cpus",
        help="the development engines' CPU sets on this machine, as VAR=cpus lines "
        "for compose.dev.yaml (make dev uses them)",
    )
    c.set_defaults(func=_compose_cpus)

    p = sub.add_parser("systemd", help="systemd units for hosts without Docker")
    ssub = p.add_subparsers(dest="systemd_command", required=True)
    g = ssub.add_parser("generate", help="write one unit per model, the gateway's and hxp.target")
    g.add_argument("--out", required=True, help="folder for the unit files (e.g. /etc/systemd/system)")
    g.add_argument("--prefix", default=str(PROJECT_ROOT), help="the installed project (default: this checkout)")
    g.add_argument("--profile", help="catalogue profile (default: HXP_PROFILE or cpu)")
    g.add_argument("--catalogue", help="catalogue file (default: HXP_CATALOGUE or models.yaml)")
    g.add_argument("--user", default="hxp", help="the account the services run as (default: hxp)")
    g.add_argument("--group", help="its group (default: the user's name)")
    g.add_argument("--hxp", help="the hxp command (default: PREFIX/.venv/bin/hxp)")
    g.add_argument("--state-dir", help="writable state folder (default: PREFIX/.state)")
    g.set_defaults(func=_systemd_generate)

    p = sub.add_parser("backup", help="back up and restore the database, Qdrant and the configuration")
    bsub = p.add_subparsers(dest="backup_command", required=True)
    for name, func, helptext in (
        ("create", _backup_create, "write a new backup folder"),
        ("restore", _backup_restore, "restore a backup (default: the newest)"),
    ):
        b = bsub.add_parser(name, help=helptext)
        b.add_argument("--out", help="folder of the backups (default: .state/backups)")
        b.add_argument(
            "--compose",
            action="store_true",
            help="the compose stack's stores (credentials from env/postgres.env, published ports)",
        )
        b.set_defaults(func=_guard(func))
        if name == "restore":
            b.add_argument("path", nargs="?", help="the backup folder")
            b.add_argument("--config", action="store_true", help="also put the configuration files back")
