"""env/*.env.example -> env/*.env: consistent fresh secrets, nothing committed, nothing overwritten."""

from __future__ import annotations

import re
import shutil
import stat
from pathlib import Path

import pytest

from hxp.cli import main
from hxp.core.paths import PROJECT_ROOT
from hxp.deploy import envfiles

EXAMPLES = sorted((PROJECT_ROOT / "env").glob("*.env.example"))
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|_KEY)$")


@pytest.fixture
def env_dir(tmp_path: Path) -> Path:
    """A project's env folder holding only the examples."""
    folder = tmp_path / "project" / "env"
    folder.mkdir(parents=True)
    for example in EXAMPLES:
        shutil.copy(example, folder / example.name)
    return folder


def values(path: Path) -> dict[str, str]:
    return envfiles.assignments(path.read_text())


def test_examples_hold_placeholders_only() -> None:
    """No secret is committed: every secret-looking value is a placeholder or empty."""
    assert EXAMPLES
    for example in EXAMPLES:
        for key, value in values(example).items():
            if SECRET_NAME.search(key):
                assert value == "" or envfiles.SECRET.search(value) or envfiles.FROM_ENVIRONMENT.search(value), (
                    f"{example.name}: {key} looks like a committed secret"
                )


def test_secrets_are_fresh_and_consistent(env_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_from_the_shell")
    monkeypatch.delenv("POSTGRES_PASSWORD", raising=False)
    assert main(["compose", "env", "--env-dir", str(env_dir)]) == 0
    pg = values(env_dir / "postgres.env")["POSTGRES_PASSWORD"]
    redis = values(env_dir / "redis.env")["REDIS_PASSWORD"]
    assert len(pg) >= 32 and pg != redis and "__" not in pg
    gateway = values(env_dir / "gateway.env")
    assert gateway["DATABASE_URL"] == f"postgresql://hxp:{pg}@postgres:5432/hxp"
    assert gateway["REDIS_URL"] == f"redis://:{redis}@redis:6379/0"
    assert values(env_dir / "exporters.env")["REDIS_PASSWORD"] == redis
    assert values(env_dir / "loadtest.env")["HXP_MASTER_KEY"] == gateway["HXP_MASTER_KEY"]
    assert values(env_dir / "models.env")["HF_TOKEN"] == "hf_from_the_shell"
    assert stat.S_IMODE((env_dir / "gateway.env").stat().st_mode) == 0o600
    for real in env_dir.glob("*.env"):
        assert not envfiles.SECRET.search(
            "\n".join(line for line in real.read_text().splitlines() if not line.startswith("#"))
        )


def test_existing_files_are_kept_and_their_secrets_reused(env_dir: Path) -> None:
    envfiles.create(env_dir)
    before = (env_dir / "postgres.env").read_text()
    gateway = values(env_dir / "gateway.env")
    (env_dir / "exporters.env").unlink()  # e.g. an example added by an upgrade
    (env_dir / "loadtest.env").unlink()
    (env_dir.parent / ".env").unlink()
    assert sorted(p.name for p in envfiles.create(env_dir)) == [".env", "exporters.env", "loadtest.env"]
    assert (env_dir / "postgres.env").read_text() == before
    pg = values(env_dir / "postgres.env")["POSTGRES_PASSWORD"]
    assert values(env_dir / "exporters.env")["DATA_SOURCE_NAME"].startswith(f"postgresql://hxp:{pg}@postgres")
    assert values(env_dir / "loadtest.env")["HXP_MASTER_KEY"] == gateway["HXP_MASTER_KEY"]
    assert envfiles.create(env_dir) == []


def test_two_runs_give_different_secrets(tmp_path: Path, env_dir: Path) -> None:
    other = tmp_path / "other" / "env"
    shutil.copytree(env_dir, other)
    envfiles.create(env_dir)
    envfiles.create(other)
    assert values(env_dir / "redis.env") != values(other / "redis.env")


def test_compose_finds_the_env_files_through_dotenv(env_dir: Path) -> None:
    """`make env` names the env folder in .env (Compose's own file), keeping what the operator put there."""
    dotenv = env_dir.parent / ".env"
    dotenv.write_text("HXP_PUBLISH_ADDRESS=10.0.0.5")
    assert dotenv in envfiles.create(env_dir)
    assert values(dotenv) == {"HXP_PUBLISH_ADDRESS": "10.0.0.5", "HXP_ENV_DIR": "./env"}
    assert envfiles.create(env_dir) == [] and values(dotenv)["HXP_ENV_DIR"] == "./env"


def test_the_stacks_env_folder_is_found_as_compose_finds_it(env_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """HXP_ENV_DIR from the environment first, then from .env, else env/ (used by `make backup STACK=compose`)."""
    project = env_dir.parent
    monkeypatch.delenv(envfiles.ENV_DIR_VARIABLE, raising=False)
    assert envfiles.env_dir(project) == project / "env"
    (project / ".env").write_text("HXP_ENV_DIR=./secrets\n")
    assert envfiles.env_dir(project) == project / "secrets"
    monkeypatch.setenv(envfiles.ENV_DIR_VARIABLE, "/srv/hxp/env")
    assert envfiles.env_dir(project) == Path("/srv/hxp/env")
