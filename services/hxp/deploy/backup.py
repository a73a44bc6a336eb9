"""`hxp backup create|restore`: the SQL store, Qdrant and the configuration in one folder.

A backup is a folder ``hxp-backup-<UTC time>/`` holding ``manifest.json`` and

* ``database.pgdump`` (``pg_dump --format=custom``) when DATABASE_URL is PostgreSQL,
  or ``database.sqlite3`` (an online copy through SQLite's backup API);
* ``qdrant/``: in local-path mode a copy of the storage folder, in server mode one
  ``<collection>.snapshot`` per collection taken through Qdrant's snapshot API;
* ``config/``: models.yaml, the vector collections, env/*.env (secrets: the folder is
  private to its owner), prometheus/ and grafana/.

Restore puts the database and Qdrant back (``pg_restore --clean``, the SQLite file,
the storage folder or the snapshots uploaded); configuration only with ``--config``.
Stop the gateway first: the stores are replaced, not merged.

Safety: ``pg_dump``/``pg_restore`` get the password through a passfile (mode 0600 in a
private temporary folder, removed afterwards), never on their command line, where
every local user could read it. Restore checks every path of the manifest before it
changes anything: each must stay inside the backup folder (and the project, for the
configuration). A local Qdrant folder is copied next to the live one and swapped in,
so a copy that fails leaves the live data as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any, cast
from urllib.parse import quote

import httpx

from hxp.core.paths import PROJECT_ROOT

CONFIG_PATHS = ("models.yaml", "services/hxp/vector/collections.yaml", "env", "prometheus", "grafana")
MANIFEST = "manifest.json"
SNAPSHOT_SUFFIX = ".snapshot"
DIALECT_FILES = {"postgresql": "database.pgdump", "sqlite": "database.sqlite3"}
# Never handed to pg_dump/pg_restore: the password travels in the passfile only.
_SECRET_ENVIRONMENT = ("PGPASSWORD", "DATABASE_URL", "HXP_DATABASE_URL")


class BackupError(RuntimeError):
    """A backup or restore step failed; the message says which and why."""


@dataclass(frozen=True)
class Stores:
    """What to back up: the SQL store's URL and Qdrant's location (a URL or a local folder)."""

    database_url: str
    qdrant_url: str | None = None
    qdrant_path: Path | None = None
    qdrant_api_key: str | None = None
    project: Path = field(default=PROJECT_ROOT)

    @classmethod
    def from_environment(cls) -> Stores:
        """DATABASE_URL (or the SQLite default) and QDRANT_URL / QDRANT_PATH, as the gateway reads them."""
        from hxp.core import settings
        from hxp.core.stores import qdrant_location

        where = qdrant_location()
        return cls(
            settings.load().database_url,
            where.get("url"),
            Path(where["path"]) if "path" in where else None,
            where.get("api_key"),
        )

    @classmethod
    def from_compose(cls, project: Path = PROJECT_ROOT) -> Stores:
        """The running compose stack's PostgreSQL, and its Qdrant when the stack has one, at the addresses
        Docker publishes them on; the credentials from the stack's env files (hxp.deploy.published)."""
        from hxp.deploy import published

        try:
            return cls(published.database_url(project), qdrant_url=published.qdrant_url(project), project=project)
        except published.PublishedError as err:
            raise BackupError(str(err)) from None


# --- the SQL store ------------------------------------------------------------------


def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise BackupError(f"unsupported DATABASE_URL scheme (use postgresql:// or sqlite:///): {url.split(':')[0]}")
    return Path(url[len("sqlite:///") :])


