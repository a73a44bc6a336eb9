"""`hxp gateway serve|routes` and `hxp keys create|list|grant|revoke|rotate` (keys work on the database directly;
each change is audited as the operator's, or refused when the audit trail cannot be written)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hxp.audit import operator
from hxp.audit.trail import AuditUnavailable
from hxp.core import settings
from hxp.core.database import Database
from hxp.gateway.keys import KeyStore, KeyStoreError, expiry
from hxp.gateway.tuning import HTTP_STACKS


def _serve(args: argparse.Namespace) -> int:
    from hxp.gateway import litellm_env

    litellm_env.apply()  # before the launcher imports LiteLLM
    from hxp.gateway import launcher

    launcher.serve(args.host, args.port, args.workers, args.http_stack)
    return 0


def _routes(args: argparse.Namespace) -> int:
    """Print the route table, or the app's routes the table and the outside list do not classify."""
    from hxp.gateway import route_table

    if args.unclassified:
        from hxp.gateway.app import proxy_app

        missing = sorted(route_table.unclassified(proxy_app), key=lambda r: (r[1], r[0]))
        for kind, path in missing:
            print(kind, path)
        return 1 if missing else 0
    for route in route_table.table().routes:
        print(f"{','.join(route.methods):<10} {route.path:<62} {route.access}")
    return 0


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [n.strip() for n in text.split(",") if n.strip()]


def _store() -> KeyStore:
    db = Database(settings.load().database_url)
    db.migrate()
    return KeyStore(db)


def _print(payload: Any) -> None:
    print(json.dumps(payload, indent=2))


def _change(store: KeyStore, args: argparse.Namespace) -> Any:
    """The change a keys command makes; what it prints."""
    if args.action == "create":
        key, secret = store.create(
            args.alias,
            owner=args.owner,
            models=_names(args.models),
            rpm=args.rpm,
            tpm=args.tpm,
            expires_at=expiry(args.expires, args.days),
            read_collections=_names(args.read),
            write_collections=_names(args.write),
        )
        return key.issued(secret)
    if args.action == "grant":
        return store.set_grants(args.ref, _names(args.read), _names(args.write)).public()
    if args.action == "revoke":
        return store.revoke(args.ref).public()
    key, secret = store.rotate(args.ref)
    return key.issued(secret)


def _keys(args: argparse.Namespace) -> int:
    store = _store()
    try:
        if args.action == "list":
            _print([k.public() for k in store.list()])
            return 0
        target = args.alias if args.action == "create" else args.ref
        details = {k: v for k, v in vars(args).items() if k not in ("func", "action", "command") and v is not None}
        with operator.recorded(
            store.db.url, f"key.{'grants' if args.action == 'grant' else args.action}", target, **details
        ) as recorded:
            result = _change(store, args)
            recorded["key_id"] = result["key_id"]
        _print(result)
    except AuditUnavailable as exc:
        print(f"hxp keys {args.action}: refused: the audit trail cannot be written ({exc})", file=sys.stderr)
        return 3
    except KeyStoreError as exc:
        print(f"hxp keys {args.action}: {exc}", file=sys.stderr)
        return 2
    finally:
        store.db.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    gateway = sub.add_parser("gateway", help="the OpenAI-compatible gateway").add_subparsers(
        dest="action", required=True
    )
    serve = gateway.add_parser("serve", help="serve the gateway (LiteLLM proxy with the project's hooks)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (use the number of cores)")
    serve.add_argument(
        "--http-stack",
        choices=sorted(HTTP_STACKS),
        default="fast",
        help="uvicorn's HTTP parser and event loop: fast = httptools + uvloop; "
        "plain = h11 + asyncio (the benchmark's comparison)",
    )
    serve.set_defaults(func=_serve)
    routes = gateway.add_parser("routes", help="the route table: every path served and who may call it")
    routes.add_argument(
        "--unclassified",
        action="store_true",
        help="list the app's routes neither served nor classified outside (exit 1 if any)",
    )
    routes.set_defaults(func=_routes)

    keys = sub.add_parser("keys", help="manage the gateway's API keys").add_subparsers(dest="action", required=True)
    create = keys.add_parser("create", help="create a key; prints its secret once")
    create.add_argument("--alias", required=True)
    create.add_argument("--owner")
    create.add_argument("--models", help="comma-separated model names (default: every model)")
    create.add_argument("--rpm", type=int, help="requests per minute")
    create.add_argument("--tpm", type=int, help="tokens per minute")
    when = create.add_mutually_exclusive_group()
    when.add_argument("--expires", help="expiry time, ISO 8601 (UTC unless a zone is given)")
    when.add_argument("--days", type=float, help="expires this many days from now")
    grant = keys.add_parser("grant", help="set a key's vector collection grants")
    grant.add_argument("ref", metavar="ALIAS_OR_ID")
    for parser in (create, grant):
        parser.add_argument(
            "--read",
            metavar="C1,C2",
            help="collections it may search and retrieve from (* for all; default on create: all)",
        )
        parser.add_argument(
            "--write",
            metavar="C1,C2",
            help="collections it may upsert to and delete from (* for all; default on create: none)",
        )
    keys.add_parser("list", help="list keys (never their secrets)")
    for action, text in (("revoke", "revoke a key"), ("rotate", "give a key a new secret (printed once)")):
        keys.add_parser(action, help=text).add_argument("ref", metavar="ALIAS_OR_ID")
    for parser in keys.choices.values():
        parser.set_defaults(func=_keys)
