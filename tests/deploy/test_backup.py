"""Backup and restore on the native stack: real PostgreSQL (pg_dump/pg_restore), SQLite, Qdrant local mode."""

from __future__ import annotations

import json
import secrets
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, urlsplit

import psycopg
import pytest
from psycopg import sql
from qdrant_client import QdrantClient, models

from hxp.audit import operator
from hxp.audit.trail import Trail
from hxp.cli import main
from hxp.core.database import Database
from hxp.deploy import backup
from tests.support.servers import PASSWORD_GROUP

KEYS = [(f"key-{i}", f"hash-{i}", f"sk-{i}", f"alias-{i}") for i in range(3)]


def write_rows(url: str) -> None:
    db = Database(url)
    try:
        db.migrate()
        db.executemany("INSERT INTO api_keys (key_id, key_hash, key_prefix, alias) VALUES (?, ?, ?, ?)", KEYS)
    finally:
        db.close()


def read_rows(url: str) -> list[tuple]:
    db = Database(url)
    try:
        rows = db.fetchall("SELECT key_id, key_hash, key_prefix, alias FROM api_keys ORDER BY key_id")
    finally:
        db.close()
    return [tuple(r.values()) for r in rows]


def write_vectors(path: Path) -> None:
    client = QdrantClient(path=str(path))
    client.create_collection("documents", vectors_config=models.VectorParams(size=4, distance=models.Distance.COSINE))
    client.upsert(
        "documents", [models.PointStruct(id=i, vector=[1.0, i, 0.5, 0.25], payload={"n": i}) for i in range(5)]
    )
    client.close()


def read_vectors(path: Path) -> list[int]:
    client = QdrantClient(path=str(path))
    try:
        points, _ = client.scroll("documents", limit=100)
        return sorted(p.payload["n"] for p in points)
    finally:
        client.close()


@pytest.fixture
def pg_database(postgres) -> str:  # noqa: ANN001 - the shared server fixture
    """A fresh database on the shared test server, dropped afterwards."""
    name = f"hxp_backup_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield postgres.url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_postgres_and_qdrant_round_trip(tmp_path: Path, pg_database: str) -> None:
    qdrant = tmp_path / "qdrant"
    write_rows(pg_database)
    write_vectors(qdrant)
    stores = backup.Stores(pg_database, qdrant_path=qdrant, project=tmp_path)
    saved = backup.create(stores, tmp_path / "backups")
    manifest = json.loads((saved / "manifest.json").read_text())
    assert manifest["database"] == {"dialect": "postgresql", "file": "database.pgdump"}
    assert manifest["qdrant"] == {"mode": "local"}

    with psycopg.connect(pg_database, autocommit=True) as conn:  # wipe
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    shutil.rmtree(qdrant)
    with pytest.raises(psycopg.errors.UndefinedTable):
        read_rows(pg_database)

    backup.restore(stores, saved)
    assert read_rows(pg_database) == KEYS
    assert read_vectors(qdrant) == [0, 1, 2, 3, 4]
    db = Database(pg_database)
    try:
        assert db.migrate() == [], "the migration history comes back with the data"
    finally:
        db.close()


def test_restore_replaces_later_changes(tmp_path: Path, pg_database: str) -> None:
    write_rows(pg_database)
    stores = backup.Stores(pg_database, project=tmp_path)
    saved = backup.create(stores, tmp_path)
    db = Database(pg_database)
    db.execute("DELETE FROM api_keys WHERE key_id = ?", ("key-0",))
    db.execute("INSERT INTO api_keys (key_id, key_hash, key_prefix, alias) VALUES ('x', 'hx', 'sx', 'ax')")
    db.close()
    backup.restore(stores, saved)
    assert read_rows(pg_database) == KEYS


def test_sqlite_and_configuration_through_the_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    url = f"sqlite:///{tmp_path / 'state' / 'gateway.sqlite3'}"
    qdrant = tmp_path / "state" / "qdrant"
    write_rows(url)
    write_vectors(qdrant)
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.setenv("QDRANT_PATH", str(qdrant))
    monkeypatch.delenv("QDRANT_URL", raising=False)
    out = tmp_path / "backups"
    assert main(["backup", "create", "--out", str(out)]) == 0
    saved = Path(capsys.readouterr().out.strip())
    assert saved.parent == out and (saved / "database.sqlite3").is_file()
    assert "models.yaml" in json.loads((saved / "manifest.json").read_text())["config"]
    assert (saved / "config" / "models.yaml").is_file()
    audited = Database(url)
    created = [(r["action"], r["actor"], r["outcome"]) for r in Trail(audited).rows()]
    replaced = Trail(audited).head()
    audited.close()
    assert created == [("backup.create", operator.actor(), "ok")]

    (tmp_path / "state" / "gateway.sqlite3").unlink()
    shutil.rmtree(qdrant)
    assert main(["backup", "restore", "--out", str(out)]) == 0  # the newest backup
    assert "database: sqlite, qdrant: local" in capsys.readouterr().out
    assert read_rows(url) == KEYS
    assert read_vectors(qdrant) == [0, 1, 2, 3, 4]
    audited = Database(url)  # the backup predates its own event; the restore is recorded on what it restored
    rows = list(Trail(audited).rows())
    assert [(r["action"], r["actor"], r["outcome"]) for r in rows] == [("backup.restore", operator.actor(), "ok")]
    assert json.loads(rows[0]["details"])["replaced_head"] == "0:" + "0" * 64  # the database file was gone
    assert Trail(audited).verify().ok and replaced.seq == 1
    audited.close()


