"""The audit trail: append-only, hash-chained rows in ``audit_events`` (migration 0008), one chain per database.

Each row's ``hash`` is the SHA-256 of its canonical content (:func:`canonical`), which includes ``prev_hash``,
the hash of the row before it; ``seq`` numbers the rows without gaps. Appends are serialised in the database,
not in a process: each one locks the ``audit_head`` row (``SELECT ... FOR UPDATE`` on PostgreSQL, the
``BEGIN IMMEDIATE`` write lock on SQLite), so that every worker, replica and command extends the same chain.

The head (last ``seq`` and ``hash``) is also published outside the table: each event is logged as a JSON line
on the ``hxp.audit.events`` logger (the gateway sends it to the request log stream) with its ``seq`` and ``hash``, and
the gauges ``hxp_audit_chain_head_seq``, ``hxp_audit_chain_head_hash`` (the hash's first 13 hex digits, as a
number) and ``hxp_audit_chain_rows`` carry it to Prometheus. :meth:`Trail.verify` names the first row that was
changed, inserted or deleted; given a published head it also catches rows deleted at the tail.

A retention purge (:meth:`Trail.purge`) replaces the rows it removes with one checkpoint row whose hash is the
last removed row's, and appends an ``audit.purge`` event recording that hash: the rest still verifies, and a
checkpoint moved by hand no longer matches the newest purge event.

No secret and no prompt or completion text reaches the table: :func:`clean_details` drops fields named like
either and masks credentials in the values.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from prometheus_client import Counter, Gauge

from hxp.core.database import Database
from hxp.core.redaction import redact

log = logging.getLogger(__name__)
events_log = logging.getLogger("hxp.audit.events")  # one JSON line per event (the request log stream)
GENESIS = "0" * 64
CHECKPOINT = "audit.checkpoint"
PURGE = "audit.purge"
COLUMNS = (
    "seq",
    "event_id",
    "at",
    "actor",
    "client",
    "action",
    "target",
    "outcome",
    "request_id",
    "count",
    "details",
    "prev_hash",
    "hash",
)
_WIDTHS = {"actor": 200, "client": 64, "action": 64, "target": 200, "outcome": 32, "request_id": 64}
# Fields never kept in details, whatever their value: secrets, and what a model was asked or answered
# (``key`` and ``master_key`` are withheld, ``key_id`` is kept).
_WITHHELD = re.compile(
    r"(?:^|_)(?:key|secret|password|passwd|token|authorization|cookie|prompt|messages|input|"
    r"completion|content|text)$"
)
_PAGE = 5000  # rows per read while verifying

EVENTS = Counter(
    "hxp_audit_events", "Audit events appended (an aggregated refusal row counts each refusal)", ["action", "outcome"]
)
HEAD_SEQ = Gauge("hxp_audit_chain_head_seq", "The audit chain's last row number", multiprocess_mode="max")
HEAD_HASH = Gauge(
    "hxp_audit_chain_head_hash",
    "The audit chain head's hash: its first 13 hex digits as a number",
    multiprocess_mode="mostrecent",
)
ROWS = Gauge("hxp_audit_chain_rows", "Rows in the audit table (a checkpoint included)", multiprocess_mode="mostrecent")


def utc_iso(value: datetime | str) -> str:
    """A time as the trail writes and hashes it: ISO 8601 in UTC with microseconds."""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def clean_details(details: dict[str, Any]) -> dict[str, Any]:
    """``details`` without fields named like a secret or like prompt text, credentials masked in the rest."""
    kept: dict[str, Any] = {}
    for name, value in details.items():
        if _WITHHELD.search(name.lower()):
            continue
        if isinstance(value, dict):
            value = clean_details(value)
        elif isinstance(value, str):
            value = redact(value)[:500]
        elif isinstance(value, (list, tuple)):
            value = [redact(v)[:200] if isinstance(v, str) else v for v in value][:100]
        kept[name] = value
    return kept


@dataclass(frozen=True)
class Event:
    """One security-relevant event, before it has its place in the chain."""

    action: str  # e.g. key.create, console.sign_in, request.refused
    actor: str  # key alias, "master", "console:<session>", "cli:<user>@<host>", "anonymous"
    outcome: str = "ok"  # ok, denied, not_found, invalid, failed, or the refusal's status
    target: str = ""
    client: str = ""
    request_id: str = ""
    count: int = 1  # >1: that many refusals of one window in one row
    details: dict[str, Any] = field(default_factory=dict)
    at: str = field(default_factory=lambda: utc_iso(datetime.now(UTC)))
    event_id: str = field(default_factory=lambda: str(uuid.uuid4()))

    def __post_init__(self) -> None:
        for name, width in _WIDTHS.items():
            object.__setattr__(self, name, str(getattr(self, name) or "")[:width])
        object.__setattr__(self, "at", utc_iso(self.at))
        object.__setattr__(self, "details", clean_details(self.details))

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        """An event read back from the spill folder (fields it does not know are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def canonical(row: dict[str, Any]) -> bytes:
    """The bytes a row's hash covers: every column but ``hash``, in a fixed order and form."""
    values = [
        int(row["seq"]),
        str(row["event_id"]),
        utc_iso(row["at"]),
        row["actor"],
        row["client"],
        row["action"],
        row["target"],
        row["outcome"],
        row["request_id"],
        int(row["count"]),
        row["details"],
        row["prev_hash"],
    ]
    return json.dumps(values, separators=(",", ":"), ensure_ascii=True).encode()


def digest(row: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(row)).hexdigest()


@dataclass(frozen=True)
class Head:
    """The chain's last row: its number and hash (``hash`` may be a prefix when given by hand)."""

    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> Head:
        """``SEQ:HASH`` (HASH: the full hash or its first 8 or more hex digits)."""
        seq, _, value = text.partition(":")
        value = value.strip().lower()
        if not seq.strip().isdigit() or len(value) < 8 or any(c not in "0123456789abcdef" for c in value):
            raise ValueError(f"a head is SEQ:HASH (a row number and 8 or more hex digits of its hash), not {text!r}")
        return cls(int(seq), value)


@dataclass(frozen=True)
class Report:
    """What :meth:`Trail.verify` found: ``problem`` names the first broken row (None: the chain is whole)."""

    rows: int
    head: Head
    problem: str | None = None
    seq: int | None = None  # the row the problem is at

    @property
    def ok(self) -> bool:
        return self.problem is None


class AuditUnavailable(RuntimeError):
    """The trail cannot be written now (the database is away)."""


class Trail:
    """Append, verify, purge the audit chain of one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- appending ---------------------------------------------------------------------------------------------
    def check_writable(self) -> None:
        """Raise :class:`AuditUnavailable` unless the database takes a write to the audit tables now."""
        try:
            with self.db.transaction() as cur:
                if cur.execute("UPDATE audit_head SET seq = seq WHERE id = 1") != 1:
                    raise AuditUnavailable("the audit head row is missing")
        except AuditUnavailable:
            raise
        except Exception as exc:  # any failure of the database means the same
            raise AuditUnavailable(str(exc)) from exc

    def append(self, events: Sequence[Event]) -> list[dict[str, Any]]:
        """Append ``events`` to the chain in one transaction; return the rows written. An event already in the
        table (same ``event_id``: a replay done twice) is skipped."""
        if not events:
            return []
        with self.db.transaction() as cur:
            rows = self._append(cur, events)
        self._published(rows)
        return rows

    def _append(self, cur: Any, events: Sequence[Event]) -> list[dict[str, Any]]:
        lock = " FOR UPDATE" if self.db.dialect == "postgresql" else ""
        cur.execute(f"SELECT seq, hash, rows_kept FROM audit_head WHERE id = 1{lock}")
        head = cur.fetchall()[0]
        seq, prev, kept = int(head["seq"]), str(head["hash"]), int(head["rows_kept"])
        ids = [e.event_id for e in events]
        cur.execute(f"SELECT event_id FROM audit_events WHERE event_id IN ({', '.join('?' * len(ids))})", ids)
        present = {r["event_id"] for r in cur.fetchall()}
        rows: list[dict[str, Any]] = []
        for event in events:
            if event.event_id in present:
                continue
            present.add(event.event_id)
            seq += 1
            row = {
                **event.to_json(),
                "seq": seq,
                "details": json.dumps(event.details, sort_keys=True, separators=(",", ":")),
                "prev_hash": prev,
            }
            row["hash"] = prev = digest(row)
            rows.append(row)
        if rows:
            cur.executemany(
                f"INSERT INTO audit_events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                [[r[c] for c in COLUMNS] for r in rows],
            )
            cur.execute(
                "UPDATE audit_head SET seq = ?, hash = ?, rows_kept = ? WHERE id = 1", (seq, prev, kept + len(rows))
            )
            for row in rows:
                row["rows_kept"] = kept = kept + 1
        return rows

    def _published(self, rows: list[dict[str, Any]]) -> None:
        """Each row as a JSON line on the ``hxp.audit`` log, counted, and the head on the gauges."""
        for row in rows:
            EVENTS.labels(row["action"], row["outcome"]).inc(row["count"])
            events_log.info(
                json.dumps(
                    {
                        "time": row["at"],
                        "event": "audit",
                        **{c: row[c] for c in COLUMNS if c != "details"},
                        "details": json.loads(row["details"]),
                    },
                    separators=(",", ":"),
                )
            )
        if rows:
            last = rows[-1]
            HEAD_SEQ.set(last["seq"])
            HEAD_HASH.set(int(last["hash"][:13], 16))
            ROWS.set(last["rows_kept"])

    def publish_head(self) -> None:
        """Set the head gauges from the table (a process starting, before its first append)."""
        row = self.db.fetchone("SELECT seq, hash, rows_kept FROM audit_head WHERE id = 1")
        if row is not None and int(row["seq"]):
            HEAD_SEQ.set(int(row["seq"]))
            HEAD_HASH.set(int(str(row["hash"])[:13], 16))
            ROWS.set(int(row["rows_kept"]))

    def head(self) -> Head:
        row = self.db.fetchone("SELECT seq, hash FROM audit_head WHERE id = 1")
        assert row is not None, "migration 0008 creates the head row"
        return Head(int(row["seq"]), str(row["hash"]))

    # --- retention ---------------------------------------------------------------------------------------------
    def purge(self, before: datetime, actor: str) -> int:
        """Remove the rows older than ``before`` (those before the first row that is not), leaving a checkpoint
        row with the last removed row's hash and appending an ``audit.purge`` event; return the rows removed."""
        cutoff = utc_iso(before)
        with self.db.transaction() as cur:
            lock = " FOR UPDATE" if self.db.dialect == "postgresql" else ""
            cur.execute(f"SELECT seq FROM audit_head WHERE id = 1{lock}")
            cur.execute("SELECT MIN(seq) AS seq FROM audit_events WHERE at >= ?", (cutoff,))
            first_kept = cur.fetchall()[0]["seq"]
            cur.execute(
                "SELECT MAX(seq) AS seq FROM audit_events" + (" WHERE seq < ?" if first_kept else ""),
                (first_kept,) if first_kept else (),
            )
            last = cur.fetchall()[0]["seq"]
            cur.execute("SELECT seq, at, hash, action FROM audit_events WHERE seq = ?", (last,))
            cut = cur.fetchall()
            if not cut or cut[0]["action"] == CHECKPOINT:
                return 0
            cut_row = cut[0]
            removed = cur.execute("DELETE FROM audit_events WHERE seq <= ? AND action <> ?", (last, CHECKPOINT))
            cur.execute("DELETE FROM audit_events WHERE seq <= ?", (last,))
            checkpoint = {
                "seq": last,
                "event_id": str(uuid.uuid4()),
                "at": utc_iso(cut_row["at"]),
                "actor": "hxp",
                "client": "",
                "action": CHECKPOINT,
                "target": "audit_events",
                "outcome": "ok",
                "request_id": "",
                "count": removed,
                "details": json.dumps({"before": cutoff}),
                "prev_hash": GENESIS,
                "hash": cut_row["hash"],
            }
            cur.execute(
                f"INSERT INTO audit_events ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})",
                [checkpoint[c] for c in COLUMNS],
            )
            cur.execute("SELECT COUNT(*) AS n FROM audit_events")
            cur.execute("UPDATE audit_head SET rows_kept = ? WHERE id = 1", (cur.fetchall()[0]["n"],))
            event = Event(
                PURGE,
                actor,
                target="audit_events",
                count=removed,
                details={"before": cutoff, "through_seq": last, "checkpoint_hash": cut_row["hash"]},
            )
            rows = self._append(cur, [event])
        self._published(rows)
        log.warning("audit: purged %d rows older than %s (through row %d)", removed, cutoff, last)
        return removed

    # --- verifying ---------------------------------------------------------------------------------------------
    def rows(self) -> Iterator[dict[str, Any]]:
        """Every row in chain order, read in pages."""
        after = -1
        while True:
            page = self.db.fetchall(
                f"SELECT {', '.join(COLUMNS)} FROM audit_events WHERE seq > ? ORDER BY seq LIMIT {_PAGE}", (after,)
            )
            yield from page
            if len(page) < _PAGE:
                return
            after = int(page[-1]["seq"])

    def verify(self, published: Head | None = None) -> Report:
        """Recompute the chain; name the first row changed, inserted or deleted. ``published``: a head recorded
        outside the table (log line, gauge), to catch rows deleted at the tail with the head row rewritten."""
        head = self.head()
        expected_seq, prev = 1, GENESIS
        count, last_seq, checkpoint, last_purge = 0, 0, None, None
        hashes_at: dict[int, str] = {}

        def broken(problem: str, seq: int | None) -> Report:
            return Report(count, head, problem, seq)

        for row in self.rows():
            seq = int(row["seq"])
            count += 1
            if count == 1 and row["action"] == CHECKPOINT:
                checkpoint, expected_seq, prev = row, seq + 1, str(row["hash"])
                last_seq = seq
                continue
            if row["action"] == CHECKPOINT:
                return broken(f"row {seq} is a checkpoint inside the chain: it was inserted", seq)
            if seq > head.seq:
                return broken(f"row {seq} was inserted after the recorded head (row {head.seq})", seq)
            if seq != expected_seq:
                return broken(
                    f"{_span(expected_seq, seq - 1)} deleted: the chain jumps from row {expected_seq - 1} to row {seq}",
                    seq,
                )
            if digest(row) != row["hash"]:
                return broken(f"row {seq} was changed: its content does not match its hash", seq)
            if row["prev_hash"] != prev:
                return broken(f"row {seq} was inserted or replaced: it does not link to row {seq - 1}", seq)
            if row["action"] == PURGE:
                last_purge = row
            if published is not None and seq == published.seq:
                hashes_at[seq] = str(row["hash"])
            expected_seq, prev, last_seq = seq + 1, str(row["hash"]), seq
        if checkpoint is not None:
            recorded = json.loads(last_purge["details"]) if last_purge else {}
            if (recorded.get("through_seq"), recorded.get("checkpoint_hash")) != (
                checkpoint["seq"],
                checkpoint["hash"],
            ):
                return broken(
                    f"the checkpoint (row {checkpoint['seq']}) does not match the last audit.purge event: "
                    "rows before it were deleted or it was moved",
                    int(checkpoint["seq"]),
                )
        if last_seq != head.seq or (head.seq and prev != head.hash):
            first = last_seq + 1
            return broken(
                f"{_span(first, head.seq)} deleted at the tail (the head records row {head.seq})"
                if last_seq < head.seq
                else f"the head row does not match row {last_seq}",
                first,
            )
        if published is not None:
            if published.seq > last_seq:
                return broken(
                    f"{_span(last_seq + 1, published.seq)} deleted at the tail: the published head is "
                    f"row {published.seq}, the chain ends at row {last_seq}",
                    last_seq + 1,
                )
            found = hashes_at.get(published.seq)
            if found is not None and not found.startswith(published.hash):
                return broken(
                    f"row {published.seq} does not match the published head: the chain was rewritten "
                    "from there or before",
                    published.seq,
                )
        return Report(count, head)


def _span(first: int, last: int) -> str:
    return f"row {first}" if first == last else f"rows {first} to {last}"
