"""Across processes on PostgreSQL: with the database stopped an admin action answers 503 and changes nothing,
while refusals made meanwhile are spilled and appear once it returns; two gateway replicas and the command line
appending at once make one unbroken chain with every event."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from hxp.audit.trail import Trail
from hxp.core.database import Database
from tests.audit.test_gateway import events, wait_for
from tests.fixtures.stores import drop_postgres_database, fresh_postgres_database
from tests.support.fake_upstream import FakeUpstream
from tests.support.gateway import ROOT
from tests.support.servers import PostgresServer

ADMIN_CALLS = 400  # per replica
CLI_EVENTS = 800


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    server = FakeUpstream().start()
    yield server
    server.stop()


def test_database_stopped_admin_action_refused_refusals_kept(upstream: FakeUpstream, gateway_factory) -> None:
    server = PostgresServer()  # a cluster of its own: stopping it touches no other test
    server.start()
    try:
        gateway = gateway_factory(upstream.url, env={"DATABASE_URL": server.url, "HXP_AUDIT_REFUSAL_WINDOW_S": "1"})
        admin = httpx.Client(base_url=gateway.url, headers=gateway.headers(), timeout=60)
        assert admin.post("/admin/keys", json={"alias": "before"}).status_code == 201
        before = Database(server.url)
        start = Trail(before).head().seq
        before.close()
        server.stop()
        refused = admin.post("/admin/keys", json={"alias": "during"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "audit_unavailable"
        assert "not performed" in refused.json()["error"]["message"]
        assert admin.post("/admin/keys/before/revoke").status_code == 503
        for _ in range(4):  # no key: refused without the database
            assert httpx.get(f"{gateway.url}/admin/keys", timeout=30).status_code == 401
        spill = gateway.state_dir / "audit-spill"
        assert wait_for(lambda: any(p.stat().st_size for p in spill.glob("usage-*.jsonl")))  # on disk, not lost
        server.start()
        db = Database(server.url)  # a pool opened after the restart
        trail = Trail(db)
        rows = wait_for(
            lambda: (
                (found := events(trail, start, action="request.refused"))
                and sum(r["count"] for r in found) >= 4
                and found
            )
        )
        assert sum(r["count"] for r in rows) == 4 and {r["actor"] for r in rows} == {"anonymous"}
        keys = {r["alias"]: r["revoked_at"] for r in db.fetchall("SELECT alias, revoked_at FROM api_keys")}
        assert keys == {"before": None}  # nothing changed: no key 'during', 'before' not revoked
        assert [r["target"] for r in events(trail, start) if r["action"].startswith("key.")] == []
        assert trail.verify().ok
        db.close()
    finally:
        server.close()


_CLI_APPENDS = """
import sys
from hxp.audit import operator
for i in range(int(sys.argv[2])):
    with operator.recorded(sys.argv[1], "test.cli_event", f"cli-{i}"):
        pass
"""


def test_two_replicas_and_the_command_line_append_one_unbroken_chain(
    postgres: PostgresServer, upstream, gateway_factory
) -> None:
    url = fresh_postgres_database(postgres)
    try:
        replicas = [gateway_factory(upstream.url, env={"DATABASE_URL": url}, wait=False) for _ in range(2)]
        for replica in replicas:
            replica.wait_ready()
        cli = subprocess.Popen(
            [sys.executable, "-c", _CLI_APPENDS, url, str(CLI_EVENTS)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT / "services")},
        )

        def admin_calls(replica_index: int) -> list[int]:
            replica = replicas[replica_index]
            with httpx.Client(base_url=replica.url, headers=replica.headers(), timeout=60) as client:
                return [client.post(f"/admin/keys/r{replica_index}-{i}/revoke").status_code for i in range(ADMIN_CALLS)]

        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(admin_calls, [0, 1, 0, 1]))
        assert cli.wait(300) == 0
        assert {code for codes in answers for code in codes} == {404}  # each one audited as not_found
        db = Database(url)
        trail = Trail(db)
        report = trail.verify(trail.head())
        assert report.ok, report.problem
        rows = list(trail.rows())
        assert [int(r["seq"]) for r in rows] == list(range(1, len(rows) + 1))
        by_replicas = [r for r in rows if r["action"] == "key.revoke"]
        assert len(by_replicas) == 4 * ADMIN_CALLS
        assert len([r for r in rows if r["action"] == "test.cli_event"]) == CLI_EVENTS
        assert len({r["event_id"] for r in rows}) == len(rows)
        db.close()
    finally:
        drop_postgres_database(postgres, url)
