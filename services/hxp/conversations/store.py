"""Stored responses, conversations and their items, in the gateway's database (migration 0006).

Every object has an owner (:func:`owner_of`); reads and deletes name the caller's owner, or None
for the master key, which reaches every object. A response's context is rebuilt from the
database on every turn, so any gateway replica can continue any chain:

- a chain of ``previous_response_id``: each response's own items (input, then output), oldest
  response first, after the conversation items its first response started from;
- a conversation: its items in order (``position``, allocated in the conversation's row under a
  lock, so concurrent turns on several replicas never interleave their positions).

Calls are blocking (run them in a thread from async code). Times are Unix seconds.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from hxp.core.context import Runtime, runtime
from hxp.core.database import Database

if TYPE_CHECKING:  # not imported at run time: the purge command runs without LiteLLM
    from hxp.gateway.auth import Caller

MASTER_OWNER = "master"


def owner_of(caller: Caller) -> str:
    """Who owns what a caller stores: the key's owner, else the key itself; the master key its own space."""
    if caller.key is None:
        return MASTER_OWNER
    return f"owner:{caller.key.owner}" if caller.key.owner else f"key:{caller.key.key_id}"


def reader_of(caller: Caller) -> str | None:
    """The owner whose objects a caller may read and delete; None (all of them) for the master key."""
    return None if caller.master else owner_of(caller)


def _json(value: Any) -> str:
    return orjson.dumps(value).decode()


def _owned(owner: str | None, column: str = "owner") -> tuple[str, tuple[str, ...]]:
    return ("", ()) if owner is None else (f" AND {column} = ?", (owner,))


@dataclass
class Turn:
    """One response to store, with the items it adds."""

    response: dict[str, Any]
    owner: str
    session_id: str
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    previous_response_id: str | None = None
    conversation_id: str | None = None
    history_end: int | None = None  # the conversation's items before this position were its context


@dataclass
class Context:
    """What a new turn starts from: the earlier items, and where they came from."""

    items: list[dict[str, Any]]
    session_id: str | None = None
    history_end: int | None = None  # a conversation's next position when it was read


