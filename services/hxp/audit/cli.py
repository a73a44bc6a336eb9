"""`hxp audit verify|search|purge|head`: check, search and trim the audit trail (on DATABASE_URL)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta

from hxp.audit import operator, search
from hxp.audit.trail import Head, Trail
from hxp.core import settings
from hxp.core.database import Database


def _trail() -> Trail:
    db = Database(settings.load().database_url)
    db.migrate()
    return Trail(db)


def _verify(args: argparse.Namespace) -> int:
    try:
        published = Head.parse(args.head) if args.head else None
    except ValueError as exc:
        print(f"hxp audit verify: --head: {exc}", file=sys.stderr)
        return 2
    trail = _trail()
    try:
        report = trail.verify(published)
    finally:
        trail.db.close()
    if args.json:
        print(
            json.dumps(
                {
                    "ok": report.ok,
                    "rows": report.rows,
                    "head": vars(report.head),
                    "problem": report.problem,
                    "seq": report.seq,
                }
            )
        )
    elif report.ok:
        print(f"audit chain intact: {report.rows} rows, head row {report.head.seq} {report.head.hash}")
    else:
        print(f"audit chain BROKEN at row {report.seq}: {report.problem}", file=sys.stderr)
    return 0 if report.ok else 1


def _search(args: argparse.Namespace) -> int:
    try:
        filters = search.parse({name: getattr(args, name) for name in search.FILTERS})
    except search.SearchError as exc:
        print(f"hxp audit search: {exc}", file=sys.stderr)
        return 2
    trail = _trail()
    try:
        rows = search.search(trail.db, filters)
    finally:
        trail.db.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        target = f" {row['target']}" if row["target"] else ""
        count = f" x{row['count']}" if row["count"] > 1 else ""
        print(
            f"{row['at']}  #{row['seq']}  {row['actor']:<28} {row['action']}{target} -> {row['outcome']}{count}"
            f"  {row['client']}".rstrip()
        )
    return 0


def _purge(args: argparse.Namespace) -> int:
    days = args.days if args.days is not None else settings.load().audit_retention_days
    trail = _trail()
    try:
        removed = trail.purge(datetime.now(UTC) - timedelta(days=days), operator.actor())
        print(json.dumps({"older_than_days": days, "purged": removed, "head": vars(trail.head())}))
    finally:
        trail.db.close()
    return 0


def _head(args: argparse.Namespace) -> int:
    trail = _trail()
    try:
        head = trail.head()
    finally:
        trail.db.close()
    print(f"{head.seq}:{head.hash}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="the audit trail: verify its chain, search it, purge old events")
    actions = audit.add_subparsers(dest="action", required=True)
    verify = actions.add_parser(
        "verify", help="recompute the hash chain; name the first row changed, inserted or deleted (exit 1)"
    )
    verify.add_argument(
        "--head",
        metavar="SEQ:HASH",
        help="a head recorded outside the table (the log's last "
        "audit line, the hxp_audit_chain_head_* gauges): catches rows deleted at the tail",
    )
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(func=_verify)
    find = actions.add_parser("search", help="events matching every filter given, newest first")
    for name in search.FIELDS:
        find.add_argument(f"--{name}", help=f"the {name}, exactly, or a prefix ending in '*'")
    find.add_argument("--since", help="from this UTC date (YYYY-MM-DD) or ISO 8601 time")
    find.add_argument("--until", help="before this time (a date: to the end of that day)")
    find.add_argument(
        "--limit", default=str(search.DEFAULT_LIMIT), help=f"at most this many (up to {search.MAX_LIMIT})"
    )
    find.add_argument("--json", action="store_true", help="the rows as JSON")
    find.set_defaults(func=_search)
    purge = actions.add_parser(
        "purge",
        help="remove events past HXP_AUDIT_RETENTION_DAYS now (a checkpoint keeps "
        "the rest verifiable; the purge is audited)",
    )
    purge.add_argument("--days", type=float, help="remove what is older than this many days instead")
    purge.set_defaults(func=_purge)
    actions.add_parser("head", help="the chain's head as SEQ:HASH (record it outside the database)").set_defaults(
        func=_head
    )
