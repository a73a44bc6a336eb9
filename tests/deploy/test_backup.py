"""Backup and restore on the native stack: real PostgreSQL (pg_dump/pg_restore), SQLite, Qdrant local mode."""
from __future__ import annotations

import json
import shutil
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
from qdrant_client import QdrantClient, models

from hxp.cli import main
from hxp.deploy import backup
from hxp.gateway.database import Database

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
    client.upsert("documents", [models.PointStruct(id=i, vector=[1.0, i, 0.5, 0.25], payload={"n": i})
                                for i in range(5)])
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


def test_sqlite_and_configuration_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
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

    (tmp_path / "state" / "gateway.sqlite3").unlink()
    shutil.rmtree(qdrant)
    assert main(["backup", "restore", "--out", str(out)]) == 0  # the newest backup
    assert "database: sqlite, qdrant: local" in capsys.readouterr().out
    assert read_rows(url) == KEYS
    assert read_vectors(qdrant) == [0, 1, 2, 3, 4]


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


def test_errors_are_reported_clearly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert main(["backup", "create", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: pg_dump failed:") and "Connection refused" in err
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
