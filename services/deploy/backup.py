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
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import httpx

from hxp.paths import PROJECT_ROOT

CONFIG_PATHS = ("models.yaml", "services/vector/collections.yaml", "env", "prometheus", "grafana")
MANIFEST = "manifest.json"
SNAPSHOT_SUFFIX = ".snapshot"


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
        from hxp.gateway.database import default_url
        from hxp.vector.config import qdrant_location

        where = qdrant_location()
        return cls(default_url(), where.get("url"), Path(where["path"]) if "path" in where else None,
                   where.get("api_key"))

    @classmethod
    def from_compose(cls, project: Path = PROJECT_ROOT) -> Stores:
        """The running compose stack's PostgreSQL, and its Qdrant when the stack has one, at the addresses
        Docker publishes them on; the credentials from the stack's env files (hxp.deploy.envfiles.env_dir)."""
        from hxp.deploy import running
        from hxp.deploy.envfiles import assignments, env_dir

        env_file = env_dir(project) / "postgres.env"
        if not env_file.is_file():
            raise BackupError(f"{env_file} is missing: the compose stack's credentials live there (make env)")
        pg = assignments(env_file.read_text())
        try:
            url = (f"postgresql://{pg['POSTGRES_USER']}:{pg['POSTGRES_PASSWORD']}@"
                   f"{running.address('postgres', 5432, project)}/{pg['POSTGRES_DB']}")
            qdrant = (f"http://{running.address('qdrant', 6333, project)}"
                      if "qdrant" in running.services(project) else None)
        except running.ComposeError as err:
            raise BackupError(str(err)) from None
        return cls(url, qdrant_url=qdrant, project=project)


# --- the SQL store ------------------------------------------------------------------

def _is_postgres(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def _sqlite_path(url: str) -> Path:
    if not url.startswith("sqlite:///"):
        raise BackupError(f"unsupported DATABASE_URL scheme (use postgresql:// or sqlite:///): {url.split(':')[0]}")
    return Path(url[len("sqlite:///"):])


def _run(cmd: list[str], what: str) -> None:
    binary = shutil.which(cmd[0])
    if binary is None:
        raise BackupError(f"{what}: {cmd[0]} not found (install the PostgreSQL client)")
    done = subprocess.run([binary, *cmd[1:]], capture_output=True, text=True)
    if done.returncode != 0:
        raise BackupError(f"{what} failed: {done.stderr.strip()}")


def _sqlite_copy(src: Path, dst: Path) -> None:
    with sqlite3.connect(src) as source, sqlite3.connect(dst) as target:
        source.backup(target)


def backup_database(url: str, dest: Path) -> dict[str, str]:
    if _is_postgres(url):
        _run(["pg_dump", "--format=custom", "--no-owner", "--no-privileges", f"--file={dest / 'database.pgdump'}",
              f"--dbname={url}"], "pg_dump")
        return {"dialect": "postgresql", "file": "database.pgdump"}
    path = _sqlite_path(url)
    if not path.exists():
        raise BackupError(f"SQLite database {path} does not exist")
    _sqlite_copy(path, dest / "database.sqlite3")
    return {"dialect": "sqlite", "file": "database.sqlite3"}


def restore_database(url: str, src: Path, entry: dict[str, str]) -> None:
    file = src / entry["file"]
    if entry["dialect"] == "postgresql":
        if not _is_postgres(url):
            raise BackupError("the backup holds a PostgreSQL dump but DATABASE_URL is not postgresql://")
        _run(["pg_restore", "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction",
              f"--dbname={url}", str(file)], "pg_restore")
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
            names = [c["name"] for c in _check(client.get("/collections"), "list collections").json()
                     ["result"]["collections"]]
            for name in names:
                snap = _check(client.post(f"/collections/{name}/snapshots", params={"wait": "true"}),
                              f"snapshot of {name}").json()["result"]["name"]
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


def restore_qdrant(stores: Stores, src: Path, entry: dict[str, object]) -> None:
    folder = src / "qdrant"
    if entry["mode"] == "server":
        if not stores.qdrant_url:
            raise BackupError("the backup holds Qdrant snapshots but QDRANT_URL is not set")
        with _qdrant(stores) as client:
            for name in entry["collections"]:  # type: ignore[union-attr]
                with (folder / f"{name}{SNAPSHOT_SUFFIX}").open("rb") as f:
                    _check(client.post(f"/collections/{name}/snapshots/upload",
                                       params={"priority": "snapshot", "wait": "true"},
                                       files={"snapshot": (f"{name}{SNAPSHOT_SUFFIX}", f)}), f"restore of {name}")
    elif entry["mode"] == "local":
        if stores.qdrant_path is None:
            raise BackupError("the backup holds a local Qdrant folder but QDRANT_PATH is not set")
        shutil.rmtree(stores.qdrant_path, ignore_errors=True)
        shutil.copytree(folder, stores.qdrant_path)


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


def restore_config(project: Path, src: Path, saved: list[str]) -> None:
    for rel in saved:
        source = src / "config" / rel
        if source.is_dir():
            shutil.copytree(source, project / rel, dirs_exist_ok=True)
        else:
            shutil.copy2(source, project / rel)


# --- the two commands ------------------------------------------------------------------

def create(stores: Stores, out: Path) -> Path:
    """Back everything up into a new folder under ``out``; returns it."""
    dest = out / f"hxp-backup-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%fZ}"
    dest.mkdir(parents=True)
    os.chmod(dest, 0o700)
    try:
        manifest = {
            "created_at": datetime.now(timezone.utc).isoformat(),
            "database": backup_database(stores.database_url, dest),
            "qdrant": backup_qdrant(stores, dest),
            "config": backup_config(stores.project, dest),
        }
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return dest


def restore(stores: Stores, src: Path, config: bool = False) -> dict[str, object]:
    """Restore the database and Qdrant (and the configuration if asked) from a backup folder."""
    manifest_file = src / MANIFEST
    if not manifest_file.is_file():
        raise BackupError(f"{src} is not a backup (no {MANIFEST})")
    manifest = json.loads(manifest_file.read_text())
    restore_database(stores.database_url, src, manifest["database"])
    restore_qdrant(stores, src, manifest["qdrant"])
    if config:
        restore_config(stores.project, src, manifest["config"])
    return manifest


def latest(out: Path) -> Path:
    """The newest backup folder under ``out``."""
    found = sorted(p for p in out.glob("hxp-backup-*") if (p / MANIFEST).is_file())
    if not found:
        raise BackupError(f"no backup under {out}")
    return found[-1]
