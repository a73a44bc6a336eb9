"""`hxp config history|diff|apply|rollback` and `hxp model update NAME`: change the stack without downtime.

``apply`` validates the catalogue file, prints the plan (engines started, stopped, replaced or kept; gateway
settings changed) and refuses, saying what to fix, before anything is touched. Then it stores the catalogue as
a new version (the gateways reload it within seconds), starts the new engines, replaces the changed ones one by
one (:mod:`hxp.lifecycle.rolling`) and stops the removed ones. If a replacement rolls back, the previous
catalogue is restored (file and live version) and the command exits 1. ``rollback`` applies a stored version
again, writing it back to the catalogue file byte for byte. ``--compose`` acts on the running compose stack
(:mod:`hxp.lifecycle.compose`: its database at its published port, its engines as containers); ``apply``
there regenerates the compose files from the catalogue and replaces the changed engine services.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path

from hxp.audit import operator
from hxp.audit.trail import AuditUnavailable
from hxp.core import catalogue
from hxp.core.catalogue import CatalogueError
from hxp.core.paths import state_path
from hxp.core.versions import ConfigStore, Version, VersionError, unified_diff
from hxp.deploy import compose as stack_files
from hxp.deploy import published
from hxp.lifecycle import compose as compose_runner
from hxp.lifecycle import plan as planning
from hxp.lifecycle import rolling
from hxp.lifecycle.native import NativeRunner
from hxp.model.command import engine_command
from hxp.model.service import Engine


def _file(args: argparse.Namespace) -> Path:
    return Path(args.catalogue or os.environ.get("HXP_CATALOGUE") or catalogue.DEFAULT_PATH)


def _profile(args: argparse.Namespace) -> str:
    """--profile, else the compose gateway's (with --compose), else HXP_PROFILE or cpu."""
    if args.profile:
        return str(args.profile)
    return (compose_runner.profile() if getattr(args, "compose", False) else None) or catalogue.active_profile()


def _runner(args: argparse.Namespace, cat: catalogue.Catalogue) -> rolling.Runner:
    return compose_runner.ComposeRunner(cat) if getattr(args, "compose", False) else NativeRunner()


def _options(args: argparse.Namespace) -> rolling.Options:
    return rolling.Options(
        watch_s=args.watch,
        max_error_rate=args.max_error_rate,
        drain_s=args.drain,
        canary_prompt=args.canary_prompt,
        canary_expect=args.canary_expect,
    )


def _start(change: planning.EngineChange, cat: catalogue.Catalogue, store: ConfigStore) -> None:
    command = engine_command(change.models, cat.profile_settings, port=change.port, enforce_eager=True)
    engine = Engine(command, state_path("logs") / f"engine-{command.log_name}.log").start()
    store.log(f"engine {command.log_name}", "engine-started", f"{command.base_url} pid {engine.pid}")
    engine.wait_healthy()
    store.log(f"engine {command.log_name}", "engine-healthy", command.base_url)


def _stop(change: planning.EngineChange, urls: list[str], store: ConfigStore, runner: rolling.Runner) -> None:
    runner.stop(urls)
    store.log(f"engine {change.names[0]}", "engine-stopped", " ".join(urls))