class ConversationStore:
    """SQL access to responses, conversations and items."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- responses ---------------------------------------------------------------------------------------
    def save_turn(self, turn: Turn) -> None:
        """Store a response and its items; in a conversation, append them to it (inputs, then outputs)."""
        now = int(time.time())
        with self.db.transaction() as cur:
            start = 0
            if turn.conversation_id is not None:
                start = self._allocate(cur, turn.conversation_id, len(turn.inputs) + len(turn.outputs), now)
            cur.execute(
                "INSERT INTO responses (response_id, owner, session_id, previous_response_id, conversation_id, "
                "history_end, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    turn.response["id"],
                    turn.owner,
                    turn.session_id,
                    turn.previous_response_id,
                    turn.conversation_id,
                    turn.history_end,
                    _json(turn.response),
                    now,
                ),
            )
            rows = [
                (item["id"], turn.response["id"], turn.conversation_id, start + i, is_output, _json(item), now)
                for i, (item, is_output) in enumerate(
                    [(x, False) for x in turn.inputs] + [(x, True) for x in turn.outputs]
                )
            ]
            if rows:
                cur.executemany(
                    "INSERT INTO context_items (item_id, response_id, conversation_id, position, "
                    "is_output, data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )

    def response(self, response_id: str, owner: str | None) -> dict[str, Any] | None:
        """A stored response as it was answered."""
        where, params = _owned(owner)
        row = self.db.fetchone(f"SELECT body FROM responses WHERE response_id = ?{where}", (response_id, *params))
        return None if row is None else orjson.loads(row["body"])

    def chain_context(self, response_id: str, owner: str | None, with_outputs: bool = True) -> Context | None:
        """The items a response saw and (``with_outputs``) gave: the context a follow-up turn continues."""
        where, params = _owned(owner)
        chain = self.db.fetchall(
            "WITH RECURSIVE chain (response_id, previous_response_id, conversation_id, history_end, session_id, "
            "depth) AS (SELECT response_id, previous_response_id, conversation_id, history_end, session_id, 0 "
            f"FROM responses WHERE response_id = ?{where} "
            "UNION ALL SELECT r.response_id, r.previous_response_id, r.conversation_id, r.history_end, "
            "r.session_id, c.depth + 1 FROM responses r JOIN chain c ON r.response_id = c.previous_response_id) "
            "SELECT response_id, conversation_id, history_end, session_id, depth FROM chain ORDER BY depth DESC",
            (response_id, *params),
        )
        if not chain:
            return None
        root, items = chain[0], []
        if root["conversation_id"] is not None:
            items = self._conversation_items(root["conversation_id"], root["history_end"])
        depth = {row["response_id"]: row["depth"] for row in chain}
        marks = ", ".join("?" * len(depth))
        own = self.db.fetchall(
            f"SELECT response_id, position, is_output, data FROM context_items WHERE response_id IN ({marks})",
            tuple(depth),
        )
        own.sort(key=lambda row: (-depth[row["response_id"]], row["position"]))
        items += [
            orjson.loads(row["data"])
            for row in own
            if with_outputs or not (row["response_id"] == response_id and row["is_output"])
        ]
        return Context(items, session_id=chain[-1]["session_id"])

    def delete_response(self, response_id: str, owner: str | None) -> bool:
        """Delete a response and the items only it holds (its conversation keeps its own)."""
        where, params = _owned(owner)
        with self.db.transaction() as cur:
            cur.execute(f"SELECT response_id FROM responses WHERE response_id = ?{where}", (response_id, *params))
            if not cur.fetchall():
                return False
            cur.execute("DELETE FROM context_items WHERE response_id = ? AND conversation_id IS NULL", (response_id,))
            cur.execute("DELETE FROM responses WHERE response_id = ?", (response_id,))
        return True

    # --- conversations -----------------------------------------------------------------------------------
    def create_conversation(
        self, conversation_id: str, owner: str, metadata: dict[str, str], items: list[dict[str, Any]]
    ) -> dict[str, Any]:
        now = int(time.time())
        with self.db.transaction() as cur:
            cur.execute(
                "INSERT INTO conversations (conversation_id, owner, metadata, next_position, created_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                (conversation_id, owner, _json(metadata), 0, now, now),
            )
            self._append(cur, conversation_id, items, now)
        return _conversation(conversation_id, metadata, now)

    def conversation(self, conversation_id: str, owner: str | None) -> dict[str, Any] | None:
        where, params = _owned(owner)
        row = self.db.fetchone(
            f"SELECT metadata, created_at FROM conversations WHERE conversation_id = ?{where}",
            (conversation_id, *params),
        )
        return None if row is None else _conversation(conversation_id, orjson.loads(row["metadata"]), row["created_at"])

    def update_conversation(
        self, conversation_id: str, owner: str | None, metadata: dict[str, str]
    ) -> dict[str, Any] | None:
        where, params = _owned(owner)
        changed = self.db.execute(
            f"UPDATE conversations SET metadata = ?, updated_at = ? WHERE conversation_id = ?{where}",
            (_json(metadata), int(time.time()), conversation_id, *params),
        )
        return self.conversation(conversation_id, owner) if changed else None

    def delete_conversation(self, conversation_id: str, owner: str | None) -> bool:
        where, params = _owned(owner)
        with self.db.transaction() as cur:
            if not cur.execute(
                f"DELETE FROM conversations WHERE conversation_id = ?{where}", (conversation_id, *params)
            ):
                return False
            cur.execute("DELETE FROM context_items WHERE conversation_id = ?", (conversation_id,))
        return True

    def conversation_context(self, conversation_id: str, owner: str | None) -> Context | None:
        """A conversation's items in order, and the position the next item will take."""
        where, params = _owned(owner)
        row = self.db.fetchone(
            f"SELECT next_position FROM conversations WHERE conversation_id = ?{where}", (conversation_id, *params)
        )
        if row is None:
            return None
        end = row["next_position"]
        return Context(self._conversation_items(conversation_id, end), session_id=conversation_id, history_end=end)

    def add_items(self, conversation_id: str, owner: str | None, items: list[dict[str, Any]]) -> bool:
        """Append items to a conversation (False: no such conversation for this owner)."""
        where, params = _owned(owner)
        with self.db.transaction() as cur:
            cur.execute(
                f"SELECT conversation_id FROM conversations WHERE conversation_id = ?{where}",
                (conversation_id, *params),
            )
            if not cur.fetchall():
                return False
            self._append(cur, conversation_id, items, int(time.time()))
        return True

    def item(self, conversation_id: str, item_id: str) -> dict[str, Any] | None:
        row = self.db.fetchone(
            "SELECT data FROM context_items WHERE conversation_id = ? AND item_id = ?", (conversation_id, item_id)
        )
        return None if row is None else orjson.loads(row["data"])

    def delete_item(self, conversation_id: str, item_id: str) -> bool:
        return bool(
            self.db.execute(
                "DELETE FROM context_items WHERE conversation_id = ? AND item_id = ?", (conversation_id, item_id)
            )
        )

    # --- retention ---------------------------------------------------------------------------------------
    def purge(self, before: float) -> dict[str, int]:
        """Delete responses created and conversations last used before ``before`` (Unix time), with their items."""
        cutoff = int(before)
        with self.db.transaction() as cur:
            cur.execute(
                "DELETE FROM context_items WHERE conversation_id IS NULL AND response_id IN "
                "(SELECT response_id FROM responses WHERE created_at < ?)",
                (cutoff,),
            )
            responses = cur.execute("DELETE FROM responses WHERE created_at < ?", (cutoff,))
            cur.execute(
                "DELETE FROM context_items WHERE conversation_id IN "
                "(SELECT conversation_id FROM conversations WHERE updated_at < ?)",
                (cutoff,),
            )
            conversations = cur.execute("DELETE FROM conversations WHERE updated_at < ?", (cutoff,))
        return {"responses": max(responses, 0), "conversations": max(conversations, 0)}

    # --- helpers -----------------------------------------------------------------------------------------
    def _conversation_items(self, conversation_id: str, end: int | None) -> list[dict[str, Any]]:
        rows = self.db.fetchall(
            "SELECT data FROM context_items WHERE conversation_id = ? AND position < ? ORDER BY position",
            (conversation_id, end if end is not None else 0),
        )
        return [orjson.loads(row["data"]) for row in rows]

    @staticmethod
    def _allocate(cur: Any, conversation_id: str, count: int, now: int) -> int:
        """Reserve ``count`` positions at the end of a conversation (its row stays locked until commit)."""
        cur.execute(
            "UPDATE conversations SET next_position = next_position + ?, updated_at = ? WHERE conversation_id = ?",
            (count, now, conversation_id),
        )
        cur.execute("SELECT next_position FROM conversations WHERE conversation_id = ?", (conversation_id,))
        rows = cur.fetchall()
        if not rows:
            raise LookupError(f"conversation {conversation_id} no longer exists")
        return int(rows[0]["next_position"]) - count

    def _append(self, cur: Any, conversation_id: str, items: list[dict[str, Any]], now: int) -> None:
        if not items:
            return
        start = self._allocate(cur, conversation_id, len(items), now)
        cur.executemany(
            "INSERT INTO context_items (item_id, response_id, conversation_id, position, is_output, "
            "data, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(item["id"], None, conversation_id, start + i, False, _json(item), now) for i, item in enumerate(items)],
        )


def _conversation(conversation_id: str, metadata: dict[str, str], created_at: int) -> dict[str, Any]:
    return {"id": conversation_id, "object": "conversation", "created_at": int(created_at), "metadata": metadata}


def _store(rt: Runtime) -> ConversationStore:
    return ConversationStore(Database(rt.settings.database_url))


def current() -> ConversationStore:
    """This runtime's store on the gateway database."""
    return runtime().get(_store)


def purge(days: float) -> dict[str, int]:
    """Delete the responses created and the conversations last used more than ``days`` ago."""
    return current().purge(time.time() - days * 86400)
