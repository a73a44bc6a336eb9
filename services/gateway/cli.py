"""`hxp gateway serve` and `hxp keys create|list|revoke|rotate` (keys work on the database directly)."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hxp.gateway.database import Database, default_url
from hxp.gateway.keys import KeyStore, KeyStoreError, expiry


def _serve(args: argparse.Namespace) -> int:
    from hxp.gateway import launcher

    launcher.serve(args.host, args.port, args.workers)
    return 0


def _store() -> KeyStore:
    db = Database(default_url())
    db.migrate()
    return KeyStore(db)


def _print(payload: Any) -> None:
    print(json.dumps(payload, indent=2))


def _keys(args: argparse.Namespace) -> int:
    store = _store()
    try:
        if args.action == "create":
            models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
            key, secret = store.create(args.alias, owner=args.owner, models=models, rpm=args.rpm, tpm=args.tpm,
                                       expires_at=expiry(args.expires, args.days))
            _print(key.issued(secret))
        elif args.action == "list":
            _print([k.public() for k in store.list()])
        elif args.action == "revoke":
            _print(store.revoke(args.ref).public())
        else:
            key, secret = store.rotate(args.ref)
            _print(key.issued(secret))
    except KeyStoreError as exc:
        print(f"hxp keys {args.action}: {exc}", file=sys.stderr)
        return 2
    finally:
        store.db.close()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    gateway = sub.add_parser("gateway", help="the OpenAI-compatible gateway").add_subparsers(dest="action",
                                                                                             required=True)
    serve = gateway.add_parser("serve", help="serve the gateway (LiteLLM proxy with the project's hooks)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes (use the number of cores)")
    serve.set_defaults(func=_serve)

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
    keys.add_parser("list", help="list keys (never their secrets)")
    for action, text in (("revoke", "revoke a key"), ("rotate", "give a key a new secret (printed once)")):
        keys.add_parser(action, help=text).add_argument("ref", metavar="ALIAS_OR_ID")
    for parser in keys.choices.values():
        parser.set_defaults(func=_keys)