def apply_text(
    store: ConfigStore,
    text: str,
    file: Path,
    profile: str,
    action: str,
    options: rolling.Options,
    runner: Callable[[catalogue.Catalogue], rolling.Runner],
    dry_run: bool = False,
) -> int:
    """Validate, plan, check and (unless ``dry_run``) apply a catalogue's text with the stack's ``runner``; the
    exit code."""
    try:
        new = planning.load_text(text, profile, file)
        latest = store.latest()
        old = planning.load_text(latest.catalogue, profile, file) if latest else new
        plan = planning.plan(old, new)
        print(plan.render(), flush=True)
        engines = runner(new)
        current = {
            c.names: rolling.current_urls(store, old.get(c.names[0]), engines.template)
            for c in plan.of("replace", "stop")
        }
        if isinstance(engines, compose_runner.ComposeRunner):
            compose_runner.check_plan(plan, engines, current)
        else:
            planning.check(plan)
    except (CatalogueError, planning.Refused) as err:
        print(f"refused, nothing changed: {err}", file=sys.stderr)
        return 2
    if dry_run:
        print("dry run: nothing changed")
        return 0
    composed = isinstance(engines, compose_runner.ComposeRunner)
    running = composed or any(
        rolling.listener(rolling.port_of(url))
        for urls in [
            *current.values(),
            *(rolling.current_urls(store, c.models[0], engines.template) for c in plan.of("stay")),
        ]
        for url in urls
    )
    if not running:
        print("no engine of this catalogue is running: the stack starts with it next time", flush=True)
    for change in plan.of("start") if running else []:
        _start(change, new, store)
    if file.read_bytes() != text.encode():
        file.write_bytes(text.encode())
    if composed:
        written = stack_files.write(catalogue_path=file)
        print(f"compose files regenerated: {' '.join(p.name for p in written) or 'none changed'}", flush=True)
    version = store.record(text, action)
    print(f"v{version.version} live (sha256 {version.sha256[:12]}): the gateways reload it within seconds", flush=True)
    for change in plan.of("stop") if running else []:
        _stop(change, current[change.names], store, engines)
    for change in plan.of("replace") if running else []:
        try:
            rolling.Update(store, new, change.models, current[change.names], options, engines).run()
        except rolling.UpdateFailed as err:
            assert latest is not None  # a replacement needs an engine of a previous version
            file.write_bytes(latest.catalogue.encode())
            if composed:
                stack_files.write(catalogue_path=file)
            back = store.record(latest.catalogue, f"auto-rollback to v{latest.version}")
            print(f"update rolled back ({err}); v{back.version} restores v{latest.version}", file=sys.stderr)
            return 1
    return 0


def _store(args: argparse.Namespace) -> ConfigStore:
    """The configured database's store; with --compose, the compose stack's PostgreSQL at its published port."""
    try:
        return ConfigStore.open(published.database_url() if getattr(args, "compose", False) else None)
    except published.PublishedError as err:
        raise SystemExit(f"refused, nothing changed: {err}") from None


def _audited(store: ConfigStore, action: str, target: str, dry_run: bool, change: Callable[[], int]) -> int:
    """Run a configuration change as one audited action (hxp.audit); a dry run changes nothing and is not one.
    Refused, changing nothing, when the audit trail cannot be written."""
    if dry_run:
        return change()
    try:
        with operator.recorded(store.db.url, action, target) as details:
            details["exit_status"] = code = change()
    except AuditUnavailable as err:
        print(f"refused, nothing changed: the audit trail cannot be written ({err})", file=sys.stderr)
        return 1
    return code


def _apply(args: argparse.Namespace) -> int:
    file = _file(args)
    store = _store(args)
    try:
        return _audited(
            store,
            "config.apply",
            str(file),
            args.dry_run,
            lambda: apply_text(
                store,
                file.read_text(),
                file,
                _profile(args),
                "apply",
                _options(args),
                partial(_runner, args),
                args.dry_run,
            ),
        )
    finally:
        store.close()


