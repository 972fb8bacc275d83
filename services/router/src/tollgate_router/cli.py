"""``tollgate-router-admin``: add, list and remove prepared responses through the router's
admin API.

    tollgate-router-admin add --question "What are your hours?" --response "9 to 5." --ttl 3600
    tollgate-router-admin add --messages-file convo.json --principal alice --model m --ttl 600 \
        --response "…"
    tollgate-router-admin list [--principal alice]
    tollgate-router-admin remove <id>

The URL and token come from ``--url``/``--token`` or ``TOLLGATE_ROUTER_ADMIN_URL`` /
``TOLLGATE_ROUTER_ADMIN_TOKEN``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class AdminClientSettings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="TOLLGATE_ROUTER_ADMIN_", frozen=True, extra="ignore"
    )
    url: str = "http://127.0.0.1:8082"
    token: SecretStr = SecretStr("")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tollgate-router-admin", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--url")
    parser.add_argument("--token")
    sub = parser.add_subparsers(dest="command", required=True)
    add = sub.add_parser("add", help="add or replace a prepared response")
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument("--question", help="a one-turn conversation: this user message")
    source.add_argument("--messages-file", type=Path, help='JSON list of {"role","content"}')
    add.add_argument("--system", action="append", default=[])
    add.add_argument("--response", required=True)
    add.add_argument("--model", default="*")
    add.add_argument("--principal", help="omit for a public answer")
    expiry = add.add_mutually_exclusive_group(required=True)
    expiry.add_argument("--ttl", type=int, help="seconds until it expires")
    expiry.add_argument("--expires-at", help="ISO 8601 with a time zone")
    add.add_argument("--description", default="")
    listing = sub.add_parser("list", help="list prepared responses")
    listing.add_argument("--principal")
    remove = sub.add_parser("remove", help="remove one by id")
    remove.add_argument("id")
    return parser


def _messages(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.question is not None:
        return [{"role": "user", "content": [{"text": args.question}]}]
    raw = json.loads(Path(args.messages_file).read_text(encoding="utf-8"))
    out = []
    for m in raw:
        content = m["content"]
        if isinstance(content, str):
            content = [{"text": content}]
        out.append({"role": m["role"], "content": content})
    return out


def run(argv: Sequence[str], client: httpx.Client | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = AdminClientSettings()
    url = (args.url or settings.url).rstrip("/")
    token = args.token or settings.token.get_secret_value()
    headers = {"authorization": f"Bearer {token}"}
    own = client is None
    http = client or httpx.Client(timeout=10.0)
    try:
        if args.command == "add":
            body: dict[str, Any] = {
                "model": args.model,
                "principal": args.principal,
                "system": args.system,
                "messages": _messages(args),
                "response": args.response,
                "description": args.description,
            }
            if args.ttl is not None:
                body["ttl_seconds"] = args.ttl
            else:
                body["expires_at"] = args.expires_at
            response = http.post(f"{url}/admin/prepared", json=body, headers=headers)
        elif args.command == "list":
            params = {"principal": args.principal} if args.principal else {}
            response = http.get(f"{url}/admin/prepared", params=params, headers=headers)
        else:
            response = http.delete(f"{url}/admin/prepared/{args.id}", headers=headers)
    except httpx.HTTPError as exc:
        sys.stderr.write(f"cannot reach {url}: {exc}\n")
        return 2
    finally:
        if own:
            http.close()
    if response.status_code >= 400:
        sys.stderr.write(f"{response.status_code}: {response.text}\n")
        return 1
    if response.content:
        sys.stdout.write(json.dumps(response.json(), indent=2) + "\n")
    return 0


def main() -> None:
    raise SystemExit(run(sys.argv[1:]))