def test_configuration_is_restored_only_when_asked(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "env").mkdir(parents=True)
    (project / "models.yaml").write_text("original\n")
    (project / "env" / "gateway.env").write_text("HXP_MASTER_KEY=one\n")
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    write_rows(url)
    stores = backup.Stores(url, project=project)
    saved = backup.create(stores, tmp_path / "backups")
    assert (saved.stat().st_mode & 0o077) == 0, "a backup holds secrets: private to its owner"
    (project / "models.yaml").write_text("edited\n")
    (project / "env" / "gateway.env").unlink()
    backup.restore(stores, saved)
    assert (project / "models.yaml").read_text() == "edited\n"
    backup.restore(stores, saved, config=True)
    assert (project / "models.yaml").read_text() == "original\n"
    assert (project / "env" / "gateway.env").read_text() == "HXP_MASTER_KEY=one\n"


def test_errors_are_reported_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert main(["backup", "create", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err  # a backup that cannot be audited is refused before pg_dump runs
    assert err.startswith("error: refused: the audit trail cannot be written (couldn't get a connection")
    assert list(tmp_path.iterdir()) == [], "a failed backup leaves nothing half-written"
    assert main(["backup", "restore", str(tmp_path)]) == 1
    assert "is not a backup" in capsys.readouterr().err


class _SnapshotApi:
    """Qdrant's documented snapshot endpoints, in memory (no Qdrant server can run here): a protocol check."""

    def __init__(self) -> None:
        self.collections = {"documents": b"tar-of-documents", "chunks": b"tar-of-chunks"}
        self.snapshots: dict[str, bytes] = {}
        self.keys: set[str | None] = set()

    def handler(self):  # noqa: ANN201
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, body: object, status: int = 200, raw: bytes | None = None) -> None:
                data = raw if raw is not None else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802
                api.keys.add(self.headers.get("api-key"))
                parts = urlsplit(self.path).path.strip("/").split("/")
                if parts == ["collections"]:
                    return self._reply({"result": {"collections": [{"name": n} for n in api.collections]}})
                if len(parts) == 4 and parts[2] == "snapshots" and parts[3] in api.snapshots:
                    return self._reply(None, raw=api.snapshots[parts[3]])
                self._reply({"status": {"error": "not found"}}, 404)

            def do_POST(self) -> None:  # noqa: N802
                api.keys.add(self.headers.get("api-key"))
                url = urlsplit(self.path)
                parts = url.path.strip("/").split("/")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if len(parts) == 3 and parts[2] == "snapshots":
                    name = f"{parts[1]}-1.snapshot"
                    api.snapshots[name] = api.collections[parts[1]]
                    return self._reply({"result": {"name": name}})
                if len(parts) == 4 and parts[3] == "upload" and "priority=snapshot" in url.query:
                    assert b'name="snapshot"' in self.headers.get("Content-Type", "").encode() + body
                    content = body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]
                    api.collections[parts[1]] = content
                    return self._reply({"result": True})
                self._reply({"status": {"error": "bad request"}}, 400)

            def do_DELETE(self) -> None:  # noqa: N802
                parts = self.path.strip("/").split("/")
                api.snapshots.pop(parts[3], None)
                self._reply({"result": True})

        return Handler


def test_qdrant_server_mode_uses_the_snapshot_api(tmp_path: Path) -> None:
    api = _SnapshotApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        db = f"sqlite:///{tmp_path / 'db.sqlite3'}"
        write_rows(db)
        stores = backup.Stores(db, qdrant_url=url, qdrant_api_key="secret-key", project=tmp_path)
        saved = backup.create(stores, tmp_path / "backups")
        manifest = json.loads((saved / "manifest.json").read_text())
        assert manifest["qdrant"] == {"mode": "server", "collections": ["documents", "chunks"]}
        assert (saved / "qdrant" / "documents.snapshot").read_bytes() == b"tar-of-documents"
        assert api.snapshots == {}, "server-side snapshots are deleted once downloaded"
        api.collections = {"documents": b"", "chunks": b""}
        backup.restore(stores, saved)
        assert api.collections == {"documents": b"tar-of-documents", "chunks": b"tar-of-chunks"}
        assert api.keys == {"secret-key"}
    finally:
        server.shutdown()
        server.server_close()


