"""The conversation store on SQLite and on a real PostgreSQL: contexts, positions under concurrent turns, retention."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from hxp.conversations import items
from hxp.conversations.store import Context, ConversationStore, Turn
from hxp.core.database import Database
from tests.support.gateway import ROOT

OWNER = "owner:team"


@pytest.fixture
def store(empty_db_url: str) -> Iterator[ConversationStore]:
    db = Database(empty_db_url, pool_size=8)
    assert "0006_conversations" in db.migrate()
    yield ConversationStore(db)
    db.close()


def message(role: str, text: str) -> dict:
    return items.stored_item({"role": role, "content": text})


def texts(context: Context | None) -> list[str]:
    assert context is not None
    return [item["content"][0]["text"] for item in context.items]


def save(store: ConversationStore, text: str, answer: str, **where: object) -> str:
    response_id = items.new_id("resp")
    store.save_turn(
        Turn(
            response={"id": response_id, "output": []},
            owner=OWNER,
            session_id=str(where.pop("session_id", response_id)),
            inputs=[message("user", text)],
            outputs=[message("assistant", answer)],
            **where,
        )
    )  # type: ignore[arg-type]
    return response_id


def test_a_chain_continues_from_the_conversation_its_first_response_was_in(store: ConversationStore) -> None:
    store.create_conversation("conv_1", OWNER, {}, [message("user", "c0")])
    seen = store.conversation_context("conv_1", OWNER)
    assert seen is not None and seen.history_end == 1 and seen.session_id == "conv_1"
    root = save(store, "c1", "r1", conversation_id="conv_1", history_end=seen.history_end, session_id="conv_1")
    store.add_items("conv_1", OWNER, [message("user", "later, elsewhere")])  # not in root's context
    follow = save(store, "p1", "r2", previous_response_id=root, session_id="conv_1")
    assert texts(store.chain_context(follow, OWNER)) == ["c0", "c1", "r1", "p1", "r2"]
    assert texts(store.chain_context(follow, OWNER, with_outputs=False)) == ["c0", "c1", "r1", "p1"]
    assert store.chain_context(follow, OWNER).session_id == "conv_1"  # type: ignore[union-attr]
    assert store.chain_context(follow, "owner:other") is None and store.chain_context(follow, None) is not None
    assert texts(store.conversation_context("conv_1", OWNER)) == ["c0", "c1", "r1", "later, elsewhere"]


def test_concurrent_turns_never_share_a_position(store: ConversationStore) -> None:
    store.create_conversation("conv_busy", OWNER, {}, [])
    context = store.conversation_context("conv_busy", OWNER)
    assert context is not None

    def turn(i: int) -> None:
        save(store, f"q{i}", f"a{i}", conversation_id="conv_busy", history_end=context.history_end)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(turn, range(40)))
    found = texts(store.conversation_context("conv_busy", OWNER))
    assert len(found) == 80 and all(found[found.index(f"q{i}") + 1] == f"a{i}" for i in range(40))
    positions = [
        r["position"]
        for r in store.db.fetchall(
            "SELECT position FROM context_items WHERE conversation_id = ? ORDER BY position", ("conv_busy",)
        )
    ]
    assert positions == list(range(80))


def test_purge_removes_what_is_past_the_retention_and_keeps_the_rest(store: ConversationStore) -> None:
    store.create_conversation("conv_old", OWNER, {}, [message("user", "old")])
    store.create_conversation("conv_new", OWNER, {}, [message("user", "new")])
    in_new = save(store, "n1", "n2", conversation_id="conv_new", history_end=1)
    old, recent = save(store, "o1", "o2"), save(store, "r1", "r2")
    month_ago = int(time.time()) - 31 * 86400
    store.db.execute("UPDATE conversations SET updated_at = ? WHERE conversation_id = ?", (month_ago, "conv_old"))
    store.db.execute("UPDATE responses SET created_at = ? WHERE response_id IN (?, ?)", (month_ago, old, in_new))
    assert store.purge(time.time() - 30 * 86400) == {"responses": 2, "conversations": 1}
    assert store.response(old, None) is None and store.conversation("conv_old", None) is None
    assert store.response(recent, OWNER) is not None
    assert texts(store.conversation_context("conv_new", OWNER)) == ["new", "n1", "n2"]  # its items stay
    leftovers = store.db.fetchall(
        "SELECT item_id FROM context_items WHERE conversation_id = ? OR response_id = ?", ("conv_old", old)
    )
    assert leftovers == []


def test_the_purge_command_applies_the_retention_setting_or_its_days(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'gateway.sqlite3'}"
    db = Database(url)
    db.migrate()
    store = ConversationStore(db)
    ages = {save(store, "q", "a"): days for days in (3, 5)}
    for response_id, days in ages.items():
        db.execute(
            "UPDATE responses SET created_at = ? WHERE response_id = ?", (int(time.time()) - days * 86400, response_id)
        )
    env = {"HXP_DATABASE_URL": url, "HXP_STATE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}

    def purge(*args: str, **extra: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "hxp.cli", "conversations", "purge", *args],
            env={**env, **extra},
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout

    assert '"responses": 0' in purge()  # the default retention is 30 days
    assert '"responses": 1' in purge(HXP_CONVERSATION_RETENTION_DAYS="4")
    assert [store.response(r, None) is not None for r in ages] == [True, False]
    assert '"responses": 1' in purge("--days", "2")
    assert all(store.response(r, None) is None for r in ages)
    db.close()
