"""``tollgate-watch <sub>``: subscribe to ``/Outbound-Messages/<sub>`` and print what
arrives: a small AppSync Events client for trying the gateway from a terminal (the README
shows the curl command that publishes to it). Without ``--token`` it asks the local auth
service's development IdP for one."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import sys

import httpx
import websockets


def _subprotocols(host: str, token: str | None) -> list[str]:
    headers = {"host": host}
    if token:
        headers["Authorization"] = token
    encoded = base64.urlsafe_b64encode(json.dumps(headers).encode()).decode().rstrip("=")
    return ["aws-appsync-event-ws", f"header-{encoded}"]


async def watch(url: str, channel: str, token: str | None, text_only: bool) -> None:
    host = url.split("://", 1)[1].split("/", 1)[0]
    async with websockets.connect(
        f"{url}/event/realtime",
        subprotocols=_subprotocols(host, token),  # type: ignore[arg-type]
    ) as ws:
        await ws.send(json.dumps({"type": "connection_init"}))
        await ws.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "id": "watch",
                    "channel": channel,
                    "authorization": {"Authorization": token} if token else {},
                }
            )
        )
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "ka":
                continue
            if message.get("type") != "data":
                sys.stderr.write(json.dumps(message) + "\n")
                continue
            event = json.loads(message["event"])
            if not text_only:
                sys.stdout.write(json.dumps(event) + "\n")
            elif "contentBlockDelta" in event:
                sys.stdout.write(event["contentBlockDelta"]["delta"].get("text", ""))
            elif "metadata" in event:
                sys.stdout.write(f"\n[usage {json.dumps(event['metadata']['usage'])}]\n")
            elif "error" in event:
                sys.stdout.write(f"\n[error {json.dumps(event['error'])}]\n")
            sys.stdout.flush()


def dev_token(auth_url: str, sub: str) -> str:
    response = httpx.post(f"{auth_url}/v1/dev/token", json={"sub": sub}, timeout=5)
    if response.status_code == 404:
        sys.exit("the auth service has no development IdP: pass --token")
    response.raise_for_status()
    return str(response.json()["access_token"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("sub", help="whose outbound channel to watch")
    parser.add_argument("--url", default="ws://127.0.0.1:8080")
    parser.add_argument("--token", default=None, help="a JWT or API key")
    parser.add_argument(
        "--auth-url",
        default="http://127.0.0.1:8081",
        help="where to get a development token when --token is not given",
    )
    parser.add_argument("--raw", action="store_true", help="print every event as JSON")
    args = parser.parse_args()
    token = args.token or dev_token(args.auth_url, args.sub)
    channel = f"/Outbound-Messages/{args.sub}"
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch(args.url, channel, token, text_only=not args.raw))