# --- no password on a command line ----------------------------------------------------------


@pytest.fixture
def role_database(postgres) -> tuple[str, str, str]:  # noqa: ANN001 - the server fixture
    """A role that must give its password (a member of PASSWORD_GROUP), owning a fresh database:
    (the role's URL, its password, the superuser's URL of that database)."""
    role = f"pw_app_{uuid.uuid4().hex[:8]}"
    password = f"Pw:{secrets.token_hex(8)}\\@x"  # ':' and '\\' need escaping in a passfile, '@' in a URL
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                sql.Identifier(role), sql.Literal(password), sql.Identifier(PASSWORD_GROUP)
            )
        )
        conn.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(role), sql.Identifier(role)))
    base = f"127.0.0.1:{postgres.port}/{role}"
    admin = postgres.url.rsplit("/", 1)[0] + f"/{role}"
    yield f"postgresql://{role}:{quote(password, safe='')}@{base}", password, admin
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))


def _processes() -> dict[int, list[bytes]]:
    """Every process's command line, by pid."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                found[int(entry.name)] = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
    return found


def _while_blocked(program: str, admin_url: str, lock: str, action: Callable[[], object]) -> dict[str, object]:
    """Run ``action`` while a transaction holding ``lock`` makes ``program`` wait; what was seen meanwhile:
    every command line, the program's environment and its passfile's modes; and the action's result."""
    seen: dict[str, object] = {}
    with psycopg.connect(admin_url) as conn:
        conn.execute(lock)
        thread = threading.Thread(target=lambda: seen.__setitem__("result", action()), daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while "pid" not in seen:
            assert time.monotonic() < deadline, f"{program} never ran"
            for pid, argv in _processes().items():
                if argv and Path(argv[0].decode(errors="replace")).name == program:
                    seen["pid"] = pid
            time.sleep(0.05)
        seen["cmdlines"] = _processes()
        environ = dict(
            v.split(b"=", 1) for v in Path(f"/proc/{seen['pid']}/environ").read_bytes().split(b"\0") if b"=" in v
        )
        seen["environ"] = environ
        passfile = Path(environ[b"PGPASSFILE"].decode())
        seen["passfile"] = passfile
        seen["modes"] = (stat.S_IMODE(passfile.stat().st_mode), stat.S_IMODE(passfile.parent.stat().st_mode))
        conn.rollback()
    thread.join(120)
    assert "result" in seen, f"{program} did not finish"
    return seen


def _assert_secret_kept(seen: dict[str, object], password: str) -> None:
    secrets_ = (password.encode(), quote(password, safe="").encode())
    leaks = [pid for pid, argv in seen["cmdlines"].items() if any(s in arg for arg in argv for s in secrets_)]
    assert leaks == [], f"the password is on the command line of {leaks}"
    assert not any(s in value for value in seen["environ"].values() for s in secrets_), (
        "the password is in the program's environment"
    )
    assert seen["modes"] == (0o600, 0o700), "the passfile is private to its owner"
    assert not seen["passfile"].exists(), "the passfile is removed afterwards"


def test_pg_dump_and_pg_restore_get_the_password_through_a_private_passfile(
    tmp_path: Path, role_database: tuple[str, str, str]
) -> None:
    url, password, admin_url = role_database
    write_rows(url)
    stores = backup.Stores(url, project=tmp_path)
    dumped = _while_blocked(
        "pg_dump",
        admin_url,
        "LOCK TABLE api_keys IN ACCESS EXCLUSIVE MODE",
        lambda: backup.create(stores, tmp_path / "backups"),
    )
    _assert_secret_kept(dumped, password)
    saved = dumped["result"]
    assert (saved / "database.pgdump").stat().st_size > 0

    db = Database(url)
    db.execute("DELETE FROM api_keys")
    db.close()
    restored = _while_blocked(
        "pg_restore",
        admin_url,
        "SELECT 1 FROM api_keys",  # holds a share lock
        lambda: backup.restore(stores, saved),
    )
    _assert_secret_kept(restored, password)
    assert read_rows(url) == KEYS


def test_a_wrong_password_fails_without_a_prompt_or_a_leak(tmp_path: Path, role_database: tuple[str, str, str]) -> None:
    url, password, _ = role_database
    wrong = url.replace(quote(password, safe=""), "not-the-password")
    with pytest.raises(backup.BackupError) as caught:
        backup.create(backup.Stores(wrong, project=tmp_path), tmp_path / "backups")
    assert "pg_dump failed" in str(caught.value) and "password authentication failed" in str(caught.value)
    assert "not-the-password" not in str(caught.value)


# --- restore trusts no path of the manifest ----------------------------------------------------


def _sqlite_backup(tmp_path: Path) -> tuple[backup.Stores, Path]:
    project = tmp_path / "project"
    (project / "env").mkdir(parents=True)
    (project / "models.yaml").write_text("original\n")
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    write_rows(url)
    stores = backup.Stores(url, project=project)
    return stores, backup.create(stores, tmp_path / "backups")


def _edit_manifest(saved: Path, **changes: object) -> None:
    manifest = json.loads((saved / "manifest.json").read_text())
    manifest.update(changes)
    (saved / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"database": {"dialect": "sqlite", "file": "/etc/passwd"}}, "'/etc/passwd' points outside"),
        ({"database": {"dialect": "sqlite", "file": "../../db.sqlite3"}}, "'../../db.sqlite3' points outside"),
        ({"config": ["models.yaml", "../escaped.txt"]}, "'../escaped.txt' points outside"),
        ({"config": ["/tmp/absolute"]}, "'/tmp/absolute' points outside"),
        ({"config": ["env/../../escaped"]}, "points outside"),
        ({"config": ["services/hxp/gateway/auth.py"]}, "is not one that backups hold"),
        ({"qdrant": {"mode": "server", "collections": ["../../../evil"]}}, "points outside"),
    ],
)
def test_restore_refuses_paths_outside_the_backup_and_the_project(tmp_path: Path, changes: dict, message: str) -> None:
    stores, saved = _sqlite_backup(tmp_path)
    _edit_manifest(saved, **changes)
    db = Database(stores.database_url)
    db.execute("DELETE FROM api_keys WHERE key_id = 'key-0'")
    db.close()
    with pytest.raises(backup.BackupError, match="manifest") as caught:
        backup.restore(stores, saved, config=True)
    assert message in str(caught.value)
    assert read_rows(stores.database_url) == KEYS[1:], "nothing is restored once one path is refused"
    assert not (tmp_path / "escaped.txt").exists() and not (tmp_path / "escaped").exists()


