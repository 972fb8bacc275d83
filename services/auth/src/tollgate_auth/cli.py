"""``tollgate-auth-keys``: create, list and revoke API keys straight in the ``auth`` schema
(``DATABASE_URL``), for operators with database access. The secret is printed once."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from datetime import timedelta

from tollgate_auth.adapters.postgres import PostgresApiKeyStore
from tollgate_auth.apikeys import ApiKeys
from tollgate_core import db
from tollgate_core.contracts import utcnow
from tollgate_core.errors import TollgateError
from tollgate_core.settings import DatabaseSettings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tollgate-auth-keys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    create = commands.add_parser("create", help="create a key and print it once")
    create.add_argument("principal")
    create.add_argument("--groups", default="", help="comma-separated groups")
    create.add_argument("--name", default="")
    create.add_argument(
        "--expires-in", type=int, default=None, help="seconds until it expires (default 90 days)"
    )
    create.add_argument("--never-expires", action="store_true", help="a key with no expiry")
    listing = commands.add_parser("list", help="list keys (never their secrets)")
    listing.add_argument("--principal", default=None)
    revoke = commands.add_parser("revoke", help="revoke a key by its id")
    revoke.add_argument("key_id")
    return parser


async def execute(args: argparse.Namespace, settings: DatabaseSettings) -> tuple[int, object]:
    engine = db.create_engine(settings, application_name="auth-cli")
    never = getattr(args, "never_expires", False)
    keys = ApiKeys(PostgresApiKeyStore(engine), **({"default_ttl_s": None} if never else {}))
    try:
        if args.command == "create":
            groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
            expires = utcnow() + timedelta(seconds=args.expires_in) if args.expires_in else None
            secret, record = await keys.create(
                args.principal, groups, name=args.name, expires_at=expires
            )
            return 0, {"key": secret, **record.public()}
        if args.command == "list":
            return 0, {"keys": [k.public() for k in await keys.store.list(args.principal)]}
        if await keys.store.revoke(args.key_id):
            return 0, {"revoked": args.key_id}
        return 1, {"error": {"type": "not_found", "message": "no such active API key"}}
    finally:
        await engine.dispose()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        code, output = asyncio.run(execute(args, DatabaseSettings()))
    except TollgateError as exc:
        code, output = 2, {"error": {"type": exc.error_type, "message": exc.message}}
    stream = sys.stdout if code == 0 else sys.stderr
    stream.write(json.dumps(output, indent=2) + "\n")
    return code
