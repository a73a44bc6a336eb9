"""No secret leaves the process: not the store passwords, not the keys, not the master key (which LiteLLM never
sees in clear). Real password-protected Redis and a PostgreSQL user that must give its password."""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from hxp.core import redaction
from hxp.core.database import Database
from hxp.gateway.auth import litellm_master_key
from tests.fixtures.stores import drop_postgres_database, fresh_postgres_database
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import ROOT, Gateway, GatewayFactory
from tests.support.servers import PostgresServer, RedisServer

pytestmark = pytest.mark.services


@pytest.fixture
def protected(postgres: PostgresServer, fake_upstream: FakeUpstream) -> Iterator[tuple[Gateway, list[str], str]]:
    """A gateway whose Redis and PostgreSQL need passwords; the passwords; its database URL."""
    redis_password = "redispw-" + secrets.token_hex(8)
    pg_password = "pgpw-" + secrets.token_hex(8)
    server = RedisServer(password=redis_password)
    server.start()
    admin_url = fresh_postgres_database(postgres)
    url = postgres.password_user("pw_" + secrets.token_hex(4), pg_password, admin_url.rsplit("/", 1)[1])
    factory = GatewayFactory()
    try:
        gateway = factory(
            fake_upstream.url, env={"REDIS_URL": server.url, "DATABASE_URL": url, "HXP_USAGE_FLUSH_INTERVAL_S": "0.2"}
        )
        yield gateway, [redis_password, pg_password], url
    finally:
        factory.close()
        server.stop()
        drop_postgres_database(postgres, admin_url)


def test_no_password_or_key_in_any_answer_log_or_row(protected) -> None:
    gateway, passwords, url = protected
    key = gateway.create_key(alias="secret-check")
    bodies = []
    for headers in ({}, gateway.headers(key), gateway.headers()):
        for path in (
            "/health/readiness",
            "/health/readiness?strict=true",
            "/health/models",
            "/metrics",
            "/v1/models",
            "/key/generate",
        ):
            bodies.append(httpx.get(gateway.url + path, headers=headers, timeout=30).text)
    details = httpx.get(f"{gateway.url}/health/readiness", headers=gateway.headers(), timeout=30).json()["details"]
    assert details["redis"]["healthy"] and details["database"]["healthy"]
    assert "***" in details["redis"]["url"] and "***" in details["database"]["url"]  # shown, password masked
    bodies += [
        gateway.chat(key, "phi-3-mini").text,
        gateway.chat(key, "no-such-model").text,
        gateway.chat("sk-hxp-" + "w" * 40, "phi-3-mini").text,
        gateway.chat(key, "phi-3-mini", n=0).text,
    ]
    db = Database(url)
    try:
        deadline = time.monotonic() + 60  # the usage writer flushes in the background; a busy machine is slow
        while not (rows := db.fetchall("SELECT * FROM llm_model_requests")) and time.monotonic() < deadline:
            time.sleep(0.2)
        keys = db.fetchall("SELECT * FROM api_keys")
    finally:
        db.close()
    assert rows
    gateway.stop()
    everything = "\n".join(
        [
            *bodies,
            gateway.log,
            str(rows),
            str(keys),
            *(p.read_text(errors="replace") for p in gateway.state_dir.rglob("*.yaml")),
        ]
    )
    for secret in [*passwords, key, gateway.master_key]:
        assert secret not in everything, f"a secret leaked: {secret[:6]}..."


@pytest.mark.parametrize("master", ["sk-" + "m" * 40, "no-prefix-" + "m" * 40])
def test_litellm_gets_a_hash_of_the_master_key_whatever_its_prefix(
    master: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hxp.gateway import launcher, litellm_env

    monkeypatch.setenv("HXP_MASTER_KEY", master)
    monkeypatch.setenv("HXP_STATE_DIR", str(tmp_path))
    for name in (
        "LITELLM_MASTER_KEY",
        "LITELLM_WORKER_STARTUP_HOOKS",
        "HXP_DATABASE_URL",
        "DATABASE_URL",
        "LITELLM_LOG",
        "LITELLM_LOCAL_MODEL_COST_MAP",
        *litellm_env.SETTINGS,
    ):
        monkeypatch.setenv(name, "")  # recorded, so that what prepare_environment sets is undone after the test
        monkeypatch.delenv(name)
    launcher.prepare_environment()
    given = launcher.os.environ["LITELLM_MASTER_KEY"]
    assert given == litellm_master_key(master) and master not in given and given.startswith("sk-")


def test_a_short_master_key_stops_the_start_naming_the_setting(tmp_path: Path) -> None:
    env = {"HXP_MASTER_KEY": "sk-too-short-1234", "HXP_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "hxp.cli", "gateway", "serve", "--port", "1"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "HXP_MASTER_KEY is 17 characters long" in done.stderr


@pytest.mark.parametrize(
    "text, hidden",
    [
        ("redis://:s3cr3t-pw@host:6379/0", "s3cr3t-pw"),
        ("redis://default:s3cr3t-pw@host:6379/0", "s3cr3t-pw"),
        ("postgresql://hxp:p%40ss-w0rd@db/x", "p%40ss-w0rd"),
        ("https://qdrant:6333/collections?api_key=qk-123456&x=1", "qk-123456"),
        ("connect failed: password=hunter2-pw host=db", "hunter2-pw"),
        ("Authorization: Bearer tok-abcdef123456", "tok-abcdef123456"),
        ("key sk-hxp-abcdefghijklmnop0123 refused", "abcdefghijklmnop0123"),
        ("redis://default:p@ss-w0rd@host:6379/0", "ss-w0rd"),  # a raw '@': parsers split at the last one
        ("postgresql://hxp@db/x?sslpassword=ssl-s3cr3t", "ssl-s3cr3t"),
        ("DB_PASSWORD=env-s3cr3t client_secret=cl-s3cr3t", "s3cr3t"),
    ],
)
def test_redaction_covers_every_url_and_credential_form(text: str, hidden: str) -> None:
    assert hidden not in redaction.redact(text) and "***" in redaction.redact(text)


@pytest.mark.timeout(300)  # a hang guard, not a speed target: ~0.3 s each here; a quadratic pattern never ends
@pytest.mark.parametrize("text", ["a" * 1_000_000, "a." * 500_000, "a://:" * 200_000, "x_" * 500_000])
def test_redaction_takes_linear_time(text: str) -> None:
    """Texts a client controls (an echoed field, a prompt) are redacted on the event loop: no quadratic pattern
    (one took hours on a megabyte of letters)."""
    assert redaction.redact(text) == text  # nothing in these texts is a secret


def test_known_secrets_are_masked_wherever_they_appear() -> None:
    redaction.register_url_secrets("redis://:pl41n-t3xt-pw@host:6379/0")
    assert redaction.redact("AUTH pl41n-t3xt-pw failed") == "AUTH *** failed"


def test_output_redaction_covers_print_logging_and_tracebacks(tmp_path: Path) -> None:
    script = """
import logging, sys
from hxp.core import redaction
logging.basicConfig()
redaction.register_secret("very-secret-value")
redaction.install_output_redaction()
print("print: very-secret-value")
logging.getLogger("x").error("log: redis://:pw-in-url@h:1/0")
try:
    raise RuntimeError("boom very-secret-value")
except RuntimeError:
    logging.getLogger("x").exception("failed")
sys.stdout.write("partial very-secret-")
sys.stdout.write("value end\\n")
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert "very-secret-value" not in output and "pw-in-url" not in output
    assert "print: ***" in output and "boom ***" in output and "partial *** end" in output