def test_restore_refuses_a_configuration_folder_that_links_outside(tmp_path: Path) -> None:
    stores, saved = _sqlite_backup(tmp_path)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "gateway.env").write_text("HXP_MASTER_KEY=planted\n")
    shutil.rmtree(saved / "config" / "env")
    (saved / "config" / "env").symlink_to(outside)
    with pytest.raises(backup.BackupError, match="symbolic link"):
        backup.restore(stores, saved, config=True)
    assert not (stores.project / "env" / "gateway.env").exists()


def test_the_cli_names_a_refused_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    stores, saved = _sqlite_backup(tmp_path)
    _edit_manifest(saved, config=["../../etc/cron.d/x"])
    monkeypatch.setenv("DATABASE_URL", stores.database_url)
    assert main(["backup", "restore", str(saved), "--config"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the manifest's configuration path '../../etc/cron.d/x' points outside")


# --- Qdrant: copy, then swap ---------------------------------------------------------------


def test_a_failed_qdrant_copy_leaves_the_live_data(tmp_path: Path) -> None:
    qdrant = tmp_path / "state" / "qdrant"
    write_vectors(qdrant)
    url = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    write_rows(url)
    stores = backup.Stores(url, qdrant_path=qdrant, project=tmp_path)
    saved = backup.create(stores, tmp_path / "backups")

    client = QdrantClient(path=str(qdrant))  # the live data moves on after the backup
    client.upsert("documents", [models.PointStruct(id=99, vector=[0.5, 1.0, 0.0, 1.0], payload={"n": 99})])
    client.close()
    live = read_vectors(qdrant)
    assert live == [0, 1, 2, 3, 4, 99]

    (saved / "qdrant" / "lost-segment").symlink_to(tmp_path / "missing")  # a file the copy cannot read
    with pytest.raises(backup.BackupError, match="left as it was") as caught:
        backup.restore(stores, saved)
    assert "lost-segment" in str(caught.value)
    assert read_vectors(qdrant) == live, "the live Qdrant data is untouched"
    assert sorted(p.name for p in qdrant.parent.iterdir()) == ["qdrant"], "no half-copied folder is left"

    (saved / "qdrant" / "lost-segment").unlink()
    backup.restore(stores, saved)
    assert read_vectors(qdrant) == [0, 1, 2, 3, 4]
    assert sorted(p.name for p in qdrant.parent.iterdir()) == ["qdrant"]
