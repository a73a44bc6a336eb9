"""`hxp conversations purge`: delete stored responses and conversations past the retention, now (audited)."""

from __future__ import annotations

import argparse
import json

from hxp.audit import operator
from hxp.core.context import runtime


def _purge(args: argparse.Namespace) -> int:
    from hxp.conversations import store

    days = runtime().settings.conversation_retention_days if args.days is None else args.days
    db = store.current().db
    db.migrate()
    with operator.recorded(db.url, "conversations.purge", "conversations", older_than_days=days) as details:
        details["purged"] = store.purge(days)
    print(json.dumps({"older_than_days": days, "purged": details["purged"]}))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    conversations = sub.add_parser("conversations", help="the Responses and Conversations APIs' stored state")
    actions = conversations.add_subparsers(dest="action", required=True)
    purge = actions.add_parser(
        "purge",
        help="delete responses created and conversations last used before the "
        "retention (HXP_CONVERSATION_RETENTION_DAYS, default 30 days)",
    )
    purge.add_argument("--days", type=float, help="purge what is older than this many days instead (0: everything)")
    purge.set_defaults(func=_purge)
