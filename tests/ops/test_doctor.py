"""`hxp doctor` finds what stops a stack, each finding with its fix: a port taken by a stranger, prepared
weights that differ from their manifest, example or weak secrets in env files, and a refused password
told apart from an unreachable server (real PostgreSQL and Redis, each asking for a password)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from hxp.cli import main
from hxp.core import catalogue
from hxp.core.paths import PROJECT_ROOT
from hxp.model import weights
from hxp.ops import doctor
from tests.fixtures.stores import drop_postgres_database, fresh_postgres_database
from tests.support.servers import RedisServer, free_port

EMBEDDING = catalogue.load(profile="cpu").embedding_models[0]


def _doctor(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, env: dict[str, str], *args: str
) -> tuple[int, dict[str, dict[str, Any]]]:
    """Run `hxp doctor --json` with ``env``; (exit status, the checks by name)."""
    for name in ("HXP_MASTER_KEY", "DATABASE_URL", "HXP_DATABASE_URL", "REDIS_URL", "QDRANT_URL", "HXP_BACKENDS"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    capsys.readouterr()
    code = main(["doctor", "--json", *args])
    return code, {c["check"]: c for c in json.loads(capsys.readouterr().out)["checks"]}


@pytest.fixture
def small_stack(tmp_path: Path) -> dict[str, str]:
    """A one-model catalogue (the embedding model on a free port), its prepared weights copied into a fresh
    state directory, and the environment pointing at them."""
    doc = yaml.safe_load(catalogue.DEFAULT_PATH.read_text())
    doc["models"] = [
        {**m, "port": free_port(), "api": {**m["api"], "fallbacks": []}}
        for m in doc["models"]
        if m["name"] == EMBEDDING.name
    ]
    (tmp_path / "models.yaml").write_text(yaml.safe_dump(doc))
    state = tmp_path / "state"
    (state / "models").mkdir(parents=True)
    source = weights.package_dir(EMBEDDING.package)
    if not source.is_dir():
        pytest.fail(f"{source} is not prepared: run `make prepare` first")
    shutil.copytree(source.resolve(), state / "models" / EMBEDDING.package)
    manifest = f"{EMBEDDING.package}{weights.MANIFEST_SUFFIX}"
    shutil.copy(source.parent / manifest, state / "models" / manifest)
    return {
        "HXP_CATALOGUE": str(tmp_path / "models.yaml"),
        "HXP_PROFILE": "cpu",
        "HXP_STATE_DIR": str(state),
        "HXP_GATEWAY_URL": f"http://127.0.0.1:{free_port()}",
        "QDRANT_PATH": str(tmp_path / "qdrant"),
        "HXP_MASTER_KEY": "sk-hxp-" + "a1" * 24,
    }


def _env_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "env"
    folder.mkdir()
    for name in ("gateway", "postgres", "redis"):
        shutil.copy(PROJECT_ROOT / "env" / f"{name}.env.example", folder / f"{name}.env.example")
    (folder / "gateway.env").write_text((folder / "gateway.env.example").read_text())  # copied, never filled in
    (folder / "postgres.env").write_text("POSTGRES_USER=hxp\nPOSTGRES_DB=hxp\nPOSTGRES_PASSWORD=changeme\n")
    (folder / "redis.env").write_text("REDIS_PASSWORD=" + "5f" * 24 + "\n")
    (folder / "redis.env").chmod(0o600)
    return folder


def test_doctor_names_a_taken_port_a_corrupted_weight_file_and_an_example_secret(
    small_stack: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    env_dir = _env_dir(tmp_path)
    model = yaml.safe_load(Path(small_stack["HXP_CATALOGUE"]).read_text())["models"][0]
    code, checks = _doctor(monkeypatch, capsys, small_stack, "--env-dir", str(env_dir))
    port_check = f"port {model['port']} (engine of {EMBEDDING.name})"
    assert checks[port_check]["status"] == "PASS" and checks[port_check]["detail"] == "free"
    assert checks[f"weights {EMBEDDING.package}"]["status"] == "PASS"

    stranger = socket.socket()
    stranger.bind(("127.0.0.1", model["port"]))
    stranger.listen()
    weight = Path(small_stack["HXP_STATE_DIR"]) / "models" / EMBEDDING.package / "model.safetensors"
    data = bytearray(weight.read_bytes())
    data[len(data) // 2] ^= 0x01
    weight.write_bytes(bytes(data))
    try:
        code, checks = _doctor(monkeypatch, capsys, small_stack, "--env-dir", str(env_dir))
    finally:
        stranger.close()
    assert code == 1

    port = checks[port_check]
    assert port["status"] == "FAIL" and f"pid {os.getpid()}" in port["detail"]
    assert f"kill {os.getpid()}" in port["fix"] and "models.yaml" in port["fix"]

    weight_check = checks[f"weights {EMBEDDING.package}"]
    assert weight_check["status"] == "FAIL" and "model.safetensors differs" in weight_check["detail"]
    assert "make prepare" in weight_check["fix"]

    gateway_env = checks["env file gateway.env"]
    assert gateway_env["status"] == "FAIL"
    assert "HXP_MASTER_KEY still holds the example's placeholder" in gateway_env["detail"]
    assert "DATABASE_URL still holds the example's placeholder" in gateway_env["detail"]
    assert "make env" in gateway_env["fix"]
    postgres_env = checks["env file postgres.env"]
    assert postgres_env["status"] == "FAIL"
    assert "POSTGRES_PASSWORD holds a weak or example secret" in postgres_env["detail"]
    assert checks["env file redis.env"]["status"] == "PASS"
    assert "changeme" not in json.dumps(checks) and "__HXP_MASTER_KEY__" not in json.dumps(checks)


def test_doctor_text_names_the_fix_under_each_failure(
    small_stack: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "redis.env.example").write_text("REDIS_PASSWORD=__REDIS_PASSWORD__\n")
    (tmp_path / "env" / "redis.env").write_text("REDIS_PASSWORD=" + "5f" * 24 + "\n")
    (tmp_path / "env" / "redis.env").chmod(0o644)
    for name, value in {**small_stack, "HXP_MASTER_KEY": "short"}.items():
        monkeypatch.setenv(name, value)
    assert main(["doctor", "--env-dir", str(tmp_path / "env")]) == 1
    lines = capsys.readouterr().out.splitlines()
    master = next(i for i, line in enumerate(lines) if line.startswith("FAIL  master key"))
    assert "only 5 characters" in lines[master] and "fix: use at least 32" in lines[master + 1]
    readable = next(i for i, line in enumerate(lines) if line.startswith("WARN  env file redis.env"))
    assert "fix: chmod 600" in lines[readable + 1]
    assert lines[-1].startswith("doctor: FAILED (")


def test_doctor_tells_a_refused_password_from_an_unreachable_server(
    postgres,
    small_stack: dict[str, str],
    tmp_path: Path,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    redis = RedisServer(password="r3d1s-" + "9" * 20)
    redis.start()
    admin_url = fresh_postgres_database(postgres)
    database_url = postgres.password_user(
        "pw_doctor_" + secrets.token_hex(4), "pgpw-" + secrets.token_hex(8), admin_url.rsplit("/", 1)[1]
    )
    try:
        wrong_db = database_url.replace(urlsplit(database_url).password, "wrong-pw")
        wrong_redis = redis.url.replace(redis.password, "wrong-pw")
        env = {**small_stack, "DATABASE_URL": wrong_db, "REDIS_URL": wrong_redis}
        _, checks = _doctor(monkeypatch, capsys, env, "--env-dir", str(tmp_path))
        for name, fix in (("database", "POSTGRES_PASSWORD"), ("redis", "requirepass")):
            assert checks[name]["status"] == "FAIL", checks[name]
            assert "refused the credentials" in checks[name]["detail"]
            assert fix in checks[name]["fix"] and "wrong-pw" not in checks[name]["detail"]

        closed = free_port()
        env = {
            **small_stack,
            "DATABASE_URL": f"postgresql://hxp:x@127.0.0.1:{closed}/hxp",
            "REDIS_URL": f"redis://127.0.0.1:{closed}/0",
        }
        _, checks = _doctor(monkeypatch, capsys, env, "--env-dir", str(tmp_path))
        for name in ("database", "redis"):
            assert checks[name]["status"] == "FAIL" and "cannot be reached" in checks[name]["detail"], checks[name]
            assert "start" in checks[name]["fix"]

        env = {**small_stack, "DATABASE_URL": database_url, "REDIS_URL": redis.url}
        _, checks = _doctor(monkeypatch, capsys, env, "--env-dir", str(tmp_path))
        assert checks["database"]["status"] == checks["redis"]["status"] == "PASS"
        assert checks["clock skew with the database"]["status"] == "PASS"
        assert redis.password not in json.dumps(checks)
    finally:
        redis.stop()
        drop_postgres_database(postgres, admin_url)


def test_nvidia_smi_memory_is_read_per_gpu() -> None:
    assert doctor.parse_nvidia_smi("0, 81559, 80000\n1, 81559, 1024\n") == {
        0: (81559 / 1024, 80000 / 1024),
        1: (81559 / 1024, 1.0),
    }
