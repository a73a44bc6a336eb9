"""Audit events through a real gateway and the command line: each action one row with the right actor; refusals
aggregated per window; the head published on the request log stream and /metrics."""

from __future__ import annotations

import getpass
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from hxp.audit.trail import CHECKPOINT, Event, Head, Trail
from hxp.core.database import Database
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import ROOT, Gateway, GatewayFactory

CLI_ACTOR = f"cli:{getpass.getuser()}@{socket.gethostname()}"


@pytest.fixture(scope="module")
def audited_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Trail]]:
    """A gateway on SQLite whose database already holds three events past the retention (365 days)."""
    state = tmp_path_factory.mktemp("audited-gateway")
    seeded = Database(f"sqlite:///{state / 'gateway.sqlite3'}")
    seeded.migrate()
    long_ago = (datetime.now(UTC) - timedelta(days=400)).isoformat()
    Trail(seeded).append([Event("key.create", "master", target=f"old-{i}", at=long_ago) for i in range(3)])
    seeded.close()
    upstream = FakeUpstream().start()
    factory = GatewayFactory()
    try:
        gateway = factory(
            upstream.url,
            env={"HXP_AUDIT_REFUSAL_WINDOW_S": "1", "HXP_REQUEST_LOG": str(state / "requests.log")},
            state_dir=state,
        )
        db = Database(f"sqlite:///{gateway.state_dir / 'gateway.sqlite3'}")
        yield gateway, Trail(db)
        db.close()
    finally:
        factory.close()
        upstream.stop()


def wait_for(check: Any, timeout: float = 60.0) -> Any:
    """``check()``'s first truthy answer (polled), or its last one after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.2)


def events(trail: Trail, after: int, **match: str) -> list[dict[str, Any]]:
    return [r for r in trail.rows() if int(r["seq"]) > after and all(r[k] == v for k, v in match.items())]


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hxp.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT / "services"), **env},
    )


def test_events_past_retention_are_purged_by_the_gateway_and_the_purge_audited(audited_gateway) -> None:
    gateway, trail = audited_gateway
    purges = wait_for(lambda: events(trail, 0, action="audit.purge"))
    assert [(r["actor"], r["count"], r["seq"]) for r in purges] == [("hxp:retention", 3, 4)]
    assert [(r["seq"], r["action"]) for r in trail.rows()][0] == (3, CHECKPOINT)
    assert trail.verify().ok


def test_each_admin_action_is_one_row_with_the_master_as_actor(audited_gateway) -> None:
    gateway, trail = audited_gateway
    start = trail.head().seq
    admin = httpx.Client(base_url=gateway.url, headers=gateway.headers(), timeout=60)
    answers = {
        "key.create": admin.post("/admin/keys", json={"alias": "audited", "models": [], "rpm": 60}),
        "key.grants": admin.post("/admin/keys/audited/grants", json={"read_collections": ["*"]}),
        "key.rotate": admin.post("/admin/keys/audited/rotate"),
        "key.revoke": admin.post("/admin/keys/audited/revoke"),
    }
    missing = admin.post("/admin/keys/nobody/revoke")
    assert [a.status_code for a in answers.values()] == [201, 200, 200, 200] and missing.status_code == 404
    rows = events(trail, start)
    assert [(r["action"], r["target"], r["outcome"], r["actor"], r["client"]) for r in rows] == [
        *((action, "audited", "ok", "master", "127.0.0.1") for action in answers),
        ("key.revoke", "nobody", "not_found", "master", "127.0.0.1"),
    ]
    assert [r["request_id"] for r in rows[:4]] == [a.headers["x-request-id"] for a in answers.values()]
    secrets = [answers["key.create"].json()["key"], answers["key.rotate"].json()["key"], gateway.master_key]
    dump = json.dumps(list(trail.rows()), default=str)
    assert not any(secret in dump for secret in secrets)
    assert json.loads(rows[0]["details"])["rpm"] == 60 and json.loads(rows[0]["details"])["key_id"]
    # published: one JSON line per event on the request log stream, the head on /metrics
    log_lines = [
        json.loads(line)
        for line in Path(gateway.env["HXP_REQUEST_LOG"]).read_text().splitlines()
        if '"event":"audit"' in line
    ]
    assert [line["seq"] for line in log_lines][-5:] == [int(r["seq"]) for r in rows]
    head = Head(int(log_lines[-1]["seq"]), log_lines[-1]["hash"])
    assert trail.verify(head).ok
    metrics = httpx.get(f"{gateway.url}/metrics", timeout=30).text
    assert 'hxp_audit_events_total{action="key.create",outcome="ok"} 1.0' in metrics
    gauges = {
        name: float(value)
        for name, value in (
            line.split(" ") for line in metrics.splitlines() if line.startswith("hxp_audit_chain_head_")
        )
    }
    assert gauges == {"hxp_audit_chain_head_seq": head.seq, "hxp_audit_chain_head_hash": int(head.hash[:13], 16)}


def test_refusals_are_aggregated_per_window_actor_and_address(audited_gateway) -> None:
    gateway, trail = audited_gateway
    start = trail.head().seq
    for _ in range(7):
        assert gateway.chat("sk-not-a-key-" + "x" * 20, "any").status_code == 401
    for _ in range(3):
        assert httpx.get(f"{gateway.url}/admin/keys", timeout=30).status_code == 401
    rows = wait_for(
        lambda: (
            (found := events(trail, start, action="request.refused")) and sum(r["count"] for r in found) >= 10 and found
        )
    )
    assert sum(r["count"] for r in rows) == 10
    assert {(r["actor"], r["outcome"], r["client"]) for r in rows} == {("anonymous", "401", "127.0.0.1")}
    assert len(rows) <= 4  # ten refusals, at most a row per window crossed, not one each


def test_each_operator_command_is_one_row_with_the_os_user_as_actor(audited_gateway) -> None:
    gateway, trail = audited_gateway
    env = {
        "HXP_STATE_DIR": str(gateway.state_dir),
        "DATABASE_URL": f"sqlite:///{gateway.state_dir / 'gateway.sqlite3'}",
    }
    start = trail.head().seq
    commands = [
        ("key.create", ["keys", "create", "--alias", "by-cli", "--rpm", "5"]),
        ("key.grants", ["keys", "grant", "by-cli", "--read", "*"]),
        ("key.rotate", ["keys", "rotate", "by-cli"]),
        ("key.revoke", ["keys", "revoke", "by-cli"]),
        ("conversations.purge", ["conversations", "purge", "--days", "30"]),
    ]
    for _, args in commands:
        done = cli(*args, env=env)
        assert done.returncode == 0, done.stderr
    assert cli("keys", "revoke", "nobody", env=env).returncode == 2
    assert cli("keys", "list", env=env).returncode == 0  # reading changes nothing: not audited
    rows = events(trail, start)
    assert [(r["action"], r["outcome"], r["actor"]) for r in rows] == [
        *((action, "ok", CLI_ACTOR) for action, _ in commands),
        ("key.revoke", "failed", CLI_ACTOR),
    ]
    verify = cli("audit", "verify", "--head", f"{trail.head().seq}:{trail.head().hash[:16]}", env=env)
    assert verify.returncode == 0 and "audit chain intact" in verify.stdout
    found = json.loads(cli("audit", "search", "--actor", CLI_ACTOR, "--action", "key.*", "--json", env=env).stdout)
    assert [r["action"] for r in found] == ["key.revoke", "key.revoke", "key.rotate", "key.grants", "key.create"]