def _passfile_field(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextmanager
def _libpq(url: str) -> Iterator[tuple[str, dict[str, str]]]:
    """The connection string without its password, and an environment that gives libpq the password
    through a passfile (mode 0600, in a private temporary folder removed afterwards)."""
    from psycopg import Error as PsycopgError
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        params = conninfo_to_dict(url)
    except PsycopgError:
        raise BackupError("DATABASE_URL is not a valid PostgreSQL URL") from None
    password = params.pop("password", None)
    env = {k: v for k, v in os.environ.items() if k not in _SECRET_ENVIRONMENT}
    if password is None:
        yield make_conninfo("", **params), env
        return
    folder = Path(tempfile.mkdtemp(prefix="hxp-pgpass-"))  # mode 0700
    try:
        passfile = folder / "pgpass"
        with os.fdopen(os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(f"*:*:*:*:{_passfile_field(str(password))}\n")
        yield make_conninfo("", **params), {**env, "PGPASSFILE": str(passfile)}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_libpq(program: str, args: list[str], url: str) -> None:
    """Run a PostgreSQL client program on ``url``; the password never appears on its command line."""
    binary = shutil.which(program)
    if binary is None:
        raise BackupError(f"{program}: not found (install the PostgreSQL client)")
    with _libpq(url) as (conninfo, env):
        done = subprocess.run(
            [binary, "--no-password", *args, f"--dbname={conninfo}"], env=env, capture_output=True, text=True
        )
    if done.returncode != 0:
        raise BackupError(f"{program} failed: {done.stderr.strip()}")


def _sqlite_copy(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as source, sqlite3.connect(dst) as target:
        source.backup(target)


def backup_database(url: str, dest: Path) -> dict[str, str]:
    if _is_postgres(url):
        _run_libpq(
            "pg_dump",
            ["--format=custom", "--no-owner", "--no-privileges", f"--file={dest / DIALECT_FILES['postgresql']}"],
            url,
        )
        return {"dialect": "postgresql", "file": DIALECT_FILES["postgresql"]}
    path = _sqlite_path(url)
    if not path.exists():
        raise BackupError(f"SQLite database {path} does not exist")
    _sqlite_copy(path, dest / DIALECT_FILES["sqlite"])
    return {"dialect": "sqlite", "file": DIALECT_FILES["sqlite"]}


def restore_database(url: str, file: Path, dialect: str) -> None:
    if dialect == "postgresql":
        if not _is_postgres(url):
            raise BackupError("the backup holds a PostgreSQL dump but DATABASE_URL is not postgresql://")
        _run_libpq(
            "pg_restore",
            ["--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction", str(file)],
            url,
        )
        return
    path = _sqlite_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    _sqlite_copy(file, path)


# --- Qdrant ---------------------------------------------------------------------------


def _qdrant(stores: Stores) -> httpx.Client:
    headers = {"api-key": stores.qdrant_api_key} if stores.qdrant_api_key else {}
    return httpx.Client(base_url=stores.qdrant_url or "", headers=headers, timeout=600)


def _check(response: httpx.Response, what: str) -> httpx.Response:
    if response.is_error:
        raise BackupError(f"Qdrant {what}: HTTP {response.status_code} {response.text[:300]}")
    return response


def backup_qdrant(stores: Stores, dest: Path) -> dict[str, object]:
    folder = dest / "qdrant"
    if stores.qdrant_url:
        folder.mkdir()
        with _qdrant(stores) as client:
            names = [
                c["name"]
                for c in _check(client.get("/collections"), "list collections").json()["result"]["collections"]
            ]
            for name in names:
                snap = _check(
                    client.post(f"/collections/{name}/snapshots", params={"wait": "true"}), f"snapshot of {name}"
                ).json()["result"]["name"]
                with client.stream("GET", f"/collections/{name}/snapshots/{snap}") as response:
                    _check(response, f"download of {name}/{snap}")
                    with (folder / f"{name}{SNAPSHOT_SUFFIX}").open("wb") as f:
                        for chunk in response.iter_bytes():
                            f.write(chunk)
                _check(client.delete(f"/collections/{name}/snapshots/{snap}"), f"cleanup of {name}/{snap}")
        return {"mode": "server", "collections": names}
    if stores.qdrant_path and stores.qdrant_path.is_dir():
        shutil.copytree(stores.qdrant_path, folder, ignore=shutil.ignore_patterns(".lock"))
        return {"mode": "local"}
    return {"mode": "none"}


def _replace_folder(source: Path, target: Path) -> None:
    """Copy ``source`` next to ``target``, then swap it in: a copy that fails leaves ``target`` as it was."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.restore-", dir=target.parent))
    try:
        fresh, old = staging / "new", staging / "old"
        try:
            shutil.copytree(source, fresh)
        except shutil.Error as exc:
            src_file, _, why = exc.args[0][0]
            raise BackupError(f"copying {source} failed at {src_file} ({why}); {target} was left as it was") from None
        except OSError as exc:
            raise BackupError(f"copying {source} failed ({exc}); {target} was left as it was") from None
        if target.exists():
            target.rename(old)
        try:
            fresh.rename(target)
        except OSError:
            if old.exists():
                old.rename(target)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def restore_qdrant(stores: Stores, folder: Path, entry: dict[str, object]) -> None:
    if entry["mode"] == "server":
        if not stores.qdrant_url:
            raise BackupError("the backup holds Qdrant snapshots but QDRANT_URL is not set")
        with _qdrant(stores) as client:
            for name in cast("list[object]", entry["collections"]):  # a list: plan() checked it
                with (folder / f"{name}{SNAPSHOT_SUFFIX}").open("rb") as f:
                    _check(
                        client.post(
                            f"/collections/{quote(str(name), safe='')}/snapshots/upload",
                            params={"priority": "snapshot", "wait": "true"},
                            files={"snapshot": (f"{name}{SNAPSHOT_SUFFIX}", f)},
                        ),
                        f"restore of {name}",
                    )
    elif entry["mode"] == "local":
        if stores.qdrant_path is None:
            raise BackupError("the backup holds a local Qdrant folder but QDRANT_PATH is not set")
        _replace_folder(folder, stores.qdrant_path)


# --- configuration ----------------------------------------------------------------------


def backup_config(project: Path, dest: Path) -> list[str]:
    saved = []
    for rel in CONFIG_PATHS:
        source = project / rel
        target = dest / "config" / rel
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif source.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
        else:
            continue
        saved.append(rel)
    return saved


def restore_config(files: list[tuple[Path, Path]]) -> None:
    for source, target in files:
        if source.is_dir():
            shutil.copytree(source, target, dirs_exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)


# --- checking a manifest before anything is restored ---------------------------------------


def _inside(base: Path, rel: object, what: str) -> Path:
    """``base / rel``, when ``rel`` is a relative path that stays inside ``base`` (symbolic links resolved)."""
    if not isinstance(rel, str) or not rel:
        raise BackupError(f"the manifest's {what} is not a path: {rel!r}")
    path = PurePosixPath(rel)
    if path.is_absolute() or ".." in path.parts:
        raise BackupError(
            f"the manifest's {what} {rel!r} points outside {base}: only relative paths without '..' "
            "are restored (was the manifest edited?)"
        )
    if not (base / path).resolve().is_relative_to(base.resolve()):
        raise BackupError(f"the manifest's {what} {rel!r} leads outside {base} through a symbolic link")
    return base / path


@dataclass(frozen=True)
class RestorePlan:
    """What a restore reads and writes, every path checked."""

    dialect: str
    database_file: Path
    qdrant: dict[str, object]
    qdrant_folder: Path
    config: list[tuple[Path, Path]]  # (in the backup, in the project)


def plan(manifest: dict[str, object], src: Path, project: Path) -> RestorePlan:
    """Check the manifest's paths: each must stay in the backup folder, and the configuration in the project."""
    database = manifest.get("database")
    qdrant = manifest.get("qdrant")
    if not isinstance(database, dict) or database.get("dialect") not in DIALECT_FILES:
        raise BackupError(f"the manifest's database entry is not understood: {database!r}")
    if not isinstance(qdrant, dict) or qdrant.get("mode") not in ("server", "local", "none"):
        raise BackupError(f"the manifest's qdrant entry is not understood: {qdrant!r}")
    folder = _inside(src, "qdrant", "Qdrant folder")
    if qdrant["mode"] == "server":
        if not isinstance(qdrant.get("collections"), list):
            raise BackupError("the manifest's qdrant entry lists no collections")
        for name in qdrant["collections"]:
            _inside(folder, f"{name}{SNAPSHOT_SUFFIX}", "Qdrant snapshot")
    saved = manifest.get("config") or []
    if not isinstance(saved, list):
        raise BackupError(f"the manifest's configuration entry is not a list: {saved!r}")
    config = []
    for rel in saved:
        source = _inside(src / "config", rel, "configuration path")
        target = _inside(project, rel, "configuration path")
        if rel not in CONFIG_PATHS:
            raise BackupError(
                f"the manifest's configuration path {rel!r} is not one that backups hold ({', '.join(CONFIG_PATHS)})"
            )
        config.append((source, target))
    return RestorePlan(database["dialect"], _inside(src, database.get("file"), "database file"), qdrant, folder, config)


# --- the two commands ------------------------------------------------------------------


def create(stores: Stores, out: Path) -> Path:
    """Back everything up into a new folder under ``out``; returns it."""
    dest = out / f"hxp-backup-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    dest.mkdir(parents=True)
    os.chmod(dest, 0o700)
    try:
        manifest = {
            "created_at": datetime.now(UTC).isoformat(),
            "database": backup_database(stores.database_url, dest),
            "qdrant": backup_qdrant(stores, dest),
            "config": backup_config(stores.project, dest),
        }
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return dest


def read_manifest(src: Path) -> dict[str, Any]:
    """The manifest of the backup folder ``src`` (BackupError when it is not one)."""
    manifest_file = src / MANIFEST
    if not manifest_file.is_file():
        raise BackupError(f"{src} is not a backup (no {MANIFEST})")
    manifest: dict[str, Any] = json.loads(manifest_file.read_text())
    return manifest


def restore(stores: Stores, src: Path, config: bool = False) -> dict[str, Any]:
    """Restore the database and Qdrant (and the configuration if asked) from a backup folder."""
    manifest = read_manifest(src)
    checked = plan(manifest, src, stores.project)
    restore_database(stores.database_url, checked.database_file, checked.dialect)
    restore_qdrant(stores, checked.qdrant_folder, checked.qdrant)
    if config:
        restore_config(checked.config)
    return manifest


def latest(out: Path) -> Path:
    """The newest backup folder under ``out``."""
    found = sorted(p for p in out.glob("hxp-backup-*") if (p / MANIFEST).is_file())
    if not found:
        raise BackupError(f"no backup under {out}")
    return found[-1]