def _rollback(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        latest = store.latest()
        target = store.get(args.version if args.version else (latest.version - 1 if latest else 0))
        return _audited(
            store,
            "config.rollback",
            f"v{target.version}",
            args.dry_run,
            lambda: apply_text(
                store,
                target.catalogue,
                _file(args),
                _profile(args),
                f"rollback to v{target.version}",
                _options(args),
                partial(_runner, args),
                args.dry_run,
            ),
        )
    except VersionError as err:
        print(err, file=sys.stderr)
        return 2
    finally:
        store.close()


def _line(v: Version) -> str:
    added = sum(1 for line in v.diff.splitlines() if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in v.diff.splitlines() if line.startswith("-") and not line.startswith("---"))
    return (
        f"v{v.version:<4} {v.applied_at:%Y-%m-%d %H:%M:%S} {v.author:<14} {v.sha256[:12]} "
        f"+{added}/-{removed}  {v.action}"
    )


def _history(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        for version in store.history(args.limit):
            print(_line(version))
            for event in store.events(version.version) if args.steps else []:
                print(f"        {str(event['at'])[:19]} {event['subject']}: {event['step']} {event['detail']}")
        for event in store.updates_in_progress():
            print(f"in progress: {event['subject']} ({event['step']} at {str(event['at'])[:19]})")
        return 0
    finally:
        store.close()


def _diff(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        if len(args.versions) > 2:
            raise VersionError("give at most two versions")
        latest = store.latest()
        if not args.versions:
            file = _file(args)
            old = latest.catalogue if latest else ""
            print(
                unified_diff(old, file.read_text(), f"v{latest.version}" if latest else "/dev/null", str(file)), end=""
            )
            return 0
        a = store.get(args.versions[0])
        b = store.get(args.versions[1]) if len(args.versions) == 2 else latest
        assert b is not None
        print(unified_diff(a.catalogue, b.catalogue, f"v{a.version}", f"v{b.version}"), end="")
        return 0
    except VersionError as err:
        print(err, file=sys.stderr)
        return 2
    finally:
        store.close()


def _update(args: argparse.Namespace) -> int:
    store = _store(args)
    try:
        file = _file(args)
        cat = catalogue.load(file, _profile(args))
        models = rolling.engine_of(cat, args.name)
        engines = _runner(args, cat)
        old_urls = rolling.current_urls(store, models[0], engines.template)
        engines.check(models, old_urls)

        def update() -> int:
            if store.live() is None:  # the stack's catalogue, recorded once (`hxp run` does it at start)
                store.record(file.read_text(), "stack")
            rolling.Update(store, cat, models, old_urls, _options(args), engines).run()
            return 0

        return _audited(store, "model.update", args.name, False, update)
    except (CatalogueError, planning.Refused) as err:
        print(f"refused, nothing changed: {err}", file=sys.stderr)
        return 2
    except rolling.UpdateFailed as err:
        print(f"update rolled back: {err}", file=sys.stderr)
        return 1
    finally:
        store.close()


def _add_update_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--watch", type=float, default=60.0, help="seconds to watch the new engine (default 60)")
    p.add_argument(
        "--max-error-rate",
        type=float,
        default=0.05,
        help="share of server errors over the watch that rolls back (default 0.05)",
    )
    p.add_argument("--drain", type=float, default=60.0, help="longest wait for the old engine's requests")
    p.add_argument("--canary-prompt", default=rolling.CANARY_PROMPT)
    p.add_argument("--canary-expect", default=rolling.CANARY_EXPECT, help="text the canary answer must hold")


def _add_file_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--catalogue", help="catalogue file (default: HXP_CATALOGUE or models.yaml)")
    p.add_argument("--profile", help="profile (default: the compose gateway's with --compose, else HXP_PROFILE or cpu)")
    p.add_argument(
        "--compose",
        action="store_true",
        help="the running compose stack (its database at its published port, its engines as containers)",
    )


def register(sub: argparse._SubParsersAction) -> None:
    config = sub.add_parser("config", help="versioned configuration: history, diff, apply, rollback")
    actions = config.add_subparsers(dest="action", required=True)
    history = actions.add_parser("history", help="the catalogues applied, newest first")
    history.add_argument("--limit", type=int, default=20)
    history.add_argument("--steps", action="store_true", help="each version's logged steps too")
    history.add_argument("--compose", action="store_true", help="the running compose stack's database")
    history.set_defaults(func=_history)
    diff = actions.add_parser("diff", help="no version: last applied vs the file; A: A vs last; A B: A vs B")
    diff.add_argument("versions", nargs="*", type=int, metavar="VERSION")
    diff.set_defaults(func=_diff)
    apply = actions.add_parser("apply", help="validate, plan and apply the catalogue file without downtime")
    apply.set_defaults(func=_apply)
    rollback = actions.add_parser("rollback", help="apply a stored version again (default: the one before)")
    rollback.add_argument("version", nargs="?", type=int)
    rollback.set_defaults(func=_rollback)
    for p in (apply, rollback):
        p.add_argument("--dry-run", action="store_true", help="validate and print the plan only")
        _add_update_flags(p)
    for p in (diff, apply, rollback):
        _add_file_flags(p)
    model = next(a for a in sub.choices["model"]._actions if isinstance(a, argparse._SubParsersAction))
    update = model.add_parser("update", help="replace a model's engine without downtime (rolled back on failure)")
    update.add_argument("name", metavar="NAME")
    update.set_defaults(func=_update)
    _add_update_flags(update)
    _add_file_flags(update)
