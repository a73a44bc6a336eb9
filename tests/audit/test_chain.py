"""The hash chain on PostgreSQL and SQLite: an untouched chain verifies (also after a purge); a row changed,
deleted or inserted is named; rows deleted at the tail are caught against the published head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from hxp.audit.trail import CHECKPOINT, AuditUnavailable, Event, Head, Trail, clean_details, digest
from hxp.core.database import Database
from tests.support.gateway import ROOT


@pytest.fixture
def trail(empty_db_url: str) -> Iterator[Trail]:
    db = Database(empty_db_url)
    db.migrate()
    trail = Trail(db)
    trail.append([Event("key.create", "master", target=f"key-{i}", client="10.0.0.1") for i in range(10)])
    yield trail
    db.close()


def test_an_untouched_chain_verifies(trail: Trail) -> None:
    report = trail.verify(trail.head())
    assert report.ok, report.problem
    assert (report.rows, report.head.seq) == (10, 10)


def test_a_changed_row_is_named(trail: Trail) -> None:
    trail.db.execute("UPDATE audit_events SET actor = 'someone-else' WHERE seq = 4")
    report = trail.verify()
    assert (report.ok, report.seq) == (False, 4)
    assert "row 4 was changed" in str(report.problem)


def test_a_deleted_row_is_named(trail: Trail) -> None:
    trail.db.execute("DELETE FROM audit_events WHERE seq = 6")
    report = trail.verify()
    assert (report.ok, report.seq) == (False, 7)
    assert "row 6 deleted" in str(report.problem)


def test_an_inserted_row_is_named(trail: Trail) -> None:
    """A row forged with a valid hash of its own, slotted in by renumbering the rows after it."""
    rows = list(trail.rows())
    trail.db.execute("UPDATE audit_events SET seq = seq + 1000 WHERE seq > 5")
    trail.db.execute("UPDATE audit_events SET seq = seq - 999 WHERE seq > 1000")
    forged = {**rows[5], "seq": 6, "event_id": "forged", "actor": "intruder", "prev_hash": rows[4]["hash"]}
    forged["hash"] = digest(forged)
    columns = list(forged)
    trail.db.execute(
        f"INSERT INTO audit_events ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [forged[c] for c in columns],
    )
    report = trail.verify()
    assert (report.ok, report.seq) == (False, 7)
    assert "row 7 was changed" in str(report.problem)  # the next row no longer hashes as it did at its place


def test_an_appended_forgery_is_caught_against_the_head_row(trail: Trail) -> None:
    last = list(trail.rows())[-1]
    forged = {**last, "seq": 11, "event_id": "forged", "prev_hash": last["hash"]}
    forged["hash"] = digest(forged)
    columns = list(forged)
    trail.db.execute(
        f"INSERT INTO audit_events ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
        [forged[c] for c in columns],
    )
    report = trail.verify()
    assert (report.ok, report.seq) == (False, 11)
    assert "inserted after the recorded head" in str(report.problem)


def test_the_newest_rows_deleted_are_caught_against_the_published_head(trail: Trail) -> None:
    published = trail.head()
    trail.db.execute("DELETE FROM audit_events WHERE seq > 7")
    assert not trail.verify().ok  # the head row still says 10
    trail.db.execute("UPDATE audit_head SET seq = 7, hash = (SELECT hash FROM audit_events WHERE seq = 7)")
    assert trail.verify().ok  # the table alone cannot tell...
    report = trail.verify(published)  # ...the head published outside it can
    assert (report.ok, report.seq) == (False, 8)
    assert "rows 8 to 10 deleted at the tail" in str(report.problem)


def test_a_rewritten_chain_is_caught_against_the_published_head(trail: Trail) -> None:
    published = Head(5, next(r["hash"] for r in trail.rows() if r["seq"] == 5)[:12])
    assert trail.verify(published).ok
    trail.db.execute("UPDATE audit_events SET target = 'other' WHERE seq = 3")
    rows = list(trail.rows())
    prev = rows[1]["hash"]
    for row in rows[2:]:  # the whole chain recomputed from row 3, and the head row with it
        row["prev_hash"] = prev
        row["hash"] = prev = digest(row)
        trail.db.execute(
            "UPDATE audit_events SET prev_hash = ?, hash = ? WHERE seq = ?", (row["prev_hash"], row["hash"], row["seq"])
        )
    trail.db.execute("UPDATE audit_head SET hash = ?", (prev,))
    assert trail.verify().ok
    report = trail.verify(published)
    assert (report.ok, report.seq) == (False, 5)


def test_the_chain_verifies_after_a_purge_and_the_purge_is_audited(trail: Trail) -> None:
    old = (datetime.now(UTC) - timedelta(days=400)).isoformat()
    trail.db.execute("UPDATE audit_events SET at = ? WHERE seq <= 6", (old,))
    _rehash(trail)  # the old rows as if written then
    assert trail.verify().ok
    removed = trail.purge(datetime.now(UTC) - timedelta(days=365), "cli:tester@host")
    assert removed == 6
    rows = list(trail.rows())
    assert [r["seq"] for r in rows] == [6, 7, 8, 9, 10, 11]
    assert rows[0]["action"] == CHECKPOINT
    purge = rows[-1]
    assert (purge["action"], purge["actor"], purge["count"]) == ("audit.purge", "cli:tester@host", 6)
    assert json.loads(purge["details"])["through_seq"] == 6
    report = trail.verify(trail.head())
    assert report.ok, report.problem
    trail.append([Event("key.revoke", "master", target="key-1")])
    assert trail.verify().ok
    assert trail.purge(datetime.now(UTC) - timedelta(days=365), "cli:tester@host") == 0  # nothing older left


def test_a_checkpoint_moved_by_hand_is_caught(trail: Trail) -> None:
    trail.purge(datetime.now(UTC) + timedelta(seconds=1), "cli:tester@host")  # everything so far
    trail.append([Event("key.create", "master", target=f"later-{i}") for i in range(3)])
    assert trail.verify().ok
    # hide rows 12 and 13: delete them and move the checkpoint onto row 13's hash
    hidden = {r["seq"]: r["hash"] for r in trail.rows()}
    trail.db.execute("DELETE FROM audit_events WHERE seq IN (12, 13)")
    trail.db.execute("UPDATE audit_events SET seq = 13, hash = ? WHERE seq = 10", (hidden[13],))
    trail.db.execute("DELETE FROM audit_events WHERE seq = 11")  # the purge event that names the real checkpoint
    report = trail.verify()
    assert (report.ok, report.seq) == (False, 13)
    assert "checkpoint" in str(report.problem)


def test_no_secret_or_prompt_text_reaches_the_table(trail: Trail) -> None:
    secret = "sk-" + "z" * 40
    details = {
        "key": secret,
        "master_key": secret,
        "api_key": secret,
        "prompt": "tell me",
        "messages": ["hi"],
        "key_id": "id-1",
        "note": f"Bearer {secret}",
        "nested": {"password": "hunter22", "alias": "k"},
    }
    trail.append([Event("key.create", "master", target="k", details=details)])
    row = list(trail.rows())[-1]
    assert secret not in json.dumps(row, default=str)
    assert "tell me" not in row["details"] and "hunter22" not in row["details"]
    assert json.loads(row["details"])["key_id"] == "id-1"
    assert clean_details({"input": "x", "content": "y", "alias": "a"}) == {"alias": "a"}


def _rehash(trail: Trail) -> None:
    prev = "0" * 64
    for row in trail.rows():
        row["prev_hash"] = prev
        row["hash"] = prev = digest(row)
        trail.db.execute(
            "UPDATE audit_events SET prev_hash = ?, hash = ? WHERE seq = ?", (row["prev_hash"], row["hash"], row["seq"])
        )
    trail.db.execute("UPDATE audit_head SET hash = ?", (prev,))


def test_a_trail_that_takes_no_write_is_unavailable(trail: Trail) -> None:
    trail.check_writable()
    trail.db.execute("DELETE FROM audit_head")
    with pytest.raises(AuditUnavailable):
        trail.check_writable()


def test_the_command_line_purges_verifies_and_names_the_broken_row(trail: Trail, empty_db_url: str) -> None:
    def hxp(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "DATABASE_URL": empty_db_url, "PYTHONPATH": str(ROOT / "services")}
        return subprocess.run(
            [sys.executable, "-m", "hxp.cli", "audit", *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    purged = hxp("purge", "--days", "0")
    assert purged.returncode == 0 and json.loads(purged.stdout)["purged"] == 10
    head = hxp("head").stdout.strip()
    assert head.startswith("11:")
    intact = hxp("verify", "--head", head)
    assert intact.returncode == 0 and "audit chain intact: 2 rows" in intact.stdout
    trail.db.execute("UPDATE audit_events SET outcome = 'failed' WHERE seq = 11")
    broken = hxp("verify")
    assert broken.returncode == 1 and "BROKEN at row 11: row 11 was changed" in broken.stderr
    assert hxp("verify", "--head", "11:xyz").returncode == 2
